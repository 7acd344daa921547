"""One block per file: the Mamba mixer and its norm."""

from .mamba import Mamba, MambaCache
from .norm import RMSNorm

__all__ = ["Mamba", "MambaCache", "RMSNorm"]
