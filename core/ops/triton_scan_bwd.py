"""Backward Triton kernels of the selective scan (design, launch and autograd: triton_scan.py).

_segment_state_bwd_kernel   each segment's gradient into its start, and its decay
_segment_state_bwd_seq_kernel  the same, walked step by step backwards (one channel per lane)
_selective_scan_bwd_kernel  per chunk (last first) and channel: recompute h from E, scan the
                            adjoint backwards, emit every gradient
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_scan_fwd import _bc_rows, _delta, _exp2, _lanes, _rows8, _scan_combine, _seq_advance, _sigmoid, _unzip8


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
                dy *= zz * _sigmoid(zz)
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
    dt, _ = _delta(raw, bias, m, HAS_BIAS, SOFTPLUS, FAST_EXP)
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
    offs_k, offs_n, n_mask, n_idx, zero_k, d0, d, rows = _lanes(pid_b, pid_d, dim, d_state, zero, DK, NP)
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
            dyz *= zz * _sigmoid(zz, FAST_EXP)  # the gradient reaching C h: dy times silu(z)
        y0, y1, y2, y3, y4, y5, y6, y7 = _unzip8(dyz)
        k_blk = tl.load(keep_row + t0, mask=m, other=1.0).to(ACC) if HAS_SEQ else tl.zeros([DK, 1, 8], ACC)
        k0, k1, k2, k3, k4, k5, k6, k7 = _unzip8(k_blk)
        if HAS_SEQ:  # keep is 0 or 1: the product is the minimum, without a reduction op
            alive *= ((k0 * k1) * (k2 * k3)) * ((k4 * k5) * (k6 * k7))
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
    dC_ptr,  # (batch, groups, dim / groups / DK, N, length), or (batch, n_chunks, dim, N) if constant
    dA_ptr,  # (batch, n_chunks, dim, N): chunk-major, so torch sums the partials over leading axes
    dD_ptr,
    dbias_ptr,  # (batch, n_chunks, dim)
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
    zero,  # 0 at run time: hides contiguity past RUN steps from the compiler
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
    FAST_EXP: tl.constexpr = False,
    RUN: tl.constexpr = 0,
    N_FULL: tl.constexpr = False,
    EVEN_T: tl.constexpr = False,
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
    if N_FULL:  # d_state == NP: no state masks, and strides the compiler knows (vector loads and stores)
        d_state = NP
        n_mask = tl.full([NP], 1, tl.int1)
    else:
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
        if EVEN_T:  # every chunk whole: no step masks (the last column's dA_{t+1} stays the carry's)
            t_mask = tl.full([T], 1, tl.int1)
        else:
            t_mask = t < length
        if RUN > 0:
            tile_offs = offs_n[:, None] * length + (t + (offs_t // RUN) * zero)[None, :]
        else:
            tile_offs = offs_n[:, None] * length + t[None, :]
        tile_mask = n_mask[:, None] & t_mask[None, :]
        # dA_{t+1} belongs to the next chunk at the last column: 1 there, the carry R holds the rest
        next_mask = (offs_t < T - 1) if EVEN_T else (t + 1 < length) & (offs_t < T - 1)
        if HAS_SEQ:  # one row for all channels; padded steps keep (1)
            keep = tl.load(keep_row + t, mask=t_mask, other=1.0).to(ACC)
            keep_n_r = tl.flip(tl.load(keep_row + t + 1, mask=next_mask, other=1.0).to(ACC), 0)
        if not B_CONST:
            Bd = tl.load(B_base + tile_offs, mask=tile_mask, other=0.0).to(ACC)
            dB_acc = tl.zeros([NP, T], dtype=ACC)
        if not C_CONST:
            Cd = tl.load(C_base + tile_offs, mask=tile_mask, other=0.0).to(ACC)
            dC_acc = tl.zeros([NP, T], dtype=ACC)
            # the reverse scan's C, flipped once for all the chunk's channels (each then flips only its dy)
            Cd_r = tl.flip(Cd, 1)
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
            # the next channel's rows, in flight while this one computes; the last channel re-reads
            # its own (unused) instead of masking them off: no per-element predicates in the loop
            nxt = (d + 1 < d0 + DK).to(tl.int64)
            offs_n1 = offs + nxt * length
            u_next = tl.load(u_ptr + offs_n1, mask=t_mask, other=0.0)
            raw_next = tl.load(delta_ptr + offs_n1, mask=t_mask, other=0.0)
            rawn_next = tl.load(delta_ptr + offs_n1 + 1, mask=next_mask, other=0.0)
            dy_next = tl.load(dy_ptr + offs_n1, mask=t_mask, other=0.0)
            if HAS_Z:
                z_next = tl.load(z_ptr + offs_n1, mask=t_mask, other=0.0)
            h0_next = tl.load(h0_base + (row + nxt) * h0_stride + offs_n, mask=h0_mask, other=0.0)
            R_next = tl.load(R_ptr + ((row + nxt) * n_seg + pid_s) * d_state + offs_n, mask=n_mask, other=0.0)

            bias = tl.load(bias_ptr + d).to(ACC) if HAS_BIAS else 0.0
            dt, raw = _delta(raw_t, bias, t_mask, HAS_BIAS, SOFTPLUS, FAST_EXP)
            dt_next, _ = _delta(rawn, bias, next_mask, HAS_BIAS, SOFTPLUS, FAST_EXP)
            A = tl.load(A_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)
            A2 = A * 1.4426950408889634  # exp(x A) = 2^(x A log2(e))
            if B_CONST:
                Bd = tl.load(B_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)[:, None]
            if C_CONST:
                Cd = tl.load(C_ptr + d * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)[:, None]
            dA = _exp2(dt[None, :] * A2[:, None], FAST_EXP)  # (NP, T)
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
                sig = _sigmoid(zz, FAST_EXP)
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
            offs_chunk = (pid_b * n_chunks + c).to(tl.int64) * dim + d
            if C_CONST:
                tl.store(dC_ptr + offs_chunk * d_state + offs_n, tl.sum(h * dy[None, :], axis=1), mask=n_mask)
            else:
                dC_acc += h * dy[None, :]
            # The reverse scan as a forward scan of the chunk flipped along its steps, flipped back:
            # Triton's reverse=True scan over a (16, 32) tile costs ~11x the shuffles of a forward
            # one (sm_90: 352 vs 32), a tile's flip ~48 (benchmarks/sass_stats.py). C is flipped once
            # per chunk, so a channel flips two vectors (dt_next, dy) and one tile (g): 1,039 SASS
            # instructions a channel and chunk, against 1,078 flipping C * dy here (session 8)
            dt_next_r = tl.flip(dt_next, 0)
            dA_next_r = _exp2(dt_next_r[None, :] * A2[:, None], FAST_EXP)  # step T-1-j's dA_{t+1} in column j
            if HAS_SEQ:
                dA_next_r *= keep_n_r[None, :]
            dy_r = tl.flip(dy, 0)[None, :]
            ra_r, rb_r = tl.associative_scan((dA_next_r, (Cd if C_CONST else Cd_r) * dy_r), 1, _scan_combine)
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
            gB = tl.sum(g * Bd, axis=0)
            du = dt * gB
            if HAS_D:
                du += Dd * dy
                tl.store(dD_ptr + offs_chunk, tl.sum(dy * u, axis=0))
            tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=t_mask)
            gh = g * h_prev
            # padded steps carry g = R and h_prev = h: keep them out of the sums
            ddt = tl.where(t_mask, u * gB + tl.sum(A[:, None] * gh, axis=0), 0.0)
            tl.store(dA_ptr + offs_chunk * d_state + offs_n, tl.sum(gh * dt[None, :], axis=1), mask=n_mask)
            if SOFTPLUS:
                ddt *= _sigmoid(raw, FAST_EXP)
            tl.store(ddelta_ptr + offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=t_mask)
            if HAS_BIAS:
                tl.store(dbias_ptr + offs_chunk, tl.sum(ddt, 0))
        if not B_CONST:
            tl.store(dB_base + tile_offs, dB_acc, mask=tile_mask)
        if not C_CONST:
            tl.store(dC_base + tile_offs, dC_acc, mask=tile_mask)
        # the next chunk reads the R this one stored, maybe from other threads
        tl.debug_barrier()


@triton.jit
def _unzip4(x):
    """(R, C, 4) -> its 4 slices along the last axis (in-thread: register renamings), as _unzip8."""
    R: tl.constexpr = x.shape[0]
    C: tl.constexpr = x.shape[1]
    even, odd = tl.split(tl.reshape(x, [R, C, 2, 2]))  # [0, 2], [1, 3]
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    return x0, x1, x2, x3


@triton.jit
def _zip4(x0, x1, x2, x3):
    """The inverse of _unzip4: four (R, C) tensors -> (R, C, 4)."""
    R: tl.constexpr = x0.shape[0]
    C: tl.constexpr = x0.shape[1]
    return tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), [R, C, 4])


@triton.jit
def _row(base, t, DK: tl.constexpr, NP: tl.constexpr):
    """Row t of a padded float32 (bc_len, NP) B or C as a (DK, NP) tile (see _bc_rows)."""
    return tl.reshape(tl.load(base + t * NP), [DK, NP])


@triton.jit
def _gate(dy, zz, HAS_Z: tl.constexpr, FAST: tl.constexpr):
    """dy times silu(z), the gradient reaching C h, and sigmoid(z) (dy when there is no z)."""
    if HAS_Z:
        sig = _sigmoid(zz, FAST)
        return dy * zz * sig, sig
    return dy, dy


@triton.jit
def _bwd_forward_step(h, A2, u, raw, dy, zz, Bc, Cc, keep, m, bias, Dd, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                      HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr,
                      FAST_EXP: tl.constexpr):  # fmt: skip
    """The backward's forward walk, one step: h advances; returns h, dy silu(z), dz, y (all but h
    (DK, 1)) and this step's dC row, sum over the channels of dy silu(z) h (NP,)."""
    h, _ = _seq_advance(h, A2, u, raw, Bc, keep, m, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
    y = tl.sum(Cc * h, axis=1)[:, None]
    if HAS_D:
        y += Dd * u
    dyz, sig = _gate(dy, zz, HAS_Z, FAST_EXP)
    dz = dy
    if HAS_Z:
        dz = dy * y * sig * (1.0 + zz * (1.0 - sig))
        y *= zz * sig
    return h, dyz, dz, y, tl.sum(dyz * h, axis=0)


@triton.jit
def _bwd_reverse_step(gA, h_prev, A2, u, raw, dyz, Bc, Cc, keep, m, bias, Dd, dA_acc, HAS_D: tl.constexpr,
                      HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr,
                      FAST_EXP: tl.constexpr):  # fmt: skip
    """One step of the adjoint, backwards. gA: dA_{t+1} g_{t+1}, what the later steps send into h_t;
    h_prev: h_{t-1}. g_t = C_t dy_t + gA; returns dA_t g_t (for step t - 1), dA_acc + dt g dA h_{t-1},
    du_t, ddelta_t (DK, 1) and this step's dB row, sum over the channels of g dt u (NP,)."""
    dt, pre = _delta(raw, bias, m, HAS_BIAS, SOFTPLUS, FAST_EXP)
    dA = _exp2(dt * A2, FAST_EXP)
    if HAS_SEQ:
        dA *= keep
    g = Cc * dyz + gA
    gh = g * (dA * h_prev)
    gB = tl.sum(g * Bc, axis=1)[:, None]
    dA_acc += gh * dt
    # A = A2 ln 2: the sum over states of A g dA h_{t-1}
    ddt = tl.where(m, u * gB + tl.sum(gh * A2, axis=1)[:, None] * 0.6931471805599453, 0.0)
    du = dt * gB
    if HAS_D:
        du += Dd * dyz
    if SOFTPLUS:
        ddt *= _sigmoid(pre, FAST_EXP)
    return dA * g, dA_acc, du, ddt, tl.sum(g * (dt * u), axis=0)


@triton.jit
def _selective_scan_bwd_seq_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,  # B, C: (batch, groups, bc_len, NP) float32, zero-padded (triton_scan._padded_bc)
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
    dz_ptr,
    y_ptr,  # (batch, dim, length): the forward's output, recomputed, with EMIT_Y
    dB_ptr,
    dC_ptr,  # (batch, groups, group_dim / DK, N, length): one slice per program's channels
    dA_ptr,  # (batch, n_chunks, dim, N): chunk-major, so torch sums the partials over leading axes
    dD_ptr,
    dbias_ptr,  # (batch, n_chunks, dim)
    S_ptr,  # scratch (programs, T / 2, DK, NP) float32: the state entering every 2 steps of a chunk
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
    bc_len,
    zero,  # 0 at run time: hides contiguity, see _selective_scan_fwd_seq_kernel
    DK: tl.constexpr,
    T: tl.constexpr,
    NP: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    IS_F64: tl.constexpr,
    FAST_EXP: tl.constexpr,
    EMIT_Y: tl.constexpr = False,
):
    """_selective_scan_bwd_kernel's outputs (variable B and C only) the step-by-step way: each thread
    owns one channel's NP states, so no associative scans and no shuffles except the sums over
    channels of dB and dC (one per step and state). Per chunk, last first:

    1. forward from the chunk's entry state (E): h_t, y_t, dz_t and dC_t, keeping the state every 2
       steps in a scratch buffer (L1/L2-resident; each thread reads back only what it wrote);
    2. backwards 2 steps at a time: the 2 states before them from the scratch and one step, then
       g_t = C_t dy_t + dA_{t+1} g_{t+1} step by step, with dB_t, du_t, ddelta_t and dA.
    The adjoint stays in registers from chunk to chunk; only the segment's start gets it (R).
    Same maths, masks and packed-sequence rules as _selective_scan_bwd_kernel; T % 4 == 0."""
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    pid_b, pid_d, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k, offs_n, n_mask, n_idx, zero_k, d0, d, rows = _lanes(pid_b, pid_d, dim, d_state, zero, DK, NP)
    b_group = d0 // b_group_dim
    c_group = d0 // c_group_dim
    B_base = _bc_rows(B_ptr, pid_b * b_groups + b_group, bc_len, zero_k, zero, NP)
    C_base = _bc_rows(C_ptr, pid_b * c_groups + c_group, bc_len, zero_k, zero, NP)
    dB_base = (
        dB_ptr
        + ((pid_b * b_groups + b_group) * (b_group_dim // DK) + (d0 % b_group_dim) // DK).to(tl.int64)
        * d_state
        * length
    )
    dC_base = (
        dC_ptr
        + ((pid_b * c_groups + c_group) * (c_group_dim // DK) + (d0 % c_group_dim) // DK).to(tl.int64)
        * d_state
        * length
    )
    # a step's dB / dC row goes out as a (DK, NP) tile written by lane 0 only: the sums over channels
    # are in every lane already, and a tile in the states' own layout needs no conversion through
    # shared memory (an (NP,) store would)
    rows_n = n_idx * length + zero_k  # (DK, NP)
    lane0_n = (offs_k[:, None] == 0) & n_mask  # (DK, NP)
    slot = ((pid_b * (dim // DK) + pid_d) * n_seg + pid_s).to(tl.int64)
    # (DK, NP) like E's rows: no contiguous axis, so the states keep their layout on the way out and in
    S_tile = S_ptr + (slot * (T // 2) * DK + offs_k[:, None]) * NP + n_idx
    steps = zero_k[:, :, None] + tl.arange(0, 4)[None, None, :]  # (DK, 1, 4)
    keep_row = keep_ptr + pid_b.to(tl.int64) * length + steps
    u_rows = u_ptr + (rows * length)[:, :, None] + steps  # (DK, 1, 4)
    delta_rows = delta_ptr + (rows * length)[:, :, None] + steps
    dy_rows = dy_ptr + (rows * length)[:, :, None] + steps
    z_rows = z_ptr + (rows * length)[:, :, None] + steps
    c_first = pid_s * chunks_per_seg
    c_end = tl.minimum(c_first + chunks_per_seg, n_chunks)
    A2 = tl.load(A_ptr + d * d_state + n_idx, mask=n_mask, other=0.0).to(ACC) * 1.4426950408889634  # (DK, NP)
    bias = tl.load(bias_ptr + d).to(ACC) if HAS_BIAS else 0.0
    Dd = tl.load(D_ptr + d).to(ACC) if HAS_D else 0.0
    gA = tl.load(R_ptr + (rows * n_seg + pid_s) * d_state + n_idx, mask=n_mask, other=0.0).to(ACC)
    for j in range(0, c_end - c_first):
        c = c_end - 1 - j
        first = (zero_k + c) == 0  # (DK, 1)
        h = tl.load(E_ptr + (rows * n_chunks + c - 1) * d_state + n_idx, mask=n_mask & ~first, other=0.0).to(ACC)
        if HAS_H0:
            h += tl.load(h0_ptr + rows * d_state + n_idx, mask=n_mask & first, other=0.0).to(ACC)
        dD_acc = tl.zeros([DK, 1], dtype=ACC)
        for q in range(0, T // 4):  # 1. forward
            t0 = c * T + 4 * q
            tl.store(S_tile + (2 * q) * DK * NP, h)
            m = (t0 + steps) < length  # (DK, 1, 4)
            u0, u1, u2, u3 = _unzip4(tl.load(u_rows + t0, mask=m, other=0.0).to(ACC))
            r0, r1, r2, r3 = _unzip4(tl.load(delta_rows + t0, mask=m, other=0.0).to(ACC))
            y0, y1, y2, y3 = _unzip4(tl.load(dy_rows + t0, mask=m, other=0.0).to(ACC))
            z_blk = tl.load(z_rows + t0, mask=m, other=0.0).to(ACC) if HAS_Z else tl.zeros([DK, 1, 4], ACC)
            z0, z1, z2, z3 = _unzip4(z_blk)
            k_blk = tl.load(keep_row + t0, mask=m, other=1.0).to(ACC) if HAS_SEQ else tl.zeros([DK, 1, 4], ACC)
            k0, k1, k2, k3 = _unzip4(k_blk)
            m0, m1, m2, m3 = _unzip4(m)
            h, e0, dz0, o0, dC0 = _bwd_forward_step(h, A2, u0, r0, y0, z0, _row(B_base, t0, DK, NP),
                                                    _row(C_base, t0, DK, NP), k0, m0, bias, Dd, HAS_D, HAS_Z,
                                                    HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)  # fmt: skip
            h, e1, dz1, o1, dC1 = _bwd_forward_step(h, A2, u1, r1, y1, z1, _row(B_base, t0 + 1, DK, NP),
                                                    _row(C_base, t0 + 1, DK, NP), k1, m1, bias, Dd, HAS_D, HAS_Z,
                                                    HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)  # fmt: skip
            tl.store(S_tile + (2 * q + 1) * DK * NP, h)
            h, e2, dz2, o2, dC2 = _bwd_forward_step(h, A2, u2, r2, y2, z2, _row(B_base, t0 + 2, DK, NP),
                                                    _row(C_base, t0 + 2, DK, NP), k2, m2, bias, Dd, HAS_D, HAS_Z,
                                                    HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)  # fmt: skip
            h, e3, dz3, o3, dC3 = _bwd_forward_step(h, A2, u3, r3, y3, z3, _row(B_base, t0 + 3, DK, NP),
                                                    _row(C_base, t0 + 3, DK, NP), k3, m3, bias, Dd, HAS_D, HAS_Z,
                                                    HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)  # fmt: skip
            dD_acc += (e0 * u0 + e1 * u1) + (e2 * u2 + e3 * u3)
            out = (rows * length)[:, :, None] + steps + t0
            if HAS_Z:
                tl.store(dz_ptr + out, _zip4(dz0, dz1, dz2, dz3).to(dz_ptr.dtype.element_ty), mask=m)
            if EMIT_Y:
                tl.store(y_ptr + out, _zip4(o0, o1, o2, o3).to(y_ptr.dtype.element_ty), mask=m)
            tl.store(
                dC_base + rows_n + (t0 + 0),
                tl.broadcast_to(dC0[None, :], [DK, NP]),
                mask=lane0_n & (zero_k + t0 + 0 < length),
            )
            tl.store(
                dC_base + rows_n + (t0 + 1),
                tl.broadcast_to(dC1[None, :], [DK, NP]),
                mask=lane0_n & (zero_k + t0 + 1 < length),
            )
            tl.store(
                dC_base + rows_n + (t0 + 2),
                tl.broadcast_to(dC2[None, :], [DK, NP]),
                mask=lane0_n & (zero_k + t0 + 2 < length),
            )
            tl.store(
                dC_base + rows_n + (t0 + 3),
                tl.broadcast_to(dC3[None, :], [DK, NP]),
                mask=lane0_n & (zero_k + t0 + 3 < length),
            )
        dA_acc = tl.zeros([DK, NP], dtype=ACC)
        dbias_acc = tl.zeros([DK, 1], dtype=ACC)
        for q in range(0, T // 4):  # 2. backwards
            qq = T // 4 - 1 - q
            t0 = c * T + 4 * qq
            m = (t0 + steps) < length
            u0, u1, u2, u3 = _unzip4(tl.load(u_rows + t0, mask=m, other=0.0).to(ACC))
            r0, r1, r2, r3 = _unzip4(tl.load(delta_rows + t0, mask=m, other=0.0).to(ACC))
            dy_blk = tl.load(dy_rows + t0, mask=m, other=0.0).to(ACC)
            z_blk = tl.load(z_rows + t0, mask=m, other=0.0).to(ACC) if HAS_Z else dy_blk
            e_blk, _ = _gate(dy_blk, z_blk, HAS_Z, FAST_EXP)
            e0, e1, e2, e3 = _unzip4(e_blk)
            k_blk = tl.load(keep_row + t0, mask=m, other=1.0).to(ACC) if HAS_SEQ else tl.zeros([DK, 1, 4], ACC)
            k0, k1, k2, k3 = _unzip4(k_blk)
            m0, m1, m2, m3 = _unzip4(m)
            # steps 3 and 2, then 1 and 0, each pair from the state stored before it (two state
            # tiles live, not four: the backward's registers are the limit)
            p2 = tl.load(S_tile + (2 * qq + 1) * DK * NP)
            p3, _ = _seq_advance(p2, A2, u2, r2, _row(B_base, t0 + 2, DK, NP), k2, m2, bias, HAS_BIAS, SOFTPLUS,
                                 HAS_SEQ, FAST_EXP)  # fmt: skip
            gA, dA_acc, du3, dd3, dB = _bwd_reverse_step(gA, p3, A2, u3, r3, e3, _row(B_base, t0 + 3, DK, NP),
                                                         _row(C_base, t0 + 3, DK, NP), k3, m3, bias, Dd, dA_acc,
                                                         HAS_D, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)  # fmt: skip
            tl.store(dB_base + rows_n + (t0 + 3), tl.broadcast_to(dB[None, :], [DK, NP]),
                     mask=lane0_n & (zero_k + t0 + 3 < length))  # fmt: skip
            gA, dA_acc, du2, dd2, dB = _bwd_reverse_step(gA, p2, A2, u2, r2, e2, _row(B_base, t0 + 2, DK, NP),
                                                         _row(C_base, t0 + 2, DK, NP), k2, m2, bias, Dd, dA_acc,
                                                         HAS_D, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)  # fmt: skip
            tl.store(dB_base + rows_n + (t0 + 2), tl.broadcast_to(dB[None, :], [DK, NP]),
                     mask=lane0_n & (zero_k + t0 + 2 < length))  # fmt: skip
            p0 = tl.load(S_tile + (2 * qq) * DK * NP)
            p1, _ = _seq_advance(p0, A2, u0, r0, _row(B_base, t0, DK, NP), k0, m0, bias, HAS_BIAS, SOFTPLUS,
                                 HAS_SEQ, FAST_EXP)  # fmt: skip
            gA, dA_acc, du1, dd1, dB = _bwd_reverse_step(gA, p1, A2, u1, r1, e1, _row(B_base, t0 + 1, DK, NP),
                                                         _row(C_base, t0 + 1, DK, NP), k1, m1, bias, Dd, dA_acc,
                                                         HAS_D, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)  # fmt: skip
            tl.store(dB_base + rows_n + (t0 + 1), tl.broadcast_to(dB[None, :], [DK, NP]),
                     mask=lane0_n & (zero_k + t0 + 1 < length))  # fmt: skip
            gA, dA_acc, du0, dd0, dB = _bwd_reverse_step(gA, p0, A2, u0, r0, e0, _row(B_base, t0, DK, NP),
                                                         _row(C_base, t0, DK, NP), k0, m0, bias, Dd, dA_acc,
                                                         HAS_D, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)  # fmt: skip
            tl.store(dB_base + rows_n + t0, tl.broadcast_to(dB[None, :], [DK, NP]),
                     mask=lane0_n & (zero_k + t0 < length))  # fmt: skip
            dbias_acc += (dd0 + dd1) + (dd2 + dd3)
            out = (rows * length)[:, :, None] + steps + t0
            tl.store(du_ptr + out, _zip4(du0, du1, du2, du3).to(du_ptr.dtype.element_ty), mask=m)
            tl.store(ddelta_ptr + out, _zip4(dd0, dd1, dd2, dd3).to(ddelta_ptr.dtype.element_ty), mask=m)
        offs_chunk = (pid_b * n_chunks + c).to(tl.int64) * dim + d  # (DK, 1)
        tl.store(dA_ptr + offs_chunk * d_state + n_idx, dA_acc, mask=n_mask)
        if HAS_D:
            tl.store(dD_ptr + offs_chunk, dD_acc)
        if HAS_BIAS:
            tl.store(dbias_ptr + offs_chunk, dbias_acc)
    tl.store(R_ptr + (rows * n_seg + pid_s) * d_state + n_idx, gA, mask=n_mask)
