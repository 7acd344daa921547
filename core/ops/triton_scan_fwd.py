"""Forward Triton kernels of the selective scan (design, launch and autograd: triton_scan.py).

_segment_state_fwd_kernel   each segment's end state from a zero start, and its decay
_state_passing_kernel       states at segment starts (a scan over segments), also reversed
_selective_scan_fwd_kernel  the scan proper from those states: y and the chunk states E
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _scan_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2) as maps h -> a * h + b: h -> a2 * (a1 * h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _exp2(x, FAST: tl.constexpr):
    """2^x; FAST (float32 on a GPU): one MUFU.EX2 with denormals flushed, where tl.exp2 adds a
    range check and two scalings around it, and a decay below 2^-126 is 0 for the recurrence anyway."""
    if FAST:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.exp2(x)


@triton.jit
def _exp_neg(x, FAST: tl.constexpr):
    """e^-x (FAST: as _exp2, 2 instructions where tl.exp takes ~6 on sm_90)."""
    if FAST:
        return _exp2(x * -1.4426950408889634, True)
    else:
        return tl.exp(-x)


@triton.jit
def _rcp(x, FAST: tl.constexpr):
    """1 / x (FAST: one MUFU.RCP, 1 ulp, where a float32 division takes ~6 instructions on sm_90)."""
    if FAST:
        return tl.inline_asm_elementwise(
            "rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return 1.0 / x


@triton.jit
def _sigmoid(x, FAST: tl.constexpr = False):
    """1 / (1 + e^-x): the gate silu(z) = z sigmoid(z) and the softplus' derivative."""
    return _rcp(1.0 + _exp_neg(x, FAST), FAST)


@triton.jit
def _softplus(x, FAST: tl.constexpr = False):
    """log(1 + e^x) as max(x, 0) + log1p(e^-|x|), with log1p(y) = 2 atanh(s), s = y / (2 + y), summed
    as its series: y <= 1 keeps s <= 1/3, so 6 terms reach float32's precision at every x (3.5e-7
    relative; 16 terms float64's). In float32, log(1 + e^x) loses up to 17% near x = -15, where
    1 + e^x rounds (1e-4 to 1e-3 at the anchors' x ~ -7 to -10), and its library log costs ~30
    instructions an element against ~10 here with FAST (benchmarks/sass_stats.py: the scan kernels
    take a softplus per channel and step)."""
    TERMS: tl.constexpr = 16 if x.dtype == tl.float64 else 6
    y = _exp_neg(tl.abs(x), FAST)
    s = y * _rcp(2.0 + y, FAST)
    s2 = s * s
    p = s2 * (2.0 / (2 * TERMS - 1)) + 2.0 / (2 * TERMS - 3)
    for k in tl.static_range(TERMS - 3, -1, -1):
        p = p * s2 + 2.0 / (2 * k + 1)
    return tl.maximum(x, 0.0) + p * s


@triton.jit
def _delta(raw, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr = False):
    """delta after bias and softplus, 0 outside `mask` (exp(0 * A) = 1: padded steps are identities)."""
    if HAS_BIAS:
        raw += bias
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw, FAST)
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

    Forward: out[s] = state entering segment s (out[0] = init), final = the state entering the last
    one: the last segment's P and S are never read (the forward's segment pass skips that segment, and
    nothing needs its end state from here).
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
        # padded segments are identities (P = 1, S = 0), as is the forward's last (not computed)
        ps_mask = mask if REVERSE else mask & (s < n_seg - 1)[:, None]
        P = tl.load(P_ptr + offs, mask=ps_mask, other=1.0)
        S = tl.load(S_ptr + offs, mask=ps_mask, other=0.0)
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
    h0_ptr,  # (batch, dim, n_seg, N): states at the segment pass's boundaries, segment s's at s * h0_every
    y_ptr,  # (batch, dim, length)
    E_ptr,  # (batch, dim, n_chunks, N): state leaving each chunk, kept for the backward
    dim,
    length,
    d_state,
    n_chunks,
    chunks_per_seg,
    n_seg,
    h0_every,
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
            h = tl.load(h0_ptr + (row * n_seg + pid_s * h0_every) * d_state + offs_n, mask=n_mask, other=0.0).to(ACC)
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
                y *= zz * _sigmoid(zz)
            tl.store(y_ptr + row * length + t, y.to(y_ptr.dtype.element_ty), mask=t_mask)
            # padded steps are identities, so column T - 1 is the state after the chunk
            h = tl.sum(tl.where(offs_t[None, :] == T - 1, hs, 0.0), axis=1)
            tl.store(E_ptr + (row * n_chunks + c) * d_state + offs_n, h, mask=n_mask)


