"""Packed sequences (`seq_idx`): one packed scan equals the sequences scanned one by one.

The "triton" backend runs in Triton's interpreter without a GPU (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports the kernels); its plan is forced in the tests below
so that resets land on chunk and segment boundaries at lengths the interpreter runs quickly.
"""

import pytest
import torch

from core.ops import selective_scan, selective_scan_ref
from tests.ops.scan_cases import differentiable, make_scan_inputs

SEGMENTS = [[3, 5, 1, 4], [13], [1, 1, 11]]  # lengths of the sequences packed in each row


def seq_idx_for(segments):
    return torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in segments], dtype=torch.int32)


def run_separately(xs, softplus, segments=SEGMENTS):
    """Scan every sequence on its own with the reference; the row's first one starts from initial_state."""
    ys, lasts = [], []
    for b, row in enumerate(segments):
        start, row_ys, h = 0, [], None
        for i, n in enumerate(row):
            sl = slice(start, start + n)
            # constant (dim, N) B or C is shared by every sequence: not sliced
            pick = lambda t, b=b, sl=sl: t if t is None or t.dim() == 2 else t[b : b + 1, ..., sl]
            y, h = selective_scan_ref(
                pick(xs["u"]),
                pick(xs["delta"]),
                xs["A"],
                pick(xs["B"]),
                pick(xs["C"]),
                xs["D"],
                pick(xs["z"]),
                xs["delta_bias"],
                softplus,
                initial_state=xs["initial_state"][b : b + 1] if i == 0 else None,
                return_last_state=True,
            )
            row_ys.append(y)
            start += n
        ys.append(torch.cat(row_ys, dim=2))
        lasts.append(h)
    return torch.cat(ys), torch.cat(lasts)


def assert_packed_equals_separate(inp, segments, backend, rtol=1e-5, atol=1e-5):
    """y, last_state and every gradient of one packed scan against the sequences run one by one."""
    batch, dim, length = inp["u"].shape
    seq_idx = seq_idx_for(segments)
    assert seq_idx.shape == (batch, length), "segments must fill every row"
    g = torch.Generator().manual_seed(5)
    w_y, w_h = torch.randn(batch, dim, length, generator=g), torch.randn(inp["initial_state"].shape, generator=g)

    xs = differentiable(inp)
    y, last = selective_scan(**xs, delta_softplus=True, return_last_state=True, seq_idx=seq_idx, backend=backend)
    grads = torch.autograd.grad((y * w_y).sum() + (last * w_h).sum(), [v for v in xs.values() if v is not None])

    xr = differentiable(inp)
    y_sep, last_sep = run_separately(xr, True, segments)
    grads_sep = torch.autograd.grad(
        (y_sep * w_y).sum() + (last_sep * w_h).sum(), [v for v in xr.values() if v is not None]
    )

    torch.testing.assert_close(y, y_sep, rtol=rtol, atol=atol)
    torch.testing.assert_close(last, last_sep, rtol=rtol, atol=atol)
    for name, a, b in zip([k for k, v in xs.items() if v is not None], grads, grads_sep):
        torch.testing.assert_close(a, b, rtol=10 * rtol, atol=atol, msg=f"grad of {name}")


@pytest.mark.parametrize("backend", ["ref", "cpu", "triton"])
@pytest.mark.parametrize("groups", [0, 2])
def test_packed_equals_separate_values_and_gradients(backend, groups):
    if backend == "triton":
        pytest.importorskip("triton")
    assert_packed_equals_separate(make_scan_inputs(3, 4, 13, 8, groups=groups), SEGMENTS, backend)


# Length 70 in 32-step chunks (the kernel's real chunk) crosses two chunk boundaries. Row 0 resets
# at t = 1 (a one-step first sequence), 31 and 33, on either side of a boundary, so the state and
# gradient carried across it are live, and at 66; row 1 exactly at the boundaries 32 and 64, and
# at 69 (a one-step last sequence).
LONG_SEGMENTS = [[1, 30, 2, 33, 4], [32, 32, 5, 1]]


