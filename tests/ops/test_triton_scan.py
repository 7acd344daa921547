"""Triton selective scan against `selective_scan_ref`: values, every gradient, last_state.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1 must be
set before the kernels are defined, i.e. before `core.ops.triton_scan` is imported). Shapes are
tiny and the plan (chunk length, channels per program, chunks per segment) is forced small so
that several chunks, segments and channel blocks are crossed even at length 37.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from core.ops import (  # noqa: E402
    selective_scan,
    selective_scan_ref,
    triton_scan,  # noqa: E402
)
from core.ops.triton_scan import ScanPlan  # noqa: E402
from core.ops.triton_scan_fwd import _sigmoid, _softplus  # noqa: E402

tl = triton.language

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
# fp32 maths on both sides; the scan orders sums differently from the reference loop
TOL = {torch.float32: (2e-4, 2e-5), torch.bfloat16: (2e-2, 2e-2), torch.float64: (1e-9, 1e-10)}


@pytest.fixture
def force_plan(monkeypatch):
    def force(plan):
        if plan is not None:
            monkeypatch.setattr(triton_scan, "plan_scan", lambda *args, **kwargs: plan)

    return force


def make_inputs(
    batch,
    dim,
    length,
    d_state,
    groups=1,
    bc="var",
    dtype=torch.float32,
    seed=0,
    has_d=True,
    has_z=True,
    has_bias=True,
    has_h0=True,
):
    """Random inputs in `dtype` (A, D, delta_bias stay float32 as in a model); bc: var | const | mixed."""
    g = torch.Generator().manual_seed(seed)
    param = torch.float64 if dtype == torch.float64 else torch.float32

    def rand(*shape, dt=dtype, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dt).to(DEVICE)

    bc_shape = (batch, groups, d_state, length) if groups > 1 else (batch, d_state, length)
    B = rand(dim, d_state) if bc == "const" else rand(*bc_shape)
    C = rand(dim, d_state) if bc in ("const", "mixed") else rand(*bc_shape)
    return dict(
        u=rand(batch, dim, length),
        delta=rand(batch, dim, length, scale=0.5),
        A=(-0.5 - torch.rand(dim, d_state, generator=g, dtype=torch.float64)).to(param).to(DEVICE),
        B=B,
        C=C,
        D=rand(dim, dt=param) if has_d else None,
        z=rand(batch, dim, length) if has_z else None,
        delta_bias=rand(dim, dt=param, scale=0.3) if has_bias else None,
        initial_state=rand(batch, dim, d_state, dt=param) if has_h0 else None,
    )


def run(fn, inputs, softplus, grads=True, seed=1):
    """Forward with last_state, then gradients of a random projection of y and last_state."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    full = {k: leaves.get(k) for k in NAMES}
    y, last = fn(**full, delta_softplus=softplus, return_last_state=True)
    if not grads:
        return y, last, {}
    g = torch.Generator().manual_seed(seed)
    wy = torch.randn(y.shape, generator=g).to(DEVICE, y.dtype)
    wl = torch.randn(last.shape, generator=g).to(DEVICE, last.dtype)
    loss = (y.float() * wy.float()).sum() + (last * wl).sum()
    dx = torch.autograd.grad(loss, list(leaves.values()))
    return y, last, dict(zip(leaves, dx, strict=False))


def triton_fn(**kw):
    return selective_scan(**kw, backend="triton")


def assert_close(got, want, dtype, what):
    rtol, atol = TOL[dtype]
    scale = want.detach().abs().max().item() + 1e-6
    err = (got.detach().double() - want.detach().double()).abs().max().item()
    assert err <= atol * max(scale, 1.0) + rtol * scale, f"{what}: max abs error {err:.3e} (scale {scale:.3e})"


