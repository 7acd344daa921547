"""Sashimi U-Net: shapes, causality, config checks, and step mode == parallel forward through the pooling."""

import pytest
import torch

from core.models.sashimi import Sashimi, SashimiConfig


def _model(stage_blocks, complex_a=False, pool=(2, 3)):
    torch.manual_seed(0)
    config = SashimiConfig(d_model=8, n_layer=2, pool=pool, stage_blocks=stage_blocks, d_state=4, lti_complex=complex_a)
    return Sashimi(config).eval()


@pytest.mark.parametrize(
    "stage_blocks,complex_a",
    [
        (("mamba", "mamba", "mamba"), False),
        (("lti", "lti", "lti"), False),
        (("lti", "lti", "lti"), True),
        (("lti", "mamba", "mamba"), True),  # the paper's LTI-outside, selective-inside split
    ],
)
def test_step_mode_equals_parallel_forward(stage_blocks, complex_a):
    model = _model(stage_blocks, complex_a)
    ids = torch.randint(0, 256, (2, 30))  # 5 coarsest steps of 6 samples
    with torch.no_grad():
        logits = model(ids)
        cache = model.new_cache(2)
        stepped = torch.stack([model.step(ids[:, t], cache) for t in range(30)], dim=1)
    torch.testing.assert_close(stepped, logits, rtol=1e-4, atol=1e-4)
    assert cache.position == 30


def test_forward_is_causal_and_pooling_matters():
    model = _model(("mamba", "lti", "mamba"))
    ids = torch.randint(0, 256, (1, 24))
    changed = ids.clone()
    changed[0, 13] = (ids[0, 13] + 7) % 256
    with torch.no_grad():
        a, b = model(ids), model(changed)
    # output t reads inputs <= t: positions before 13 cannot see the change (the UpPool shift keeps
    # the coarse stages from leaking position 13 into 12, which shares their pooling group) ...
    torch.testing.assert_close(a[:, :13], b[:, :13])
    assert (a[:, 13:] - b[:, 13:]).abs().amax(dim=-1).min() > 1e-4  # ... 13 and every later one do


def test_shapes_and_widths_per_stage():
    model = _model(("mamba", "lti", "mamba"), pool=(4, 4))
    assert model(torch.randint(0, 256, (3, 32))).shape == (3, 32, 256)
    assert [s[0].norm.weight.shape[0] for s in model.stages] == [8, 16, 32]
    assert type(model.stages[1][0].mixer).__name__ == "MambaLTI"
    with pytest.raises(ValueError, match="multiple of the total pooling factor 16"):
        model(torch.randint(0, 256, (1, 40)))


def test_config_rejects_bad_stage_blocks():
    with pytest.raises(ValueError, match="one entry per stage"):
        SashimiConfig(pool=(4, 4), stage_blocks=("mamba", "lti"))
    with pytest.raises(ValueError, match="unknown block kind"):
        SashimiConfig(pool=(4,), stage_blocks=("mamba", "s4"))


def test_paper_sc09_configuration_size():
    # Mamba paper SC09 small model: D=64, 8 blocks per stage, pools [4, 4]: a few million parameters
    n = sum(p.numel() for p in Sashimi(SashimiConfig()).parameters())
    assert 4e6 < n < 7e6


def test_step_runs_each_stage_at_its_own_rate():
    model = _model(("mamba", "lti", "mamba"), pool=(2, 3))
    calls = [0, 0, 0]
    for level, stage in enumerate(model.stages):
        original = stage[0].step

        def counted(x, cache, level=level, original=original):
            calls[level] += 1
            return original(x, cache)

        stage[0].step = counted
    cache = model.new_cache(1)
    with torch.no_grad():
        for t in range(24):
            model.step(torch.tensor([t]), cache)
    assert calls == [24, 12, 4]  # every sample, every 2nd, every 6th


def test_greedy_generate_follows_manual_steps_after_a_prompt():
    """mamba_audio's generate (prompt read step by step, then greedy draws) equals stepping by hand."""
    from mamba_audio.generation import generate
    from mamba_audio.quantize import SILENCE_CLASS

    torch.manual_seed(0)
    model = Sashimi(SashimiConfig(d_model=16, n_layer=1, pool=(2, 2))).eval()
    prompt = torch.randint(0, 256, (5,))
    got = generate(model, 2, 9, temperature=0.0, prompt=prompt, progress=False)
    cache = model.new_cache(2)
    with torch.no_grad():
        token = torch.full((2,), SILENCE_CLASS)
        for t in range(5):
            model.step(token, cache)
            token = prompt[t].expand(2)
        want = []
        for _ in range(9):
            token = model.step(token, cache).argmax(-1)
            want.append(token)
    assert torch.equal(got, torch.stack(want, 1))
    assert cache.position == 14
