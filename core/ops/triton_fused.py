"""Small fused Triton kernels for inference: residual add + RMSNorm, and one causal-conv step.

Why: a decoding step of a 24-layer model at batch 1 is launch-bound. In torch ops, add + RMSNorm
is ~10 kernels and the conv step ~8 (roll, copy, insert, multiply, sum, cast, bias, silu); each
is one kernel here. A CUDA-graph replay then launches ~7 kernels per layer instead of ~28.
Inference only (no autograd): training keeps the torch ops, whose backward torch derives.
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


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,  # (rows, D) hidden
    res_ptr,  # (rows, D) residual in, if HAS_RES
    w_ptr,  # (D,)
    out_ptr,  # (rows, D) normed, weight's dtype
    res_out_ptr,  # (rows, D) residual out
    n_cols,
    x_row_stride,
    res_row_stride,
    eps,
    HAS_RES: tl.constexpr,
    RES_DTYPE: tl.constexpr,  # the dtype of hidden + residual before the optional float32 copy
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    s = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + row * res_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    s = s.to(RES_DTYPE)  # the rounding torch's `hidden + residual` does
    tl.store(res_out_ptr + row * n_cols + cols, s.to(res_out_ptr.dtype.element_ty), mask=mask)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    v = s.to(w.dtype).to(tl.float32)  # the norm reads the residual cast to the weight's dtype
    inv_rms = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / n_cols + eps)
    tl.store(out_ptr + row * n_cols + cols, (v * inv_rms * w.to(tl.float32)).to(w.dtype), mask=mask)


def add_rms_norm_triton(hidden, residual, weight, eps: float, residual_in_fp32: bool):
    """hidden, residual (..., D) -> (normed (..., D) in weight's dtype, new residual); see add_rms_norm_ref."""
    shape, n_cols = hidden.shape, hidden.shape[-1]
    x = hidden.reshape(-1, n_cols)
    if x.stride(-1) != 1:
        x = x.contiguous()
    res = None if residual is None else residual.reshape(-1, n_cols)
    if res is not None and res.stride(-1) != 1:
        res = res.contiguous()
    res_dtype = hidden.dtype if residual is None else torch.promote_types(hidden.dtype, residual.dtype)
    normed = torch.empty(x.shape, dtype=weight.dtype, device=x.device)
    res_out = torch.empty(x.shape, dtype=torch.float32 if residual_in_fp32 else res_dtype, device=x.device)
    block = triton.next_power_of_2(n_cols)
    _add_rms_norm_kernel[(x.shape[0],)](
        x,
        x if res is None else res,
        weight,
        normed,
        res_out,
        n_cols,
        x.stride(0),
        0 if res is None else res.stride(0),
        eps,
        HAS_RES=res is not None,
        RES_DTYPE=_TL_DTYPE[res_dtype],
        BLOCK=block,
        num_warps=min(16, max(1, block // 256)),
    )
    return normed.reshape(shape), res_out.reshape(shape)


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
