import math

import torch

from mamba_bio.tokenizer import A_ID, N_ID, NUCLEOTIDE_IDS, PAD_ID
from pipelines.lm import lm_loss, seq_len_at, warmup_cosine


def test_n_and_pad_targets_do_not_count():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 16)
    ids = torch.tensor([[A_ID, N_ID, PAD_ID, A_ID]])
    total, count = lm_loss(logits, ids, NUCLEOTIDE_IDS)
    # only the last target (A at position 3, predicted from position 2) is scored
    expected = torch.nn.functional.cross_entropy(logits[0, 2:3], ids[0, 3:4], reduction="sum")
    assert count.item() == 1
    torch.testing.assert_close(total, expected)


def test_all_n_batch_gives_zero_not_nan():
    logits = torch.randn(2, 8, 16, requires_grad=True)
    ids = torch.full((2, 8), N_ID)
    total, count = lm_loss(logits, ids, NUCLEOTIDE_IDS)
    loss = total / count.clamp(min=1)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_uniform_prediction_over_acgt_has_perplexity_four():
    logits = torch.full((1, 9, 16), -1e9)
    logits[..., list(NUCLEOTIDE_IDS)] = 0.0
    ids = torch.tensor([[7, 8, 9, 10, 7, 8, 9, 10, 7]])
    total, count = lm_loss(logits, ids, NUCLEOTIDE_IDS)
    assert math.isclose(math.exp(total.item() / count.item()), 4.0, rel_tol=1e-5)


def test_sequence_length_warmup_doubles_per_stage_and_caps():
    lengths = [seq_len_at(s, 8192, 1024, 10) for s in (0, 9, 10, 20, 30, 1000)]
    assert lengths == [1024, 1024, 2048, 4096, 8192, 8192]
    assert seq_len_at(5, 512, 0, 0) == 512


def test_warmup_then_cosine():
    assert warmup_cosine(0, 10, 100) == 0.1
    assert warmup_cosine(9, 10, 100) == 1.0
    assert math.isclose(warmup_cosine(100, 10, 100), 0.1)
    assert warmup_cosine(40, 10, 100) > warmup_cosine(60, 10, 100)
