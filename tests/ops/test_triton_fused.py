"""Fused kernels (add + RMSNorm forward and backward, causal-conv step, strided decoding step)
against the torch references, in Triton's interpreter on CPU as CI runs them (on CUDA when there
is a GPU)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from core.modules.norm import _use_triton, add_rms_norm_autograd  # noqa: E402
from core.ops import add_rms_norm, causal_conv1d_step, selective_state_update_ref  # noqa: E402
from core.ops.reference import add_rms_norm_ref, causal_conv1d_step_ref  # noqa: E402
from core.ops.triton_fused import add_rms_norm_triton, causal_conv1d_step_triton  # noqa: E402
from core.ops.triton_step import selective_state_update_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)


def test_rms_norm_formula_by_hand():
    x = torch.tensor([[3.0, 4.0]])
    normed, residual = add_rms_norm_ref(x, None, torch.tensor([1.0, 2.0]), 0.0, True)
    rms = (12.5) ** 0.5  # sqrt((9 + 16) / 2)
    torch.testing.assert_close(normed, torch.tensor([[3.0 / rms, 8.0 / rms]]))
    torch.testing.assert_close(residual, x)


@pytest.mark.parametrize("has_residual", [False, True])
@pytest.mark.parametrize("hidden_dtype,weight_dtype,res_fp32", [
    (torch.float32, torch.float32, True),
    (torch.bfloat16, torch.bfloat16, True),
    (torch.bfloat16, torch.bfloat16, False),
    (torch.float16, torch.float32, False),
])  # fmt: skip
def test_add_rms_norm_matches_reference(has_residual, hidden_dtype, weight_dtype, res_fp32):
    d = 80  # not a power of two: the masked tail counts in neither the sum nor the mean
    hidden = randn(3, 5, d, dtype=hidden_dtype)
    residual = randn(3, 5, d, dtype=torch.float32 if res_fp32 else hidden_dtype, seed=1) if has_residual else None
    weight = (1 + 0.1 * randn(d, seed=2)).to(weight_dtype)
    want = add_rms_norm_ref(hidden, residual, weight, 1e-5, res_fp32)
    got = add_rms_norm_triton(hidden, residual, weight, 1e-5, res_fp32)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        tol = 1e-5 if g.dtype == torch.float32 else 1e-2
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


def test_add_rms_norm_dispatch_uses_torch_under_autograd():
    hidden = randn(2, 16).requires_grad_()
    weight = torch.ones(16, device=DEVICE, requires_grad=True)
    normed, _ = add_rms_norm(hidden, None, weight, 1e-5, True, backend="triton")
    normed.sum().backward()  # the Triton kernel has no backward: this only works on the torch path
    assert hidden.grad is not None and weight.grad is not None


def _training_leaves(shape, hidden_dtype, residual_dtype, weight_dtype):
    hidden = randn(*shape, dtype=hidden_dtype).requires_grad_()
    residual = None if residual_dtype is None else randn(*shape, dtype=residual_dtype, seed=1).requires_grad_()
    weight = (1 + 0.1 * randn(shape[-1], seed=2)).to(weight_dtype).requires_grad_()
    return hidden, residual, weight


def _forward_backward(fn, leaves, res_fp32, d_normed=True, d_residual=True):
    """(normed, new residual) and the gradients of hidden, residual, weight (zeros where none flows)
    for a random linear loss on the outputs picked by d_normed / d_residual."""
    hidden, residual, weight = leaves
    normed, new_residual = fn(hidden, residual, weight, 1e-5, res_fp32)
    loss = 0
    if d_normed:
        loss = loss + (normed * randn(*normed.shape, dtype=normed.dtype, seed=3)).sum()
    if d_residual:
        loss = loss + (new_residual * randn(*new_residual.shape, dtype=new_residual.dtype, seed=4)).sum()
    inputs = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    return (normed.detach(), new_residual.detach()), grads


def _triton_autograd(hidden, residual, weight, eps, res_fp32):
    return add_rms_norm_autograd(hidden, residual, weight, eps, res_fp32, backend="triton")


def _tolerance(dtype):
    return {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2e-2)


def _torch_autograd(hidden, residual, weight, eps, res_fp32):
    return add_rms_norm_autograd(hidden, residual, weight, eps, res_fp32, backend="ref")


def _assert_matches(leaves, res_fp32, **which):
    """Against the torch-ops `_AddRMSNorm` (the same float32 maths: elementwise, one rounding of
    the output dtype apart), and against autograd through `add_rms_norm_ref` (which rounds its bf16
    gradients at every step, d_weight's sum included: relative error of the whole tensor)."""
    got_out, got_grads = _forward_backward(_triton_autograd, leaves, res_fp32, **which)
    same_out, same_grads = _forward_backward(_torch_autograd, leaves, res_fp32, **which)
    ref_out, ref_grads = _forward_backward(add_rms_norm_ref, leaves, res_fp32, **which)
    hidden, residual, _ = leaves
    # Triton's interpreter rounds float32 to bf16 toward zero (CUDA to nearest, as torch): a bf16
    # sum hidden + residual is then one ulp off, and everything computed from it has bf16's
    # precision, float32 outputs included (d_weight, a sum over rows: atol relative to its largest)
    bf16_sum = residual is not None and torch.promote_types(hidden.dtype, residual.dtype) == torch.bfloat16
    for g, same, ref in zip(got_out + got_grads, same_out + same_grads, ref_out + ref_grads):
        assert g.dtype == same.dtype == ref.dtype and g.shape == same.shape == ref.shape
        tol = _tolerance(torch.bfloat16 if bf16_sum else g.dtype)
        torch.testing.assert_close(g, same, rtol=tol, atol=tol * max(1.0, same.abs().max().item()))
        err = (g.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)
        assert err < tol, f"relative error {err:.2e} against add_rms_norm_ref"


# (hidden, residual, weight) dtypes: the DNA LM under autocast is (bf16, fp32, fp32)
TRAINING_DTYPES = [
    (torch.float32, torch.float32, torch.float32),
    (torch.bfloat16, torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.bfloat16, torch.float32),
    (torch.float64, torch.float64, torch.float64),
]


@pytest.mark.parametrize("has_residual", [False, True])
@pytest.mark.parametrize("res_fp32", [False, True])
@pytest.mark.parametrize("dtypes", TRAINING_DTYPES)
def test_training_kernels_match_reference_autograd(has_residual, res_fp32, dtypes):
    hidden_dtype, residual_dtype, weight_dtype = dtypes
    # D 80: not a power of two; 3 * 13 = 39 rows: not a multiple of the 32-row tile
    leaves = _training_leaves((3, 13, 80), hidden_dtype, residual_dtype if has_residual else None, weight_dtype)
    _assert_matches(leaves, res_fp32)


@pytest.mark.parametrize("d_normed,d_residual", [(True, False), (False, True)])
@pytest.mark.parametrize("dtypes", [TRAINING_DTYPES[0], TRAINING_DTYPES[1]])
def test_training_backward_with_one_gradient_missing(d_normed, d_residual, dtypes):
    """The final norm's residual gets no gradient, and a norm whose output is unused none either:
    the kernel skips the missing one (no zero tensor is made to read)."""
    _assert_matches(_training_leaves((2, 9, 48), *dtypes), True, d_normed=d_normed, d_residual=d_residual)


@pytest.mark.parametrize("d", [1024, 8192])
def test_training_kernels_at_wide_rows(d):
    """Few rows a tile at large D; at D 1024 the backward cuts 45 rows into 4 programs of 12 rows in
    2-row tiles, the last program 9: its loop over a program's tiles and its row mask."""
    _assert_matches(_training_leaves((45 if d == 1024 else 3, d), torch.bfloat16, torch.float32, torch.float32), True)


def test_training_d_weight_is_deterministic():
    """Per-program partials summed in a fixed order: the same bits on every run."""
    leaves = _training_leaves((45, 1024), torch.bfloat16, torch.float32, torch.float32)
    first, second = (_forward_backward(_triton_autograd, leaves, True)[1][-1] for _ in range(2))
    assert torch.equal(first, second)


def test_training_float64_gradcheck():
    leaves = [t.detach().requires_grad_() for t in _training_leaves((5, 12), *TRAINING_DTYPES[-1])]
    assert torch.autograd.gradcheck(lambda h, r, w: _triton_autograd(h, r, w, 1e-5, False), leaves)


def test_training_backend_choice():
    cpu = torch.zeros(2, 8)
    assert not _use_triton("auto", cpu) and not _use_triton("ref", cpu) and _use_triton("triton", cpu)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_causal_conv1d_step_matches_reference(k, dtype, bias):
    batch, channels = 3, 40
    state = randn(batch, channels, k, dtype=dtype)
    xz = randn(batch, 2 * channels, dtype=dtype, seed=1)
    x = xz[:, :channels]  # a row-strided view, as Mamba.step passes it
    weight = randn(channels, k, dtype=dtype, seed=2)
    b = randn(channels, dtype=dtype, seed=3) if bias else None
    state_ref = state.clone()
    want = causal_conv1d_step_ref(state_ref, x, weight, b)
    got = causal_conv1d_step_triton(state, x, weight, b)
    torch.testing.assert_close(state, state_ref, rtol=0, atol=0)  # the shift is exact
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_causal_conv1d_steps_equal_the_full_conv():
    """Ten steps from a zero state give the causal conv of the whole sequence."""
    batch, channels, k, length = 2, 8, 4, 10
    x = randn(batch, channels, length)
    weight, bias = randn(channels, k, seed=1), randn(channels, seed=2)
    full = torch.nn.functional.conv1d(x, weight[:, None], bias, padding=k - 1, groups=channels)[..., :length]
    state = torch.zeros(batch, channels, k, device=DEVICE)
    steps = torch.stack(
        [causal_conv1d_step(state, x[..., t], weight, bias, backend="triton") for t in range(length)], -1
    )
    torch.testing.assert_close(steps, torch.nn.functional.silu(full), rtol=1e-5, atol=1e-5)


def test_step_kernel_reads_row_strided_views():
    """x, z from one (B, 2E) projection and B, C from one (B, R + 2N) projection, without copies."""
    batch, dim, n, r = 2, 24, 16, 3
    xz = randn(batch, 2 * dim, seed=1)
    x_db = randn(batch, r + 2 * n, seed=2)
    x, z = xz.chunk(2, dim=-1)
    _, B, C = x_db.split([r, n, n], dim=-1)
    dt = randn(batch, dim, seed=3)
    A = -torch.rand(dim, n, generator=torch.Generator().manual_seed(4)).to(DEVICE) - 0.5
    D, bias = randn(dim, seed=5), randn(dim, seed=6)
    state = randn(batch, dim, n, seed=7)
    state_ref = state.clone()
    want = selective_state_update_ref(state_ref, x, dt, A, B, C, D, z, bias, True)
    got = selective_state_update_triton(state, x, dt, A, B, C, D, z, bias, True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, state_ref, rtol=1e-5, atol=1e-5)