@triton.jit
def _unzip8(x):
    """(R, C, 8) -> its 8 slices along the last axis, in order, each (R, C). With the last axis
    inside each thread these are register renamings (reshape + split), not data movement."""
    R: tl.constexpr = x.shape[0]
    C: tl.constexpr = x.shape[1]
    even, odd = tl.split(tl.reshape(x, [R, C, 4, 2]))  # [0, 2, 4, 6], [1, 3, 5, 7]
    e0, e2 = tl.split(tl.reshape(even, [R, C, 2, 2]))  # [0, 4], [2, 6]
    o1, o3 = tl.split(tl.reshape(odd, [R, C, 2, 2]))  # [1, 5], [3, 7]
    x0, x4 = tl.split(e0)
    x2, x6 = tl.split(e2)
    x1, x5 = tl.split(o1)
    x3, x7 = tl.split(o3)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _zip8(x0, x1, x2, x3, x4, x5, x6, x7):
    """The inverse of _unzip8: eight (R, C) tensors -> (R, C, 8)."""
    R: tl.constexpr = x0.shape[0]
    C: tl.constexpr = x0.shape[1]
    even = tl.reshape(tl.join(tl.join(x0, x4), tl.join(x2, x6)), [R, C, 4])
    odd = tl.reshape(tl.join(tl.join(x1, x5), tl.join(x3, x7)), [R, C, 4])
    return tl.reshape(tl.join(even, odd), [R, C, 8])


@triton.jit
def _lanes(pid_b, pid_d, dim, d_state, zero, DK: tl.constexpr, NP: tl.constexpr):
    """The index tiles of the one-channel-per-lane kernels: offs_k (DK,), offs_n (NP,), n_mask and
    n_idx (1, NP), zero_k (DK, 1), the first channel d0, channels d and rows (batch * dim + d) (DK, 1).
    The state offsets are multiplied by `zero + 1` and zero_k is 0 at run time, so no axis but the
    ones a kernel chooses looks contiguous to Triton (see _selective_scan_fwd_seq_kernel)."""
    offs_k = tl.arange(0, DK)
    offs_n = tl.arange(0, NP)
    n_mask = (offs_n < d_state)[None, :]
    n_idx = offs_n[None, :] * (zero + 1)
    zero_k = offs_k[:, None] * zero
    d0 = pid_d * DK
    d = (d0 + offs_k)[:, None]
    return offs_k, offs_n, n_mask, n_idx, zero_k, d0, d, (pid_b * dim + d).to(tl.int64)