CASES = [
    # (batch, dim, length, d_state, groups, bc, options, plan) ; plan None = the real heuristic
    (2, 4, 1, 4, 1, "var", {}, None),
    (2, 4, 37, 5, 1, "var", {}, ScanPlan(16, 2, 1, 2, 1)),
    (1, 4, 37, 4, 2, "var", {}, ScanPlan(8, 1, 2, 2, 2)),  # groups, several segments
    (2, 6, 29, 3, 3, "var", dict(has_d=False, has_h0=False), ScanPlan(8, 2, 3, 1, 1)),
    (2, 4, 23, 4, 1, "const", dict(has_z=False, has_bias=False), ScanPlan(8, 2, 2, 4, 2)),
    (1, 4, 19, 4, 2, "mixed", dict(has_h0=False), ScanPlan(8, 1, 1, 2, 1)),
    (1, 2, 40, 4, 1, "var", dict(has_d=False, has_z=False, has_bias=False, has_h0=False), None),
    # segments of 4 chunks: the segment kernels walk them in one 4x longer chunk
    (1, 4, 37, 4, 1, "var", dict(has_h0=False), ScanPlan(4, 2, 4, 2, 4)),
    # the forward's segment pass cut finer than its main segments (4 and 2 pass segments per main one)
    (1, 4, 70, 4, 1, "var", {}, ScanPlan(8, 2, 4, 2, 2, 1)),
    (2, 4, 70, 3, 1, "var", dict(has_h0=False), ScanPlan(8, 2, 4, 2, 2, 2)),
]


@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}d{c[1]}l{c[2]}n{c[3]}g{c[4]}{c[5]}")
def test_matches_reference(case, softplus, force_plan):
    check_against_reference(case, softplus, force_plan)


def check_against_reference(case, softplus, force_plan):
    """y, last_state and every gradient of the Triton scan against the reference, for one CASES row."""
    batch, dim, length, d_state, groups, bc, options, plan = case
    force_plan(plan)
    inputs = make_inputs(batch, dim, length, d_state, groups, bc, **options)
    y, last, grads = run(triton_fn, inputs, softplus)
    y_ref, last_ref, grads_ref = run(selective_scan_ref, inputs, softplus)
    assert y.dtype == inputs["u"].dtype and last.dtype == torch.float32
    assert_close(y, y_ref, torch.float32, "y")
    assert_close(last, last_ref, torch.float32, "last_state")
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert grads[name].shape == inputs[name].shape and grads[name].dtype == inputs[name].dtype
        assert_close(grads[name], grads_ref[name], torch.float32, f"d{name}")


def test_bf16_inputs_fp32_maths(force_plan):
    force_plan(ScanPlan(8, 2, 2, 2, 2))
    inputs = make_inputs(2, 4, 21, 4, dtype=torch.bfloat16)
    y, last, grads = run(triton_fn, inputs, True)
    y_ref, last_ref, grads_ref = run(selective_scan_ref, inputs, True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert_close(y, y_ref, torch.bfloat16, "y")
    assert_close(last, last_ref, torch.float32, "last_state")
    for name in grads:
        assert grads[name].dtype == inputs[name].dtype
        assert_close(grads[name], grads_ref[name], torch.bfloat16, f"d{name}")


def test_last_state_only_and_y_only(force_plan):
    """Gradients reach the inputs through last_state alone, and y alone needs no last_state."""
    force_plan(ScanPlan(8, 2, 2, 2, 1))
    inputs = make_inputs(1, 2, 17, 4)
    for fn_out in (lambda y, last: last.sum(), lambda y, last: y.sum()):
        leaves = [v.detach().clone().requires_grad_(True) for v in inputs.values()]
        kw = dict(zip(NAMES, leaves, strict=False))
        got = torch.autograd.grad(fn_out(*triton_fn(**kw, delta_softplus=True, return_last_state=True)), leaves)
        # the reference's graph for last_state alone does not touch C (or D, z): no gradient is zero
        want = torch.autograd.grad(
            fn_out(*selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)), leaves, allow_unused=True
        )
        for name, a, b, leaf in zip(NAMES, got, want, leaves, strict=False):
            assert_close(a, torch.zeros_like(leaf) if b is None else b, torch.float32, f"d{name}")
    y = triton_fn(**inputs)
    assert torch.is_tensor(y) and y.shape == inputs["u"].shape


