"""sample_logits: temperature, top-k and top-p filter what can be drawn."""

import pytest
import torch

from core.generation import sample_logits


def test_top_k_never_draws_outside_the_k_best():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5, -1.0]]).repeat(500, 1)
    draws = sample_logits(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(2000, 1)
    draws = sample_logits(logits, top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    # renormalised inside the nucleus: token 0 about 0.5 / 0.8 of the draws
    assert abs((draws == 0).float().mean().item() - 0.625) < 0.04


def test_top_p_always_keeps_the_best_token():
    logits = torch.tensor([[5.0, 0.0, 0.0]]).repeat(50, 1)
    assert (sample_logits(logits, top_p=0.01) == 0).all()


def test_temperature_zero_is_argmax_and_low_temperature_sharpens():
    logits = torch.tensor([[1.0, 2.0, 0.5]]).repeat(1000, 1)
    assert (sample_logits(logits, temperature=0) == 1).all()
    g = torch.Generator().manual_seed(1)
    hot = (sample_logits(logits, temperature=2.0, generator=g) == 1).float().mean()
    cold = (sample_logits(logits, temperature=0.3, generator=g) == 1).float().mean()
    assert cold > hot


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
    ],
)
def test_bad_sampling_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_logits(torch.zeros(1, 4), **kwargs)


def test_gumbel_draws_follow_the_softmax():
    """The Gumbel-max draw samples softmax(logits / temperature) exactly: frequencies match it."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 40_000
    for temperature in (1.0, 0.5):
        logits = (probs.log() * temperature).repeat(n, 1)  # softmax(logits / T) == probs
        draws = sample_logits(logits, temperature=temperature, generator=torch.Generator().manual_seed(3))
        freq = torch.bincount(draws, minlength=4).float() / n
        torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)  # ~4 standard errors at n = 40k


def test_seeded_draws_repeat_and_differ_across_seeds():
    logits = torch.randn(64, 50)
    a, b, c = (sample_logits(logits, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
