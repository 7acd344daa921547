"""Causal depthwise conv1d + silu in Triton, forward and backward, for training the Mamba block.

    u[b, e, l] = silu(bias[e] + sum_k w[e, k] x[b, e, l - (K - 1) + k])      x, u: (B, E, L)

Why: the block's conv runs on (B, E, L) activations at up to 2^20 steps; torch's depthwise conv
backward reduces the weight gradient over the whole length per channel, which long sequences do
not suit. Here a program owns a (channels x steps) tile: the forward reads K shifted tiles of x;
the backward recomputes the pre-activation where it needs it (no conv output is kept), writes dx,
and each program's dw, dbias partial sums go to its own slot, summed by torch in a fixed order
(deterministic, like the scan's backward).
Rounding follows the torch path under autocast: the conv's output is rounded to x's dtype before
silu, and silu's output too (the maths in float32). Reference: F.silu(F.conv1d(...)) with the
padding cut (core.modules.Mamba._conv). CPU tensors run in Triton's interpreter when
TRITON_INTERPRET=1 was set before import.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _conv_pre(x_row, w_ptr, bias, e, offs_l, e_mask, length, shift, K: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """The conv's output at steps offs_l + shift, (BE, BL) float32, rounded through OUT_DTYPE."""
    acc = tl.zeros(x_row.shape, dtype=tl.float32) + bias
    for k in tl.static_range(K):
        pos = offs_l + shift - (K - 1) + k  # (1, BL)
        xk = tl.load(x_row + pos, mask=e_mask & (pos >= 0) & (pos < length), other=0.0).to(tl.float32)
        acc += tl.load(w_ptr + e * K + k, mask=e_mask, other=0.0).to(tl.float32) * xk
    return acc.to(OUT_DTYPE).to(tl.float32)