def test_eager_calls_skip_the_custom_ops_with_the_same_results(force_plan, monkeypatch):
    """Plain tensors outside torch.compile take the direct path (no op dispatch); it computes what
    the custom ops (and their registered autograd) compute, bit for bit, including the LM block's
    helpers scan_fwd / scan_bwd."""
    force_plan(ScanPlan(8, 2, 2, 2, 2))
    inputs = make_inputs(2, 4, 30, 4)

    def through_ops(**kw):
        args = [kw[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")]
        y, last, _ = triton_scan._selective_scan_fwd_op(*args, kw["delta_softplus"], None)
        return y, last

    y_op, last_op, grads_op = run(through_ops, inputs, True)

    def refuse(*args, **kwargs):
        raise AssertionError("an eager call went through the custom op")

    monkeypatch.setattr(triton_scan, "_selective_scan_fwd_op", refuse)
    monkeypatch.setattr(triton_scan, "_selective_scan_bwd_op", refuse)
    y, last, grads = run(triton_fn, inputs, True)
    assert torch.equal(y, y_op) and torch.equal(last, last_op)
    assert grads.keys() == grads_op.keys()
    for name in grads:
        assert torch.equal(grads[name], grads_op[name]), f"d{name} differs from the custom op's"
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")]
    y2, last2, E = triton_scan.scan_fwd(*args, True)
    assert torch.equal(y2, y_op) and torch.equal(last2, last_op)
    dy = torch.ones_like(y2)
    *_, y_back = triton_scan.scan_bwd(dy, None, *args, E, True, None, True)
    assert_close(y_back, y_op, torch.float32, "y recomputed by the backward (emit_y)")


@triton.jit
def _activation_kernel(x_ptr, y_ptr, n, SIGMOID: tl.constexpr, FAST: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n, other=0.0)
    y = _sigmoid(x, FAST) if SIGMOID else _softplus(x, FAST)
    tl.store(y_ptr + i, y, mask=i < n)


ACTIVATIONS = [(torch.float32, False), (torch.float64, False), (torch.float32, True)]


@pytest.mark.parametrize("sigmoid", [False, True], ids=["softplus", "sigmoid"])
@pytest.mark.parametrize("dtype,fast", ACTIVATIONS, ids=["fp32", "fp64", "fp32-fast"])
def test_activations_are_accurate_everywhere(dtype, fast, sigmoid):
    """The kernels' softplus (every delta, the decode step's dt) and sigmoid (the z gate, softplus'
    derivative) against torch's, relative error from -30 to 30: float32 within 1e-6 in the interpreter
    (log(1 + e^x) was off by up to 17% near x = -15, where 1 + e^x rounds) and 2e-6 on a GPU, where
    float32 exp and log are themselves MUFU approximations (measured on the H200: 1.7e-6 plain, and
    with FAST's MUFU.EX2 and MUFU.RCP: inline PTX, so GPU only)."""
    if fast and DEVICE != "cuda":
        pytest.skip("FAST is inline PTX: GPU only (tests/gpu runs this file on the H200)")
    x = torch.linspace(-30.0, 30.0, 60_001, dtype=dtype, device=DEVICE)
    y = torch.empty_like(x)
    _activation_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), SIGMOID=sigmoid, FAST=fast, BLOCK=1024)
    want = torch.sigmoid(x.double()) if sigmoid else torch.nn.functional.softplus(x.double())
    rel = ((y.double() - want).abs() / want).max().item()
    bound = 1e-9 if dtype == torch.float64 else (2e-6 if DEVICE == "cuda" else 1e-6)
    assert rel < bound, f"max relative error {rel:.2e}"


