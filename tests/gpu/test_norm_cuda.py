"""The Triton add + RMSNorm training kernels on CUDA against the torch-ops `_AddRMSNorm`, at the
DNA LM's width and 2^16 tokens, in its dtypes (bf16 hidden from autocast, float32 residual and weight)."""

import pytest
import torch

from core.modules.norm import add_rms_norm_autograd

pytestmark = pytest.mark.gpu


def _run(backend, hidden, residual, weight, res_fp32, d_normed, d_residual):
    leaves = [t.detach().requires_grad_() for t in (hidden, residual, weight) if t is not None]
    hidden, residual, weight = leaves if residual is not None else (leaves[0], None, leaves[1])
    normed, new_residual = add_rms_norm_autograd(hidden, residual, weight, 1e-5, res_fp32, backend=backend)
    torch.autograd.backward((normed, new_residual), (d_normed.to(normed.dtype), d_residual.to(new_residual.dtype)))
    return [normed.detach(), new_residual.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize(
    "hidden_dtype,residual_dtype,weight_dtype,res_fp32",
    [
        (torch.bfloat16, torch.float32, torch.float32, True),  # the LM under autocast
        (torch.bfloat16, torch.bfloat16, torch.bfloat16, False),
        (torch.bfloat16, None, torch.float32, True),  # the first layer
    ],
)
def test_triton_training_kernels_match_torch_ops(hidden_dtype, residual_dtype, weight_dtype, res_fp32):
    rows, d = 2**16, 256
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(4, rows // 4, d, device="cuda", generator=g).to(hidden_dtype)
    residual = None
    if residual_dtype is not None:
        residual = torch.randn(4, rows // 4, d, device="cuda", generator=g).to(residual_dtype)
    weight = (1 + 0.1 * torch.randn(d, device="cuda", generator=g)).to(weight_dtype)
    d_normed = torch.randn(4, rows // 4, d, device="cuda", generator=g)
    d_residual = torch.randn(4, rows // 4, d, device="cuda", generator=g)
    args = (hidden, residual, weight, res_fp32, d_normed, d_residual)
    got, want = _run("auto", *args), _run("ref", *args)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape
        if i == 1:  # the new residual: the same one rounding of the sum
            assert torch.equal(a, b)
            continue
        # one rounding of the output dtype apart (reduction orders differ)
        tol = 1e-5 if a.dtype == torch.float32 else 1e-2
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))
    assert torch.equal(got[-1], _run("auto", *args)[-1])  # d_weight: the same bits every run
