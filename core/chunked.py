"""Sequences longer than memory: exact chunked training and streaming inference.

Both run a model chunk by chunk through its recurrent cache (`model.new_cache`, then
`model(ids_chunk, cache=cache)`), so activation memory is that of one chunk:

- `chunked_backward`: the *exact* gradient of the loss over the whole sequence. A first pass
  without autograd stores only the recurrent state at each chunk start; then chunks are
  recomputed with autograd in reverse order, each backward receiving the gradient of the state
  it handed to the next chunk (backpropagation through time, recomputed chunk by chunk).
- `stream_nll`, `stream_mean_hidden`: log-likelihood and mean embedding in constant memory.

Works with any model whose cache is an `InferenceCache` of dataclass layers holding tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _chunks(length: int, chunk_length: int) -> list[slice]:
    if chunk_length < 1:
        raise ValueError(f"chunk_length must be >= 1; got {chunk_length}")
    return [slice(start, min(start + chunk_length, length)) for start in range(0, length, chunk_length)]


def next_token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy; logits (B, L, V), targets (B, L) with -100 where there is nothing to predict."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")


def chunked_backward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    chunk_length: int,
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = next_token_loss_sum,
) -> float:
    """Accumulate into the parameters' .grad the exact gradient of the mean loss over (B, L).

    input_ids, targets: (B, L); the mean is over targets != -100, as one full-length pass would
    compute it. Memory: one chunk's activations plus the recurrent state at each chunk start.
    Returns the mean loss.
    """
    if input_ids.shape != targets.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and targets {tuple(targets.shape)} must match")
    n_targets = int((targets != -100).sum())
    if n_targets == 0:
        raise ValueError("targets has no position to predict (all -100)")
    pieces = _chunks(input_ids.shape[1], chunk_length)
    cache = model.new_cache(input_ids.shape[0])
    starts = []
    with torch.no_grad():
        for sl in pieces:
            starts.append([t.detach().clone() for t in cache.tensors()])
            model(input_ids[:, sl], cache=cache)

    total, grad_out = 0.0, None  # grad_out: d loss / d (state at the end of the current chunk)
    for sl, start in zip(reversed(pieces), reversed(starts)):
        leaves = [t.clone().requires_grad_() for t in start]
        cache.set_tensors(leaves)
        loss = loss_sum(model(input_ids[:, sl], cache=cache), targets[:, sl]) / n_targets
        outputs, grads = [loss], [None]
        if grad_out is not None:
            ends = cache.tensors()
            outputs += [e for e, g in zip(ends, grad_out) if e.requires_grad]
            grads += [g for e, g in zip(ends, grad_out) if e.requires_grad]
        torch.autograd.backward(outputs, grads)
        grad_out = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
        total += loss.item()
    return total


@torch.no_grad()
def stream_nll(model: torch.nn.Module, input_ids: torch.Tensor, chunk_length: int) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) of input_ids (B, L) and the number of
    predicted tokens, in memory independent of L. The last logits of a chunk predict the first
    token of the next, so the result equals one full-length pass."""
    cache = model.new_cache(input_ids.shape[0])
    total, count, prev_last = 0.0, 0, None  # prev_last: (B, V) logits of the previous chunk's last position
    for sl in _chunks(input_ids.shape[1], chunk_length):
        ids = input_ids[:, sl]
        logits = model(ids, cache=cache)  # (B l V)
        if prev_last is not None:
            logits_in = torch.cat([prev_last[:, None], logits[:, :-1]], dim=1)
            total += next_token_loss_sum(logits_in, ids).item()
            count += ids.numel()
        elif ids.shape[1] > 1:
            total += next_token_loss_sum(logits[:, :-1], ids[:, 1:]).item()
            count += ids[:, 1:].numel()
        prev_last = logits[:, -1]
    return total, count


@torch.no_grad()
def stream_mean_hidden(backbone: torch.nn.Module, new_cache, input_ids: torch.Tensor, chunk_length: int):
    """Mean over positions of backbone(input_ids) (B, L, D) -> (B, D), chunk by chunk.

    `backbone(ids, cache)` returns hidden states (B, l, D); `new_cache(batch)` makes its cache.
    """
    cache = new_cache(input_ids.shape[0])
    total = None
    for sl in _chunks(input_ids.shape[1], chunk_length):
        part = backbone(input_ids[:, sl], cache).float().sum(1)
        total = part if total is None else total + part
    return total / input_ids.shape[1]