def test_backward_is_deterministic(force_plan):
    force_plan(ScanPlan(8, 1, 2, 2, 2))
    inputs = make_inputs(2, 4, 30, 4, groups=2)
    _, _, first = run(triton_fn, inputs, True)
    _, _, second = run(triton_fn, inputs, True)
    for name in first:
        assert torch.equal(first[name], second[name]), f"d{name} differs between two identical runs"


def test_gradcheck_float64(force_plan):
    # two chunks in two segments, so the gradient crosses the chunk hand-over and the segment pass
    force_plan(ScanPlan(2, 1, 1, 1, 1))
    inputs = make_inputs(1, 2, 3, 2, dtype=torch.float64)
    leaves = [v.detach().clone().requires_grad_(True) for v in inputs.values()]

    def f(*args):
        return triton_fn(**dict(zip(NAMES, args, strict=False)), delta_softplus=True, return_last_state=True)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_float64_step_forward(force_plan, monkeypatch):
    """The same through the step-by-step kernels (8 channels per program, the least they take;
    chunks of 8, the last one partial, in two segments), forward and backward."""
    force_plan(ScanPlan(8, 8, 2, 1, 2))
    use_step_kernels(monkeypatch, "seq")
    inputs = make_inputs(1, 8, 19, 2, dtype=torch.float64)
    leaves = [v.detach().clone().requires_grad_(True) for v in inputs.values()]

    def f(*args):
        return triton_fn(**dict(zip(NAMES, args, strict=False)), delta_softplus=True, return_last_state=True)

    # fast mode (random directions in and out): the interpreter runs this forward slowly
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


STEP_CASES = [
    # (batch, dim, length, d_state, groups, bc, options, plan): plans with 8 or 16 channels per
    # program, so the step-by-step forward runs (under 8 it hands over to the scan kernel)
    (2, 8, 37, 5, 1, "var", {}, ScanPlan(16, 8, 1, 2, 1)),
    (1, 16, 45, 4, 2, "var", {}, ScanPlan(8, 8, 2, 2, 2)),
    (2, 16, 29, 3, 1, "var", dict(has_d=False, has_h0=False), ScanPlan(8, 16, 3, 4, 1)),
    (2, 8, 23, 4, 1, "const", dict(has_z=False, has_bias=False), ScanPlan(8, 8, 2, 4, 2)),
    (1, 16, 19, 4, 2, "mixed", dict(has_h0=False), ScanPlan(8, 8, 1, 2, 1)),
    (1, 8, 40, 16, 1, "var", {}, None),
    # whole chunks and a power-of-two d_state: B and C rows need no padding (their own copy path)
    (2, 8, 32, 4, 1, "var", {}, ScanPlan(16, 8, 1, 2, 1)),
    (1, 16, 48, 8, 2, "var", {}, ScanPlan(16, 8, 2, 2, 2)),
    # finer segment-pass segments than main ones, as plan_scan cuts 8 x 2048 x 4096 (2 main segments)
    (1, 8, 70, 4, 1, "var", {}, ScanPlan(8, 8, 4, 2, 2, 1)),
    (2, 16, 61, 4, 2, "var", dict(has_h0=False), ScanPlan(8, 8, 6, 2, 2, 2)),
]


def use_step_kernels(monkeypatch, kind: str) -> None:
    """kind "seq": every step-by-step kernel (segment passes, the backward); "sum": the segment
    passes summing over tiles and the backward's associative scans. The forward is "seq" in both."""
    monkeypatch.setattr(triton_scan, "FWD_SEG_KERNEL", kind)
    monkeypatch.setattr(triton_scan, "BWD_SEG_KERNEL", kind)
    monkeypatch.setattr(triton_scan, "BWD_KERNEL", "seq" if kind == "seq" else "scan")


