"""Long sequences in chunks: exact gradients, streaming likelihood and embeddings equal one full pass."""

import pytest
import torch
import torch.nn.functional as F

from core.chunked import chunked_backward, stream_mean_hidden, stream_nll
from core.models import MambaConfig, MambaLM


def small_model(seed=0):
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=24, n_layer=2, vocab_size=9, d_state=4))


@pytest.mark.parametrize("chunk_length", [2, 7, 25])
def test_chunked_gradients_equal_unchunked(chunk_length):
    ids = torch.randint(0, 9, (2, 21))
    inputs, targets = ids[:, :-1], ids[:, 1:].clone()
    targets[0, :4] = -100  # ignored positions count the same way in both

    full = small_model()
    loss_full = F.cross_entropy(full(inputs).flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss_full.backward()

    chunked = small_model()
    loss_chunked = chunked_backward(chunked, inputs, targets, chunk_length)

    assert loss_chunked == pytest.approx(loss_full.item(), rel=1e-5)
    for (name, p_full), p_chunk in zip(full.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(p_chunk.grad, p_full.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_backward_rejects_nothing_to_predict():
    with pytest.raises(ValueError, match="no position"):
        chunked_backward(small_model(), torch.zeros(1, 5, dtype=torch.long), torch.full((1, 5), -100), 2)


@pytest.mark.parametrize("chunk_length", [1, 5, 50])
def test_streaming_nll_equals_full_pass(chunk_length):
    model = small_model().eval()
    ids = torch.randint(0, 9, (3, 17))
    with torch.no_grad():
        logits = model(ids)
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
    total, count = stream_nll(model, ids, chunk_length)
    assert count == 3 * 16
    assert total == pytest.approx(expected, rel=1e-5)


def test_streaming_mean_embedding_equals_full_pass():
    model = small_model().eval()
    ids = torch.randint(0, 9, (2, 30))
    with torch.no_grad():
        expected = model.backbone(ids).mean(1)
    got = stream_mean_hidden(model.backbone, model.new_cache, ids, chunk_length=7)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
