"""One decoding step of the selective scan as a single Triton kernel.

At one token per call the step is pure memory traffic: read state (B, D, N) once, write it
once, plus a few (B, D) vectors. Doing it as torch ops costs ~10 launches and as many passes
over the state; here it is one launch, one read and one write of the state.
Reference: `selective_state_update_ref` in reference.py. CPU tensors run in Triton's
interpreter when TRITON_INTERPRET=1 was set before this module was imported.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .checks import compute_dtype
from .triton_scan_fwd import _sigmoid, _softplus


@triton.jit
def _selective_state_update_kernel(
    state_ptr,  # (batch, dim, N), updated in place
    x_ptr,
    dt_ptr,  # (batch, dim), or (batch, rank) with HAS_DTW
    z_ptr,  # (batch, dim)
    A_ptr,  # (dim, N)
    B_ptr,
    C_ptr,  # (batch, groups, N)
    D_ptr,
    bias_ptr,  # (dim,)
    dtw_ptr,  # (dim, rank) contiguous: dt_proj's weight, with HAS_DTW
    y_ptr,  # (batch, dim), contiguous
    dim,
    d_state,
    group_dim,
    x_stride,
    dt_stride,
    z_stride,  # batch strides of x, dt, z (their channel stride is 1)
    b_stride,
    b_group_stride,
    c_stride,
    c_group_stride,  # batch and group strides of B and C (their state stride is 1)
    rank,
    BD: tl.constexpr,
    RP: tl.constexpr,
    HAS_DTW: tl.constexpr,
    NP: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    IS_F64: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    pid_b, pid_d = tl.program_id(0), tl.program_id(1)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    d_mask = offs_d < dim
    mask = d_mask[:, None] & (offs_n < d_state)[None, :]
    batch = pid_b.to(tl.int64)
    row = batch * dim + offs_d  # (BD,)
    state_offs = row[:, None] * d_state + offs_n[None, :]  # (BD, NP)
    h = tl.load(state_ptr + state_offs, mask=mask, other=0.0).to(ACC)
    x = tl.load(x_ptr + batch * x_stride + offs_d, mask=d_mask, other=0.0).to(ACC)
    if HAS_DTW:
        # dt = W @ dt_low for these channels, rounded to dt's dtype as F.linear would return it
        offs_r = tl.arange(0, RP)
        r_mask = offs_r < rank
        low = tl.load(dt_ptr + batch * dt_stride + offs_r, mask=r_mask, other=0.0).to(ACC)  # (RP,)
        W = tl.load(
            dtw_ptr + offs_d[:, None] * rank + offs_r[None, :], mask=d_mask[:, None] & r_mask[None, :], other=0.0
        )
        dt = tl.sum(W.to(ACC) * low[None, :], axis=1).to(dt_ptr.dtype.element_ty).to(ACC)  # (BD,)
    else:
        dt = tl.load(dt_ptr + batch * dt_stride + offs_d, mask=d_mask, other=0.0).to(ACC)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(ACC)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * d_state + offs_n[None, :], mask=mask, other=0.0).to(ACC)
    # channel d reads group d // group_dim
    group = (offs_d // group_dim)[:, None]
    Bm = tl.load(B_ptr + batch * b_stride + group * b_group_stride + offs_n[None, :], mask=mask, other=0.0).to(ACC)
    Cm = tl.load(C_ptr + batch * c_stride + group * c_group_stride + offs_n[None, :], mask=mask, other=0.0).to(ACC)
    h = h * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bm
    tl.store(state_ptr + state_offs, h.to(state_ptr.dtype.element_ty), mask=mask)
    y = tl.sum(h * Cm, axis=1)  # (BD,)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=d_mask, other=0.0).to(ACC) * x
    if HAS_Z:
        z = tl.load(z_ptr + batch * z_stride + offs_d, mask=d_mask, other=0.0).to(ACC)
        y *= z * _sigmoid(z)
    tl.store(y_ptr + row, y.to(y_ptr.dtype.element_ty), mask=d_mask)


def selective_state_update_triton(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_proj_weight=None
):
    """One recurrent step; `state` (B, D, N) is updated in place.

    x, dt, z: (B, D)   A: (D, N)   B, C: (B, N) | (B, G, N)   D, dt_bias: (D,)
    dt_proj_weight (D, R): dt is (B, R), projected in the kernel (see selective_state_update_ref)
    Returns y (B, D) in x's dtype. Arguments are validated by `core.ops.checks` before this call.
    """
    if not state.is_cuda and type(_selective_state_update_kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            "selective_state_update_triton got CPU tensors, but the Triton kernel was compiled for the GPU; "
            "set TRITON_INTERPRET=1 before core.ops.triton_step is imported, or use selective_state_update_ref"
        )
    if not state.is_contiguous():
        raise ValueError(
            f"selective_state_update: `state` must be contiguous (it is updated in place); "
            f"got strides {state.stride()} for shape {tuple(state.shape)}"
        )
    batch, dim, d_state = state.shape
    if B.dim() == 2:
        B = B.unsqueeze(1)  # (batch, 1, N)
    if C.dim() == 2:
        C = C.unsqueeze(1)
    if B.shape[1] != C.shape[1]:  # groups differ: give both the finer grouping
        groups = math.lcm(B.shape[1], C.shape[1])
        B = B.repeat_interleave(groups // B.shape[1], dim=1)
        C = C.repeat_interleave(groups // C.shape[1], dim=1)
    groups = B.shape[1]
    # row-strided views (x, z from one in_proj output; B, C from one x_proj output) are read in
    # place: a copy would be one more kernel per layer per decoded token
    x, dt, B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, dt, B, C))
    z = z if z is None or z.stride(-1) == 1 else z.contiguous()
    A = A.contiguous()
    D, dt_bias = (None if t is None else t.contiguous() for t in (D, dt_bias))
    dtw = None if dt_proj_weight is None else dt_proj_weight.to(dt.dtype).contiguous()
    acc = compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    NP = max(2, triton.next_power_of_2(d_state))
    # ~4K state elements per program: enough loads in flight without spilling registers
    BD = max(1, min(triton.next_power_of_2(dim), 4096 // NP))
    grid = (batch, triton.cdiv(dim, BD))
    _selective_state_update_kernel[grid](
        state,
        x,
        dt,
        z if z is not None else x,
        A,
        B,
        C,
        D if D is not None else A,
        dt_bias if dt_bias is not None else A,
        dtw if dtw is not None else A,
        y,
        dim,
        d_state,
        dim // groups,
        x.stride(0),
        dt.stride(0),
        z.stride(0) if z is not None else 0,
        B.stride(0),
        B.stride(1),
        C.stride(0),
        C.stride(1),
        dtw.shape[1] if dtw is not None else 0,
        BD=BD,
        RP=max(2, triton.next_power_of_2(dtw.shape[1])) if dtw is not None else 2,
        HAS_DTW=dtw is not None,
        NP=NP,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus),
        IS_F64=acc == torch.float64,
        num_warps=4,
    )
    return y