@pytest.mark.parametrize("kind", ["sum", "seq"])
@pytest.mark.parametrize("case", STEP_CASES, ids=lambda c: f"b{c[0]}d{c[1]}l{c[2]}n{c[3]}g{c[4]}{c[5]}")
def test_step_kernels_match_reference(case, kind, force_plan, monkeypatch):
    """The step kernels pick their own channel blocks (8 or 16 here) where the backward's plan has
    others; the step backward takes variable B and C only (const and mixed rows: the scan kernel)."""
    use_step_kernels(monkeypatch, kind)
    check_against_reference(case, True, force_plan)


@pytest.mark.parametrize("kind", ["sum", "seq"])
def test_step_kernels_bf16_and_deterministic(kind, force_plan, monkeypatch):
    use_step_kernels(monkeypatch, kind)
    force_plan(ScanPlan(8, 8, 2, 2, 1))
    inputs = make_inputs(2, 8, 29, 4, dtype=torch.bfloat16)
    y, last, grads = run(triton_fn, inputs, True)
    y_ref, last_ref, grads_ref = run(selective_scan_ref, inputs, True)
    assert_close(y, y_ref, torch.bfloat16, "y")
    for name in grads:
        assert grads[name].dtype == inputs[name].dtype
        assert_close(grads[name], grads_ref[name], torch.bfloat16, f"d{name}")
    _, _, again = run(triton_fn, inputs, True)
    for name in grads:
        assert torch.equal(grads[name], again[name]), f"d{name} differs between two identical runs"


def test_step_kernels_need_one_channel_per_lane_on_the_gpu():
    """The rule itself: on the GPU exactly one channel per lane (32 per one-warp program; 4 and 8 gave
    wrong results on an H200), in the interpreter any block from 8."""
    assert triton_scan._one_per_lane(32 * triton_scan.LANE_WARPS, on_gpu=True)
    assert not any(triton_scan._one_per_lane(k, on_gpu=True) for k in (4, 8, 16, 64))
    assert triton_scan._one_per_lane(8, on_gpu=False) and triton_scan._one_per_lane(32, on_gpu=False)
    assert not triton_scan._one_per_lane(4, on_gpu=False)


