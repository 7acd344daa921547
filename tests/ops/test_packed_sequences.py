"""Packed sequences (`seq_idx`): one packed scan equals the sequences scanned one by one."""

import pytest
import torch

from core.ops import selective_scan, selective_scan_ref
from tests.ops.scan_cases import differentiable, make_scan_inputs

SEGMENTS = [[3, 5, 1, 4], [13], [1, 1, 11]]  # lengths of the sequences packed in each row


def seq_idx_for(segments):
    return torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in segments], dtype=torch.int32)


def run_separately(xs, softplus):
    """Scan every sequence on its own with the reference; the row's first one starts from initial_state."""
    ys, lasts = [], []
    for b, row in enumerate(SEGMENTS):
        start, row_ys, h = 0, [], None
        for i, n in enumerate(row):
            sl = slice(start, start + n)
            pick = lambda t, b=b, sl=sl: None if t is None else t[b : b + 1, ..., sl]
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


@pytest.mark.parametrize("backend", ["ref", "cpu"])
@pytest.mark.parametrize("groups", [0, 2])
def test_packed_equals_separate_values_and_gradients(backend, groups):
    inp = make_scan_inputs(3, 4, 13, 8, groups=groups)
    seq_idx = seq_idx_for(SEGMENTS)
    g = torch.Generator().manual_seed(5)
    w_y, w_h = torch.randn(3, 4, 13, generator=g), torch.randn(3, 4, 8, generator=g)

    xs = differentiable(inp)
    y, last = selective_scan(**xs, delta_softplus=True, return_last_state=True, seq_idx=seq_idx, backend=backend)
    grads = torch.autograd.grad((y * w_y).sum() + (last * w_h).sum(), [v for v in xs.values() if v is not None])

    xr = differentiable(inp)
    y_sep, last_sep = run_separately(xr, True)
    grads_sep = torch.autograd.grad(
        (y_sep * w_y).sum() + (last_sep * w_h).sum(), [v for v in xr.values() if v is not None]
    )

    torch.testing.assert_close(y, y_sep, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, last_sep, rtol=1e-5, atol=1e-5)
    for name, a, b in zip([k for k, v in xs.items() if v is not None], grads, grads_sep):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"grad of {name}")


def test_one_sequence_index_is_the_plain_scan():
    inp = make_scan_inputs(2, 3, 9, 4)
    packed = selective_scan(**inp, seq_idx=torch.zeros(2, 9, dtype=torch.int64), backend="cpu")
    torch.testing.assert_close(packed, selective_scan(**inp, backend="cpu"))


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
