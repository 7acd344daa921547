"""Selective scan in Triton: forward and backward kernels, chunked along the length.

Why this shape of kernel (issue 3): mamba_ssm runs one block per (batch, channel) and a
block-wide scan per state, so at 1 x 512 x 2^20 only 512 blocks exist and the GPU starves.
Here the length is cut into chunks of T steps; a chunk's recurrence is one `tl.associative_scan`
over a (N, T) tile (all states of one channel at once). A program owns a few channels and a run
of chunks (a segment); the forward carries each channel's state from chunk to chunk in registers
and writes the state after every chunk to `E` (batch, dim, n_chunks, N), which the backward
reuses. When batch x dim alone cannot fill the GPU, the length is also cut into segments that
different programs scan at once, after a cheap pass that finds each segment's starting state:

    forward   1. _segment_state_fwd_kernel   each segment's end state from a zero start, and decay
              2. _state_passing_kernel       states at segment starts (a scan over segments)
              3. _selective_scan_fwd_kernel  the scan proper from those states: y and E
    backward  1. _segment_state_bwd_kernel   each segment's gradient into its start, and decay
              2. _state_passing_kernel       (reversed) gradients at segment ends
              3. _selective_scan_bwd_kernel  per chunk (last first) and channel: recompute h from E,
                                             scan the adjoint backwards, emit every gradient

Memory is linear in the length: E, the per-chunk dA partials and the dB/dC partial slices are
~6 bytes per element at N = 16, never the 64 of (batch, dim, N, length) states. The backward is
deterministic: a program owns its channels and chunks, sums dB/dC over its channels in registers
and writes them to its own slice of a partial buffer, as it writes dA, dD and d(delta_bias) per
chunk; torch then sums the slices in a fixed order. No atomics anywhere.
All maths is float32 (float64 when an input is float64, for gradcheck), whatever the input dtype.

Packed sequences (`seq_idx`, issue 7): a (batch, length) keep factor, 0 at each sequence's first
step, multiplies that step's decay exp(delta A) wherever it is used, so no kernel needs to know
where sequences begin: the chunk scans drop h_{t-1}, a chunk or segment holding a reset passes on
no state (its cumulative decay is 0), and the backward's adjoint stops at the reset by the same
product rule. Without seq_idx the factor is compiled out (HAS_SEQ).

Speed (benchmarks/results/README.md): 0.5-0.8x mamba_ssm's CUDA kernel on an H200 at the
anchor shapes, not yet the 1x the issue asks for; the kernels are bound by instruction issue
(shuffles of the scans and state sums, ~100 instructions per state-step), not by memory.

On CPU tensors the kernels run in Triton's interpreter; set TRITON_INTERPRET=1 before this
module is imported (that is how CI tests it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
import triton
import triton.language as tl

from .checks import compute_dtype

# Launch shape, from a sweep on an H200 (benchmarks/gpu_scan.py --sweep; numbers in
# benchmarks/results/README.md): one warp per program and 32-step chunks ran fastest. One warp
# keeps every reduction over the states inside the warp (no shared-memory round trip and no
# barrier), and a (16, 32) tile leaves each thread 2 states x 8 steps, so the scan along the
# chunk is 8 sequential steps in registers plus 2 shuffle rounds. The backward holds ~12 such
# tiles (228 registers, no spills on sm_90); 64-step chunks spill it, 16-step chunks ran slower.
CHUNK = 32
NUM_WARPS = 1  # forward, segment and state-passing kernels
BWD_NUM_WARPS = 1
# dB/dC partial buffers (one slice per channel block) may hold at most this many floats each;
# past it, channel blocks grow (fewer slices) and segments supply the parallelism instead.
PARTIAL_BUDGET = 1 << 27
# One-warp programs resident per multiprocessor, by registers (ptxas, sm_90): the forward uses
# 125 registers (16 fit), the backward 228 (8 fit). A launch that fills FULL of these slots
# runs without segments; below that, segments are added until there are SEG_WAVES waves of
# programs. A segment's first cost is a whole extra pass over the data (the segment kernels),
# paid once whatever their number, so once paid, many segments keep the last wave short.
FWD_SLOTS_PER_SM = 16
BWD_SLOTS_PER_SM = 8
FULL = 0.7
SEG_WAVES = 4
# The segment kernels (no scan, only sums: far fewer live registers) walk their segment in
# chunks this many times longer, which amortises the per-chunk overhead.
SEG_COARSEN = 4
# Register caps (ptx .maxnreg) for the two chunk kernels, applied only when the grid is more
# than one wave of resident programs: a cap trades spills to local memory for more resident
# warps, which pays only if there are programs waiting. On the H200 (benchmarks/results/h200.json,
# sweep) capping the backward at 128 registers made the segmented shapes 10% faster
# (1 x 512 x 2^20: 98.9 -> 89.1 ms) and the one-wave 8 x 2048 x 4096 30% slower (11.3 -> 14.7 ms).
FWD_MAXNREG = None
BWD_MAXNREG = 128


@triton.jit
def _scan_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2) as maps h -> a * h + b: h -> a2 * (a1 * h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _delta(raw, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta after bias and softplus, 0 outside `mask` (exp(0 * A) = 1: padded steps are identities)."""
    if HAS_BIAS:
        raw += bias
    dt = raw
    if SOFTPLUS:
        # torch's softplus: linear above 20; exp alone below -15 where log(1 + e^x) rounds to 0
        dt = tl.where(raw > 20.0, raw, tl.where(raw < -15.0, tl.exp(raw), tl.log(1.0 + tl.exp(raw))))
    return tl.where(mask, dt, 0.0), raw


# Every loop below loads the data of its next iteration before computing the current one
# (`*_next` variables), so a chunk's few hundred bytes per channel are in flight during the
# previous chunk's arithmetic rather than waited for. (On the H200 this was worth only a few
# percent: the kernels are bound by instruction issue, see the module docstring.)


