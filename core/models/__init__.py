"""Full networks: the Mamba LM (mamba_ssm-compatible)."""

from .lm import MambaConfig, MambaLM

__all__ = ["MambaConfig", "MambaLM"]
