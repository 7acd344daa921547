"""Small fused Triton kernels: residual add + RMSNorm (forward and backward), and one causal-conv step.

Why: a decoding step of a 24-layer model at batch 1 is launch-bound. In torch ops, add + RMSNorm
is ~10 kernels and the conv step ~8 (roll, copy, insert, multiply, sum, cast, bias, silu); each
is one kernel here. A CUDA-graph replay then launches ~7 kernels per layer instead of ~28.
Training is memory-bound instead: torch's add + RMSNorm and its hand-written backward
(`core.modules.norm._AddRMSNorm`) are ~10 elementwise kernels each way over (tokens, D) tensors;
`add_rms_norm_fwd_triton` / `add_rms_norm_bwd_triton` are one kernel each way, which that
autograd function runs on CUDA tensors.
References: `add_rms_norm_ref` and `causal_conv1d_step_ref` in reference.py, same rounding steps.
CPU tensors run in Triton's interpreter when TRITON_INTERPRET=1 was set before import.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_TL_DTYPE = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype torch's ops compute in for `dtype` here: float32, float64 kept (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def _tile(n_rows: int, n_cols: int, elements: int = 4096, per_thread: int = 16) -> tuple[int, int, int]:
    """(BLOCK_ROWS, BLOCK_D, num_warps): ~`elements` a tile, so a program at d_model 256 takes
    16 rows (2^20 tokens: 2^16 programs, not 2^20) and one at 8192 a single row; never more rows
    than there are (a decoding step has one). ~`per_thread` elements a thread: on the H200 at
    2^20 x 256 the forward is fastest at 4096 / 16 (0.94 ms), the backward, which holds more
    tensors a tile, at 2048 / 32 (1.2 ms; 1.65 ms at 4096 / 16)."""
    block_d = triton.next_power_of_2(n_cols)
    block_rows = min(max(1, elements // block_d), triton.next_power_of_2(max(n_rows, 1)))
    return block_rows, block_d, min(16, max(1, block_rows * block_d // (32 * per_thread)))


def _rows(t: torch.Tensor | None, n_cols: int) -> torch.Tensor | None:
    """(..., D) -> (rows, D) with unit column stride (the kernels take a row stride only)."""
    if t is None:
        return None
    t = t.reshape(-1, n_cols)
    return t if t.stride(-1) == 1 else t.contiguous()


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,  # (rows, D) hidden
    res_ptr,  # (rows, D) residual in, if HAS_RES
    w_ptr,  # (D,)
    out_ptr,  # (rows, D) normed, weight's dtype
    res_out_ptr,  # (rows, D) residual out
    rstd_ptr,  # (rows,) 1 / rms in STAT_DTYPE, if STORE_RSTD (training: the backward's statistic)
    n_rows,
    n_cols,
    x_row_stride,
    res_row_stride,
    eps,
    HAS_RES: tl.constexpr,
    STORE_RSTD: tl.constexpr,
    RES_DTYPE: tl.constexpr,  # the dtype of hidden + residual before the optional float32 copy
    SUM_DTYPE: tl.constexpr,  # what torch adds hidden + residual in: float32 (float64 for float64)
    STAT_DTYPE: tl.constexpr,  # what torch normalises in: the weight's dtype promoted with float32
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)  # (BLOCK_ROWS,)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < n_cols
    mask = (rows < n_rows)[:, None] & col_mask[None, :]  # (BLOCK_ROWS, BLOCK_D)
    s = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(SUM_DTYPE)
    if HAS_RES:
        s += tl.load(res_ptr + rows[:, None] * res_row_stride + cols[None, :], mask=mask, other=0.0).to(SUM_DTYPE)
    s = s.to(RES_DTYPE)  # the rounding torch's `hidden + residual` does
    tl.store(res_out_ptr + rows[:, None] * n_cols + cols[None, :], s.to(res_out_ptr.dtype.element_ty), mask=mask)
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0)
    v = s.to(w.dtype).to(STAT_DTYPE)  # the norm reads the residual cast to the weight's dtype
    # masked columns are 0: they count in neither the sum nor (n_cols, not BLOCK_D) the mean
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=1) / n_cols + eps)  # (BLOCK_ROWS,)
    if STORE_RSTD:
        tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)
    normed = v * rstd[:, None] * w.to(STAT_DTYPE)[None, :]
    tl.store(out_ptr + rows[:, None] * n_cols + cols[None, :], normed.to(w.dtype), mask=mask)


def _add_rms_norm_fwd(hidden, residual, weight, eps: float, residual_in_fp32: bool, store_rstd: bool):
    """The launcher both entry points share: (normed, new residual, rstd or None), all (rows, ...)."""
    n_cols = hidden.shape[-1]
    x, res = _rows(hidden, n_cols), _rows(residual, n_cols)
    n_rows = x.shape[0]
    res_dtype = hidden.dtype if residual is None else torch.promote_types(hidden.dtype, residual.dtype)
    stat_dtype = _acc_dtype(weight.dtype)
    normed = torch.empty(x.shape, dtype=weight.dtype, device=x.device)
    res_out = torch.empty(x.shape, dtype=_acc_dtype(res_dtype) if residual_in_fp32 else res_dtype, device=x.device)
    rstd = torch.empty(n_rows, dtype=stat_dtype, device=x.device) if store_rstd else None
    block_rows, block_d, num_warps = _tile(n_rows, n_cols)
    if n_rows == 0:
        return normed, res_out, rstd
    _add_rms_norm_kernel[(triton.cdiv(n_rows, block_rows),)](
        x,
        x if res is None else res,
        weight,
        normed,
        res_out,
        normed if rstd is None else rstd,
        n_rows,
        n_cols,
        x.stride(0),
        0 if res is None else res.stride(0),
        eps,
        HAS_RES=res is not None,
        STORE_RSTD=store_rstd,
        RES_DTYPE=_TL_DTYPE[res_dtype],
        SUM_DTYPE=_TL_DTYPE[_acc_dtype(res_dtype)],
        STAT_DTYPE=_TL_DTYPE[stat_dtype],
        BLOCK_ROWS=block_rows,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return normed, res_out, rstd


def add_rms_norm_triton(hidden, residual, weight, eps: float, residual_in_fp32: bool):
    """hidden, residual (..., D) -> (normed (..., D) in weight's dtype, new residual); see add_rms_norm_ref."""
    normed, res_out, _ = _add_rms_norm_fwd(hidden, residual, weight, eps, residual_in_fp32, store_rstd=False)
    return normed.reshape(hidden.shape), res_out.reshape(hidden.shape)


def add_rms_norm_fwd_triton(hidden, residual, weight, eps: float, residual_in_fp32: bool):
    """Training forward: `add_rms_norm_triton`'s outputs and rstd (...,) in float32 (float64 for a
    float64 weight), the one statistic `add_rms_norm_bwd_triton` needs besides the new residual."""
    normed, res_out, rstd = _add_rms_norm_fwd(hidden, residual, weight, eps, residual_in_fp32, store_rstd=True)
    return normed.reshape(hidden.shape), res_out.reshape(hidden.shape), rstd.reshape(hidden.shape[:-1])


@triton.jit
def _add_rms_norm_bwd_kernel(
    x_ptr,  # (rows, D) the forward's new residual: read in the weight's dtype it is the norm's input
    rstd_ptr,  # (rows,) STAT_DTYPE
    w_ptr,  # (D,)
    dy_ptr,  # (rows, D) d normed, if HAS_DY
    dres_ptr,  # (rows, D) d new residual, if HAS_DRES
    dx_ptr,  # (rows, D) d hidden, hidden's dtype
    dres_in_ptr,  # (rows, D) d residual in, residual's dtype, if STORE_DRES_IN
    dw_ptr,  # (programs, D) STAT_DTYPE: this program's sum of dy * xhat over its rows
    n_rows,
    n_cols,
    rows_per_program,  # a multiple of BLOCK_ROWS
    x_row_stride,
    dy_row_stride,
    dres_row_stride,
    HAS_DY: tl.constexpr,
    HAS_DRES: tl.constexpr,
    STORE_DRES_IN: tl.constexpr,
    STAT_DTYPE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0)
    w_f = w.to(STAT_DTYPE)
    dw = tl.zeros((BLOCK_D,), dtype=STAT_DTYPE)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    # a program walks its rows in order and keeps one dw row: a fixed summation order (the same
    # bits every run, no atomics), and (programs, D) partials instead of (rows / BLOCK_ROWS, D)
    for start in range(first, last, BLOCK_ROWS):
        rows = start + tl.arange(0, BLOCK_ROWS)  # (BLOCK_ROWS,)
        row_mask = rows < last
        mask = row_mask[:, None] & col_mask[None, :]  # (BLOCK_ROWS, BLOCK_D)
        offs = rows[:, None] * n_cols + cols[None, :]
        if HAS_DRES:
            d_total = tl.load(dres_ptr + rows[:, None] * dres_row_stride + cols[None, :], mask=mask, other=0.0)
            d_total = d_total.to(STAT_DTYPE)
        else:
            d_total = tl.zeros((BLOCK_ROWS, BLOCK_D), dtype=STAT_DTYPE)
        if HAS_DY:
            x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
            xhat = x.to(w.dtype).to(STAT_DTYPE) * rstd[:, None]
            dy = tl.load(dy_ptr + rows[:, None] * dy_row_stride + cols[None, :], mask=mask, other=0.0)
            dy = dy.to(STAT_DTYPE)
            g = dy * w_f[None, :]
            # d/dx of x * rstd(x): rstd * (g - xhat * mean(g * xhat)); masked columns add 0
            mean_gx = tl.sum(g * xhat, axis=1) / n_cols  # (BLOCK_ROWS,)
            d_total += rstd[:, None] * (g - xhat * mean_gx[:, None])
            dw += tl.sum(dy * xhat, axis=0)
        tl.store(dx_ptr + offs, d_total.to(dx_ptr.dtype.element_ty), mask=mask)
        if STORE_DRES_IN:
            tl.store(dres_in_ptr + offs, d_total.to(dres_in_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + pid * n_cols + cols, dw, mask=col_mask)


def _bwd_programs(n_rows: int, block_rows: int, device: torch.device) -> int:
    """How many programs split the rows: a few per SM on CUDA (enough in flight to hide memory
    latency, few dw partials); on CPU (the interpreter) a handful, so tests cover several programs
    of several tiles. The split depends on the rows and the device only: the same dw bits each run."""
    tiles = triton.cdiv(n_rows, block_rows)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return max(1, min(tiles, 8 * torch.cuda.get_device_properties(index).multi_processor_count))
    return max(1, min(tiles, 4))


def add_rms_norm_bwd_triton(d_normed, d_residual, new_residual, rstd, weight, hidden_dtype, residual_dtype):
    """The gradients of `add_rms_norm_fwd_triton`: (d_hidden, d_residual_in, d_weight).

    d_normed, d_residual, new_residual: (..., D), the first two may be None (no gradient);
    rstd (...,); residual_dtype None when the forward had no residual (d_residual_in is then None).
    d_residual_in is d_hidden itself when the dtypes agree (torch's path returns one tensor twice too).
    d_weight: None without d_normed.
    """
    shape, n_cols = new_residual.shape, new_residual.shape[-1]
    x = _rows(new_residual, n_cols)
    dy, dres = _rows(d_normed, n_cols), _rows(d_residual, n_cols)
    n_rows = x.shape[0]
    stat_dtype = rstd.dtype
    dx = torch.empty(x.shape, dtype=hidden_dtype, device=x.device)
    separate = residual_dtype is not None and residual_dtype != hidden_dtype
    dres_in = torch.empty(x.shape, dtype=residual_dtype, device=x.device) if separate else dx
    block_rows, block_d, num_warps = _tile(n_rows, n_cols, elements=2048, per_thread=32)
    programs = _bwd_programs(n_rows, block_rows, x.device)
    rows_per_program = triton.cdiv(triton.cdiv(n_rows, programs), block_rows) * block_rows
    programs = triton.cdiv(n_rows, rows_per_program) if n_rows else 1
    dw_part = torch.empty(programs, n_cols, dtype=stat_dtype, device=x.device)
    _add_rms_norm_bwd_kernel[(programs,)](
        x,
        rstd,
        weight,
        x if dy is None else dy,
        x if dres is None else dres,
        dx,
        dres_in,
        dw_part,
        n_rows,
        n_cols,
        rows_per_program,
        x.stride(0),
        0 if dy is None else dy.stride(0),
        0 if dres is None else dres.stride(0),
        HAS_DY=dy is not None,
        HAS_DRES=dres is not None,
        STORE_DRES_IN=separate,
        STAT_DTYPE=_TL_DTYPE[stat_dtype],
        BLOCK_ROWS=block_rows,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    d_weight = None if dy is None else dw_part.sum(0).to(weight.dtype)  # fixed order over the programs
    d_residual_in = None if residual_dtype is None else dres_in.reshape(shape)
    return dx.reshape(shape), d_residual_in, d_weight


@triton.jit
def _causal_conv1d_step_kernel(
    state_ptr,  # (batch, E, K), updated in place
    x_ptr,  # (batch, E), row stride x_row_stride
    w_ptr,  # (E, K)
    bias_ptr,  # (E,)
    out_ptr,  # (batch, E)
    n_channels,
    x_row_stride,
    K: tl.constexpr,
    KP: tl.constexpr,
    BE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    pid_b, pid_e = tl.program_id(0).to(tl.int64), tl.program_id(1)
    offs_e = pid_e * BE + tl.arange(0, BE)
    offs_k = tl.arange(0, KP)
    e_mask = offs_e < n_channels
    row = pid_b * n_channels + offs_e  # (BE,)
    state_offs = row[:, None] * K + offs_k[None, :]  # (BE, KP)
    # the shifted window: slot k takes old slot k + 1, the last slot the new input
    shifted = tl.load(state_ptr + state_offs + 1, mask=e_mask[:, None] & (offs_k < K - 1)[None, :], other=0.0)
    x = tl.load(x_ptr + pid_b * x_row_stride + offs_e, mask=e_mask, other=0.0)
    window = tl.where((offs_k == K - 1)[None, :], x.to(shifted.dtype)[:, None], shifted)
    # every program reads its slots before any thread writes them (slot k is written after slot k + 1 is read)
    tl.debug_barrier()
    tl.store(state_ptr + state_offs, window, mask=e_mask[:, None] & (offs_k < K)[None, :])
    w = tl.load(w_ptr + offs_e[:, None] * K + offs_k[None, :], mask=e_mask[:, None] & (offs_k < K)[None, :], other=0.0)
    acc = tl.sum(window.to(tl.float32) * w.to(tl.float32), axis=1)  # (BE,)
    out = acc.to(x.dtype).to(tl.float32)  # the rounding of the torch path's `.to(x.dtype)`
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32)
    out = out.to(x.dtype).to(tl.float32)
    tl.store(out_ptr + pid_b * n_channels + offs_e, (out / (1.0 + tl.exp(-out))).to(x.dtype), mask=e_mask)


def causal_conv1d_step_triton(conv_state, x, weight, bias=None):
    """conv_state (B, E, K) shifted in place; x (B, E); weight (E, K); bias (E,). Returns silu(conv) (B, E)."""
    if not conv_state.is_contiguous():
        raise ValueError(f"causal_conv1d_step: `conv_state` must be contiguous; got strides {conv_state.stride()}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    batch, channels, k = conv_state.shape
    weight = weight.reshape(channels, k).contiguous()
    out = torch.empty(batch, channels, dtype=x.dtype, device=x.device)
    BE = min(triton.next_power_of_2(channels), 256)
    _causal_conv1d_step_kernel[(batch, triton.cdiv(channels, BE))](
        conv_state,
        x,
        weight,
        weight if bias is None else bias,
        out,
        channels,
        x.stride(0),
        K=k,
        KP=triton.next_power_of_2(k),
        BE=BE,
        HAS_BIAS=bias is not None,
        num_warps=4,
    )
    return out
