"""The Mamba block between in_proj and the output as one autograd step, for training on the Triton
backend (the ops-layer counterpart of mamba_ssm's `mamba_inner_fn`):

    x_pre (B, E, L) -> silu(causal conv) = u -> x_proj -> dt_low, B, C -> dt_proj -> delta
    y = selective_scan(u, delta, -exp(A_log), B, C, D, z, dt_bias, softplus)
    out = out_proj(y)  (B, D, L)

Composed of separate autograd ops, the layer keeps x_pre (the conv's checkpointed input), u,
delta and y for backward, besides z and the scan's chunk states E. This function keeps x_pre, z
and E only: u, dt_low, B, C and delta are recomputed in backward (a depthwise conv and two thin
products), and y comes back out of the scan's backward kernel, which recomputes the states anyway
(emit_y). That is 3 of the ~8.6 bytes x E per token that a layer keeps under bf16 autocast.
The conv and its backward are Triton kernels (triton_conv.py); with packed sequences the caller's
conv (`conv_fn`) runs under autograd instead. The projections' gradients come from autograd
itself, so their dtypes and maths under autocast are the separate ops'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the Triton modules are imported where used: core.modules imports channel_major from here, and
# `import core` must work without Triton (and before a test sets TRITON_INTERPRET)


def _autocast_weight(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight cast as autocast would cast it for a product with x, before it is expanded over the
    batch (here and in channel_major): autocast casts the expanded (B, out, in) view into a full
    copy, and the weight's gradient then comes back as a (B, out, in) copy too (130M model, 16 x 2048
    tokens on the H200: the training step's copy kernels fell from 17.1 to 11.4 ms)."""
    device = x.device.type
    return weight.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else weight


class _ChannelMajor(torch.autograd.Function):
    """weight (out, in) @ x (B, in, L) with x's gradient in x's memory layout: when x is the
    transposed view of a token-major (B, L, in) tensor (the block's input), autograd's bmm backward
    would return a channel-major gradient, which the residual + norm backward then copies back to
    token-major, a strided copy of the residual stream per layer (0.18 ms at 16 x 2048 x 768)."""

    @staticmethod
    def forward(ctx, weight, x):
        ctx.save_for_backward(weight, x)
        return torch.bmm(weight.expand(x.shape[0], -1, -1), x)

    @staticmethod
    def backward(ctx, dy):
        weight, x = ctx.saved_tensors
        dweight = dx = None
        if ctx.needs_input_grad[0]:
            dweight = torch.bmm(dy, x.transpose(1, 2)).sum(0)
        if ctx.needs_input_grad[1]:
            batched = weight.expand(x.shape[0], -1, -1)
            if x.transpose(1, 2).is_contiguous():  # dx^T = dy^T W, token-major
                dx = torch.bmm(dy.transpose(1, 2), batched).transpose(1, 2)
            else:
                dx = torch.bmm(batched.transpose(1, 2), dy)
        return dweight, dx


