"""The Mamba block between in_proj and the output, as one autograd step for training on the Triton
backend:

    x_pre (B, E, L) -> silu(causal conv) = u -> x_proj -> dt_low, B, C -> dt_proj -> delta
    y = selective_scan(u, delta, -exp(A_log), B, C, D, z, dt_bias, softplus)
    out = out_proj(y)  (B, D, L)

Composed of separate autograd ops, the layer keeps x_pre (the conv's checkpointed input), u,
delta and y for backward, besides z and the scan's chunk states E. This function keeps x_pre, z
and E only: u, dt_low, B, C and delta are recomputed in backward (a depthwise conv and two thin
products), and y comes back out of the scan's backward kernel, which recomputes the states anyway
(emit_y). That is 3 of the ~8.6 bytes x E per token that a layer keeps under bf16 autocast;
mamba_ssm's `mamba_inner_fn` makes the same trade. The conv and its backward are Triton kernels
(core/ops/triton_conv.py) except with packed sequences, where the block's torch conv runs under
autograd; the projections' gradients come from autograd itself, so their dtypes and maths under
autocast are the separate ops'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.ops.triton_conv import causal_conv1d_silu_bwd, causal_conv1d_silu_fwd


def _conv_weights(block, x_pre):
    """The conv's weight (E, K) and bias in x_pre's dtype, as autocast would cast them."""
    bias = block.conv1d.bias
    return block.conv1d.weight[:, 0, :].to(x_pre.dtype), None if bias is None else bias.to(x_pre.dtype)


def _conv_silu(block, x_pre, seq_idx):
    """u = silu(causal conv(x_pre)): the Triton kernel, or with packed sequences the block's torch conv."""
    if seq_idx is None:
        return causal_conv1d_silu_fwd(x_pre, *_conv_weights(block, x_pre))
    return F.silu(block._conv(x_pre, None, seq_idx))


def _proj(block, u):
    """delta, B, C from u for `block` (a core.modules.Mamba), as its unfused forward computes them."""
    from core.modules.mamba import _channel_major

    dt_low, B, C = _channel_major(block.x_proj.weight, u).split([block.dt_rank, block.d_state, block.d_state], dim=1)
    return _channel_major(block.dt_proj.weight, dt_low), B, C


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
        u = _conv_silu(block, x_pre, seq_idx)
        delta, B, C = _proj(block, u)
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
        conv_params = (block.conv1d.weight,) + (() if block.conv1d.bias is None else (block.conv1d.bias,))
        proj_params = (block.x_proj.weight, block.dt_proj.weight)
        # recompute u: without packed sequences by the Triton conv (its backward is below), else
        # through the block's torch conv under autograd
        triton_conv = seq_idx is None
        if triton_conv:
            u_leaf = _conv_silu(block, x_pre, None).requires_grad_(True)
            leaves = (u_leaf,)
        else:
            x_leaf = x_pre.detach().requires_grad_(True)
            leaves = (x_leaf, *conv_params)
        with torch.enable_grad(), autocast():
            u = u_leaf if triton_conv else _conv_silu(block, x_leaf, seq_idx)
            delta, B, C = _proj(block, u)
        A = -torch.exp(A_log.float())
        du, ddelta, dA, dB, dC, dD, dz, dbias, _, y = _selective_scan_bwd_op(
            dy.contiguous(), None, u.detach(), delta.detach(), A, B.detach(), C.detach(), D.float(), z,
            dt_bias.float(), None, E, True, seq_idx, True,
        )  # fmt: skip
        with autocast():
            dout_w = torch.bmm(dout, y.to(dout.dtype).transpose(1, 2)).sum(0).to(out_w.dtype)
        dout_b = dout.sum((0, 2)).to(out_b.dtype) if out_b is not None else None
        if triton_conv:  # the projections' share of du, then the conv's backward in Triton
            du_proj, dxproj_w, ddtproj_w = torch.autograd.grad((delta, B, C), (u_leaf, *proj_params), (ddelta, dB, dC))
            dx, dconv_w, dconv_b = causal_conv1d_silu_bwd(du + du_proj, x_pre, *_conv_weights(block, x_pre))
            dconv_w = dconv_w[:, None, :].to(block.conv1d.weight.dtype)
            dconv_b = None if dconv_b is None else dconv_b.to(block.conv1d.bias.dtype)
        else:
            grads = torch.autograd.grad((u, delta, B, C), (*leaves, *proj_params), (du, ddelta, dB, dC))
            dx, dconv_w, *rest = grads
            dconv_b = rest[0] if block.conv1d.bias is not None else None
            dxproj_w, ddtproj_w = rest[-2:]
        dx = dx if x_pre.requires_grad else None
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
