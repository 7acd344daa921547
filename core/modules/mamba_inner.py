"""The Mamba block between in_proj and the output, as one autograd step for training on the Triton
backend:

    x_pre (B, E, L) -> silu(causal conv) = u -> x_proj -> dt_low, B, C -> dt_proj -> delta
    y = selective_scan(u, delta, -exp(A_log), B, C, D, z, dt_bias, softplus)
    out = out_proj(y)  (B, D, L)

Composed of separate autograd ops, the layer keeps x_pre (the conv's checkpointed input), u,
delta and y for backward, besides z and the scan's chunk states E. This function keeps x_pre, z
and E only: u, dt_low, B, C and delta are recomputed in backward (a depthwise conv and two thin
products), and y comes back out of the scan's backward kernel, which recomputes the states anyway
(emit_y). That is 3 of the ~8.6 bytes x E per token that a layer keeps under bf16 autocast.
mamba_ssm's `mamba_inner_fn` makes the same trade. The recomputed front's gradients come from
autograd itself, so their dtypes and maths under autocast are the separate ops'.
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


def _out_proj(weight, bias, y):
    from core.modules.mamba import _channel_major

    out = _channel_major(weight, y)  # (B, D, L)
    return out if bias is None else out + bias[:, None]


class _MambaInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, block, seq_idx, x_pre, z, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D, out_w, out_b):
        from core.ops.triton_scan import _selective_scan_fwd_op

        device = x_pre.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        u, delta, B, C = _front(block, x_pre, seq_idx)
        y, _, E = _selective_scan_fwd_op(
            u, delta, -torch.exp(A_log.float()), B, C, D.float(), z, dt_bias.float(), None, True, seq_idx
        )
        ctx.block = block
        ctx.save_for_backward(x_pre, z, A_log, D, dt_bias, E, seq_idx, out_w, out_b)
        return _out_proj(out_w, out_b, y)

    @staticmethod
    def backward(ctx, dout):
        from core.ops.triton_scan import _selective_scan_bwd_op

        x_pre, z, A_log, D, dt_bias, E, seq_idx, out_w, out_b = ctx.saved_tensors
        block = ctx.block
        device, autocast_on, autocast_dtype = ctx.autocast
        autocast = lambda: torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on)  # noqa: E731
        # out = W y: dy = W^T dout needs no y, so it comes first; dW = dout y^T once y is back
        with autocast():
            dy = _out_proj(out_w.t(), None, dout)
        weights = (block.conv1d.weight, block.x_proj.weight, block.dt_proj.weight)
        if block.conv1d.bias is not None:
            weights = (*weights, block.conv1d.bias)
        x_leaf = x_pre.detach().requires_grad_(x_pre.requires_grad)
        with torch.enable_grad(), autocast():
            u, delta, B, C = _front(block, x_leaf, seq_idx)
        A = -torch.exp(A_log.float())
        du, ddelta, dA, dB, dC, dD, dz, dbias, _, y = _selective_scan_bwd_op(
            dy.contiguous(), None, u.detach(), delta.detach(), A, B.detach(), C.detach(), D.float(), z,
            dt_bias.float(), None, E, True, seq_idx, True,
        )  # fmt: skip
        with autocast():
            dout_w = torch.bmm(dout, y.to(dout.dtype).transpose(1, 2)).sum(0).to(out_w.dtype)
        dout_b = dout.sum((0, 2)).to(out_b.dtype) if out_b is not None else None
        inputs = (x_leaf, *weights) if x_leaf.requires_grad else weights
        grads = list(torch.autograd.grad((u, delta, B, C), inputs, (du, ddelta, dB, dC)))
        dx = grads.pop(0) if x_leaf.requires_grad else None
        dconv_w, dxproj_w, ddtproj_w, *rest = grads
        dconv_b = rest[0] if rest else None
        dA_log = (dA * A).to(A_log.dtype)  # A = -exp(A_log): dA/dA_log = A
        return (
            None, None, dx, dz, dconv_w, dconv_b, dxproj_w, ddtproj_w, dbias.to(dt_bias.dtype), dA_log,
            dD.to(D.dtype), dout_w, dout_b,
        )  # fmt: skip


def mamba_inner(block, x_pre, z, seq_idx=None):
    """out_proj(y) (B, D, L) of `block`'s conv, projections and scan from x_pre, z (B, E, L),
    keeping only x_pre, z and the scan's chunk states for backward."""
    return _MambaInner.apply(
        block, seq_idx, x_pre, z, block.conv1d.weight, block.conv1d.bias, block.x_proj.weight,
        block.dt_proj.weight, block.dt_proj.bias, block.A_log, block.D, block.out_proj.weight, block.out_proj.bias,
    )  # fmt: skip
