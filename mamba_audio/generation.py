"""Sampling waveforms from a recurrent model and measuring bits per sample.

`generate` runs the model's `step` one sample at a time (optionally continuing a prompt) and
returns 8-bit classes (decode them with the quantiser the model was trained with);
`bits_per_sample` and `bits_per_sample_by_context` evaluate a model on token windows. The model
is anything with `forward(ids (B, L)) -> logits (B, L, V)`, `new_cache(batch)` and
`step(ids (B,), cache) -> logits (B, V)` (e.g. `core.models.sashimi.Sashimi`).
"""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.generation import decoder, sample_logits

from .quantize import SILENCE_CLASS


@torch.inference_mode()
def generate(
    model,
    num: int,
    length_samples: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    prompt: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    cuda_graph: bool | None = None,
) -> torch.Tensor:
    """Sample `num` sequences of `length_samples` new classes; returns (num, length_samples) int64.

    prompt: (P,) classes every sequence continues (the returned samples follow it). The
    model first reads silence and the prompt one step at a time, exactly as in training, where
    position t sees samples < t behind a leading silence class.

    cuda_graph (default: on CUDA, for models with `step_at`, e.g. Sashimi): replay one captured
    CUDA graph per sample, one graph per phase of the pooling (position % total_pool); with no
    `generator` the draw is captured too (the default CUDA generator is graph-safe).
    """
    device = next(model.parameters()).device
    cache = model.new_cache(num)
    sample = lambda logits: sample_logits(logits, temperature=temperature, top_p=top_p, generator=generator)
    positional = hasattr(model, "step_at")  # a step at an explicit position: graphs per phase
    phases = model.config.total_pool if positional else 1
    step = model.step_at if positional else (lambda tokens, c, _position: model.step(tokens, c))
    use_graph = (device.type == "cuda" and positional) if cuda_graph is None else cuda_graph
    read, next_token = decoder(step, sample, cache, num, device, use_graph, generator, phases)
    token = torch.full((num,), SILENCE_CLASS, dtype=torch.long, device=device)
    prompt_len = 0 if prompt is None else int(prompt.shape[0])
    out = torch.empty(num, length_samples, dtype=torch.long, device=device)
    bar = tqdm(
        total=prompt_len + length_samples,
        desc="generate",
        unit="sample",
        file=sys.stderr,
        disable=not progress,
        mininterval=1.0,
    )
    position = cache.position if positional else 0  # only the phase is used: position % phases
    for t in range(prompt_len):
        read(token, position % phases)  # the prompt is read, not sampled
        token = prompt[t].to(device).expand(num)
        position += 1
        bar.update(1)
    for t in range(length_samples):
        token = next_token(token, position % phases)
        out[:, t] = token
        position += 1
        bar.update(1)
    if positional:  # step_at leaves the counter alone; model.step advanced its own
        cache.position = position
    bar.close()
    return out


def timed_generate(model, num: int, length_samples: int, **kwargs) -> tuple[torch.Tensor, float]:
    """`generate`, plus the wall-clock seconds it took (synchronising CUDA so the time is real)."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    tokens = generate(model, num, length_samples, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return tokens, time.perf_counter() - start


@torch.inference_mode()
def bits_per_sample(model, batches) -> tuple[float, int]:
    """Mean cross-entropy in bits per sample over (inputs, targets) batches of (B, L); returns (bpb, n_samples)."""
    device = next(model.parameters()).device
    total_nats, n = 0.0, 0
    for inputs, targets in batches:
        logits = model(inputs.to(device)).float()  # (B L V)
        total_nats += float(
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1), reduction="sum")
        )
        n += targets.numel()
    if n == 0:
        raise ValueError("bits_per_sample: no samples to evaluate")
    return total_nats / n / math.log(2.0), n


def split_context(inputs: torch.Tensor, targets: torch.Tensor, context_samples: int):
    """Cut (B, L) windows into (B * L // c, c) pieces, each restarting from silence.

    The piece's first input is replaced by the silence class, as at the start of a training
    window, so every piece sees at most `context_samples` samples of context.
    """
    B, L = targets.shape
    n = L // context_samples
    t = targets[:, : n * context_samples].reshape(B * n, context_samples)
    i = torch.cat([torch.full_like(t[:, :1], SILENCE_CLASS), t[:, :-1]], dim=1)
    return i, t


def bits_per_sample_by_context(model, batches, context_lengths: list[int]) -> dict[int, float]:
    """BPB of the same windows when the model only sees `c` samples of context, for each c."""
    batches = list(batches)
    return {c: bits_per_sample(model, (split_context(i, t, c) for i, t in batches))[0] for c in context_lengths}
