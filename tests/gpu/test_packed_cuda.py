"""Packed sequences on CUDA: the Triton kernels against the CPU kernel at lengths with many chunks."""

import pytest
import torch

from core.ops import selective_scan
from tests.ops.scan_cases import differentiable, make_scan_inputs

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("length", [4096, 2**16 + 3])
def test_packed_triton_on_cuda_matches_cpu_kernel(length):
    g = torch.Generator().manual_seed(0)
    inp = make_scan_inputs(2, 64, length, 16, groups=1)
    # random sequence lengths, so resets fall anywhere relative to chunks and segments
    starts = torch.randint(1, length, (2, 40), generator=g)
    seq_idx = torch.zeros(2, length, dtype=torch.int32)
    seq_idx.scatter_(1, starts, 1)
    seq_idx = seq_idx.cumsum(1).to(torch.int32)
    w = torch.randn(2, 64, length, generator=g)

    def run(device, backend):
        xs = differentiable({k: None if v is None else v.to(device) for k, v in inp.items()})
        y, last = selective_scan(**xs, delta_softplus=True, return_last_state=True, seq_idx=seq_idx.to(device),
                                 backend=backend)  # fmt: skip
        grads = torch.autograd.grad((y * w.to(device)).sum() + last.sum(), [v for v in xs.values() if v is not None])
        return [t.float().cpu() for t in (y, last, *grads)]

    for got, want in zip(run("cuda", "triton"), run("cpu", "cpu")):
        scale = want.abs().max().clamp(min=1.0)
        torch.testing.assert_close(got / scale, want / scale, rtol=1e-3, atol=1e-4)