@pytest.mark.parametrize(
    "plan",
    [
        None,  # the real plan: 32-step chunks in one segment
        (32, 2, 1, 2, 1),  # one chunk per segment: segment boundaries at 32 and 64 as well
        # 4-step chunks, segments of 32 steps that the segment kernels walk in two 16-step strides:
        # row 0's reset at 33 falls in the first stride of segment [32, 64), live outputs in the second
        (4, 1, 8, 2, 8),
    ],
    ids=["chunks", "chunk-segments", "coarse-segments"],
)
@pytest.mark.parametrize("bc", ["var", "const"])
def test_triton_resets_at_chunk_and_segment_boundaries(plan, bc, monkeypatch):
    triton_scan = pytest.importorskip("core.ops.triton_scan")
    if plan is not None:
        monkeypatch.setattr(triton_scan, "plan_scan", lambda *args, **kwargs: triton_scan.ScanPlan(*plan))
    const = bc == "const"
    inp = make_scan_inputs(2, 2, 70, 4, groups=0, b_const=const, c_const=const)
    # softplus(delta - 4) ~ 0.02: the state still holds ~half its size after 32 steps, so a reset
    # missed a chunk or segment back would show (at delta ~ 0.7 it fades by e^-20 and hides it)
    inp["delta"] = inp["delta"] - 4.0
    assert_packed_equals_separate(inp, LONG_SEGMENTS, "triton", rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("seg_kernel", ["sum", "seq"])
def test_triton_step_forward_resets(seg_kernel, monkeypatch):
    """The same through the step-by-step forward kernels (8 channels per program, the least they
    take), one chunk per segment: the step-by-step segment passes and backward, or the summing
    segment passes and the scan backward."""
    triton_scan = pytest.importorskip("core.ops.triton_scan")
    monkeypatch.setattr(triton_scan, "plan_scan", lambda *args, **kwargs: triton_scan.ScanPlan(32, 8, 1, 2, 1))
    monkeypatch.setattr(triton_scan, "FWD_SEG_KERNEL", seg_kernel)
    monkeypatch.setattr(triton_scan, "BWD_SEG_KERNEL", seg_kernel)
    monkeypatch.setattr(triton_scan, "BWD_KERNEL", "seq" if seg_kernel == "seq" else "scan")
    inp = make_scan_inputs(2, 8, 70, 4, groups=0)
    inp["delta"] = inp["delta"] - 4.0
    assert_packed_equals_separate(inp, LONG_SEGMENTS, "triton", rtol=2e-5, atol=2e-5)


def test_triton_packed_op_schema():
    """seq_idx goes through the custom op's schema, fake (meta) function and autograd registration,
    which is what torch.compile relies on."""
    triton_scan = pytest.importorskip("core.ops.triton_scan")
    inp = make_scan_inputs(1, 2, 5, 2, groups=0)
    xs = differentiable(inp)
    args = tuple(xs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"))
    seq_idx = torch.tensor([[0, 1, 1, 2, 2]], dtype=torch.int32)
    torch.library.opcheck(triton_scan._selective_scan_fwd_op, (*args, True, seq_idx))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_one_sequence_index_is_the_plain_scan(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    inp = make_scan_inputs(2, 3, 9, 4)
    packed = selective_scan(**inp, seq_idx=torch.zeros(2, 9, dtype=torch.int64), backend=backend)
    torch.testing.assert_close(packed, selective_scan(**inp, backend=backend))


def test_cpu_packed_gradcheck_float64():
    inp = make_scan_inputs(1, 2, 7, 3, dtype=torch.float64, param_dtype=torch.float64)
    inp["initial_state"] = inp["initial_state"].double()
    names = list(inp)
    seq_idx = torch.tensor([[0, 0, 1, 1, 1, 2, 2]], dtype=torch.int32)

    def fn(*args):
        return selective_scan(
            **dict(zip(names, args)), delta_softplus=True, return_last_state=True, seq_idx=seq_idx, backend="cpu"
        )

    assert torch.autograd.gradcheck(fn, tuple(differentiable(inp)[k] for k in names), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "bad,match", [(torch.zeros(3, 13), "int32/int64"), (torch.zeros(3, 12, dtype=torch.int32), "seq_idx")]
)
def test_bad_seq_idx(bad, match):
    with pytest.raises(ValueError, match=match):
        selective_scan(**make_scan_inputs(3, 4, 13, 8), seq_idx=bad, backend="cpu")


def test_step_segment_passes_skip_packed_rows_on_the_gpu():
    """The routing rule: the step-by-step segment passes run for packed sequences in the interpreter
    (tested above) but not on a GPU, where they failed the packed test (tests/gpu/test_packed_cuda.py)."""
    from types import SimpleNamespace

    triton_scan = pytest.importorskip("core.ops.triton_scan")
    on_gpu, on_cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    assert not triton_scan._seq_segments_ok(True, on_gpu)
    assert triton_scan._seq_segments_ok(False, on_gpu)
    assert triton_scan._seq_segments_ok(True, on_cpu) and triton_scan._seq_segments_ok(False, on_cpu)
