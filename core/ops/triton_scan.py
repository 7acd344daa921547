"""Selective scan in Triton, chunked along the length: the design, the launch plan, the launchers and
the torch.library ops. The kernels are in triton_scan_fwd.py and triton_scan_bwd.py.

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

Most kernels come in two forms: the associative scan (or sums) over (N, T) tiles described
above, and a step-by-step one (*_seq_kernel) where each thread owns a channel's N states and walks
the steps one by one (no scan, no shuffles; ~9 SASS instructions per state-step against ~30 for
the forward). Defaults: the step-by-step forward (FWD_KERNEL) and segment passes (FWD_SEG_KERNEL,
BWD_SEG_KERNEL; packed rows on a GPU excepted, see _seq_segments_ok), the tile-scan backward
(BWD_KERNEL: the step one is exact but slower, see its setting). On a GPU the step kernels run
only with one channel per lane (_one_per_lane).

Speed (benchmarks/results/README.md, H200, fwd+bwd against mamba_ssm's CUDA kernel, session 9):
1.47-1.50x at the two 2^20-step anchor shapes, 1.07x at 4 x 1536 x 16384 and 1.11x at
8 x 2048 x 4096; the forward alone 0.95-1.07x. The backward kernel (~3/4 of the time) is bound by
instruction issue: its two tile scans, their flips and the sums over states cost ~32 instructions
per state-step, near the floor of this design (benchmarks/sass_stats.py counts SASS without a GPU).
Host time counts too: the GPU waits for the Python before a call's first long kernel, so eager
calls skip the custom ops' dispatch (_eager) and plans are remembered (_make_plan).

On CPU tensors the kernels run in Triton's interpreter; set TRITON_INTERPRET=1 before this
module is imported (that is how CI tests it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
import triton

from .checks import compute_dtype
from .triton_scan_bwd import (
    _segment_state_bwd_kernel,
    _segment_state_bwd_seq_kernel,
    _selective_scan_bwd_kernel,
    _selective_scan_bwd_seq_kernel,
)
from .triton_scan_fwd import (
    _segment_state_fwd_kernel,
    _segment_state_fwd_seq_kernel,
    _selective_scan_fwd_kernel,
    _selective_scan_fwd_seq_kernel,
    _state_passing_kernel,
)

# Launch shape, from a sweep on an H200 (benchmarks/gpu_scan.py --sweep; numbers in
# benchmarks/results/README.md): one warp per program and 32-step chunks ran fastest. One warp
# keeps every reduction over the states inside the warp (no shared-memory round trip and no
# barrier), and a (16, 32) tile leaves each thread 2 states x 8 steps, so the scan along the
# chunk is 8 sequential steps in registers plus 2 shuffle rounds. The backward holds ~12 such
# tiles (228 registers, no spills on sm_90); 64-step chunks spill it, 16-step chunks ran slower.
CHUNK = 32
NUM_WARPS = 1  # forward, segment and state-passing kernels
BWD_NUM_WARPS = 1
# Warps per program of the one-channel-per-lane (step-by-step) kernels: a program holds
# 32 x LANE_WARPS channels, a thread each. More warps per program share each B/C row load among
# more channels (one broadcast per SM instead of per warp, if the warps run in step) at the cost of
# fewer, larger programs; Nsight Compute found the step forward waiting on L1/L2 (session 4). The
# SASS of a thread is the same for 1 or 2 (sm_90). Untimed: a knob for benchmarks/gpu_scan.py --sweep.
LANE_WARPS = 1
# dB/dC partial buffers (one slice per channel block) may hold at most this many floats each;
# past it, channel blocks grow (fewer slices) and segments supply the parallelism instead.
PARTIAL_BUDGET = 1 << 27
# The backward's segment states (P, Q, R: 3 x rows x segments x N floats) stay within this many
# rows x segments (96 MiB at N = 16): SEG_WAVES = 16 alone would give 1 x 512 x 2^20 2,731 segments
# (268 MB), on top of a DNA LM step whose peak sits near its memory bar (issue 3: 47.23 of 47.5 GiB).
SEG_STATE_BUDGET = 1 << 19
# One-warp programs resident per multiprocessor, by registers (ptxas, sm_90): the forward uses
# 125 registers (16 fit), the backward 228 (8 fit). A launch that fills FULL of these slots
# runs without segments; below that, segments are added until there are SEG_WAVES waves of
# programs. A segment's first cost is a whole extra pass over the data (the segment kernels),
# paid once whatever their number, so once paid, many segments keep the last wave short.
FWD_SLOTS_PER_SM = 16
BWD_SLOTS_PER_SM = 8
# The slots the backward's segments are counted against (None: BWD_SLOTS_PER_SM). Segmented
# launches run under BWD_MAXNREG, which fits 12 programs per multiprocessor, not 8.
BWD_SEG_SLOTS_PER_SM = 12
# The forward's main kernel: "seq" walks the steps one by one with each thread owning a channel
# (_selective_scan_fwd_seq_kernel: ~9 SASS instructions per state-step on sm_90, no shuffles),
# "scan" runs an associative scan over each (N, T) tile (_selective_scan_fwd_kernel: ~30).
# "seq" programs hold up to 32 channels (one per lane) and use 128 registers, so 16 fit per SM.
FWD_KERNEL = "seq"
FWD_SEQ_SLOTS_PER_SM = 16
# With FWD_KERNEL "seq", the segment pass (each segment's end state from zero) can also walk step
# by step (_segment_state_fwd_seq_kernel: 2.5x fewer SASS instructions than the summing kernel's
# per state-step on sm_90, exp-bound). On the H200 "seq" is faster at all four anchor shapes:
# forward 1.90/2.48/14.20/14.35 ms against 2.18/3.02/16.75/16.75 with "sum", the DNA LM step at
# 2^20 tokens 854 against 874 ms (benchmarks/results/README.md, session 4).
FWD_SEG_KERNEL = "seq"
# The backward's segment pass (each segment's gradient into its start, P and Q): "seq" walks the
# steps backwards one by one with a channel per lane (_segment_state_bwd_seq_kernel), "sum" sums
# exponentials of cumulative deltas over (N, T) tiles (_segment_state_bwd_kernel).
BWD_SEG_KERNEL = "seq"
# The backward's main kernel: "scan" (_selective_scan_bwd_kernel: associative scans over (N, T)
# tiles, ~3 warp-instructions per state-step on sm_90) or "seq" (_selective_scan_bwd_seq_kernel:
# a channel per lane walking the steps, the forward's design; variable B and C only). "seq" is
# exact (CI; on the H200 against "scan") but slower there: fwd+bwd 13.0/16.4/85.3/88.2 ms against
# 8.7/13.0/65.7/65.8 at the anchor shapes (session 4); 11.2/16.5/87.3/89.8 once it planned its own
# segments (session 5; "scan" then 7.2/11.0/56.8/57.1). Nsight Compute: 255 registers (8 programs
# per SM), and 38% of its instructions are the per-step shuffle sums of dB/dC over channels.
BWD_KERNEL = "scan"
BWD_SEQ_SLOTS_PER_SM = 8  # its 255 registers
FULL = 0.7
# the forward's own thresholds (its programs differ from the backward's), separate knobs for sweeps
FWD_FULL = 0.7
FWD_SEG_WAVES = 4
# The forward's main kernel cuts the length into as few segments as fill FWD_MAIN_FILL of its resident
# slots (FWD_MAIN_SLOTS_PER_SM: 8 at FWD_MAXNREG's 255 registers), while the segment pass, which
# only has to reach the start of the main kernel's last segment, cuts that part as finely as
# FWD_SEG_WAVES asks. Before (one cut for both) the pass covered 15/16 of 8 x 2048 x 4096 (0.39 ms
# of a 1.40 ms forward, session 8); with 2 main segments it covers half.
# Only where that leaves at most FWD_MAIN_SEGMENTS main segments: a pass over (n-1)/n of the length
# saves little past that, and one wave of long main programs ran slower than many waves of short ones
# (H200, session 8, fwd+bwd: 8 x 2048 x 4096 5.91 against 6.09-6.16 ms with 2 main segments; 1 x 512
# x 2^20 51.5-51.7 against 50.1-50.5 with 60).
FWD_MAIN_SLOTS_PER_SM = 8
FWD_MAIN_FILL = 0.9
FWD_MAIN_SEGMENTS = 4
# The backward's: many short waves (session 7, with BWD_SEG_SLOTS_PER_SM = 12): fwd+bwd 9.85 / 52.2 ms
# at 4 x 1536 x 16384 / 1 x 512 x 2^20 against 10.50 / 55.2 with 4 waves of 8 slots. SEG_STATE_BUDGET
# then caps the second at 1,024 segments (untimed; 745 and 1,490 segments ran 53.9 and 52.3 ms).
SEG_WAVES = 16
# The segment kernels (no scan, only sums: far fewer live registers) walk their segment in
# chunks this many times longer, which amortises the per-chunk overhead.
SEG_COARSEN = 4
# Register caps (ptx .maxnreg) for the two chunk kernels, applied only when the grid is more
# than one wave of resident programs: a cap trades spills to local memory for more resident
# warps, which pays only if there are programs waiting. On the H200 (benchmarks/results/README.md, session 1,
# sweep) capping the backward at 128 registers made the segmented shapes 10% faster
# (1 x 512 x 2^20: 98.9 -> 89.1 ms) and the one-wave 8 x 2048 x 4096 30% slower (11.3 -> 14.7 ms).
# Since the backward needs 227 registers (session 5), 168 beats 128 where a cap applies: fwd+bwd
# 11.10 / 56.84 ms at 4 x 1536 x 16384 / 1 x 512 x 2^20 against 11.49 / 58.41 (none: 11.51 / 59.20).
# The step forward: ptxas keeps it at 128 registers on its own (with 4 spill instructions, sm_90);
# allowed 255 it takes 248 and hoists loads further ahead of their use, at half the resident warps.
# The H200 measured that as faster (session 7, benchmarks/results/README.md): forward 12.61 against
# 13.96 ms at 1 x 512 x 2^20, fwd+bwd 7.10 / 10.82 against 7.12 / 10.99 ms at the other two shapes.
# (Raising the step segment kernels' registers the same way made them slower.) Unlike the backward's
# cap, this one applies to every forward launch, one wave or several (FWD_MAIN_SLOTS_PER_SM).
FWD_MAXNREG = 255
BWD_MAXNREG = 168
# The backward's (N, T) tiles take their layout from the B/C loads, which the compiler vectorises
# along the steps as far as it can prove them contiguous: 8 bf16 steps a thread put a (16, 32) tile
# on 8 x 4 lanes, so every per-step vector (softplus, gate, du, ddelta) is computed 8 times over.
# Showing it only 4-step runs gives 4 x 8 lanes and 4 copies: 1,272 SASS instructions a channel and
# chunk against 1,392 (benchmarks/sass_stats.py, sm_90); 2-step runs cost more shuffles (1,455).
BWD_LOAD_RUN = 4

# ----------------------------------------------------------------------------------------------
# Launchers


@dataclass(frozen=True)
class ScanPlan:
    """How a call is cut into programs: chunk length, channels per program, chunks per segment."""

    chunk: int
    fwd_block: int
    fwd_seg_chunks: int  # the main kernel's segments
    bwd_block: int
    bwd_seg_chunks: int
    fwd_pass_chunks: int = 0  # the forward segment pass's, dividing fwd_seg_chunks (0: the same)


@cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _chunk_for(length: int) -> int:
    # depends on the length alone: the backward must cut E the way the forward did
    return min(CHUNK, max(16, triton.next_power_of_2(max(length, 1))))


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _lane_block(group_dim: int) -> int:
    """Channels per program of the one-channel-per-lane kernels: the largest power of two <= 32 x
    LANE_WARPS dividing group_dim (a program stays inside one B/C group); see _one_per_lane for where
    they run."""
    return max(k for k in (2**i for i in range(11)) if k <= 32 * LANE_WARPS and group_dim % k == 0)


def _bwd_seg_chunks(programs: int, slots: int, n_chunks: int, rows: int) -> int:
    """The backward's chunks per segment: SEG_WAVES waves of `slots`, within SEG_STATE_BUDGET."""
    cps = _seg_chunks(programs, slots, n_chunks, FULL, SEG_WAVES)
    least = triton.cdiv(n_chunks, max(1, SEG_STATE_BUDGET // rows))
    return min(n_chunks, max(cps, triton.cdiv(least, SEG_COARSEN) * SEG_COARSEN))


def _seg_chunks(programs: int, slots: int, n_chunks: int, full: float, waves: float) -> int:
    """Chunks per segment for a launch of `programs` programs (per segment) on `slots` resident ones:
    one segment from `full` of the slots up, else enough for `waves` waves."""
    if programs >= full * slots:
        return n_chunks
    n_seg = min(n_chunks, triton.cdiv(int(waves * slots), programs))
    # a multiple of SEG_COARSEN chunks, so the segment kernels can step that many at once
    return triton.cdiv(triton.cdiv(n_chunks, n_seg), SEG_COARSEN) * SEG_COARSEN


def plan_scan(batch: int, dim: int, length: int, d_state: int, part_dim: int, var_bc: bool, n_sm: int) -> ScanPlan:
    """Pick the cut. `part_dim`: channels sharing one B and one C group (a program stays inside
    it); `var_bc`: B or C depends on the input (so the backward needs dB/dC partial buffers)."""
    chunk = _chunk_for(length)
    n_chunks = max(1, triton.cdiv(length, chunk))
    nps = max(2, triton.next_power_of_2(d_state))
    rows = batch * dim
    divs = _divisors(part_dim)

    if FWD_KERNEL == "seq":
        # one channel per lane: the largest power of two dividing part_dim, <= 32 x LANE_WARPS;
        # FWD_SEQ_SLOTS_PER_SM counts warps
        fwd_slots = FWD_SEQ_SLOTS_PER_SM // LANE_WARPS * n_sm
        main_slots = FWD_MAIN_SLOTS_PER_SM // LANE_WARPS * n_sm
        fwd_block = _lane_block(part_dim)
    else:
        # a few channels per program share the B/C tiles
        fwd_slots = FWD_SLOTS_PER_SM * n_sm
        fwd_block = next((k for k in divs if k >= 4 and rows // k >= FULL * fwd_slots), None)
        if fwd_block is None:
            fwd_block = next((k for k in divs if k >= 4), part_dim)
        main_slots = fwd_slots
    # backward: more channels per program keep the dB/dC partial buffers small
    bwd_slots = BWD_SLOTS_PER_SM * n_sm
    fits = [k for k in divs if not var_bc or batch * (dim // k) * nps * length <= PARTIAL_BUDGET] or [part_dim]
    bwd_block = None
    for least in (16, 8, 4):
        bwd_block = bwd_block or next((k for k in fits if k >= least and rows // k >= FULL * bwd_slots), None)
    if bwd_block is None:  # segments will supply the programs
        bwd_block = next((k for k in fits if k >= 16), fits[-1])
    # a launch that fills the uncapped slots needs no segments; segmented ones count capped slots
    bwd_seg_chunks = n_chunks
    if rows // bwd_block < FULL * bwd_slots:
        seg_slots = (BWD_SEG_SLOTS_PER_SM or BWD_SLOTS_PER_SM) * n_sm
        bwd_seg_chunks = _bwd_seg_chunks(rows // bwd_block, seg_slots, n_chunks, rows)
    fwd_seg_chunks, fwd_pass_chunks = _fwd_seg_chunks(rows // fwd_block, main_slots, fwd_slots, n_chunks)
    return ScanPlan(chunk, fwd_block, fwd_seg_chunks, bwd_block, bwd_seg_chunks, fwd_pass_chunks)


def _fwd_seg_chunks(programs: int, main_slots: int, pass_slots: int, n_chunks: int) -> tuple[int, int]:
    """The forward's chunks per main segment and per segment-pass segment (a divisor of the first),
    for `programs` programs per segment: the main kernel's the fewest that fill FWD_MAIN_FILL of
    `main_slots`, cut into pass segments near the size _seg_chunks picks for `pass_slots`; past
    FWD_MAIN_SEGMENTS main segments, one cut for both (_seg_chunks')."""
    pcs = _seg_chunks(programs, pass_slots, n_chunks, FWD_FULL, FWD_SEG_WAVES)
    if programs >= FWD_MAIN_FILL * main_slots or pcs >= n_chunks:
        return n_chunks, n_chunks
    n_main = triton.cdiv(math.ceil(FWD_MAIN_FILL * main_slots), programs)
    if n_main > FWD_MAIN_SEGMENTS:
        return pcs, pcs
    cps = triton.cdiv(n_chunks, n_main)
    # `every` pass segments per main one, near the pass's own size; rounding up keeps the main count
    every = max(1, round(cps / pcs))
    pcs = triton.cdiv(cps, every)
    return (n_chunks, n_chunks) if pcs * every >= n_chunks else (pcs * every, pcs)


def _reg_cap(maxnreg: int | None, u: torch.Tensor, programs: int, slots_per_sm: int) -> dict:
    """`maxnreg` for a launch of `programs` one-warp programs: only on the GPU (the interpreter
    has no registers) and only when they exceed one wave of `slots_per_sm` per multiprocessor."""
    if not maxnreg or not u.is_cuda:
        return {}
    return {"maxnreg": maxnreg} if programs > slots_per_sm * _sm_count(u.device.index or 0) else {}


def _groups(M: torch.Tensor) -> int:
    """0 for a constant (dim, N) matrix, else the number of groups."""
    return 0 if M.dim() == 2 else (1 if M.dim() == 3 else M.shape[1])


# the module settings plan_scan reads: part of the plan cache's key, since sweeps change them
_PLAN_SETTINGS = ("CHUNK", "FWD_KERNEL", "LANE_WARPS", "FWD_SEQ_SLOTS_PER_SM", "FWD_SLOTS_PER_SM", "BWD_SLOTS_PER_SM",
                  "BWD_SEG_SLOTS_PER_SM", "PARTIAL_BUDGET", "SEG_STATE_BUDGET", "FULL", "FWD_FULL", "FWD_SEG_WAVES",
                  "SEG_WAVES", "SEG_COARSEN", "FWD_MAIN_SLOTS_PER_SM", "FWD_MAIN_FILL",
                  "FWD_MAIN_SEGMENTS")  # fmt: skip
_plans: dict[tuple, ScanPlan] = {}


def _make_plan(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> ScanPlan:
    """plan_scan for these inputs, remembered: at dim 2048 planning takes ~70 us of Python (divisors),
    paid before the forward's first kernel and again in the backward (benchmarks/gpu_scan.py --overhead)."""
    batch, dim, length = u.shape
    gb, gc = _groups(B), _groups(C)
    part = math.lcm(max(gb, 1), max(gc, 1))
    n_sm = _sm_count(u.device.index if u.device.index is not None else torch.cuda.current_device()) if u.is_cuda else 4
    args = (batch, dim, length, A.shape[1], dim // part, gb > 0 or gc > 0, n_sm)
    g = globals()
    key = (g["plan_scan"], args, tuple(g[k] for k in _PLAN_SETTINGS))  # plan_scan too: tests replace it
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = plan_scan(*args)
    return plan


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


def _one_per_lane(channels: int, on_gpu: bool) -> bool:
    """Whether the step-by-step kernels (one channel per lane, 8-step blocks) may run a program of
    `channels` channels: on the GPU only with every lane of its LANE_WARPS warps its own channel (with
    fewer channels lanes repeat them, and compiled that way they gave wrong results on an H200); in
    the interpreter, which computes those right, from 8 so CI covers masks and partial blocks at tiny dims."""
    return channels == 32 * LANE_WARPS if on_gpu else channels >= 8


def _seq_segments_ok(packed: bool, u: torch.Tensor) -> bool:
    """Whether the step-by-step segment passes may run. Not for packed sequences on the GPU: with
    both on, tests/gpu/test_packed_cuda.py failed at 2 x 64 x 4096 on an H200 (session 4; the
    interpreter computes those cases right, and 2^16 + 3 steps passed). Their `alive` flag was a
    tl.min over the in-thread 8-step axis, now a product; until a GPU run passes with them, packed
    rows take the summing segment kernels there, which passed it."""
    return not (packed and u.is_cuda)


def _padded_bc(M: torch.Tensor, padded_length: int, NP: int, acc: torch.dtype) -> torch.Tensor:
    """B or C for the step-by-step forward: a constant (dim, N) matrix as it is; otherwise a float32
    (batch, groups, padded_length, NP) copy, zero past the end, so the kernel loads a step's row
    with four vector loads, no masks and no conversions (it is N/dim of the size of u)."""
    if M.dim() == 2:
        return M
    grouped = M if M.dim() == 4 else M.unsqueeze(1)
    batch, groups, d_state, length = grouped.shape
    if padded_length == length and NP == d_state:  # nothing to pad: no zeros to write (host time, see _eager)
        if M.dtype != acc:  # one call: a conversion always copies, into the memory format asked for
            return grouped.transpose(2, 3).to(acc, memory_format=torch.contiguous_format)
        # (not .to() here: with the dtype unchanged it returns the transposed view itself)
        return grouped.transpose(2, 3).contiguous()
    out = torch.zeros(batch, groups, padded_length, NP, dtype=acc, device=M.device)
    out[:, :, :length, :d_state] = grouped.transpose(2, 3)
    return out


def _scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, seq_idx=None):
    """Launch the forward; returns y (batch, dim, length), last_state (batch, dim, N) and E."""
    _check_runnable(u)
    batch, dim, length = u.shape
    d_state = A.shape[1]
    acc = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    plan = _make_plan(u, A, B, C)
    T = plan.chunk
    n_chunks = triton.cdiv(length, T)
    if length == 0:
        last = torch.zeros(batch, dim, d_state, dtype=acc, device=u.device)
        y, E = torch.empty_like(u), torch.empty(batch, dim, 0, d_state, dtype=acc, device=u.device)
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
    # the segment pass's segments: `every` of them per main segment, those before the last one; the
    # state passing gives the state entering each, and main segment s starts at pass segment s * every
    pcs = plan.fwd_pass_chunks or cps
    every = cps // pcs
    n_pass = (n_seg - 1) * every + 1
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
    # the step kernel works in 8-step blocks. Compiled with fewer channels than lanes (lanes then
    # repeat channels) it gave wrong y on an H200: at 4 channels in float32, at 8 in bf16 (tests/gpu:
    # step vs scan forward, and the 1 x 8 x 2^20 case). So on the GPU it runs only with one channel
    # per lane; the interpreter, which computed those cases right, keeps it from 8 channels so CI
    # covers its masks and partial blocks at tiny dims.
    step = FWD_KERNEL == "seq" and T % 8 == 0 and _one_per_lane(DK, u.is_cuda)
    fast_exp = u.is_cuda and acc == torch.float32
    # Host time counts here (the GPU waits for the first long kernel, see _eager): what only the main
    # kernel needs (C's rows, y, E) is made after the segment pass is launched
    Bk = _padded_bc(B, n_chunks * T, NP, acc) if step else B
    if n_seg > 1:
        P = torch.empty(batch, dim, n_pass, d_state, dtype=acc, device=u.device)
        S = torch.empty_like(P)
        # the last main segment's end state is the last chunk's E, which the main kernel writes: the
        # segment pass stops before it, and state passing does not read the last P and S
        seg_grid = (batch, dim // DK, n_pass - 1)
        f = SEG_COARSEN if pcs % SEG_COARSEN == 0 else 1
        if step and FWD_SEG_KERNEL == "seq" and _seq_segments_ok(flags["HAS_SEQ"], u):
            _segment_state_fwd_seq_kernel[seg_grid](
                u, delta, A, Bk, bias, keep, P, S, dim, length, d_state, n_chunks, pcs, n_pass, bgd, bg,
                n_chunks * T, 0, DK=DK, T=T, NP=NP, FAST_EXP=fast_exp, num_warps=LANE_WARPS,
                EVEN_T=True,  # the pass stops before the last chunk, the only one that can be partial
                **flags,
            )  # fmt: skip
        else:
            _segment_state_fwd_kernel[seg_grid](
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
                pcs // f,
                n_pass,
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
            n_pass,
            d_state,
            SB=min(64, triton.next_power_of_2(n_pass)),
            NP=NP,
            HAS_INIT=has_h0,
            REVERSE=False,
            IS_F64=flags["IS_F64"],
            num_warps=NUM_WARPS,
        )
        has_h0 = True
    Ck = _padded_bc(C, n_chunks * T, NP, acc) if step else C
    y = torch.empty_like(u)
    E = torch.empty(batch, dim, n_chunks, d_state, dtype=acc, device=u.device)
    kernel, extra = (
        (_selective_scan_fwd_seq_kernel, dict(FAST_EXP=fast_exp, EVEN_T=length % T == 0))
        if step
        else (_selective_scan_fwd_kernel, {})
    )
    kernel[grid](
        u,
        delta,
        A,
        Bk,
        Ck,
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
        n_pass,
        every,
        bgd,
        cgd,
        bg,
        cg,
        *((n_chunks * T, 0) if kernel is _selective_scan_fwd_seq_kernel else ()),
        DK=DK,
        T=T,
        NP=NP,
        C_CONST=C.dim() == 2,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_H0=has_h0,
        num_warps=LANE_WARPS if step else NUM_WARPS,
        **extra,
        **_reg_cap(FWD_MAXNREG, u, batch * (dim // DK) * n_seg, 0),  # always: see FWD_MAXNREG
        **flags,
    )
    return y, E[:, :, -1].clone(), E


def _scan_bwd(
    dy, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, E, delta_softplus, seq_idx=None, emit_y=False
):
    """Launch the backward; returns the gradients of u, delta, A, B, C, D, z, delta_bias, initial_state
    (None for absent inputs), then y recomputed (emit_y) or None."""
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
    y = torch.empty_like(u) if emit_y else None
    DK = plan.bwd_block
    NP = max(2, triton.next_power_of_2(d_state))
    bgd, bg = _bc_args(B, dim)
    cgd, cg = _bc_args(C, dim)
    step_dk = _lane_block(math.gcd(bgd, cgd))  # the backward proper: variable B and C only
    step = BWD_KERNEL == "seq" and T % 4 == 0 and B.dim() > 2 and C.dim() > 2 and _one_per_lane(step_dk, u.is_cuda)
    cps = plan.bwd_seg_chunks
    if step and u.is_cuda:  # its own programs (a channel per lane) set its segments
        slots = BWD_SEQ_SLOTS_PER_SM // LANE_WARPS * _sm_count(dev.index or 0)
        cps = _bwd_seg_chunks(batch * dim // step_dk, slots, n_chunks, batch * dim)
    n_seg = max(1, triton.cdiv(n_chunks, cps))
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
    # the step-by-step kernels pick their own channel blocks (a lane per channel, inside one group)
    # and read B and C as padded float32 rows, made once for both
    seq_dk = _lane_block(cgd)  # segment pass: P and Q do not depend on the blocks
    seg_seq = (
        n_seg > 1 and BWD_SEG_KERNEL == "seq" and T % 8 == 0 and _one_per_lane(seq_dk, u.is_cuda)
        and _seq_segments_ok(flags["HAS_SEQ"], u)
    )  # fmt: skip
    padded = n_chunks * T
    Cp = _padded_bc(C, padded, NP, acc) if seg_seq or step else None
    if n_seg > 1:
        P = torch.empty(batch, dim, n_seg, d_state, dtype=acc, device=dev)
        Q = torch.empty_like(P)
        f = SEG_COARSEN if cps % SEG_COARSEN == 0 else 1
        if seg_seq:
            _segment_state_bwd_seq_kernel[(batch, dim // seq_dk, n_seg)](
                delta, A, Cp, z if z is not None else u, bias, keep, dy, P, Q,
                dim, length, d_state, n_chunks, cps, n_seg, cgd, cg, padded, 0,
                DK=seq_dk, T=T, NP=NP, FAST_EXP=u.is_cuda and acc == torch.float32, num_warps=LANE_WARPS, **flags,
            )  # fmt: skip
        else:
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
    if step:  # after the summing segment pass, whose grid is the plan's
        DK = step_dk
    # every slice below is written exactly once (one program owns each channel and chunk)
    # per (channel, chunk) partials chunk-major: summing (batch, n_chunks, dim, N) over its two leading
    # axes reads memory in order (~2x faster than over axes 0 and 2 of (batch, dim, n_chunks, N))
    if B.dim() == 2:
        dB_part = torch.empty(batch, n_chunks, dim, d_state, dtype=acc, device=dev)
    else:
        dB_part = torch.empty(batch, bg, bgd // DK, d_state, length, dtype=acc, device=dev)
    if C.dim() == 2:
        dC_part = torch.empty(batch, n_chunks, dim, d_state, dtype=acc, device=dev)
    else:
        dC_part = torch.empty(batch, cg, cgd // DK, d_state, length, dtype=acc, device=dev)
    dA_part = torch.empty(batch, n_chunks, dim, d_state, dtype=acc, device=dev)
    dD_part = torch.empty(batch, n_chunks, dim, dtype=acc, device=dev)
    dbias_part = torch.empty(batch, n_chunks, dim, dtype=acc, device=dev)
    # the kernel picks the initial state or E by chunk: both must be the same pointer type
    h0 = initial_state.to(acc) if initial_state is not None else E
    if step:
        scratch = torch.empty(batch * (dim // DK) * n_seg, T // 2, DK, NP, dtype=acc, device=dev)
        _selective_scan_bwd_seq_kernel[(batch, dim // DK, n_seg)](
            u, delta, A, _padded_bc(B, padded, NP, acc), Cp,
            D if D is not None else A, z if z is not None else u, bias, keep, h0, E, dy, R, du, ddelta,
            dz if dz is not None else du, y if emit_y else du, dB_part, dC_part, dA_part, dD_part, dbias_part,
            scratch, dim, length, d_state, n_chunks, cps, n_seg, bgd, cgd, bg, cg, padded, 0,
            DK=DK, T=T, NP=NP, HAS_D=D is not None, HAS_H0=initial_state is not None, EMIT_Y=emit_y,
            FAST_EXP=u.is_cuda and acc == torch.float32, num_warps=LANE_WARPS,
            **{k: v for k, v in flags.items() if k != "C_CONST"},
        )  # fmt: skip
    else:
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
            y if emit_y else du,
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
            0,
            DK=DK,
            T=T,
            NP=NP,
            B_CONST=B.dim() == 2,
            HAS_D=D is not None,
            HAS_H0=initial_state is not None,
            EMIT_Y=emit_y,
            FAST_EXP=u.is_cuda and acc == torch.float32,
            RUN=BWD_LOAD_RUN,
            N_FULL=d_state == NP,
            EVEN_T=length % T == 0,
            num_warps=BWD_NUM_WARPS,
            **_reg_cap(BWD_MAXNREG, u, batch * (dim // DK) * n_seg, BWD_SLOTS_PER_SM),
            **flags,
        )
    # fixed-order sums over the partial slices: the same bits on every run
    if B.dim() == 2:
        dB = dB_part.sum((0, 1))
    else:
        dB = dB_part.sum(2).reshape(B.shape)
    if C.dim() == 2:
        dC = dC_part.sum((0, 1))
    else:
        dC = dC_part.sum(2).reshape(C.shape)
    dA = dA_part.sum((0, 1)).to(A.dtype)
    dD = dD_part.sum((0, 1)).to(D.dtype) if D is not None else None
    dbias = dbias_part.sum((0, 1)).to(delta_bias.dtype) if delta_bias is not None else None
    dinit = R[:, :, 0].to(initial_state.dtype) if initial_state is not None else None
    return du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz, dbias, dinit, y


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
    emit_y: bool = False,
) -> list[torch.Tensor]:
    """The gradients of u, delta, A, B, C, D, z, delta_bias, initial_state, then y (the forward's
    output, recomputed on the way, when emit_y: a caller that did not keep it; else empty)."""
    *grads, y = _scan_bwd(
        dy, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, E, delta_softplus, seq_idx, emit_y
    )
    # custom ops return tensors only: an empty tensor stands for "no such input"
    return [g if g is not None else _empty().to(u.device) for g in (*grads, y)]


@_selective_scan_bwd_op.register_fake
def _(dy, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, E, delta_softplus, seq_idx=None, emit_y=False):
    like = (u, delta, A, B, C, D, z, delta_bias, initial_state, u if emit_y else None)
    return [torch.empty_like(t) if t is not None else u.new_empty(0) for t in like]


def _eager(u: torch.Tensor) -> bool:
    """Whether a call may skip the custom ops: plain tensors outside torch.compile. Tracers (dynamo,
    and AOT autograd tracing the backward with fake or functional tensors) need the ops, which are
    opaque to them; in eager mode their Python dispatch costs more host time than the kernels'
    launches, ~0.3 ms a call on the H200 benchmark machine, where the GPU waits for it
    (benchmarks/gpu_scan.py --overhead)."""
    return type(u) is torch.Tensor and not torch.compiler.is_compiling()


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, seq_idx=None):
    """The forward (y, last_state, E), as the custom op computes it; directly when _eager."""
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, seq_idx)
    return _scan_fwd(*args) if _eager(u) else _selective_scan_fwd_op(*args)


def scan_bwd(
    dy, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, E, delta_softplus, seq_idx=None, emit_y=False
):
    """The backward's gradients of u, delta, A, B, C, D, z, delta_bias, initial_state, then y (emit_y),
    as the custom op computes them; directly when _eager. An absent input's gradient (and y without
    emit_y) is None, or an empty tensor from the op."""
    args = (dy, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, E, delta_softplus, seq_idx, emit_y)
    return _scan_bwd(*args) if _eager(u) and _eager(dy) else _selective_scan_bwd_op(*args)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, seq_idx = inputs
    _, _, E = output
    # unused outputs send None, not zeros: a zero dE would be a memset of E's size (134 MB at
    # 8 x 2048 x 4096) for nothing, a zero d last_state the same sums as none
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(E)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, E, seq_idx)
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dy, dlast, _dE):
    u, delta, A, B, C, D, z, delta_bias, initial_state, E, seq_idx = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(u)
    grads = scan_bwd(dy, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, E, ctx.delta_softplus, seq_idx)
    present = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    # no gradient for delta_softplus (a flag) nor seq_idx (integers)
    return (*[g if t is not None else None for g, t in zip(grads, present, strict=False)], None, None)


_selective_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _SelectiveScanFn(torch.autograd.Function):
    """The eager path of selective_scan_triton: the custom op's autograd (same context and backward)
    without its dispatch (see _eager). It takes the forward's output already computed: the kernels
    are queued before apply() does its bookkeeping (~15-45 us of host time on the H200 benchmark
    machine, which the GPU would otherwise spend waiting for its first kernel, session 8)."""

    @staticmethod
    def forward(ctx, output, *inputs):  # with a separate setup_context, apply() would bind defaults (inspect)
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, dy, dlast, dE):
        return None, *_backward(ctx, dy, dlast, dE)


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
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus), seq_idx)
    if _eager(u):
        output = _scan_fwd(*args)
        y, last, _ = _SelectiveScanFn.apply(output, *args) if torch.is_grad_enabled() else output
    else:
        y, last, _ = _selective_scan_fwd_op(*args)
    return (y, last) if return_last_state else y
