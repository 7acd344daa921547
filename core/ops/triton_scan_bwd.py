"""Backward Triton kernels of the selective scan (design, launch and autograd: triton_scan.py).

_segment_state_bwd_kernel   each segment's gradient into its start, and its decay
_segment_state_bwd_seq_kernel  the same, walked step by step backwards (one channel per lane)
_selective_scan_bwd_kernel  per chunk (last first) and channel: recompute h from E, scan the
                            adjoint backwards, emit every gradient
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_scan_fwd import _bc_rows, _delta, _exp2, _rows8, _scan_combine, _unzip8


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
def _seq_adjoint_back(Q, A2, raw, dyz, Cc, keep, m, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                      HAS_SEQ: tl.constexpr, FAST_EXP: tl.constexpr):  # fmt: skip
    """One step back for a (DK, NP) tile: the gradient into the state before step t, from the output
    at t and the gradient Q into the state after it: exp(dt A) (C dy + Q). Returns it and dt (DK, 1)."""
    dt, _ = _delta(raw, bias, m, HAS_BIAS, SOFTPLUS)
    dA = _exp2(dt * A2, FAST_EXP)
    if HAS_SEQ:
        dA *= keep  # a sequence starting at t: nothing before it sees t or later
    return dA * (Cc * dyz + Q), dt


@triton.jit
def _segment_state_bwd_seq_kernel(
    delta_ptr,
    A_ptr,
    C_ptr,  # (batch, groups, bc_len, NP) float32, zero-padded (triton_scan._padded_bc), or (dim, N)
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
    bc_len,
    zero,  # 0 at run time: hides contiguity, see _selective_scan_fwd_seq_kernel
    DK: tl.constexpr,
    T: tl.constexpr,
    NP: tl.constexpr,
    C_CONST: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    IS_F64: tl.constexpr,
    FAST_EXP: tl.constexpr,
):
    """_segment_state_bwd_kernel's Q and P the way _segment_state_fwd_seq_kernel walks a segment:
    each thread owns one channel's NP states and goes from the segment's last step to its first,
    Q = exp(dt_t A) (C_t dy_t + Q), in 8-step blocks (one 16-byte load of dy, delta, z per block).
    No cumulative sums or exponentials of them over a tile, no cross-lane traffic. Same layout
    rules and T % 8 == 0 as the forward step kernels."""
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    pid_b, pid_d, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k = tl.arange(0, DK)
    offs_n = tl.arange(0, NP)
    n_mask = (offs_n < d_state)[None, :]  # (1, NP)
    n_idx = offs_n[None, :] * (zero + 1)  # (1, NP)
    zero_k = offs_k[:, None] * zero  # (DK, 1)
    d0 = pid_d * DK
    d = (d0 + offs_k)[:, None]  # (DK, 1)
    rows = (pid_b * dim + d).to(tl.int64)  # (DK, 1)
    C_base = _bc_rows(C_ptr, pid_b * c_groups + d0 // c_group_dim, bc_len, zero_k, zero, NP)
    steps = zero_k[:, :, None] + tl.arange(0, 8)[None, None, :]  # (DK, 1, 8)
    keep_row = keep_ptr + pid_b.to(tl.int64) * length + steps
    c_first = pid_s * chunks_per_seg
    c_end = tl.minimum(c_first + chunks_per_seg, n_chunks)
    A2 = tl.load(A_ptr + d * d_state + n_idx, mask=n_mask, other=0.0).to(ACC) * 1.4426950408889634  # (DK, NP)
    bias = tl.load(bias_ptr + d).to(ACC) if HAS_BIAS else 0.0
    if C_CONST:
        Cd = tl.load(C_ptr + d * d_state + n_idx, mask=n_mask, other=0.0).to(ACC)
        C0, C1, C2, C3, C4, C5, C6, C7 = Cd, Cd, Cd, Cd, Cd, Cd, Cd, Cd
    Q = tl.zeros([DK, NP], dtype=ACC)
    total = tl.zeros([DK, 1], dtype=ACC)  # sum of delta over the segment
    alive = tl.full([DK, 1], 1.0, ACC)  # 0 once a reset is seen
    delta_rows = delta_ptr + (rows * length)[:, :, None] + steps  # (DK, 1, 8)
    dy_rows = dy_ptr + (rows * length)[:, :, None] + steps
    z_rows = z_ptr + (rows * length)[:, :, None] + steps
    for j in range(0, (c_end - c_first) * (T // 8)):
        t0 = c_end * T - 8 * (j + 1)
        m = (t0 + steps) < length  # (DK, 1, 8)
        r0, r1, r2, r3, r4, r5, r6, r7 = _unzip8(tl.load(delta_rows + t0, mask=m, other=0.0).to(ACC))
        dyz = tl.load(dy_rows + t0, mask=m, other=0.0).to(ACC)
        if HAS_Z:
            zz = tl.load(z_rows + t0, mask=m, other=0.0).to(ACC)
            dyz *= zz / (1.0 + tl.exp(-zz))  # the gradient reaching C h: dy times silu(z)
        y0, y1, y2, y3, y4, y5, y6, y7 = _unzip8(dyz)
        k_blk = tl.load(keep_row + t0, mask=m, other=1.0).to(ACC) if HAS_SEQ else tl.zeros([DK, 1, 8], ACC)
        if HAS_SEQ:
            alive *= tl.reshape(tl.min(k_blk, axis=2), [DK, 1])
        k0, k1, k2, k3, k4, k5, k6, k7 = _unzip8(k_blk)
        m0, m1, m2, m3, m4, m5, m6, m7 = _unzip8(m)
        if not C_CONST:
            C0, C1, C2, C3, C4, C5, C6, C7 = _rows8(C_base, t0, DK, NP)
        Q, dt7 = _seq_adjoint_back(Q, A2, r7, y7, C7, k7, m7, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        Q, dt6 = _seq_adjoint_back(Q, A2, r6, y6, C6, k6, m6, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        Q, dt5 = _seq_adjoint_back(Q, A2, r5, y5, C5, k5, m5, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        Q, dt4 = _seq_adjoint_back(Q, A2, r4, y4, C4, k4, m4, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        Q, dt3 = _seq_adjoint_back(Q, A2, r3, y3, C3, k3, m3, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        Q, dt2 = _seq_adjoint_back(Q, A2, r2, y2, C2, k2, m2, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        Q, dt1 = _seq_adjoint_back(Q, A2, r1, y1, C1, k1, m1, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        Q, dt0 = _seq_adjoint_back(Q, A2, r0, y0, C0, k0, m0, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        total += ((dt0 + dt1) + (dt2 + dt3)) + ((dt4 + dt5) + (dt6 + dt7))
    offs_seg = (rows * n_seg + pid_s) * d_state + n_idx  # (DK, NP)
    tl.store(Q_ptr + offs_seg, Q, mask=n_mask)
    tl.store(P_ptr + offs_seg, _exp2(A2 * total, FAST_EXP) * alive, mask=n_mask)


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
    y_ptr,  # (batch, dim, length): the forward's output, recomputed, with EMIT_Y
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
    EMIT_Y: tl.constexpr = False,
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
                if EMIT_Y:
                    tl.store(y_ptr + offs, (y_pre * zz * sig).to(y_ptr.dtype.element_ty), mask=t_mask)
            elif EMIT_Y:
                tl.store(y_ptr + offs, y_pre.to(y_ptr.dtype.element_ty), mask=t_mask)
            # Each (NP, T) tile costs 16 registers a thread: use every tile up before the
            # reverse scan so the backward stays near 8 warps a multiprocessor (see CHUNK).
            h_prev = h - x  # dA_t * h_{t-1}
            offs_chunk = row * n_chunks + c
            if C_CONST:
                tl.store(dC_ptr + offs_chunk * d_state + offs_n, tl.sum(h * dy[None, :], axis=1), mask=n_mask)
            else:
                dC_acc += h * dy[None, :]
            # The reverse scan as a forward scan of the chunk flipped along its steps, flipped back:
            # Triton's reverse=True scan over a (16, 32) tile costs ~11x the shuffles of a forward
            # one (sm_90: 352 vs 32), two flips ~48 each (benchmarks/sass_stats.py)
            dt_next_r = tl.flip(dt_next, 0)
            dA_next_r = tl.exp(dt_next_r[None, :] * A[:, None])  # step T-1-j's dA_{t+1} in column j
            if HAS_SEQ:
                dA_next_r *= tl.flip(keep_n, 0)[None, :]
            ra_r, rb_r = tl.associative_scan((dA_next_r, tl.flip(Cd * dy[None, :], 1)), 1, _scan_combine)
            g = tl.flip(rb_r + ra_r * R[:, None], 1)  # (NP, T)
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
