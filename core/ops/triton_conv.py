"""Causal depthwise conv1d + silu in Triton, forward and backward, for training the Mamba block.

    u[b, e, l] = silu(bias[e] + sum_k w[e, k] x[b, e, l - (K - 1) + k])      x, u: (B, E, L)

Why: the block's conv runs on (B, E, L) activations at up to 2^20 steps; torch's depthwise conv
backward reduces the weight gradient over the whole length per channel, which long sequences do
not suit. Here a program owns a (channels x steps) tile: the forward reads K shifted tiles of x;
the backward recomputes the pre-activation (no conv output is kept) and writes its gradient dpre
(into du's buffer when the caller gives it up), each program's dw, dbias partial sums to its own
slot, summed by torch in a fixed order (deterministic, like the scan's backward); a second launch
reads K shifted tiles of dpre for dx. (One launch that recomputed the K shifted pre-activations
each dx needs ran 0.63 ms at 16 x 1536 x 2048 on the H200, ~6x its forward: 4x the sigmoids, and
loads at odd offsets that cannot be vectorised.)
Rounding follows the torch path under autocast: the conv's output is rounded to x's dtype before
silu, silu's output too, and so is dpre (silu's backward output); the maths in float32.
Reference: F.silu(F.conv1d(...)) with the
padding cut (core.modules.Mamba._conv). CPU tensors run in Triton's interpreter when
TRITON_INTERPRET=1 was set before import.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_scan_fwd import _sigmoid


@triton.jit
def _window(row, offs_l, e_mask, length, first, N: tl.constexpr):
    """A row-major (B, E, L) tensor at steps offs_l + first + s for s < N: a tuple of N (BE, BL)
    float32 tiles, zero outside the sequence, each loaded once (tap k of the conv's output at
    offs_l + j reads x's tile j + k of the window that starts at first = -(K - 1))."""
    tiles = ()
    for s in tl.static_range(N):
        pos = offs_l + first + s  # (1, BL)
        tiles = tiles + (tl.load(row + pos, mask=e_mask & (pos >= 0) & (pos < length), other=0.0).to(tl.float32),)
    return tiles


@triton.jit
def _taps(w_ptr, e, e_mask, K: tl.constexpr):
    """The K weights of channels e: a tuple of (BE, 1) float32."""
    ws = ()
    for k in tl.static_range(K):
        ws = ws + (tl.load(w_ptr + e * K + k, mask=e_mask, other=0.0).to(tl.float32),)
    return ws


@triton.jit
def _conv_pre(x_ptr, w_ptr, b_ptr, rows, e, offs_l, e_mask, length, K: tl.constexpr, HAS_BIAS: tl.constexpr,
              OUT_DTYPE: tl.constexpr):  # fmt: skip
    """The conv's output at steps offs_l (BE, BL) float32, rounded through OUT_DTYPE (as torch's conv
    output is under autocast), and x's window (its K tiles) for the weight gradient."""
    # each tap's product is summed as its tile arrives: loading the K tiles first (one _window call)
    # held them all live, 167 registers against 79 at 16 x 256 (sm_90), and the forward ran 20% slower
    acc = tl.load(b_ptr + e, mask=e_mask, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    xs = ()
    for k in tl.static_range(K):
        xk = _window(x_ptr + rows, offs_l, e_mask, length, k - (K - 1), 1)[0]
        acc += tl.load(w_ptr + e * K + k, mask=e_mask, other=0.0).to(tl.float32) * xk
        xs = xs + (xk,)
    return acc.to(OUT_DTYPE).to(tl.float32), xs


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
    pre, _ = _conv_pre(x_ptr, w_ptr, b_ptr, rows, e, offs_l, e_mask, length, K, HAS_BIAS, OUT_DTYPE)
    u = pre / (1.0 + tl.exp(-pre))
    tl.store(u_ptr + rows + offs_l, u.to(OUT_DTYPE), mask=e_mask & (offs_l < length))


@triton.jit
def _conv_silu_dpre_kernel(
    x_ptr, w_ptr, b_ptr, du_ptr, du2_ptr, dpre_ptr, dw_ptr, db_ptr, dim, length, n_lblocks,
    K: tl.constexpr, BE: tl.constexpr, BL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DU2: tl.constexpr,
    OUT_DTYPE: tl.constexpr,
):  # fmt: skip
    """dpre = du silu'(pre), rounded to OUT_DTYPE as torch's silu backward rounds it under autocast,
    to dpre_ptr (which may be du_ptr: a program reads and writes its own steps only); du = du + du2,
    rounded to OUT_DTYPE as torch's sum of the two, with HAS_DU2. The weight and bias gradients of
    this (batch, step block) to slot (pid_b * n_lblocks + pid_l) of dw (slots, dim, K), db (slots, dim)."""
    pid_b, pid_e, pid_l = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    e1 = pid_e * BE + tl.arange(0, BE)  # (BE,)
    e = e1[:, None]
    offs_l = (pid_l * BL + tl.arange(0, BL))[None, :]
    e_mask = e < dim
    rows = (pid_b * dim + e).to(tl.int64) * length
    in_range = e_mask & (offs_l < length)
    pre, xs = _conv_pre(x_ptr, w_ptr, b_ptr, rows, e, offs_l, e_mask, length, K, HAS_BIAS, OUT_DTYPE)
    du = tl.load(du_ptr + rows + offs_l, mask=in_range, other=0.0).to(tl.float32)
    if HAS_DU2:
        du = (du + tl.load(du2_ptr + rows + offs_l, mask=in_range, other=0.0).to(tl.float32)).to(OUT_DTYPE)
        du = du.to(tl.float32)
    sig = _sigmoid(pre)
    dpre = (du * sig * (1.0 + pre * (1.0 - sig))).to(OUT_DTYPE)
    tl.store(dpre_ptr + rows + offs_l, dpre, mask=in_range)
    dpre = dpre.to(tl.float32)  # 0 past the ends: du loads as 0 there
    slot = pid_b * n_lblocks + pid_l
    for k in tl.static_range(K):
        tl.store(dw_ptr + (slot * dim + e1) * K + k, tl.sum(dpre * xs[k], axis=1), mask=e1 < dim)
    if HAS_BIAS:
        tl.store(db_ptr + slot * dim + e1, tl.sum(dpre, axis=1), mask=e1 < dim)


@triton.jit
def _conv_dx_kernel(
    dpre_ptr, w_ptr, dx_ptr, dim, length, K: tl.constexpr, BE: tl.constexpr, BL: tl.constexpr,
    OUT_DTYPE: tl.constexpr,
):  # fmt: skip
    """dx[l] = sum_j w[K - 1 - j] dpre[l + j]: the outputs at l .. l + K - 1 read x[l] through taps
    K - 1 .. 0. A second launch because dpre at l + j may belong to the next program's block."""
    pid_b, pid_e, pid_l = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    e = (pid_e * BE + tl.arange(0, BE))[:, None]
    offs_l = (pid_l * BL + tl.arange(0, BL))[None, :]
    e_mask = e < dim
    rows = (pid_b * dim + e).to(tl.int64) * length
    ds = _window(dpre_ptr + rows, offs_l, e_mask, length, 0, K)
    ws = _taps(w_ptr, e, e_mask, K)
    dx = ws[K - 1] * ds[0]
    for j in tl.static_range(1, K):
        dx += ws[K - 1 - j] * ds[j]
    tl.store(dx_ptr + rows + offs_l, dx.to(OUT_DTYPE), mask=e_mask & (offs_l < length))


_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64}


def _blocks(x: torch.Tensor, backward: bool = False) -> tuple[int, int]:
    # 16 channels x 256 steps in the forward, 128 in the backward's kernels, which hold a window's K
    # tiles at once (sm_90, 4 warps: ~125 and ~55 registers; 250 and 128 at 256 steps); 8 x 32 in the
    # interpreter, where small tiles cross the block edges in tests
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


def causal_conv1d_silu_bwd(
    du: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    du_scratch: bool = False,
    du2: torch.Tensor | None = None,
):
    """Gradients (dx (B, E, L) in x's dtype, dweight (E, K) and dbias (E,) in float32) of
    causal_conv1d_silu_fwd for du (B, E, L), plus du2 (B, E, L) if given (summed in the kernel: one
    pass less over two (B, E, L) tensors). du_scratch: du is the caller's to lose (it then holds the
    conv's output gradient), which saves a (B, E, L) buffer."""
    if du2 is not None and not (du.dtype == du2.dtype == x.dtype):
        du, du2, du_scratch = du + du2, None, True  # torch's promotion; the sum is ours to lose
    x, weight = x.contiguous(), weight.contiguous()
    batch, dim, length = x.shape
    BE, BL = _blocks(x, backward=True)
    n_lblocks = triton.cdiv(length, BL)
    K = weight.shape[1]
    in_place = du_scratch and du.dtype == x.dtype and du.is_contiguous()
    du = du.contiguous()
    dpre = du if in_place else torch.empty_like(x)
    dw = torch.empty(batch * n_lblocks, dim, K, dtype=torch.float32, device=x.device)
    db = torch.empty(batch * n_lblocks, dim, dtype=torch.float32, device=x.device)
    grid = (batch, triton.cdiv(dim, BE), n_lblocks)
    _conv_silu_dpre_kernel[grid](
        x, weight, bias if bias is not None else weight, du, du if du2 is None else du2.contiguous(), dpre, dw, db,
        dim, length, n_lblocks, K=K, BE=BE, BL=BL, HAS_BIAS=bias is not None, HAS_DU2=du2 is not None,
        OUT_DTYPE=_TL[x.dtype],
    )  # fmt: skip
    dx = torch.empty_like(x)
    _conv_dx_kernel[grid](dpre, weight, dx, dim, length, K=K, BE=BE, BL=BL, OUT_DTYPE=_TL[x.dtype])
    return dx, dw.sum(0), (db.sum(0) if bias is not None else None)