@triton.jit
def _bc_rows(ptr, group_row, bc_len, zero_k, zero, NP: tl.constexpr):
    """(DK, NP // 4, 4) pointers to row 0 of one (batch, group)'s padded float32 (bc_len, NP) B or C:
    4 contiguous states (one 16-byte load) in groups whose stride hides behind `zero + 1`, so those 4
    stay the only contiguity (see _selective_scan_fwd_seq_kernel), the same in every channel."""
    VEC: tl.constexpr = 4 if NP >= 4 else NP
    offs = (
        zero_k[:, :, None]
        + (tl.arange(0, NP // VEC) * VEC * (zero + 1))[None, :, None]
        + tl.arange(0, VEC)[None, None, :]
    )
    return ptr + group_row.to(tl.int64) * bc_len * NP + offs


@triton.jit
def _rows8(base, t0, DK: tl.constexpr, NP: tl.constexpr):
    """Rows t0 .. t0 + 7 of a padded (bc_len, NP) B or C as eight (DK, NP) tiles (no mask: padded)."""
    r0 = tl.reshape(tl.load(base + (t0 + 0) * NP), [DK, NP])
    r1 = tl.reshape(tl.load(base + (t0 + 1) * NP), [DK, NP])
    r2 = tl.reshape(tl.load(base + (t0 + 2) * NP), [DK, NP])
    r3 = tl.reshape(tl.load(base + (t0 + 3) * NP), [DK, NP])
    r4 = tl.reshape(tl.load(base + (t0 + 4) * NP), [DK, NP])
    r5 = tl.reshape(tl.load(base + (t0 + 5) * NP), [DK, NP])
    r6 = tl.reshape(tl.load(base + (t0 + 6) * NP), [DK, NP])
    r7 = tl.reshape(tl.load(base + (t0 + 7) * NP), [DK, NP])
    return r0, r1, r2, r3, r4, r5, r6, r7


@triton.jit
def _seq_advance(h, A2, u, raw, Bc, keep, m, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                 HAS_SEQ: tl.constexpr, FAST_EXP: tl.constexpr):  # fmt: skip
    """One time step for a (DK, NP) tile of states: h = exp(dt A) h + dt B u. u, raw (delta before
    bias), keep, m: (DK, 1); A2 = A log2(e). Returns the new states and dt (DK, 1)."""
    dt, _ = _delta(raw, bias, m, HAS_BIAS, SOFTPLUS, FAST_EXP)
    dA = _exp2(dt * A2, FAST_EXP)
    if HAS_SEQ:
        dA *= keep
    return dA * h + Bc * (dt * u), dt


@triton.jit
def _seq_step(h, A2, u, raw, zz, Bc, Cc, keep, m, bias, Dd, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
              HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr,
              FAST_EXP: tl.constexpr):  # fmt: skip
    """_seq_advance, then y = C h (+ D u, times silu(z)): (DK, 1). Returns the new states and y."""
    h, _ = _seq_advance(h, A2, u, raw, Bc, keep, m, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
    y = tl.sum(Cc * h, axis=1)[:, None]
    if HAS_D:
        y += Dd * u
    if HAS_Z:
        y *= zz * _sigmoid(zz, FAST_EXP)
    return h, y


@triton.jit
def _selective_scan_fwd_seq_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,  # (batch, groups, bc_len, NP) float32, zero-padded (see the launcher), or (dim, N) when constant
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    keep_ptr,  # (batch, length): 0 where a packed sequence starts, else 1
    h0_ptr,  # (batch, dim, n_seg, N): states at the segment pass's boundaries, segment s's at s * h0_every
    y_ptr,  # (batch, dim, length)
    E_ptr,  # (batch, dim, n_chunks, N): state leaving each chunk, kept for the backward
    dim,
    length,
    d_state,
    n_chunks,
    chunks_per_seg,
    n_seg,
    h0_every,
    b_group_dim,
    c_group_dim,
    b_groups,
    c_groups,
    bc_len,  # padded length of B and C: whole chunks, so their loads need no mask
    zero,  # 0, passed at run time: see `zero_k`
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
    FAST_EXP: tl.constexpr,
    EVEN_T: tl.constexpr = False,  # the length a whole number of chunks: no step masks
):
    """The scan step by step: a (DK, N) tile of states (channels x states) advances one time step
    at a time, h = exp(delta A) h + delta B u, and y = C h is a sum over the state axis.

    No scan along time: a thread owns one channel's states and walks the steps itself, so a step
    costs one exp, an FMA, a product and an FMA per state, and the sum over states stays in the
    thread. The associative scan of a (N, T) tile costs several times that in shuffles and selects.
    The parallelism given up along time comes from channels and segments instead.

    Memory: a thread reads its channel's u, delta, z for 8 steps at once (one 16-byte load each)
    and writes 8 y at once; loaded per step, each of those touched 32 cache lines per instruction
    and the forward was 30% slower than the scan kernel (H200, benchmarks/results). B and C come
    in as float32 rows of a (length, NP) copy, four 16-byte loads per step, the same in every
    thread (a broadcast).

    Layout: Triton lays a load out along its contiguous axis. Only the 8 steps may look
    contiguous (they sit inside each thread); any other contiguous axis would win the layout
    and put states across lanes (a shuffle-reduction per step). So contiguous state offsets are
    multiplied by `zero + 1`, and B and C are broadcast over the channels through `zero`, a 0 the
    compiler cannot see. With no other contiguity, channels go across lanes.
    Same arguments and outputs as _selective_scan_fwd_kernel; T must be a multiple of 8."""
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    pid_b, pid_d, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k, offs_n, n_mask, n_idx, zero_k, d0, d, rows = _lanes(pid_b, pid_d, dim, d_state, zero, DK, NP)
    offs_s = tl.arange(0, 8)
    B_base = _bc_rows(B_ptr, pid_b * b_groups + d0 // b_group_dim, bc_len, zero_k, zero, NP)
    C_base = _bc_rows(C_ptr, pid_b * c_groups + d0 // c_group_dim, bc_len, zero_k, zero, NP)
    steps = zero_k[:, :, None] + offs_s[None, None, :]  # (DK, 1, 8)
    keep_row = keep_ptr + pid_b.to(tl.int64) * length + steps
    c_first = pid_s * chunks_per_seg
    c_end = tl.minimum(c_first + chunks_per_seg, n_chunks)
    # A log2(e): the decay is then one exp2 of dt * A2
    A2 = tl.load(A_ptr + d * d_state + n_idx, mask=n_mask, other=0.0).to(ACC) * 1.4426950408889634  # (DK, NP)
    bias = tl.load(bias_ptr + d).to(ACC) if HAS_BIAS else 0.0
    Dd = tl.load(D_ptr + d).to(ACC) if HAS_D else 0.0
    if B_CONST:
        Bd = tl.load(B_ptr + d * d_state + n_idx, mask=n_mask, other=0.0).to(ACC)
        B0, B1, B2, B3, B4, B5, B6, B7 = Bd, Bd, Bd, Bd, Bd, Bd, Bd, Bd
    if C_CONST:
        Cd = tl.load(C_ptr + d * d_state + n_idx, mask=n_mask, other=0.0).to(ACC)
        C0, C1, C2, C3, C4, C5, C6, C7 = Cd, Cd, Cd, Cd, Cd, Cd, Cd, Cd
    if HAS_H0:
        h = tl.load(h0_ptr + (rows * n_seg + pid_s * h0_every) * d_state + n_idx, mask=n_mask, other=0.0).to(ACC)
    else:
        h = tl.zeros([DK, NP], dtype=ACC)
    u_rows = u_ptr + (rows * length)[:, :, None] + steps  # (DK, 1, 8)
    delta_rows = delta_ptr + (rows * length)[:, :, None] + steps
    z_rows = z_ptr + (rows * length)[:, :, None] + steps
    y_rows = y_ptr + (rows * length)[:, :, None] + steps
    for c in range(c_first, c_end):
        for t0 in range(c * T, c * T + T, 8):
            m = tl.full([DK, 1, 8], 1, tl.int1) if EVEN_T else (t0 + steps) < length  # (DK, 1, 8)
            u_blk = tl.load(u_rows + t0, mask=m, other=0.0).to(ACC)
            r_blk = tl.load(delta_rows + t0, mask=m, other=0.0).to(ACC)
            z_blk = tl.load(z_rows + t0, mask=m, other=0.0).to(ACC) if HAS_Z else u_blk
            k_blk = tl.load(keep_row + t0, mask=m, other=1.0).to(ACC) if HAS_SEQ else u_blk
            u0, u1, u2, u3, u4, u5, u6, u7 = _unzip8(u_blk)
            r0, r1, r2, r3, r4, r5, r6, r7 = _unzip8(r_blk)
            z0, z1, z2, z3, z4, z5, z6, z7 = _unzip8(z_blk)
            k0, k1, k2, k3, k4, k5, k6, k7 = _unzip8(k_blk)
            m0, m1, m2, m3, m4, m5, m6, m7 = _unzip8(m)
            if not B_CONST:
                B0, B1, B2, B3, B4, B5, B6, B7 = _rows8(B_base, t0, DK, NP)
            if not C_CONST:
                C0, C1, C2, C3, C4, C5, C6, C7 = _rows8(C_base, t0, DK, NP)
            h, y0 = _seq_step(
                h, A2, u0, r0, z0, B0, C0, k0, m0, bias, Dd, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP
            )
            h, y1 = _seq_step(
                h, A2, u1, r1, z1, B1, C1, k1, m1, bias, Dd, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP
            )
            h, y2 = _seq_step(
                h, A2, u2, r2, z2, B2, C2, k2, m2, bias, Dd, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP
            )
            h, y3 = _seq_step(
                h, A2, u3, r3, z3, B3, C3, k3, m3, bias, Dd, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP
            )
            h, y4 = _seq_step(
                h, A2, u4, r4, z4, B4, C4, k4, m4, bias, Dd, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP
            )
            h, y5 = _seq_step(
                h, A2, u5, r5, z5, B5, C5, k5, m5, bias, Dd, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP
            )
            h, y6 = _seq_step(
                h, A2, u6, r6, z6, B6, C6, k6, m6, bias, Dd, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP
            )
            h, y7 = _seq_step(
                h, A2, u7, r7, z7, B7, C7, k7, m7, bias, Dd, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP
            )
            y_blk = _zip8(y0, y1, y2, y3, y4, y5, y6, y7)
            tl.store(y_rows + t0, y_blk.to(y_ptr.dtype.element_ty), mask=m)
        tl.store(E_ptr + (rows * n_chunks + c) * d_state + n_idx, h, mask=n_mask)


@triton.jit
def _segment_state_fwd_seq_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,  # as in _selective_scan_fwd_seq_kernel: padded float32 (batch, groups, bc_len, NP), or (dim, N)
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
    bc_len,
    zero,
    DK: tl.constexpr,
    T: tl.constexpr,
    NP: tl.constexpr,
    B_CONST: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    IS_F64: tl.constexpr,
    FAST_EXP: tl.constexpr,
    EVEN_T: tl.constexpr = False,  # the segments hold no step past the length: no step masks
):
    """_segment_state_fwd_kernel's outputs the step-by-step way: S, the state each segment leaves
    from a zero start, walked step by step as _selective_scan_fwd_seq_kernel walks it (no y, no E),
    and P = exp(A * sum of delta) (0 if the segment holds a reset). Same layout rules as there."""
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    pid_b, pid_d, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k, offs_n, n_mask, n_idx, zero_k, d0, d, rows = _lanes(pid_b, pid_d, dim, d_state, zero, DK, NP)
    B_base = _bc_rows(B_ptr, pid_b * b_groups + d0 // b_group_dim, bc_len, zero_k, zero, NP)
    steps = zero_k[:, :, None] + tl.arange(0, 8)[None, None, :]  # (DK, 1, 8)
    keep_row = keep_ptr + pid_b.to(tl.int64) * length + steps
    c_first = pid_s * chunks_per_seg
    c_end = tl.minimum(c_first + chunks_per_seg, n_chunks)
    A2 = tl.load(A_ptr + d * d_state + n_idx, mask=n_mask, other=0.0).to(ACC) * 1.4426950408889634  # (DK, NP)
    bias = tl.load(bias_ptr + d).to(ACC) if HAS_BIAS else 0.0
    if B_CONST:
        Bd = tl.load(B_ptr + d * d_state + n_idx, mask=n_mask, other=0.0).to(ACC)
        B0, B1, B2, B3, B4, B5, B6, B7 = Bd, Bd, Bd, Bd, Bd, Bd, Bd, Bd
    h = tl.zeros([DK, NP], dtype=ACC)
    total = tl.zeros([DK, 1], dtype=ACC)  # sum of delta over the segment
    alive = tl.full([DK, 1], 1.0, ACC)  # 0 once a reset is seen: the segment's start state is gone
    u_rows = u_ptr + (rows * length)[:, :, None] + steps  # (DK, 1, 8)
    delta_rows = delta_ptr + (rows * length)[:, :, None] + steps
    for t0 in range(c_first * T, c_end * T, 8):
        m = tl.full([DK, 1, 8], 1, tl.int1) if EVEN_T else (t0 + steps) < length  # (DK, 1, 8)
        u0, u1, u2, u3, u4, u5, u6, u7 = _unzip8(tl.load(u_rows + t0, mask=m, other=0.0).to(ACC))
        r0, r1, r2, r3, r4, r5, r6, r7 = _unzip8(tl.load(delta_rows + t0, mask=m, other=0.0).to(ACC))
        k_blk = tl.load(keep_row + t0, mask=m, other=1.0).to(ACC) if HAS_SEQ else tl.zeros([DK, 1, 8], ACC)
        k0, k1, k2, k3, k4, k5, k6, k7 = _unzip8(k_blk)
        if HAS_SEQ:  # keep is 0 or 1: the product is the minimum, without a reduction op
            alive *= ((k0 * k1) * (k2 * k3)) * ((k4 * k5) * (k6 * k7))
        m0, m1, m2, m3, m4, m5, m6, m7 = _unzip8(m)
        if not B_CONST:
            B0, B1, B2, B3, B4, B5, B6, B7 = _rows8(B_base, t0, DK, NP)
        h, dt0 = _seq_advance(h, A2, u0, r0, B0, k0, m0, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        h, dt1 = _seq_advance(h, A2, u1, r1, B1, k1, m1, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        h, dt2 = _seq_advance(h, A2, u2, r2, B2, k2, m2, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        h, dt3 = _seq_advance(h, A2, u3, r3, B3, k3, m3, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        h, dt4 = _seq_advance(h, A2, u4, r4, B4, k4, m4, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        h, dt5 = _seq_advance(h, A2, u5, r5, B5, k5, m5, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        h, dt6 = _seq_advance(h, A2, u6, r6, B6, k6, m6, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        h, dt7 = _seq_advance(h, A2, u7, r7, B7, k7, m7, bias, HAS_BIAS, SOFTPLUS, HAS_SEQ, FAST_EXP)
        total += ((dt0 + dt1) + (dt2 + dt3)) + ((dt4 + dt5) + (dt6 + dt7))
    offs_seg = (rows * n_seg + pid_s) * d_state + n_idx  # (DK, NP)
    tl.store(S_ptr + offs_seg, h, mask=n_mask)
    tl.store(P_ptr + offs_seg, _exp2(A2 * total, FAST_EXP) * alive, mask=n_mask)