@triton.jit
def _segment_state_fwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    bias_ptr,
    keep_ptr,  # (batch, length): 0 where a packed sequence starts, else 1
    P_ptr,
    S_ptr,  # P, S: (batch, dim, n_seg, N)
    dim,
    length,
    d_state,
    n_chunks,
    chunks_per_seg,
    n_seg,
    b_group_dim,
    b_groups,
    DK: tl.constexpr,
    T: tl.constexpr,
    NP: tl.constexpr,
    B_CONST: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    IS_F64: tl.constexpr,
):
    """Per segment and channel, the state its steps leave from a zero start (S) and its decay (P).

    With packed sequences a reset zeroes the decay of its step, so only inputs after a segment's
    last reset reach S, and P is 0 for a segment that holds a reset (its start state is forgotten)."""
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    pid_b, pid_d, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_t = tl.arange(0, T)
    offs_n = tl.arange(0, NP)
    n_mask = offs_n < d_state
    d0 = pid_d * DK
    B_base = B_ptr + (pid_b * b_groups + d0 // b_group_dim).to(tl.int64) * d_state * length
    c_first = pid_s * chunks_per_seg
    c_end = tl.minimum(c_first + chunks_per_seg, n_chunks)
    keep_row = keep_ptr + pid_b.to(tl.int64) * length  # shared by every channel of the row
    for i in range(DK):
        d = d0 + i
        row = (pid_b * dim + d).to(tl.int64)
        A = tl.load(A_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)
        bias = tl.load(bias_ptr + d).to(ACC) if HAS_BIAS else 0.0
        if B_CONST:
            Bd = tl.load(B_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)[:, None]
        S = tl.zeros([NP], dtype=ACC)
        total = tl.zeros([NP], dtype=ACC)  # sum of delta over the segment (same in every lane)
        alive = tl.full([NP], 1.0, ACC)  # 0 once a reset is seen: the segment's start state is gone
        t_next = c_first * T + offs_t
        m_next = t_next < length
        u_next = tl.load(u_ptr + row * length + t_next, mask=m_next, other=0.0)
        raw_next = tl.load(delta_ptr + row * length + t_next, mask=m_next, other=0.0)
        if HAS_SEQ:  # padded steps keep (1): they must stay identities
            keep_next = tl.load(keep_row + t_next, mask=m_next, other=1.0)
        if not B_CONST:
            B_next = tl.load(
                B_base + offs_n[:, None] * length + t_next[None, :], mask=n_mask[:, None] & m_next[None, :], other=0.0
            )
        for c in range(c_first, c_end):
            t = c * T + offs_t
            t_mask = t < length
            u = u_next.to(ACC)
            dt, _ = _delta(raw_next.to(ACC), bias, t_mask, HAS_BIAS, SOFTPLUS)
            if HAS_SEQ:
                keep = keep_next.to(ACC)
            if not B_CONST:
                Bd = B_next.to(ACC)
            t_next = t + T
            m_next = (t_next < length) & (t_next < c_end * T)
            u_next = tl.load(u_ptr + row * length + t_next, mask=m_next, other=0.0)
            raw_next = tl.load(delta_ptr + row * length + t_next, mask=m_next, other=0.0)
            if HAS_SEQ:
                keep_next = tl.load(keep_row + t_next, mask=m_next, other=1.0)
            if not B_CONST:
                B_next = tl.load(
                    B_base + offs_n[:, None] * length + t_next[None, :],
                    mask=n_mask[:, None] & m_next[None, :],
                    other=0.0,
                )
            # h_end = sum_t exp(A * (delta after t)) * delta_t B_t u_t: a sum, not a scan
            after = tl.cumsum(dt, 0, reverse=True) - dt  # (T,)
            xu = dt * u  # (T,)
            chunk_total = tl.sum(dt, 0)
            chunk_decay = tl.exp(A * chunk_total)  # (NP,)
            if HAS_SEQ:
                # step t's input reaches the chunk's end only if no sequence starts after t; the
                # reset counts are small integers, exact in floating point
                resets = 1.0 - keep
                later = tl.cumsum(resets, 0, reverse=True) - resets
                xu = tl.where(later == 0.0, xu, 0.0)
                chunk_keep = tl.min(keep, 0)  # 0 if the chunk holds a reset
                chunk_decay *= chunk_keep
                alive *= chunk_keep
            S_c = tl.sum(tl.exp(A[:, None] * after[None, :]) * Bd * xu[None, :], axis=1)  # (NP,)
            S = chunk_decay * S + S_c
            total += chunk_total
        offs_seg = (row * n_seg + pid_s) * d_state + offs_n
        tl.store(S_ptr + offs_seg, S, mask=n_mask)
        tl.store(P_ptr + offs_seg, tl.exp(A * total) * alive, mask=n_mask)


@triton.jit
def _state_passing_kernel(
    P_ptr,
    S_ptr,
    init_ptr,
    out_ptr,
    final_ptr,  # P, S, out: (rows, n_seg, N); init, final: (rows, N)
    n_seg,
    d_state,
    SB: tl.constexpr,
    NP: tl.constexpr,
    HAS_INIT: tl.constexpr,
    REVERSE: tl.constexpr,
    IS_F64: tl.constexpr,
):
    """Chain the segments of one row: h_{s+1} = P_s h_s + S_s, blockwise as a scan over segments.

    Forward: out[s] = state entering segment s (out[0] = init), final = state after the last.
    REVERSE (the backward's gradients): out[s] = gradient entering segment s at its end
    (out[-1] = init = d last_state), final = gradient into the first segment's start.
    """
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, SB)
    offs_n = tl.arange(0, NP)
    n_mask = offs_n < d_state
    if HAS_INIT:
        carry = tl.load(init_ptr + row * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)
    else:
        carry = tl.zeros([NP], dtype=ACC)
    if REVERSE:
        tl.store(out_ptr + (row * n_seg + n_seg - 1) * d_state + offs_n, carry, mask=n_mask)
    else:
        tl.store(out_ptr + row * n_seg * d_state + offs_n, carry, mask=n_mask)
    n_blocks = tl.cdiv(n_seg, SB)
    for j in range(0, n_blocks):
        if REVERSE:
            blk = n_blocks - 1 - j
        else:
            blk = j
        s = blk * SB + offs_s
        mask = (s < n_seg)[:, None] & n_mask[None, :]
        offs = (row * n_seg + s[:, None]) * d_state + offs_n[None, :]  # (SB, NP)
        # padded segments are identities (P = 1, S = 0)
        P = tl.load(P_ptr + offs, mask=mask, other=1.0)
        S = tl.load(S_ptr + offs, mask=mask, other=0.0)
        a_cum, b_cum = tl.associative_scan((P, S), 0, _scan_combine, reverse=REVERSE)
        H = b_cum + a_cum * carry[None, :]
        if not REVERSE:
            # H[s] leaves segment s, so it enters s + 1: store one row down, no register shift
            tl.store(out_ptr + offs + d_state, H, mask=mask & (s < n_seg - 1)[:, None])
            carry = tl.sum(tl.where(offs_s[:, None] == SB - 1, H, 0.0), axis=0)
        else:
            tl.store(out_ptr + offs - d_state, H, mask=mask & (s > 0)[:, None])
            carry = tl.sum(tl.where(offs_s[:, None] == 0, H, 0.0), axis=0)
    tl.store(final_ptr + row * d_state + offs_n, carry, mask=n_mask)


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    keep_ptr,  # (batch, length): 0 where a packed sequence starts, else 1
    h0_ptr,  # (batch, dim, n_seg, N): state entering each segment
    y_ptr,  # (batch, dim, length)
    E_ptr,  # (batch, dim, n_chunks, N): state leaving each chunk, kept for the backward
    dim,
    length,
    d_state,
    n_chunks,
    chunks_per_seg,
    n_seg,
    b_group_dim,
    c_group_dim,
    b_groups,
    c_groups,
    DK: tl.constexpr,
    T: tl.constexpr,
    NP: tl.constexpr,
    B_CONST: tl.constexpr,
    C_CONST: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    IS_F64: tl.constexpr,
):
    """One program: batch pid_b, channels [pid_d * DK, +DK) one after the other, each through the
    chunks of segment pid_s in order with its state in registers. A packed sequence's first step
    has decay 0, which drops h_{t-1} inside the chunk's scan and in the carry alike."""
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    pid_b, pid_d, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_t = tl.arange(0, T)
    offs_n = tl.arange(0, NP)
    n_mask = offs_n < d_state
    d0 = pid_d * DK
    B_base = B_ptr + (pid_b * b_groups + d0 // b_group_dim).to(tl.int64) * d_state * length
    C_base = C_ptr + (pid_b * c_groups + d0 // c_group_dim).to(tl.int64) * d_state * length
    c_first = pid_s * chunks_per_seg
    c_end = tl.minimum(c_first + chunks_per_seg, n_chunks)
    keep_row = keep_ptr + pid_b.to(tl.int64) * length  # shared by every channel of the row
    for i in range(DK):
        d = d0 + i
        row = (pid_b * dim + d).to(tl.int64)
        A = tl.load(A_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)
        bias = tl.load(bias_ptr + d).to(ACC) if HAS_BIAS else 0.0
        Dd = tl.load(D_ptr + d).to(ACC) if HAS_D else 0.0
        if B_CONST:
            Bd = tl.load(B_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)[:, None]
        if C_CONST:
            Cd = tl.load(C_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)[:, None]
        if HAS_H0:
            h = tl.load(h0_ptr + (row * n_seg + pid_s) * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)
        else:
            h = tl.zeros([NP], dtype=ACC)
        t_next = c_first * T + offs_t
        m_next = t_next < length
        tile_next = n_mask[:, None] & m_next[None, :]
        u_next = tl.load(u_ptr + row * length + t_next, mask=m_next, other=0.0)
        raw_next = tl.load(delta_ptr + row * length + t_next, mask=m_next, other=0.0)
        if HAS_Z:
            z_next = tl.load(z_ptr + row * length + t_next, mask=m_next, other=0.0)
        if HAS_SEQ:  # padded steps keep (1): they must stay identities
            keep_next = tl.load(keep_row + t_next, mask=m_next, other=1.0)
        if not B_CONST:
            B_next = tl.load(B_base + offs_n[:, None] * length + t_next[None, :], mask=tile_next, other=0.0)
        if not C_CONST:
            C_next = tl.load(C_base + offs_n[:, None] * length + t_next[None, :], mask=tile_next, other=0.0)
        for c in range(c_first, c_end):
            t = c * T + offs_t
            t_mask = t < length
            u = u_next.to(ACC)
            dt, _ = _delta(raw_next.to(ACC), bias, t_mask, HAS_BIAS, SOFTPLUS)
            if HAS_Z:
                zz = z_next.to(ACC)
            if HAS_SEQ:
                keep = keep_next.to(ACC)
            if not B_CONST:
                Bd = B_next.to(ACC)
            if not C_CONST:
                Cd = C_next.to(ACC)
            t_next = t + T
            m_next = (t_next < length) & (t_next < c_end * T)
            tile_next = n_mask[:, None] & m_next[None, :]
            u_next = tl.load(u_ptr + row * length + t_next, mask=m_next, other=0.0)
            raw_next = tl.load(delta_ptr + row * length + t_next, mask=m_next, other=0.0)
            if HAS_Z:
                z_next = tl.load(z_ptr + row * length + t_next, mask=m_next, other=0.0)
            if HAS_SEQ:
                keep_next = tl.load(keep_row + t_next, mask=m_next, other=1.0)
            if not B_CONST:
                B_next = tl.load(B_base + offs_n[:, None] * length + t_next[None, :], mask=tile_next, other=0.0)
            if not C_CONST:
                C_next = tl.load(C_base + offs_n[:, None] * length + t_next[None, :], mask=tile_next, other=0.0)
            dA = tl.exp(dt[None, :] * A[:, None])  # (NP, T)
            if HAS_SEQ:
                dA *= keep[None, :]
            x = Bd * (dt * u)[None, :]  # (NP, T)
            a_cum, b_cum = tl.associative_scan((dA, x), 1, _scan_combine)
            hs = b_cum + a_cum * h[:, None]  # (NP, T): h_t for every state
            y = tl.sum(Cd * hs, axis=0)  # (T,)
            if HAS_D:
                y += Dd * u
            if HAS_Z:
                y *= zz / (1.0 + tl.exp(-zz))
            tl.store(y_ptr + row * length + t, y.to(y_ptr.dtype.element_ty), mask=t_mask)
            # padded steps are identities, so column T - 1 is the state after the chunk
            h = tl.sum(tl.where(offs_t[None, :] == T - 1, hs, 0.0), axis=1)
            tl.store(E_ptr + (row * n_chunks + c) * d_state + offs_n, h, mask=n_mask)


@triton.jit
def _segment_state_bwd_kernel(
    delta_ptr,
    A_ptr,
    C_ptr,
    z_ptr,
    bias_ptr,
    keep_ptr,  # (batch, length): 0 where a packed sequence starts, else 1
    dy_ptr,
    P_ptr,
    Q_ptr,  # P, Q: (batch, dim, n_seg, N)
    dim,
    length,
    d_state,
    n_chunks,
    chunks_per_seg,
    n_seg,
    c_group_dim,
    c_groups,
    DK: tl.constexpr,
    T: tl.constexpr,
    NP: tl.constexpr,
    C_CONST: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    IS_F64: tl.constexpr,
):
    """Per segment and channel, the gradient its outputs send into its start state (Q) when no
    gradient enters its end, and its decay (P). With packed sequences only the outputs before the
    segment's first reset see its start state, and P is 0 for a segment that holds a reset."""
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    pid_b, pid_d, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_t = tl.arange(0, T)
    offs_n = tl.arange(0, NP)
    n_mask = offs_n < d_state
    d0 = pid_d * DK
    C_base = C_ptr + (pid_b * c_groups + d0 // c_group_dim).to(tl.int64) * d_state * length
    c_first = pid_s * chunks_per_seg
    c_end = tl.minimum(c_first + chunks_per_seg, n_chunks)
    keep_row = keep_ptr + pid_b.to(tl.int64) * length  # shared by every channel of the row
    for i in range(DK):
        d = d0 + i
        row = (pid_b * dim + d).to(tl.int64)
        A = tl.load(A_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)
        bias = tl.load(bias_ptr + d).to(ACC) if HAS_BIAS else 0.0
        if C_CONST:
            Cd = tl.load(C_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)[:, None]
        Q = tl.zeros([NP], dtype=ACC)
        total = tl.zeros([NP], dtype=ACC)
        alive = tl.full([NP], 1.0, ACC)  # 0 once a reset is seen
        t_next = (c_end - 1) * T + offs_t  # gradients flow from the end
        m_next = t_next < length
        raw_next = tl.load(delta_ptr + row * length + t_next, mask=m_next, other=0.0)
        dy_next = tl.load(dy_ptr + row * length + t_next, mask=m_next, other=0.0)
        if HAS_SEQ:  # padded steps keep (1): they must stay identities
            keep_next = tl.load(keep_row + t_next, mask=m_next, other=1.0)
        if HAS_Z:
            z_next = tl.load(z_ptr + row * length + t_next, mask=m_next, other=0.0)
        if not C_CONST:
            C_next = tl.load(
                C_base + offs_n[:, None] * length + t_next[None, :], mask=n_mask[:, None] & m_next[None, :], other=0.0
            )
        for j in range(0, c_end - c_first):
            c = c_end - 1 - j
            t = c * T + offs_t
            t_mask = t < length
            dt, _ = _delta(raw_next.to(ACC), bias, t_mask, HAS_BIAS, SOFTPLUS)
            dy = dy_next.to(ACC)
            if HAS_SEQ:
                keep = keep_next.to(ACC)
            if HAS_Z:
                zz = z_next.to(ACC)
                dy *= zz / (1.0 + tl.exp(-zz))
            if not C_CONST:
                Cd = C_next.to(ACC)
            t_next = t - T
            m_next = t_next >= c_first * T
            raw_next = tl.load(delta_ptr + row * length + t_next, mask=m_next, other=0.0)
            dy_next = tl.load(dy_ptr + row * length + t_next, mask=m_next, other=0.0)
            if HAS_SEQ:
                keep_next = tl.load(keep_row + t_next, mask=m_next, other=1.0)
            if HAS_Z:
                z_next = tl.load(z_ptr + row * length + t_next, mask=m_next, other=0.0)
            if not C_CONST:
                C_next = tl.load(
                    C_base + offs_n[:, None] * length + t_next[None, :],
                    mask=n_mask[:, None] & m_next[None, :],
                    other=0.0,
                )
            # dL/dh_{start-1} = sum_t exp(A * (delta up to and including t)) * C_t dy_t
            upto = tl.cumsum(dt, 0)
            chunk_total = tl.sum(dt, 0)
            chunk_decay = tl.exp(A * chunk_total)  # (NP,)
            if HAS_SEQ:
                # the output at t sees the chunk's start state only if no sequence starts at or
                # before t (reset counts are small integers, exact in floating point)
                dy = tl.where(tl.cumsum(1.0 - keep, 0) == 0.0, dy, 0.0)
                chunk_keep = tl.min(keep, 0)  # 0 if the chunk holds a reset
                chunk_decay *= chunk_keep
                alive *= chunk_keep
            Q_c = tl.sum(tl.exp(A[:, None] * upto[None, :]) * Cd * dy[None, :], axis=1)  # (NP,)
            Q = chunk_decay * Q + Q_c
            total += chunk_total
        offs_seg = (row * n_seg + pid_s) * d_state + offs_n
        tl.store(Q_ptr + offs_seg, Q, mask=n_mask)
        tl.store(P_ptr + offs_seg, tl.exp(A * total) * alive, mask=n_mask)


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    keep_ptr,  # (batch, length): 0 where a packed sequence starts, else 1
    h0_ptr,  # (batch, dim, N): initial state
    E_ptr,  # (batch, dim, n_chunks, N): states after each chunk, from the forward
    dy_ptr,  # (batch, dim, length)
    R_ptr,  # (batch, dim, n_seg, N): in: gradient entering each segment's end; out: into its start
    du_ptr,
    ddelta_ptr,
    dz_ptr,  # (batch, dim, length)
    dB_ptr,
    dC_ptr,  # (batch, groups, dim / groups / DK, N, length), or (batch, dim, n_chunks, N) if constant
    dA_ptr,  # (batch, dim, n_chunks, N)
    dD_ptr,
    dbias_ptr,  # (batch, dim, n_chunks)
    dim,
    length,
    d_state,
    n_chunks,
    chunks_per_seg,
    n_seg,
    b_group_dim,
    c_group_dim,
    b_groups,
    c_groups,
    DK: tl.constexpr,
    T: tl.constexpr,
    NP: tl.constexpr,
    B_CONST: tl.constexpr,
    C_CONST: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    IS_F64: tl.constexpr,
):
    """Chunks of segment pid_s from last to first, and per chunk the DK channels; per channel:

        h_t = dA_t h_{t-1} + x_t              forward scan from E (recomputed, never stored)
        g_t = C_t dy_t + dA_{t+1} g_{t+1}     reverse scan; g = dL/dh_t
    then dC_t = dy_t h_t, dB_t = g_t delta_t u_t, du_t = delta_t <g_t, B_t> + D dy_t,
    ddelta_t = <g_t, B_t u_t + A dA_t h_{t-1}>, dA = sum_t delta_t g_t dA_t h_{t-1},
    with dA_t h_{t-1} = h_t - x_t (no shifted copy of h needed). Channels are the inner loop so
    that dB/dC of a chunk are summed over them in registers. Packed sequences: dA_t carries the
    step's keep factor (0 at a reset), so the adjoint stops at a sequence's first step and that
    step's h_{t-1} terms of dA and ddelta vanish, exactly as d(keep * exp(delta A) h)/d(...).
    """
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    pid_b, pid_d, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_t = tl.arange(0, T)
    offs_n = tl.arange(0, NP)
    n_mask = offs_n < d_state
    d0 = pid_d * DK
    b_group = d0 // b_group_dim
    c_group = d0 // c_group_dim
    B_base = B_ptr + (pid_b * b_groups + b_group).to(tl.int64) * d_state * length
    C_base = C_ptr + (pid_b * c_groups + c_group).to(tl.int64) * d_state * length
    # this program's slice of the dB / dC partial sums
    b_blocks = b_group_dim // DK
    c_blocks = c_group_dim // DK
    dB_base = (
        dB_ptr + ((pid_b * b_groups + b_group) * b_blocks + (d0 % b_group_dim) // DK).to(tl.int64) * d_state * length
    )
    dC_base = (
        dC_ptr + ((pid_b * c_groups + c_group) * c_blocks + (d0 % c_group_dim) // DK).to(tl.int64) * d_state * length
    )
    c_first = pid_s * chunks_per_seg
    c_end = tl.minimum(c_first + chunks_per_seg, n_chunks)
    keep_row = keep_ptr + pid_b.to(tl.int64) * length  # shared by every channel of the row
    for j in range(0, c_end - c_first):
        c = c_end - 1 - j
        t = c * T + offs_t
        t_mask = t < length
        tile_offs = offs_n[:, None] * length + t[None, :]
        tile_mask = n_mask[:, None] & t_mask[None, :]
        # dA_{t+1} belongs to the next chunk at the last column: 1 there, the carry R holds the rest
        next_mask = (t + 1 < length) & (offs_t < T - 1)
        if HAS_SEQ:  # one row for all channels; padded steps keep (1)
            keep = tl.load(keep_row + t, mask=t_mask, other=1.0).to(ACC)
            keep_n = tl.load(keep_row + t + 1, mask=next_mask, other=1.0).to(ACC)
        if not B_CONST:
            Bd = tl.load(B_base + tile_offs, mask=tile_mask, other=0.0).to(ACC)
            dB_acc = tl.zeros([NP, T], dtype=ACC)
        if not C_CONST:
            Cd = tl.load(C_base + tile_offs, mask=tile_mask, other=0.0).to(ACC)
            dC_acc = tl.zeros([NP, T], dtype=ACC)
        # the state entering this chunk: E of the previous chunk, or the initial state
        if c == 0:
            h0_base = h0_ptr
            h0_stride = d_state
        else:
            h0_base = E_ptr + (c - 1) * d_state
            h0_stride = n_chunks * d_state
        row = (pid_b * dim + d0).to(tl.int64)
        offs = row * length + t
        u_next = tl.load(u_ptr + offs, mask=t_mask, other=0.0)
        raw_next = tl.load(delta_ptr + offs, mask=t_mask, other=0.0)
        rawn_next = tl.load(delta_ptr + offs + 1, mask=next_mask, other=0.0)
        dy_next = tl.load(dy_ptr + offs, mask=t_mask, other=0.0)
        if HAS_Z:
            z_next = tl.load(z_ptr + offs, mask=t_mask, other=0.0)
        if HAS_H0:
            h0_mask = n_mask
        else:  # no initial state: zeros at the first chunk
            h0_mask = n_mask & (offs_n * 0 + c > 0)
        h0_next = tl.load(h0_base + row * h0_stride + offs_n, mask=h0_mask, other=0.0)
        R_next = tl.load(R_ptr + (row * n_seg + pid_s) * d_state + offs_n, mask=n_mask, other=0.0)
        for i in range(DK):
            d = d0 + i
            row = (pid_b * dim + d).to(tl.int64)
            offs = row * length + t
            u = u_next.to(ACC)
            raw_t = raw_next.to(ACC)
            rawn = rawn_next.to(ACC)
            dy = dy_next.to(ACC)
            if HAS_Z:
                zz = z_next.to(ACC)
            h0 = h0_next.to(ACC)
            R = R_next
            # the next channel's rows, in flight while this one computes
            # (masks built as vectors: the interpreter rejects a scalar & vector mask)
            more_t = t_mask & (offs_t * 0 + d + 1 < d0 + DK)
            more_n = offs_n * 0 + d + 1 < d0 + DK
            offs_n1 = offs + length
            u_next = tl.load(u_ptr + offs_n1, mask=more_t, other=0.0)
            raw_next = tl.load(delta_ptr + offs_n1, mask=more_t, other=0.0)
            rawn_next = tl.load(delta_ptr + offs_n1 + 1, mask=next_mask & more_t, other=0.0)
            dy_next = tl.load(dy_ptr + offs_n1, mask=more_t, other=0.0)
            if HAS_Z:
                z_next = tl.load(z_ptr + offs_n1, mask=more_t, other=0.0)
            h0_next = tl.load(h0_base + (row + 1) * h0_stride + offs_n, mask=h0_mask & more_n, other=0.0)
            R_next = tl.load(R_ptr + ((row + 1) * n_seg + pid_s) * d_state + offs_n, mask=n_mask & more_n, other=0.0)

            bias = tl.load(bias_ptr + d).to(ACC) if HAS_BIAS else 0.0
            dt, raw = _delta(raw_t, bias, t_mask, HAS_BIAS, SOFTPLUS)
            dt_next, _ = _delta(rawn, bias, next_mask, HAS_BIAS, SOFTPLUS)
            A = tl.load(A_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)
            if B_CONST:
                Bd = tl.load(B_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)[:, None]
            if C_CONST:
                Cd = tl.load(C_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)[:, None]
            dA = tl.exp(dt[None, :] * A[:, None])  # (NP, T)
            if HAS_SEQ:
                dA *= keep[None, :]
            x = Bd * (dt * u)[None, :]
            a_cum, b_cum = tl.associative_scan((dA, x), 1, _scan_combine)
            h = b_cum + a_cum * h0[:, None]  # (NP, T)
            y_pre = tl.sum(Cd * h, axis=0)  # (T,)
            if HAS_D:
                Dd = tl.load(D_ptr + d).to(ACC)
                y_pre += Dd * u
            if HAS_Z:
                sig = 1.0 / (1.0 + tl.exp(-zz))
                dz = dy * y_pre * sig * (1.0 + zz * (1.0 - sig))
                tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=t_mask)
                dy *= zz * sig
            # Each (NP, T) tile costs 16 registers a thread: use every tile up before the
            # reverse scan so the backward stays near 8 warps a multiprocessor (see CHUNK).
            h_prev = h - x  # dA_t * h_{t-1}
            offs_chunk = row * n_chunks + c
            if C_CONST:
                tl.store(dC_ptr + offs_chunk * d_state + offs_n, tl.sum(h * dy[None, :], axis=1), mask=n_mask)
            else:
                dC_acc += h * dy[None, :]
            dA_next = tl.exp(dt_next[None, :] * A[:, None])
            if HAS_SEQ:
                dA_next *= keep_n[None, :]
            ra, rb = tl.associative_scan((dA_next, Cd * dy[None, :]), 1, _scan_combine, reverse=True)
            g = rb + ra * R[:, None]  # (NP, T)
            # gradient into h_{c*T - 1}, dA_0 g_0: the carry for the previous chunk, stored from
            # step 0's column of the tile itself (extracting that column with a reduction over the
            # steps would cost a shuffle tree per state)
            offs_seg = (row * n_seg + pid_s) * d_state + offs_n
            step0 = n_mask[:, None] & (offs_t == 0)[None, :]
            tl.store(R_ptr + offs_seg[:, None] + offs_t[None, :] * 0, dA * g, mask=step0)
            if B_CONST:
                tl.store(dB_ptr + offs_chunk * d_state + offs_n, tl.sum(g * (dt * u)[None, :], axis=1), mask=n_mask)
            else:
                dB_acc += g * (dt * u)[None, :]
            du = dt * tl.sum(g * Bd, axis=0)
            if HAS_D:
                du += Dd * dy
                tl.store(dD_ptr + offs_chunk, tl.sum(dy * u, axis=0))
            tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=t_mask)
            gh = g * h_prev
            # padded steps carry g = R and h_prev = h: keep them out of the sums
            ddt = tl.where(t_mask, tl.sum(g * Bd * u[None, :] + A[:, None] * gh, axis=0), 0.0)
            tl.store(dA_ptr + offs_chunk * d_state + offs_n, tl.sum(gh * dt[None, :], axis=1), mask=n_mask)
            if SOFTPLUS:
                ddt *= 1.0 / (1.0 + tl.exp(-raw))
            tl.store(ddelta_ptr + offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=t_mask)
            if HAS_BIAS:
                tl.store(dbias_ptr + offs_chunk, tl.sum(ddt, 0))
        if not B_CONST:
            tl.store(dB_base + tile_offs, dB_acc, mask=tile_mask)
        if not C_CONST:
            tl.store(dC_base + tile_offs, dC_acc, mask=tile_mask)
        # the next chunk reads the R this one stored, maybe from other threads
        tl.debug_barrier()


# ----------------------------------------------------------------------------------------------
# Launchers


@dataclass(frozen=True)
class ScanPlan:
    """How a call is cut into programs: chunk length, channels per program, chunks per segment."""

    chunk: int
    fwd_block: int
    fwd_seg_chunks: int
    bwd_block: int
    bwd_seg_chunks: int


@cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _chunk_for(length: int) -> int:
    # depends on the length alone: the backward must cut E the way the forward did
    return min(CHUNK, max(16, triton.next_power_of_2(max(length, 1))))


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def plan_scan(batch: int, dim: int, length: int, d_state: int, part_dim: int, var_bc: bool, n_sm: int) -> ScanPlan:
    """Pick the cut. `part_dim`: channels sharing one B and one C group (a program stays inside
    it); `var_bc`: B or C depends on the input (so the backward needs dB/dC partial buffers)."""
    chunk = _chunk_for(length)
    n_chunks = max(1, triton.cdiv(length, chunk))
    nps = max(2, triton.next_power_of_2(d_state))
    rows = batch * dim
    divs = _divisors(part_dim)

    def seg_chunks(programs: int, slots: int) -> int:
        if programs >= FULL * slots:
            return n_chunks
        n_seg = min(n_chunks, triton.cdiv(SEG_WAVES * slots, programs))
        # a multiple of SEG_COARSEN chunks, so the segment kernels can step that many at once
        return triton.cdiv(triton.cdiv(n_chunks, n_seg), SEG_COARSEN) * SEG_COARSEN

    # forward: a few channels per program share the B/C tiles
    fwd_slots = FWD_SLOTS_PER_SM * n_sm
    fwd_block = next((k for k in divs if k >= 4 and rows // k >= FULL * fwd_slots), None)
    if fwd_block is None:
        fwd_block = next((k for k in divs if k >= 4), part_dim)
    # backward: more channels per program keep the dB/dC partial buffers small
    bwd_slots = BWD_SLOTS_PER_SM * n_sm
    fits = [k for k in divs if not var_bc or batch * (dim // k) * nps * length <= PARTIAL_BUDGET] or [part_dim]
    bwd_block = None
    for least in (16, 8, 4):
        bwd_block = bwd_block or next((k for k in fits if k >= least and rows // k >= FULL * bwd_slots), None)
    if bwd_block is None:  # segments will supply the programs
        bwd_block = next((k for k in fits if k >= 16), fits[-1])
    return ScanPlan(
        chunk,
        fwd_block,
        seg_chunks(rows // fwd_block, fwd_slots),
        bwd_block,
        seg_chunks(rows // bwd_block, bwd_slots),
    )


def _reg_cap(maxnreg: int | None, u: torch.Tensor, programs: int, slots_per_sm: int) -> dict:
    """`maxnreg` for a launch of `programs` one-warp programs: only on the GPU (the interpreter
    has no registers) and only when they exceed one wave of `slots_per_sm` per multiprocessor."""
    if not maxnreg or not u.is_cuda:
        return {}
    return {"maxnreg": maxnreg} if programs > slots_per_sm * _sm_count(u.device.index or 0) else {}


def _groups(M: torch.Tensor) -> int:
    """0 for a constant (dim, N) matrix, else the number of groups."""
    return 0 if M.dim() == 2 else (1 if M.dim() == 3 else M.shape[1])


def _make_plan(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> ScanPlan:
    batch, dim, length = u.shape
    gb, gc = _groups(B), _groups(C)
    part = math.lcm(max(gb, 1), max(gc, 1))
    n_sm = _sm_count(u.device.index if u.device.index is not None else torch.cuda.current_device()) if u.is_cuda else 4
    return plan_scan(batch, dim, length, A.shape[1], dim // part, gb > 0 or gc > 0, n_sm)


def _check_runnable(u: torch.Tensor) -> None:
    if not u.is_cuda and type(_selective_scan_fwd_kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            "selective_scan(backend='triton') got CPU tensors, but the Triton kernels were compiled for the GPU; "
            "set TRITON_INTERPRET=1 before core.ops.triton_scan is imported to run them in Triton's interpreter, "
            "or use backend='cpu'"
        )


def _bc_args(M: torch.Tensor, dim: int) -> tuple[int, int]:
    """(channels per group, groups) as the kernels index B or C; a constant matrix is one group."""
    g = max(_groups(M), 1)
    return dim // g, g


def _keep_factor(seq_idx: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor | None:
    """(batch, length) factor on each step's decay: 0 where seq_idx changes (a packed sequence
    starts from zero), 1 elsewhere, and 1 at t = 0 so initial_state feeds the row's first sequence.
    One small row per batch element, read by every channel: cheaper than comparing seq_idx in-kernel."""
    if seq_idx is None:
        return None
    keep = torch.ones(seq_idx.shape, dtype=acc, device=seq_idx.device)
    keep[:, 1:] = (seq_idx[:, 1:] == seq_idx[:, :-1]).to(acc)
    return keep


def _scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, seq_idx=None):
    """Launch the forward; returns y (batch, dim, length), last_state (batch, dim, N) and E."""
    _check_runnable(u)
    batch, dim, length = u.shape
    d_state = A.shape[1]
    acc = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    plan = _make_plan(u, A, B, C)
    T = plan.chunk
    n_chunks = triton.cdiv(length, T)
    y = torch.empty_like(u, memory_format=torch.contiguous_format)
    E = torch.empty(batch, dim, n_chunks, d_state, dtype=acc, device=u.device)
    if length == 0:
        last = torch.zeros(batch, dim, d_state, dtype=acc, device=u.device)
        return y, (last if initial_state is None else initial_state.to(acc).clone()), E
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    D, z, delta_bias, initial_state = (None if t is None else t.contiguous() for t in (D, z, delta_bias, initial_state))
    NP = max(2, triton.next_power_of_2(d_state))
    bgd, bg = _bc_args(B, dim)
    cgd, cg = _bc_args(C, dim)
    DK = plan.fwd_block
    cps = plan.fwd_seg_chunks
    n_seg = triton.cdiv(n_chunks, cps)
    grid = (batch, dim // DK, n_seg)
    keep = _keep_factor(seq_idx, acc)
    flags = dict(
        B_CONST=B.dim() == 2,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        HAS_SEQ=keep is not None,
        IS_F64=acc == torch.float64,
    )
    bias = delta_bias if delta_bias is not None else A
    keep = keep if keep is not None else A  # any pointer: HAS_SEQ=False never reads it
    h0, has_h0 = initial_state, initial_state is not None
    if n_seg > 1:
        P = torch.empty(batch, dim, n_seg, d_state, dtype=acc, device=u.device)
        S = torch.empty_like(P)
        f = SEG_COARSEN if cps % SEG_COARSEN == 0 else 1
        _segment_state_fwd_kernel[grid](
            u,
            delta,
            A,
            B,
            bias,
            keep,
            P,
            S,
            dim,
            length,
            d_state,
            triton.cdiv(length, T * f),
            cps // f,
            n_seg,
            bgd,
            bg,
            DK=DK,
            T=T * f,
            NP=NP,
            num_warps=NUM_WARPS,
            **flags,
        )
        h0 = torch.empty_like(P)
        final = torch.empty(batch, dim, d_state, dtype=acc, device=u.device)
        _state_passing_kernel[(batch * dim,)](
            P,
            S,
            initial_state if has_h0 else P,
            h0,
            final,
            n_seg,
            d_state,
            SB=min(64, triton.next_power_of_2(n_seg)),
            NP=NP,
            HAS_INIT=has_h0,
            REVERSE=False,
            IS_F64=flags["IS_F64"],
            num_warps=NUM_WARPS,
        )
        has_h0 = True
    _selective_scan_fwd_kernel[grid](
        u,
        delta,
        A,
        B,
        C,
        D if D is not None else A,
        z if z is not None else u,
        bias,
        keep,
        h0 if has_h0 else u,
        y,
        E,
        dim,
        length,
        d_state,
        n_chunks,
        cps,
        n_seg,
        bgd,
        cgd,
        bg,
        cg,
        DK=DK,
        T=T,
        NP=NP,
        C_CONST=C.dim() == 2,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_H0=has_h0,
        num_warps=NUM_WARPS,
        **_reg_cap(FWD_MAXNREG, u, batch * (dim // DK) * n_seg, FWD_SLOTS_PER_SM),
        **flags,
    )
    return y, E[:, :, -1].clone(), E


def _scan_bwd(dy, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, E, delta_softplus, seq_idx=None):
    """Launch the backward; returns the gradients of u, delta, A, B, C, D, z, delta_bias, initial_state
    (None for absent inputs)."""
    batch, dim, length = u.shape
    d_state = A.shape[1]
    acc = E.dtype
    plan = _make_plan(u, A, B, C)
    T = plan.chunk
    n_chunks = E.shape[2]
    dev = u.device
    # gradients of sums arrive as expanded (stride 0) tensors: the kernels need real rows
    u, delta, A, B, C, dy = (t.contiguous() for t in (u, delta, A, B, C, dy))
    D, z, delta_bias, initial_state, dlast = (
        None if t is None else t.contiguous() for t in (D, z, delta_bias, initial_state, dlast)
    )
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    DK = plan.bwd_block
    cps = plan.bwd_seg_chunks
    n_seg = max(1, triton.cdiv(n_chunks, cps))
    NP = max(2, triton.next_power_of_2(d_state))
    bgd, bg = _bc_args(B, dim)
    cgd, cg = _bc_args(C, dim)
    keep = _keep_factor(seq_idx, acc)
    flags = dict(
        C_CONST=C.dim() == 2,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        HAS_SEQ=keep is not None,
        IS_F64=acc == torch.float64,
    )
    bias = delta_bias if delta_bias is not None else A
    keep = keep if keep is not None else A  # any pointer: HAS_SEQ=False never reads it
    grid = (batch, dim // DK, n_seg)
    if n_seg > 1:
        P = torch.empty(batch, dim, n_seg, d_state, dtype=acc, device=dev)
        Q = torch.empty_like(P)
        f = SEG_COARSEN if cps % SEG_COARSEN == 0 else 1
        _segment_state_bwd_kernel[grid](
            delta,
            A,
            C,
            z if z is not None else u,
            bias,
            keep,
            dy,
            P,
            Q,
            dim,
            length,
            d_state,
            triton.cdiv(length, T * f),
            cps // f,
            n_seg,
            cgd,
            cg,
            DK=DK,
            T=T * f,
            NP=NP,
            num_warps=BWD_NUM_WARPS,
            **flags,
        )
        R = torch.empty_like(P)
        final = torch.empty(batch, dim, d_state, dtype=acc, device=dev)
        _state_passing_kernel[(batch * dim,)](
            P,
            Q,
            dlast if dlast is not None else P,
            R,
            final,
            n_seg,
            d_state,
            SB=min(64, triton.next_power_of_2(n_seg)),
            NP=NP,
            HAS_INIT=dlast is not None,
            REVERSE=True,
            IS_F64=flags["IS_F64"],
            num_warps=NUM_WARPS,
        )
    elif dlast is not None:
        R = dlast.to(acc).reshape(batch, dim, 1, d_state).clone()
    else:
        R = torch.zeros(batch, dim, 1, d_state, dtype=acc, device=dev)
    # every slice below is written exactly once (one program owns each channel and chunk)
    if B.dim() == 2:
        dB_part = torch.empty(batch, dim, n_chunks, d_state, dtype=acc, device=dev)
    else:
        dB_part = torch.empty(batch, bg, bgd // DK, d_state, length, dtype=acc, device=dev)
    if C.dim() == 2:
        dC_part = torch.empty(batch, dim, n_chunks, d_state, dtype=acc, device=dev)
    else:
        dC_part = torch.empty(batch, cg, cgd // DK, d_state, length, dtype=acc, device=dev)
    dA_part = torch.empty(batch, dim, n_chunks, d_state, dtype=acc, device=dev)
    dD_part = torch.empty(batch, dim, n_chunks, dtype=acc, device=dev)
    dbias_part = torch.empty(batch, dim, n_chunks, dtype=acc, device=dev)
    # the kernel picks the initial state or E by chunk: both must be the same pointer type
    h0 = initial_state.to(acc) if initial_state is not None else E
    _selective_scan_bwd_kernel[grid](
        u,
        delta,
        A,
        B,
        C,
        D if D is not None else A,
        z if z is not None else u,
        bias,
        keep,
        h0,
        E,
        dy,
        R,
        du,
        ddelta,
        dz if dz is not None else du,
        dB_part,
        dC_part,
        dA_part,
        dD_part,
        dbias_part,
        dim,
        length,
        d_state,
        n_chunks,
        cps,
        n_seg,
        bgd,
        cgd,
        bg,
        cg,
        DK=DK,
        T=T,
        NP=NP,
        B_CONST=B.dim() == 2,
        HAS_D=D is not None,
        HAS_H0=initial_state is not None,
        num_warps=BWD_NUM_WARPS,
        **_reg_cap(BWD_MAXNREG, u, batch * (dim // DK) * n_seg, BWD_SLOTS_PER_SM),
        **flags,
    )
    # fixed-order sums over the partial slices: the same bits on every run
    if B.dim() == 2:
        dB = dB_part.sum((0, 2))
    else:
        dB = dB_part.sum(2).reshape(B.shape)
    if C.dim() == 2:
        dC = dC_part.sum((0, 2))
    else:
        dC = dC_part.sum(2).reshape(C.shape)
    dA = dA_part.sum((0, 2)).to(A.dtype)
    dD = dD_part.sum((0, 2)).to(D.dtype) if D is not None else None
    dbias = dbias_part.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
    dinit = R[:, :, 0].to(initial_state.dtype) if initial_state is not None else None
    return du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz, dbias, dinit


# ----------------------------------------------------------------------------------------------
# Custom ops (so torch.compile treats the scan as one opaque call) and autograd


def _empty() -> torch.Tensor:
    return torch.empty(0)


@torch.library.custom_op("mamba_longseq::selective_scan_fwd", mutates_args=())
def _selective_scan_fwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    delta_softplus: bool,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, last, E = _scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, seq_idx)
    return y, last, E


@_selective_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, seq_idx=None):
    batch, dim, length = u.shape
    acc = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    n_chunks = triton.cdiv(length, _chunk_for(length))
    return (
        torch.empty_like(u),
        u.new_empty(batch, dim, A.shape[1], dtype=acc),
        u.new_empty(batch, dim, n_chunks, A.shape[1], dtype=acc),
    )


@torch.library.custom_op("mamba_longseq::selective_scan_bwd", mutates_args=())
def _selective_scan_bwd_op(
    dy: torch.Tensor,
    dlast: torch.Tensor | None,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    E: torch.Tensor,
    delta_softplus: bool,
    seq_idx: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    grads = _scan_bwd(dy, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, E, delta_softplus, seq_idx)
    # custom ops return tensors only: an empty tensor stands for "no such input"
    return [g if g is not None else _empty().to(u.device) for g in grads]


@_selective_scan_bwd_op.register_fake
def _(dy, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, E, delta_softplus, seq_idx=None):
    like = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return [torch.empty_like(t) if t is not None else u.new_empty(0) for t in like]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, seq_idx = inputs
    _, _, E = output
    ctx.mark_non_differentiable(E)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, E, seq_idx)
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dy, dlast, _dE):
    u, delta, A, B, C, D, z, delta_bias, initial_state, E, seq_idx = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(u)
    grads = _selective_scan_bwd_op(
        dy, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, E, ctx.delta_softplus, seq_idx
    )
    present = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    # no gradient for delta_softplus (a flag) nor seq_idx (integers)
    return (*[g if t is not None else None for g, t in zip(grads, present, strict=False)], None, None)


_selective_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_last_state=False,
    seq_idx=None,
):
    """Selective scan with Triton kernels; arguments and results as `selective_scan_ref`.

    u, delta, z: (B, D, L)   A: (D, N)   B, C: (B, N, L) | (B, G, N, L) | (D, N)
    D, delta_bias: (D,)      initial_state: (B, D, N)      seq_idx: (B, L) int
    Returns y (B, D, L) in u's dtype, and with `return_last_state` also last_state (B, D, N) float32.
    Packed sequences: the state restarts from zero where seq_idx changes along the length.
    """
    y, last, _ = _selective_scan_fwd_op(
        u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus), seq_idx
    )
    return (y, last) if return_last_state else y
