"""The Mamba block: mamba_ssm's parameters and init, and step mode == parallel forward."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.modules import Mamba


def test_parameter_names_shapes_and_init_follow_mamba_ssm():
    block = Mamba(d_model=40, d_state=16, d_conv=4, expand=2, dt_min=0.001, dt_max=0.1)
    e, r = 80, math.ceil(40 / 16)
    shapes = {name: tuple(p.shape) for name, p in block.named_parameters()}
    assert shapes == {
        "A_log": (e, 16),
        "D": (e,),
        "in_proj.weight": (2 * e, 40),
        "conv1d.weight": (e, 1, 4),
        "conv1d.bias": (e,),
        "x_proj.weight": (r + 32, e),
        "dt_proj.weight": (e, r),
        "dt_proj.bias": (e,),
        "out_proj.weight": (40, e),
    }
    # S4D-Real: A = -(1..N) in every channel; D = 1
    torch.testing.assert_close(-torch.exp(block.A_log), -torch.arange(1.0, 17.0).repeat(e, 1))
    assert torch.equal(block.D, torch.ones(e))
    # softplus(dt bias) lands in [dt_min, dt_max] (inverse-softplus init)
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert block.A_log.dtype == torch.float32 and block.A_log._no_weight_decay


def test_unknown_dt_init_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="'constant' or 'random'"):
        Mamba(16, dt_init="uniform")


@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_step_by_step_equals_parallel_forward(backend):
    block = Mamba(d_model=24, d_state=8, d_conv=4, backend=backend).eval()
    x = torch.randn(2, 11, 24)
    with torch.no_grad():
        full = block(x)
        cache = block.allocate_cache(2)
        steps = torch.stack([block.step(x[:, t], cache) for t in range(11)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)


def test_forward_in_chunks_with_cache_equals_one_pass():
    """Prefill in pieces (shorter than the conv, then longer) carries conv and SSM state exactly."""
    block = Mamba(d_model=16, d_state=4, d_conv=4).eval()
    x = torch.randn(3, 20, 16)
    with torch.no_grad():
        full = block(x)
        cache = block.allocate_cache(3)
        parts = [block(x[:, a:b], cache) for a, b in [(0, 2), (2, 3), (3, 12), (12, 20)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_chunked_forward_passes_gradients_across_chunks():
    """The cache carries autograd history, so a loss on chunk 2 reaches the input of chunk 1."""
    block = Mamba(d_model=8, d_state=4)
    x = torch.randn(1, 10, 8, requires_grad=True)
    cache = block.allocate_cache(1)
    block(x[:, :5], cache)
    out2 = block(x[:, 5:], cache)
    (g,) = torch.autograd.grad(out2.sum(), [x])
    assert g[:, :5].abs().sum() > 0

    full = block(x)
    (g_full,) = torch.autograd.grad(full[:, 5:].sum(), [x])
    torch.testing.assert_close(g, g_full, rtol=1e-4, atol=1e-5)


def saved_activation_bytes(fn):
    """Bytes of the distinct storages autograd keeps for backward while fn() runs."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_training_activation_memory_per_layer_stays_small():
    """What one block keeps for backward, in units of one (B, E, L) float32 activation: the block's
    input (1/2), x, the scan's inputs u, delta, z and its output y (5), and the small B, C, dt and
    chunk states. The conv output, padded or transposed copies are not kept (recomputed / avoided)."""
    d_model, length = 64, 256  # E = 128 channels against d_state 16: B, C, chunk states stay small
    block = Mamba(d_model=d_model, d_state=16)
    hidden = torch.randn(2, length, d_model, requires_grad=True)
    unit = 2 * block.d_inner * length * 4
    saved = saved_activation_bytes(lambda: block(hidden))
    assert saved < 7 * unit


def test_autocast_keeps_one_low_precision_copy_of_the_input():
    """Under bf16 autocast the x and z products share one bf16 copy of the block's input: left to
    autocast, each product cast (and kept) its own, 0.5 GiB a layer at 2^20 tokens and d_model 256."""
    d_model, length = 64, 96
    block = Mamba(d_model=d_model, d_state=16)
    hidden = torch.randn(1, length, d_model, requires_grad=True)
    kept = []

    def pack(t):
        if t.dtype == torch.bfloat16 and t.numel() == hidden.numel():
            kept.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        block(hidden)
    assert len(kept) >= 2 and len(set(kept)) == 1
