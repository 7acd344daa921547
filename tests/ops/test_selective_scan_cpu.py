"""The fused CPU backend against `selective_scan_ref`: values, last state and every gradient."""

import pytest
import torch

from core.ops import selective_scan, selective_scan_ref
from core.ops.cpu import CHUNK
from tests.ops.scan_cases import differentiable, make_scan_inputs, run_with_grads

CASES = [
    # batch, dim, length, d_state, groups (0: 3-D B/C), b_const, c_const, D, z, bias, h0, softplus
    (2, 4, 1, 4, 0, False, False, True, True, True, True, True),
    (1, 3, 7, 16, 0, False, False, False, False, False, False, False),
    (2, 6, 129, 16, 3, False, False, True, True, True, True, True),
    (2, 6, 200, 8, 6, False, False, True, False, True, False, True),
    (3, 5, 70, 4, 1, True, False, True, True, False, True, False),
    (2, 4, 65, 16, 2, False, True, False, True, True, False, True),
    (1, 8, 1000, 16, 0, True, True, True, True, True, True, True),
    (2, 3, CHUNK, 2, 0, False, False, True, True, True, True, True),
]


def _inputs(case, dtype=torch.float32):
    batch, dim, length, n, groups, bc, cc, with_d, with_z, with_bias, with_h0, _ = case
    return make_scan_inputs(
        batch,
        dim,
        length,
        n,
        groups=groups,
        b_const=bc,
        c_const=cc,
        with_d=with_d,
        with_z=with_z,
        with_bias=with_bias,
        with_h0=with_h0,
        dtype=dtype,
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-bc{int(c[5])}{int(c[6])}")
def test_cpu_matches_reference(case):
    softplus = case[-1]
    inp = _inputs(case)
    y_ref, last_ref, g_ref = run_with_grads(selective_scan_ref, inp, softplus)
    y, last, grads = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inp, softplus)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, last_ref, rtol=1e-4, atol=1e-4)
    assert grads.keys() == g_ref.keys()
    for name, g in grads.items():
        scale = g_ref[name].abs().max().clamp(min=1.0)
        torch.testing.assert_close(g / scale, g_ref[name] / scale, rtol=1e-4, atol=2e-5, msg=f"grad of {name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_half_inputs_compute_in_float32(dtype):
    """16-bit inputs are accepted and give the reference's float32 maths rounded once at the end."""
    inp = _inputs(CASES[2], dtype=dtype)
    y_ref, last_ref, g_ref = run_with_grads(selective_scan_ref, inp, True)
    y, last, grads = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inp, True)
    assert y.dtype == dtype and last.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(last, last_ref, rtol=1e-4, atol=1e-4)
    for name, g in grads.items():
        assert g.dtype == inp[name].dtype
        scale = g_ref[name].float().abs().max().clamp(min=1.0)
        torch.testing.assert_close(g.float() / scale, g_ref[name].float() / scale, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("groups,b_const,c_const", [(0, False, False), (2, False, False), (1, True, True)])
def test_cpu_gradcheck_float64(groups, b_const, c_const):
    inp = make_scan_inputs(
        2, 4, 9, 3, groups=groups, b_const=b_const, c_const=c_const, dtype=torch.float64, param_dtype=torch.float64
    )
    inp["initial_state"] = inp["initial_state"].double()
    names = list(inp)
    xs = differentiable(inp)

    def fn(*args):
        kw = dict(zip(names, args))
        return selective_scan(**kw, delta_softplus=True, return_last_state=True, backend="cpu")

    assert torch.autograd.gradcheck(fn, tuple(xs[k] for k in names), eps=1e-6, atol=1e-6)


def test_cpu_gradient_reaches_initial_state_only_through_last_state():
    """With zero decay-free input the last state carries h0 forward; its gradient must reach h0."""
    inp = make_scan_inputs(1, 2, 5, 3, with_z=False)
    xs = differentiable(inp)
    _, last = selective_scan(**xs, delta_softplus=True, return_last_state=True, backend="cpu")
    (g,) = torch.autograd.grad(last.sum(), [xs["initial_state"]])
    xr = differentiable(inp)
    _, last_r = selective_scan_ref(**xr, delta_softplus=True, return_last_state=True)
    (g_r,) = torch.autograd.grad(last_r.sum(), [xr["initial_state"]])
    assert g.abs().sum() > 0
    torch.testing.assert_close(g, g_r, rtol=1e-5, atol=1e-6)


def test_cpu_backward_is_deterministic():
    inp = _inputs(CASES[2])
    _, _, g1 = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inp, True)
    _, _, g2 = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inp, True)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name


def test_cpu_thread_count_does_not_change_results():
    inp = _inputs(CASES[2])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, _, g1 = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inp, True)
        torch.set_num_threads(3)  # more threads than cores, and rows not divisible by the count
        y3, _, g3 = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inp, True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y1, y3)
    for name in g1:
        torch.testing.assert_close(g1[name], g3[name], rtol=1e-6, atol=1e-6)


def test_cpu_saves_only_chunk_boundary_states():
    """Memory linear in length: nothing of size (batch, dim, length, d_state) is kept for backward."""
    batch, dim, length, n = 2, 8, 16 * CHUNK, 16
    xs = differentiable(make_scan_inputs(batch, dim, length, n, groups=0))
    y = selective_scan(**xs, delta_softplus=True, backend="cpu")
    saved = sum(t.numel() for t in y.grad_fn.saved_tensors if t is not None)
    inputs_size = sum(t.numel() for t in xs.values() if t is not None)
    full_states = batch * dim * length * n
    # the inputs themselves, plus one state per chunk per row: never a state per step
    assert saved <= inputs_size + full_states // CHUNK + batch * dim * n


def test_auto_backend_on_cpu_is_the_fused_kernel():
    inp = differentiable(_inputs(CASES[0]))
    y = selective_scan(**inp, delta_softplus=True)
    assert "SelectiveScanCPU" in type(y.grad_fn).__name__


def test_cpu_pthreads_build_matches_reference(monkeypatch):
    """The kernel's own-thread build (used where the compiler has no OpenMP) gives the same results."""
    import core.ops.cpu as cpu

    monkeypatch.setattr(cpu, "THREADING", "pthreads")
    inp = _inputs(CASES[2])
    y_ref, last_ref, g_ref = run_with_grads(selective_scan_ref, inp, True)
    y, last, grads = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inp, True)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for name, g in grads.items():
        scale = g_ref[name].abs().max().clamp(min=1.0)
        torch.testing.assert_close(g / scale, g_ref[name] / scale, rtol=1e-4, atol=2e-5, msg=f"grad of {name}")