@pytest.mark.parametrize("batch,dim,length", [(8, 2048, 4096), (4, 2048, 16384), (1, 512, 1 << 20), (2, 256, 1 << 20)])
def test_forward_plan_cuts_the_segment_pass_finer(batch, dim, length):
    """H200 (132 SMs): the main kernel gets the fewest segments that fill FWD_MAIN_FILL of its resident
    slots, if at most FWD_MAIN_SEGMENTS, and the segment pass's segments divide them near the size
    _seg_chunks picks, so the pass covers all but the last main segment at full occupancy. With more
    main segments (the 2^20-step shapes) both take _seg_chunks' cut."""
    plan = triton_scan.plan_scan(batch, dim, length, 16, dim, True, 132)
    n_chunks = length // plan.chunk
    programs = batch * dim // plan.fwd_block
    main, pcs = plan.fwd_seg_chunks, plan.fwd_pass_chunks
    n_main = -(-n_chunks // main)
    slots = triton_scan.FWD_MAIN_FILL * triton_scan.FWD_MAIN_SLOTS_PER_SM * 132
    want = triton_scan._seg_chunks(programs, 16 * 132, n_chunks, triton_scan.FWD_FULL, triton_scan.FWD_SEG_WAVES)
    if length == 1 << 20:
        assert main == pcs == want
        return
    assert main % pcs == 0 and 1 < n_main <= triton_scan.FWD_MAIN_SEGMENTS
    assert n_main * programs >= slots and (n_main - 1) * programs < slots
    assert 0.75 * want <= pcs <= 1.5 * want
    if (batch, dim) == (8, 2048):
        assert (n_main, main // pcs) == (2, 8)  # the pass covers half the length, not 15/16 of it


def test_lane_warps_widen_the_step_kernels_programs(monkeypatch):
    """LANE_WARPS = 2: the step kernels' programs hold 64 channels, one per lane of two warps, and on
    the GPU only those run them; the forward's plan counts its resident programs in warps."""
    monkeypatch.setattr(triton_scan, "LANE_WARPS", 2)
    assert triton_scan._lane_block(2048) == 64 and triton_scan._lane_block(96) == 32
    assert triton_scan._one_per_lane(64, on_gpu=True) and not triton_scan._one_per_lane(32, on_gpu=True)
    plan = triton_scan.plan_scan(8, 2048, 4096, 16, 2048, True, 132)
    assert plan.fwd_block == 64
    # 256 programs of 2 warps against 8 x 132 resident: the segment pass's segments for FWD_SEG_WAVES
    # waves, and two main segments (512 programs) against the main kernel's 4 x 132
    assert plan.fwd_pass_chunks == triton_scan._seg_chunks(256, 8 * 132, 128, triton_scan.FWD_FULL,
                                                           triton_scan.FWD_SEG_WAVES)  # fmt: skip
    assert plan.fwd_seg_chunks == 64


def test_lane_warps_2_step_kernels_match_reference(force_plan, monkeypatch):
    """Values and every gradient with 64-channel step programs: forward, both segment passes and the
    step backward (which picks its 64-channel blocks itself)."""
    monkeypatch.setattr(triton_scan, "LANE_WARPS", 2)
    use_step_kernels(monkeypatch, "seq")
    check_against_reference((1, 64, 37, 4, 1, "var", {}, ScanPlan(8, 64, 2, 16, 2)), True, force_plan)


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's rule (the GPU's: the test above)")
def test_step_backward_kernels_are_used_from_8_channels(force_plan, monkeypatch):
    """The hand-over rule of the backward's step kernels in the interpreter: from 8 channels in a B
    and C group they run (the segment pass only where there is more than one segment), below that
    the tile kernels do (on the GPU the step kernels need 32, one per lane)."""
    launched = []
    monkeypatch.setattr(triton_scan, "_check_runnable", lambda u: None)
    monkeypatch.setattr(triton_scan, "BWD_KERNEL", "seq")
    names = ("_segment_state_bwd_seq_kernel", "_segment_state_bwd_kernel", "_selective_scan_bwd_seq_kernel",
             "_selective_scan_bwd_kernel")  # fmt: skip
    for name in names:
        monkeypatch.setattr(triton_scan, name, _Recorder(getattr(triton_scan, name), name, launched))
    force_plan(ScanPlan(8, 8, 2, 2, 1))
    for dim in (8, 4):
        inputs = make_inputs(1, dim, 19, 4)
        leaves = [v.detach().clone().requires_grad_(True) for v in inputs.values()]
        triton_fn(**dict(zip(NAMES, leaves, strict=False))).sum().backward()
    assert launched == [names[0], names[2], names[1], names[3]]


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's rule (the GPU's: the test above)")
def test_step_forward_is_used_from_8_channels(force_plan, monkeypatch):
    """The hand-over rule in the interpreter: the step kernel runs at 8 channels per program, the scan
    kernel below (on the GPU the step kernel needs 32, one per lane: tests/gpu)."""
    launched = []
    monkeypatch.setattr(triton_scan, "_check_runnable", lambda u: None)  # it looks at the kernel's type
    for name in ("_selective_scan_fwd_seq_kernel", "_selective_scan_fwd_kernel"):
        kernel = getattr(triton_scan, name)
        monkeypatch.setattr(triton_scan, name, _Recorder(kernel, name, launched))
    for dk in (8, 4):
        force_plan(ScanPlan(8, dk, 2, 2, 2))
        triton_fn(**make_inputs(1, 8, 19, 4))
    assert launched == ["_selective_scan_fwd_seq_kernel", "_selective_scan_fwd_kernel"]


