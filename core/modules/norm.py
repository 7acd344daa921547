"""RMSNorm, as in mamba_ssm (`weight` only, eps 1e-5), computed in float32."""

from __future__ import annotations

import torch
from torch import nn

from core.ops.reference import rms_norm_ref


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last axis; x: (..., D)."""

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_ref(x, self.weight, self.eps)
