"""MambaLM on CUDA: the Triton path against the CPU kernel, and CUDA-graph decoding against plain steps."""

import pytest
import torch

from core.models import MambaConfig, MambaLM

pytestmark = pytest.mark.gpu


def test_lm_forward_backward_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=16))
    ids = torch.randint(0, 16, (2, 1000))
    logits_cpu = model(ids)
    logits_cpu.float().square().mean().backward()
    grads_cpu = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model_gpu = model.cuda()
    logits_gpu = model_gpu(ids.cuda())
    logits_gpu.float().square().mean().backward()
    torch.testing.assert_close(logits_gpu.cpu(), logits_cpu, rtol=1e-3, atol=1e-3)
    for p, g in zip(model_gpu.parameters(), grads_cpu):
        torch.testing.assert_close(p.grad.cpu(), g, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 8])
def test_cuda_graph_decoding_equals_plain_steps(batch):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=64, n_layer=3, vocab_size=16)).cuda().eval()
    prompt = torch.randint(0, 16, (batch, 5), device="cuda")
    graphed = model.generate(prompt, 40, temperature=0, cuda_graph=True)
    plain = model.generate(prompt, 40, temperature=0, cuda_graph=False)
    assert torch.equal(graphed, plain)