def channel_major(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight (out, in) @ x (B, in, L) -> (B, out, L) as a batched product: torch.matmul would fold
    the batch into a transposed copy of x, and keep that copy for backward."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return _ChannelMajor.apply(weight, x)
    dtype = torch.get_autocast_dtype(device)  # both operands cast as autocast casts a bmm's
    return _ChannelMajor.apply(weight.to(dtype), x.to(dtype))


def _conv_args(x_pre, conv_w, conv_b):
    """The conv's weight (E, K) and bias in x_pre's dtype, as autocast casts them for the torch conv."""
    return conv_w[:, 0, :].to(x_pre.dtype), None if conv_b is None else conv_b.to(x_pre.dtype)


def _conv_silu(x_pre, conv_w, conv_b, conv_fn):
    """u = silu(causal conv(x_pre)): the Triton kernel (weights cast to x_pre's dtype, as autocast
    casts them), or conv_fn's conv (packed sequences)."""
    if conv_fn is not None:
        return F.silu(conv_fn(x_pre))
    from .triton_conv import causal_conv1d_silu_fwd

    return causal_conv1d_silu_fwd(x_pre, *_conv_args(x_pre, conv_w, conv_b))


def _proj(u, x_proj_w, dt_proj_w, dt_rank, d_state):
    """delta, B, C from u, as the separate ops compute them."""
    dt_low, B, C = channel_major(x_proj_w, u).split([dt_rank, d_state, d_state], dim=1)
    return channel_major(dt_proj_w, dt_low), B, C


def _out_proj(weight, bias, y):
    """out_proj of y (B, E, L) token-major: (B, L, D), contiguous. The block's output feeds the
    residual add + norm, which read (B, L, D) rows: a channel-major (B, D, L) output made them copy it
    (and its gradient) once a layer, 2 of a training step's largest copy kernels on the H200."""
    out = torch.bmm(y.transpose(1, 2), _autocast_weight(weight, y).t().expand(y.shape[0], -1, -1))  # y^T read in place
    return out if bias is None else out + bias


class _MambaInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shape, conv_fn, seq_idx, x_pre, z, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D, out_w,
                out_b):  # fmt: skip
        from .triton_scan import scan_fwd

        device = x_pre.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.shape, ctx.conv_fn = shape, conv_fn
        u = _conv_silu(x_pre, conv_w, conv_b, conv_fn)
        delta, B, C = _proj(u, x_proj_w, dt_proj_w, *shape)
        y, _, E = scan_fwd(
            u, delta, -torch.exp(A_log.float()), B, C, D.float(), z, dt_bias.float(), None, True, seq_idx
        )
        ctx.save_for_backward(
            x_pre, z, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D, out_w, out_b, E, seq_idx
        )
        return _out_proj(out_w, out_b, y)

    @staticmethod
    def backward(ctx, dout):
        from .triton_conv import causal_conv1d_silu_bwd
        from .triton_scan import scan_bwd

        x_pre, z, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D, out_w, out_b, E, seq_idx = ctx.saved_tensors
        device, autocast_on, autocast_dtype = ctx.autocast
        autocast = lambda: torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on)  # noqa: E731
        # out^T = W y with dout (B, L, D): dy = W^T dout^T needs no y, so it comes first; dW = dout^T y^T
        # once y is back
        with autocast():
            dy = channel_major(out_w.t(), dout.transpose(1, 2))  # (B, E, L)
        conv_params = (conv_w,) if conv_b is None else (conv_w, conv_b)
        # recompute u: by the Triton conv (its backward is below), or through conv_fn under autograd
        triton_conv = ctx.conv_fn is None
        with torch.enable_grad(), autocast():
            if triton_conv:
                u = _conv_silu(x_pre, conv_w, conv_b, None).requires_grad_(True)
                leaves = (u,)
            else:
                x_leaf = x_pre.detach().requires_grad_(True)
                u = _conv_silu(x_leaf, conv_w, conv_b, ctx.conv_fn)
                leaves = (x_leaf, *conv_params)
            x_proj_leaf, dt_proj_leaf = (w.detach().requires_grad_(True) for w in (x_proj_w, dt_proj_w))
            delta, B, C = _proj(u, x_proj_leaf, dt_proj_leaf, *ctx.shape)
        A = -torch.exp(A_log.float())
        du, ddelta, dA, dB, dC, dD, dz, dbias, _, y = scan_bwd(
            dy.contiguous(), None, u.detach(), delta.detach(), A, B.detach(), C.detach(), D.float(), z,
            dt_bias.float(), None, E, True, seq_idx, True,
        )  # fmt: skip
        # (B, E, L) buffers go as soon as they are used: at 2^20 steps each is 1 GiB a layer, and
        # the backward's peak is where most of them would otherwise be alive at once
        del dy
        with autocast():
            dout_w = torch.bmm(dout.transpose(1, 2), y.to(dout.dtype).transpose(1, 2)).sum(0).to(out_w.dtype)
        del y
        dout_b = dout.sum((0, 1)).to(out_b.dtype) if out_b is not None else None
        if triton_conv:  # the projections' share of du, then the conv's backward in Triton
            du_proj, dxproj_w, ddtproj_w = torch.autograd.grad(
                (delta, B, C), (u, x_proj_leaf, dt_proj_leaf), (ddelta, dB, dC)
            )
            del u, leaves, delta, B, C, ddelta, dB, dC
            # du is ours: the conv's backward adds du_proj and keeps its output gradient there
            dx, dconv_w, dconv_b = causal_conv1d_silu_bwd(
                du, x_pre, *_conv_args(x_pre, conv_w, conv_b), du_scratch=True, du2=du_proj
            )
            del du, du_proj
            dconv_w = dconv_w[:, None, :].to(conv_w.dtype)
            dconv_b = None if conv_b is None else dconv_b.to(conv_b.dtype)
        else:
            grads = torch.autograd.grad((u, delta, B, C), (*leaves, x_proj_leaf, dt_proj_leaf), (du, ddelta, dB, dC))
            dx, dconv_w, *rest = grads
            dconv_b = rest[0] if conv_b is not None else None
            dxproj_w, ddtproj_w = rest[-2:]
        dx = dx if x_pre.requires_grad else None
        dA_log = (dA * A).to(A_log.dtype)  # A = -exp(A_log): dA/dA_log = A
        return (
            None, None, None, dx, dz, dconv_w, dconv_b, dxproj_w, ddtproj_w, dbias.to(dt_bias.dtype), dA_log,
            dD.to(D.dtype), dout_w, dout_b,
        )  # fmt: skip


def mamba_inner(x_pre, z, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D, out_w, out_b, dt_rank, d_state,
                seq_idx=None, conv_fn=None):  # fmt: skip
    """out_proj(y) (B, L, D), token-major, of a Mamba block's conv, projections and scan from x_pre, z (B, E, L),
    keeping only x_pre, z and the scan's chunk states for backward. Weights as the block's
    parameters (conv_w (E, 1, K)); conv_fn: the causal conv to use instead of the Triton one (for
    packed sequences, where it must not cross a boundary)."""
    return _MambaInner.apply(
        (dt_rank, d_state), conv_fn, seq_idx, x_pre, z, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D,
        out_w, out_b,
    )  # fmt: skip
