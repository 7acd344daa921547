"""The Mamba block's middle as one autograd step, for training on the Triton backend:

    x_pre (B, E, L) -> silu(causal conv) = u -> x_proj -> dt_low, B, C -> dt_proj -> delta
    y = selective_scan(u, delta, -exp(A_log), B, C, D, z, dt_bias, softplus)

Composed of separate autograd ops, the layer keeps u and delta (and the conv's checkpointed input
x_pre) for backward: 3 (B, E, L) activations besides z and the scan's chunk states. This function
keeps x_pre and z only, and recomputes u (a depthwise conv), dt_low, B, C (x_proj) and delta
(dt_proj) in backward: cheap products next to the scan, and 2 of the block's ~9 bytes x E per
token of saved activations (mamba_ssm's `mamba_inner_fn` makes the same trade, checkpoint_lvl 1).
Gradients of the recomputed part come from autograd itself, so their dtypes and maths under
autocast are those of the unfused layer; the scan's backward is its op's (triton_scan).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _front(block, x_pre, seq_idx):
    """u, delta, B, C from x_pre for `block` (a core.modules.Mamba), as its unfused forward computes them."""
    from core.modules.mamba import _channel_major

    u = F.silu(block._conv(x_pre, None, seq_idx))
    dt_low, B, C = _channel_major(block.x_proj.weight, u).split([block.dt_rank, block.d_state, block.d_state], dim=1)
    return u, _channel_major(block.dt_proj.weight, dt_low), B, C


class _MambaInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, block, seq_idx, x_pre, z, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D):
        from core.ops.triton_scan import _selective_scan_fwd_op

        device = x_pre.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        u, delta, B, C = _front(block, x_pre, seq_idx)
        y, _, E = _selective_scan_fwd_op(
            u, delta, -torch.exp(A_log.float()), B, C, D.float(), z, dt_bias.float(), None, True, seq_idx
        )
        ctx.block = block
        ctx.save_for_backward(x_pre, z, A_log, D, dt_bias, E, seq_idx)
        return y

    @staticmethod
    def backward(ctx, dy):
        from core.ops.triton_scan import _selective_scan_bwd_op

        x_pre, z, A_log, D, dt_bias, E, seq_idx = ctx.saved_tensors
        block = ctx.block
        weights = (block.conv1d.weight, block.x_proj.weight, block.dt_proj.weight)
        if block.conv1d.bias is not None:
            weights = (*weights, block.conv1d.bias)
        x_leaf = x_pre.detach().requires_grad_(x_pre.requires_grad)
        with torch.enable_grad(), torch.autocast(x_pre.device.type, dtype=ctx.autocast[1], enabled=ctx.autocast[0]):
            u, delta, B, C = _front(block, x_leaf, seq_idx)
        A = -torch.exp(A_log.float())
        du, ddelta, dA, dB, dC, dD, dz, dbias, _ = _selective_scan_bwd_op(
            dy.contiguous(), None, u.detach(), delta.detach(), A, B.detach(), C.detach(), D.float(), z,
            dt_bias.float(), None, E, True, seq_idx,
        )  # fmt: skip
        inputs = (x_leaf, *weights) if x_leaf.requires_grad else weights
        grads = list(torch.autograd.grad((u, delta, B, C), inputs, (du, ddelta, dB, dC)))
        dx = grads.pop(0) if x_leaf.requires_grad else None
        dconv_w, dxproj_w, ddtproj_w, *rest = grads
        dconv_b = rest[0] if rest else None
        dA_log = (dA * A).to(A_log.dtype)  # A = -exp(A_log): dA/dA_log = A
        return (
            None, None, dx, dz, dconv_w, dconv_b, dxproj_w, ddtproj_w, dbias.to(dt_bias.dtype), dA_log, dD.to(D.dtype)
        )  # fmt: skip


def mamba_inner(block, x_pre, z, seq_idx=None):
    """y (B, E, L) of `block`'s conv, projections and scan from x_pre, z (B, E, L), keeping only x_pre and z."""
    return _MambaInner.apply(
        block, seq_idx, x_pre, z, block.conv1d.weight, block.conv1d.bias, block.x_proj.weight,
        block.dt_proj.weight, block.dt_proj.bias, block.A_log, block.D,
    )  # fmt: skip
