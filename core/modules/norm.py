"""RMSNorm, as in mamba_ssm (`weight` only, eps 1e-5), computed in float32, and the pre-norm
block's residual add + RMSNorm as one autograd function that keeps less for backward."""

from __future__ import annotations

import importlib.util
from functools import cache

import torch
from torch import nn

# core.ops imports Triton only inside its loaders: `import core.modules` stays Triton-free
from core.ops import _load_fused_triton, resolve_backend
from core.ops.reference import rms_norm_ref


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last axis; x: (..., D)."""

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_ref(x, self.weight, self.eps)


class _AddRMSNorm(torch.autograd.Function):
    """`add_rms_norm_ref` with a hand-written backward. Autograd through the reference keeps two
    float32 (..., D) tensors per call (x in float32 and x * rstd): 2 GiB per layer at 2^20 tokens
    and d_model 256. This keeps the normed input in the weight's dtype and rstd (..., 1), and
    recomputes x * rstd in backward.

    use_triton: one Triton kernel each way (core/ops/triton_fused.py) instead of ~10 torch
    elementwise kernels; same rounding steps. It keeps only rstd (...,) beside the new residual,
    which it returns anyway: cast to the weight's dtype, that is x (the residual is the sum, or
    its exact float32/float64 widening)."""

    @staticmethod
    def forward(ctx, hidden, residual, weight, eps, residual_in_fp32, use_triton=False):
        ctx.use_triton = use_triton
        ctx.dtypes = hidden.dtype, None if residual is None else residual.dtype
        if use_triton:
            normed, new_residual, rstd = _load_fused_triton().add_rms_norm_fwd_triton(
                hidden, residual, weight, eps, residual_in_fp32
            )
            # a gradient nobody sends (the final norm's residual) stays None: not a zero tensor to read
            ctx.set_materialize_grads(False)
            ctx.save_for_backward(new_residual, rstd, weight)
            return normed, new_residual
        total = hidden if residual is None else hidden + residual
        # the residual output is a tensor of its own (not an input returned as-is)
        new_residual = total.to(torch.promote_types(total.dtype, torch.float32)) if residual_in_fp32 else total
        if new_residual is hidden:
            new_residual = hidden.clone()
        x = total.to(weight.dtype)
        x_f = x.to(torch.promote_types(x.dtype, torch.float32))  # float64 stays float64 (gradcheck)
        rstd = torch.rsqrt(x_f.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, rstd, weight)
        return ((x_f * rstd) * weight.to(x_f.dtype)).to(weight.dtype), new_residual

    @staticmethod
    def backward(ctx, d_normed, d_residual):
        if ctx.use_triton:
            if d_normed is None and d_residual is None:
                return None, None, None, None, None, None
            new_residual, rstd, weight = ctx.saved_tensors
            grads = _load_fused_triton().add_rms_norm_bwd_triton(
                d_normed, d_residual, new_residual, rstd, weight, *ctx.dtypes
            )
            return *grads, None, None, None
        x, rstd, weight = ctx.saved_tensors
        xhat = x.to(rstd.dtype) * rstd  # (..., D)
        d_total = torch.zeros_like(xhat) if d_residual is None else d_residual.to(xhat.dtype)
        d_weight = None
        if d_normed is not None:
            dy = d_normed.to(xhat.dtype)
            g = dy * weight.to(xhat.dtype)
            # d/dx of x * rstd(x): rstd * (g - xhat * mean(g * xhat))
            d_total = d_total + rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
            d_weight = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0).to(weight.dtype)
        hidden_dtype, residual_dtype = ctx.dtypes
        d_hidden = d_total.to(hidden_dtype)
        return d_hidden, None if residual_dtype is None else d_total.to(residual_dtype), d_weight, None, None, None


@cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _use_triton(backend: str, hidden: torch.Tensor) -> bool:
    """backend "auto": the kernels for CUDA tensors when Triton is installed (else torch ops, as on CPU);
    "triton": the kernels always (CPU tensors under TRITON_INTERPRET=1: how the tests run them);
    "ref" / "cpu": torch ops. The names are the selective scan's (core.ops.BACKENDS)."""
    if resolve_backend(backend, hidden.is_cuda) != "triton":
        return False
    return backend == "triton" or _triton_importable()


def add_rms_norm_autograd(hidden, residual, weight, eps: float, residual_in_fp32: bool, backend: str = "auto"):
    """`core.ops.reference.add_rms_norm_ref`'s values with the smaller backward of `_AddRMSNorm`;
    on CUDA (see `_use_triton` for `backend`) one Triton kernel each way."""
    return _AddRMSNorm.apply(hidden, residual, weight, eps, residual_in_fp32, _use_triton(backend, hidden))
