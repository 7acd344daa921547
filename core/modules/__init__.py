"""One block per file: the Mamba mixer (selective), its LTI variant, and the norm."""

from .lti import MambaLTI
from .mamba import Mamba, MambaCache
from .norm import RMSNorm

__all__ = ["Mamba", "MambaCache", "MambaLTI", "RMSNorm"]