class _Recorder:
    """A kernel stand-in that notes its launches and forwards them."""

    def __init__(self, kernel, name, log):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        self.log.append(self.name)
        return self.kernel[grid]


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[4], CASES[5]], ids=lambda c: f"{c[5]}g{c[4]}")
def test_scan_forward_kernel_matches_reference(case, force_plan, monkeypatch):
    """FWD_KERNEL = "scan" (the associative-scan forward) stays exact as well: it is the other
    variant that benchmarks/gpu_scan.py --sweep times."""
    monkeypatch.setattr(triton_scan, "FWD_KERNEL", "scan")
    check_against_reference(case, True, force_plan)


def test_plan_keeps_partial_buffers_small():
    """The heuristic: no (batch, dim, N, length) buffer; segments only when rows are few."""
    plan = triton_scan.plan_scan(1, 512, 1 << 20, 16, 512, True, 132)
    n_chunks = (1 << 20) // plan.chunk
    assert 1 * (512 // plan.bwd_block) * 16 * (1 << 20) <= triton_scan.PARTIAL_BUDGET
    assert n_chunks // plan.bwd_seg_chunks > 1 and n_chunks // plan.fwd_seg_chunks > 1
    # the backward's segment states too: 16 waves alone would make 2,731 segments of 512 rows
    assert 512 * -(-n_chunks // plan.bwd_seg_chunks) <= triton_scan.SEG_STATE_BUDGET
    plan = triton_scan.plan_scan(8, 2048, 4096, 16, 2048, True, 132)
    assert plan.bwd_seg_chunks == 4096 // plan.chunk  # one segment: rows suffice
    # the step-by-step forward puts 32 channels in a program: 512 programs, too few for 132 SMs alone
    assert plan.fwd_block == 32 and plan.fwd_seg_chunks < 4096 // plan.chunk


def test_plan_counts_backward_segments_in_capped_slots(monkeypatch):
    """Rows that fill the uncapped slots (8 x 2048 x 4096) take no backward segments whatever
    BWD_SEG_SLOTS_PER_SM says; fewer rows (4 x 1536 x 16384) get SEG_WAVES waves of the capped slots."""
    args = (4, 1536, 16384, 16, 1536, True, 132)
    monkeypatch.setattr(triton_scan, "SEG_WAVES", 4)
    monkeypatch.setattr(triton_scan, "BWD_SEG_SLOTS_PER_SM", None)
    eight = triton_scan.plan_scan(*args)
    monkeypatch.setattr(triton_scan, "BWD_SEG_SLOTS_PER_SM", 16)
    sixteen = triton_scan.plan_scan(*args)
    n_chunks = 16384 // eight.chunk
    programs = 4 * 1536 // eight.bwd_block
    # at least SEG_WAVES waves of the counted slots, rounded to SEG_COARSEN chunks a segment
    assert programs * (n_chunks // eight.bwd_seg_chunks) >= 4 * 8 * 132 * 0.9
    assert sixteen.bwd_seg_chunks < eight.bwd_seg_chunks
    full = triton_scan.plan_scan(8, 2048, 4096, 16, 2048, True, 132)
    assert full.bwd_seg_chunks == 4096 // full.chunk


def test_plans_are_remembered_per_settings(monkeypatch):
    """_make_plan keeps a plan per shape and per plan setting: a sweep's setattr gets a new one."""
    u, A, B = torch.zeros(2, 64, 256), torch.zeros(64, 16), torch.zeros(2, 16, 256)
    first = triton_scan._make_plan(u, A, B, B)
    assert first.chunk == 32 and triton_scan._make_plan(u, A, B, B) is first
    monkeypatch.setattr(triton_scan, "CHUNK", 16)
    assert triton_scan._make_plan(u, A, B, B).chunk == 16


def test_forward_state_passing_never_reads_the_last_segment():
    """The forward's segment pass skips the last segment, so its P and S rows are never written:
    NaN there must not reach the states entering the others (several blocks of segments)."""
    from core.ops.triton_scan_fwd import _state_passing_kernel

    rows, n_seg, N = 3, 5, 4
    g = torch.Generator().manual_seed(0)
    P, S = torch.rand(rows, n_seg, N, generator=g), torch.randn(rows, n_seg, N, generator=g)
    P[:, -1], S[:, -1] = float("nan"), float("nan")
    P, S, init = P.to(DEVICE), S.to(DEVICE), torch.randn(rows, N, generator=g).to(DEVICE)
    out, final = torch.empty_like(P), torch.empty(rows, N, device=DEVICE)
    _state_passing_kernel[(rows,)](
        P, S, init, out, final, n_seg, N, SB=2, NP=N, HAS_INIT=True, REVERSE=False, IS_F64=False
    )
    want = [init]
    for s in range(n_seg - 1):
        want.append(P[:, s] * want[-1] + S[:, s])
    torch.testing.assert_close(out, torch.stack(want, 1))
    assert torch.isfinite(final).all()


def test_plan_step_forward_blocks_are_powers_of_two():
    """The step-by-step forward's tile is (DK, N): DK must be a power of two dividing the group."""
    for part_dim, want in [(6, 2), (12, 4), (40, 8), (96, 32), (2048, 32), (7, 1)]:
        assert triton_scan.plan_scan(1, part_dim, 4096, 16, part_dim, True, 132).fwd_block == want


def test_eager_forward_queues_its_kernels_before_autograd(monkeypatch):
    """The eager path launches the forward before autograd.Function.apply's bookkeeping (host time the
    GPU would spend idle), and skips apply altogether without grad mode; gradients still flow."""
    calls = []
    fwd, apply = triton_scan._scan_fwd, triton_scan._SelectiveScanFn.apply
    monkeypatch.setattr(triton_scan, "_scan_fwd", lambda *a: calls.append("kernels") or fwd(*a))
    monkeypatch.setattr(triton_scan._SelectiveScanFn, "apply", lambda *a: calls.append("apply") or apply(*a))
    inputs = make_inputs(1, 4, 16, 4, 1, "var")
    for k in ("u", "delta", "A", "B", "C"):
        inputs[k].requires_grad_(True)
    with torch.no_grad():
        triton_fn(**inputs, delta_softplus=True)
    assert calls == ["kernels"]
    calls.clear()
    y = triton_fn(**inputs, delta_softplus=True)
    assert calls == ["kernels", "apply"] and y.grad_fn is not None
    y.sum().backward()
    assert all(inputs[k].grad is not None for k in ("u", "delta", "A", "B", "C"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("length,padded,d_state,NP", [(32, 32, 16, 16), (29, 32, 5, 8)])
def test_padded_bc_rows_are_contiguous_float32_copies(dtype, length, padded, d_state, NP):
    """The step kernels' B/C rows: a fresh contiguous float32 (batch, groups, padded, NP) tensor, zero
    past the end, from (batch, N, L) or (batch, G, N, L) inputs, whether or not the dtype changes."""
    g = torch.Generator().manual_seed(0)
    for shape in [(2, d_state, length), (2, 3, d_state, length)]:
        M = torch.randn(*shape, generator=g).to(dtype)
        rows = triton_scan._padded_bc(M, padded, NP, torch.float32)
        grouped = M if M.dim() == 4 else M.unsqueeze(1)
        assert rows.dtype == torch.float32 and rows.is_contiguous()
        assert rows.shape == (2, grouped.shape[1], padded, NP) and rows.data_ptr() != M.data_ptr()
        assert torch.equal(rows[:, :, :length, :d_state], grouped.transpose(2, 3).float())
        assert not rows[:, :, length:].any() and not rows[:, :, :, d_state:].any()