@triton.jit
def _conv_silu_fwd_kernel(
    x_ptr, w_ptr, b_ptr, u_ptr, dim, length,
    K: tl.constexpr, BE: tl.constexpr, BL: tl.constexpr, HAS_BIAS: tl.constexpr, OUT_DTYPE: tl.constexpr,
):  # fmt: skip
    pid_b, pid_e, pid_l = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    e = (pid_e * BE + tl.arange(0, BE))[:, None]  # (BE, 1)
    offs_l = (pid_l * BL + tl.arange(0, BL))[None, :]  # (1, BL)
    e_mask = e < dim
    rows = (pid_b * dim + e).to(tl.int64) * length
    bias = tl.load(b_ptr + e, mask=e_mask, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    pre = _conv_pre(x_ptr + rows, w_ptr, bias, e, offs_l, e_mask, length, 0, K, OUT_DTYPE)
    u = pre / (1.0 + tl.exp(-pre))
    tl.store(u_ptr + rows + offs_l, u.to(OUT_DTYPE), mask=e_mask & (offs_l < length))


@triton.jit
def _conv_silu_bwd_kernel(
    x_ptr, w_ptr, b_ptr, du_ptr, dx_ptr, dw_ptr, db_ptr, dim, length, n_lblocks,
    K: tl.constexpr, BE: tl.constexpr, BL: tl.constexpr, HAS_BIAS: tl.constexpr, OUT_DTYPE: tl.constexpr,
):  # fmt: skip
    """dx = sum_k w[k] dpre[l + K - 1 - k], dpre = du silu'(pre); dw, dbias partial sums of this
    (batch, step block) to slot (pid_b * n_lblocks + pid_l) of dw (slots, dim, K), db (slots, dim)."""
    pid_b, pid_e, pid_l = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    e1 = pid_e * BE + tl.arange(0, BE)  # (BE,)
    e = e1[:, None]
    offs_l = (pid_l * BL + tl.arange(0, BL))[None, :]
    e_mask = e < dim
    rows = (pid_b * dim + e).to(tl.int64) * length
    x_row = x_ptr + rows
    bias = tl.load(b_ptr + e, mask=e_mask, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    dx = tl.zeros([BE, BL], dtype=tl.float32)
    slot = pid_b * n_lblocks + pid_l
    for j in tl.static_range(K):
        # dpre at steps l + j: the output positions that read x[l] through tap K - 1 - j
        pos = offs_l + j
        in_range = e_mask & (pos < length)
        pre = _conv_pre(x_row, w_ptr, bias, e, offs_l, e_mask, length, j, K, OUT_DTYPE)
        sig = 1.0 / (1.0 + tl.exp(-pre))
        du = tl.load(du_ptr + rows + pos, mask=in_range, other=0.0).to(tl.float32)
        dpre = tl.where(in_range, du * sig * (1.0 + pre * (1.0 - sig)), 0.0)
        dx += tl.load(w_ptr + e * K + (K - 1 - j), mask=e_mask, other=0.0).to(tl.float32) * dpre
        if j == 0:  # this block's own outputs: their weight and bias gradients
            for k in tl.static_range(K):
                p = offs_l - (K - 1) + k
                xk = tl.load(x_row + p, mask=e_mask & (p >= 0) & (p < length), other=0.0).to(tl.float32)
                dw_k = tl.sum(dpre * xk, axis=1)  # (BE,)
                tl.store(dw_ptr + (slot * dim + e1) * K + k, dw_k, mask=e1 < dim)
            if HAS_BIAS:
                tl.store(db_ptr + slot * dim + e1, tl.sum(dpre, axis=1), mask=e1 < dim)
    tl.store(dx_ptr + rows + offs_l, dx.to(OUT_DTYPE), mask=e_mask & (offs_l < length))


_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64}


def _blocks(x: torch.Tensor, backward: bool = False) -> tuple[int, int]:
    # 16 channels x 256 steps, 128 in the backward (sm_90, 4 warps: 256 spilled there, 128 uses 186
    # registers); 8 x 32 in the interpreter, where small tiles cross the block edges in tests
    if not x.is_cuda:
        return 8, 32
    return (16, 128) if backward else (16, 256)


def causal_conv1d_silu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (B, E, L), weight (E, K) and bias (E,) in x's dtype -> silu(conv) (B, E, L)."""
    x, weight = x.contiguous(), weight.contiguous()
    batch, dim, length = x.shape
    BE, BL = _blocks(x)
    u = torch.empty_like(x)
    grid = (batch, triton.cdiv(dim, BE), triton.cdiv(length, BL))
    _conv_silu_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, u, dim, length,
        K=weight.shape[1], BE=BE, BL=BL, HAS_BIAS=bias is not None, OUT_DTYPE=_TL[x.dtype],
    )  # fmt: skip
    return u


def causal_conv1d_silu_bwd(du: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Gradients (dx (B, E, L) in x's dtype, dweight (E, K) and dbias (E,) in float32) of
    causal_conv1d_silu_fwd for du (B, E, L)."""
    x, weight = x.contiguous(), weight.contiguous()
    batch, dim, length = x.shape
    BE, BL = _blocks(x, backward=True)
    n_lblocks = triton.cdiv(length, BL)
    K = weight.shape[1]
    dx = torch.empty_like(x)
    dw = torch.empty(batch * n_lblocks, dim, K, dtype=torch.float32, device=x.device)
    db = torch.empty(batch * n_lblocks, dim, dtype=torch.float32, device=x.device)
    grid = (batch, triton.cdiv(dim, BE), n_lblocks)
    _conv_silu_bwd_kernel[grid](
        x, weight, bias if bias is not None else weight, du.contiguous(), dx, dw, db, dim, length, n_lblocks,
        K=K, BE=BE, BL=BL, HAS_BIAS=bias is not None, OUT_DTYPE=_TL[x.dtype],
    )  # fmt: skip
    return dx, dw.sum(0), (db.sum(0) if bias is not None else None)
