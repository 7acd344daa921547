"""Fused inference kernels (add + RMSNorm, causal-conv step, strided decoding step) against the
torch references, in Triton's interpreter on CPU as CI runs them (on CUDA when there is a GPU)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

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
