"""Residual add + RMSNorm with the hand-written backward against autograd through the reference."""

import pytest
import torch

from core.modules.norm import _AddRMSNorm, add_rms_norm_autograd
from core.ops.reference import add_rms_norm_ref


def _leaves(hidden_dtype, residual_dtype, weight_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 7, 24, generator=g).to(hidden_dtype).requires_grad_()
    residual = (
        None if residual_dtype is None else torch.randn(2, 7, 24, generator=g).to(residual_dtype).requires_grad_()
    )
    weight = (1 + 0.1 * torch.randn(24, generator=g)).to(weight_dtype).requires_grad_()
    return hidden, residual, weight


def _grads(fn, hidden, residual, weight, res_fp32, seed=1):
    normed, new_residual = fn(hidden, residual, weight, 1e-5, res_fp32)
    g = torch.Generator().manual_seed(seed)
    loss = (normed.float() * torch.randn(normed.shape, generator=g)).sum()
    loss = loss + (new_residual.float() * torch.randn(new_residual.shape, generator=g)).sum()
    leaves = [t for t in (hidden, residual, weight) if t is not None]
    return (normed, new_residual), torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("has_residual", [False, True])
@pytest.mark.parametrize("res_fp32", [False, True])
@pytest.mark.parametrize(
    "dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)]
)
def test_values_and_gradients_match_the_reference(has_residual, res_fp32, dtypes):
    hidden_dtype, weight_dtype = dtypes
    leaves = _leaves(hidden_dtype, hidden_dtype if has_residual else None, weight_dtype)
    (want_out, want_grads), (got_out, got_grads) = (
        _grads(fn, *leaves, res_fp32) for fn in (add_rms_norm_ref, add_rms_norm_autograd)
    )
    for w, g in zip(want_out, got_out):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=0, atol=0)  # the same forward maths
    tol = 1e-5 if hidden_dtype == weight_dtype == torch.float32 else 2e-2  # the reference rounds dx to bf16
    for w, g in zip(want_grads, got_grads):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol)


def test_gradcheck_float64():
    h, r, w = (t.double().detach().requires_grad_() for t in _leaves(torch.float32, torch.float32, torch.float32))
    assert torch.autograd.gradcheck(lambda h, r, w: _AddRMSNorm.apply(h, r, w, 1e-5, False), (h, r, w))


def test_keeps_less_for_backward_than_autograd_through_the_reference():
    def saved_bytes(fn):
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        hidden, residual, weight = _leaves(torch.float32, torch.float32, torch.float32)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(hidden, residual, weight, 1e-5, True)
        return sum(total)

    ours, reference = saved_bytes(add_rms_norm_autograd), saved_bytes(add_rms_norm_ref)
    activation = 2 * 7 * 24 * 4  # one float32 (..., D) tensor
    assert ours < activation * 1.2 and reference >= 2 * activation
