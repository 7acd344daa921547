"""Triton causal depthwise conv + silu (core/ops/triton_conv.py) against F.silu(F.conv1d(...)):
values and the three gradients, in the interpreter on CPU as CI runs it."""

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from core.ops.triton_conv import causal_conv1d_silu_bwd, causal_conv1d_silu_fwd  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(x, w, b):
    return F.silu(F.conv1d(x, w[:, None, :], b, padding=w.shape[1] - 1, groups=x.shape[1])[..., : x.shape[2]])


@pytest.mark.parametrize(
    "batch,dim,length,k,bias,dtype",
    [
        (2, 10, 45, 4, True, torch.float32),  # channels and steps past a block: masked tails
        (1, 8, 3, 4, True, torch.float32),  # shorter than the kernel
        (2, 16, 70, 2, False, torch.float32),
        (2, 9, 40, 3, True, torch.float32),
        (1, 8, 37, 5, True, torch.float32),  # taps past a block edge on both sides
        (1, 20, 300, 4, True, torch.float32),  # crosses the GPU's 128- and 256-step block edges too
        (2, 10, 45, 4, True, torch.bfloat16),
    ],
)
def test_conv_silu_matches_torch(batch, dim, length, k, bias, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, length, generator=g).to(dtype).to(DEVICE)
    w = torch.randn(dim, k, generator=g).to(dtype).to(DEVICE)
    b = torch.randn(dim, generator=g).to(dtype).to(DEVICE) if bias else None
    du = torch.randn(batch, dim, length, generator=g).to(dtype).to(DEVICE)
    leaves = [t.clone().requires_grad_(True) for t in (x, w) + ((b,) if bias else ())]
    want = reference(leaves[0], leaves[1], leaves[2] if bias else None)
    want_grads = torch.autograd.grad(want, leaves, du)
    got = causal_conv1d_silu_fwd(x, w, b)
    dx, dw, db = causal_conv1d_silu_bwd(du, x, w, b)
    # bf16: the torch conv rounds its own way; one bf16 step at magnitudes ~4-16 is 0.03-0.06
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=8e-2)
    assert got.dtype == dtype and dx.dtype == dtype and dw.dtype == torch.float32
    torch.testing.assert_close(got.float(), want.float(), **tol)
    torch.testing.assert_close(dx.float(), want_grads[0].float(), **tol)
    torch.testing.assert_close(dw, want_grads[1].float(), **tol)
    if bias:
        torch.testing.assert_close(db, want_grads[2].float(), **tol)
    else:
        assert db is None


def test_conv_backward_is_deterministic():
    g = torch.Generator().manual_seed(1)
    x, du = (torch.randn(2, 8, 70, generator=g).to(DEVICE) for _ in range(2))
    w, b = torch.randn(8, 4, generator=g).to(DEVICE), torch.randn(8, generator=g).to(DEVICE)
    first, second = causal_conv1d_silu_bwd(du, x, w, b), causal_conv1d_silu_bwd(du, x, w, b)
    assert all(torch.equal(a, c) for a, c in zip(first, second, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_backward_in_du_scratch(dtype):
    """du_scratch=True: the same gradients, and du then holds the conv output's gradient
    du * silu'(pre), rounded to x's dtype as torch's silu backward rounds it under autocast."""
    g = torch.Generator().manual_seed(2)
    x, du = (torch.randn(2, 10, 45, generator=g).to(dtype).to(DEVICE) for _ in range(2))
    w, b = (torch.randn(*shape, generator=g).to(dtype).to(DEVICE) for shape in ((10, 4), (10,)))
    want = causal_conv1d_silu_bwd(du, x, w, b)
    scratch = du.clone()
    got = causal_conv1d_silu_bwd(scratch, x, w, b, du_scratch=True)
    assert all(torch.equal(a, c) for a, c in zip(want, got, strict=True))
    pre = F.conv1d(x.float(), w.float()[:, None, :], b.float(), padding=3, groups=10)[..., :45].to(dtype)
    pre_leaf = pre.float().requires_grad_(True)
    (dpre,) = torch.autograd.grad(F.silu(pre_leaf), pre_leaf, du.float())
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(scratch.float(), dpre.to(dtype).float(), **tol)
    assert not torch.equal(scratch, du)


@pytest.mark.parametrize("dtype,du2_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.bfloat16, torch.float32)])  # fmt: skip
def test_conv_backward_adds_a_second_du(dtype, du2_dtype):
    """du2 is summed in the kernel as torch sums the two gradients (rounded to their dtype): the same
    gradients as a backward of du + du2, bit for bit."""
    g = torch.Generator().manual_seed(3)
    x, du = (torch.randn(2, 10, 45, generator=g).to(dtype).to(DEVICE) for _ in range(2))
    du2 = torch.randn(2, 10, 45, generator=g).to(du2_dtype).to(DEVICE)
    w, b = (torch.randn(*shape, generator=g).to(dtype).to(DEVICE) for shape in ((10, 4), (10,)))
    summed = du + du2
    if DEVICE == "cpu" and summed.dtype == torch.bfloat16:
        # Triton's interpreter casts float32 to bf16 toward zero (no rounding mode); a GPU to nearest even, as torch
        exact = (du.float() + du2.float()).view(torch.int32)
        summed = (exact & -65536).view(torch.float32).to(torch.bfloat16)
    want = causal_conv1d_silu_bwd(summed, x, w, b)
    got = causal_conv1d_silu_bwd(du.clone(), x, w, b, du_scratch=True, du2=du2)
    assert all(torch.equal(a, c) for a, c in zip(want, got, strict=True))
