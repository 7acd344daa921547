"""Full networks: the Mamba LM (mamba_ssm-compatible) and the SaShiMi-style U-Net for waveforms."""

from .lm import MambaConfig, MambaLM
from .sashimi import Sashimi, SashimiConfig

__all__ = ["MambaConfig", "MambaLM", "Sashimi", "SashimiConfig"]
