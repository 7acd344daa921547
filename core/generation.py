"""Decoding state and sampling, shared by every model with a recurrent `step`.

Imports nothing from the package (models import this, not the other way round).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class InferenceCache:
    """Recurrent state of a whole model: one entry per layer, plus how many positions it has seen.

    `layers[i]` is whatever layer i's `allocate_cache` returned (for Mamba: conv and SSM states).
    """

    layers: list = field(default_factory=list)
    seqlen_offset: int = 0

    def tensors(self) -> list[torch.Tensor]:
        """Every state tensor, layer by layer, in field order (each layer is a dataclass of tensors)."""
        return [getattr(layer, f.name) for layer in self.layers for f in dataclasses.fields(layer)]

    def set_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Rebind the state tensors, in the order `tensors()` gives them."""
        it = iter(tensors)
        for layer in self.layers:
            for f in dataclasses.fields(layer):
                setattr(layer, f.name, next(it))


class GraphedStep:
    """One decoding step captured as a CUDA graph and replayed: a step of a small model is dozens
    of tiny kernels whose launch overhead dominates; a replay launches them all at once.

    `step(tokens (B,), cache, phase) -> tensor` (the logits (B, V), or the next tokens (B,) when
    the sampling is captured too) must update the cache *in place* (as Mamba's step does): the
    graph reads and writes the cache tensors it saw at capture time. The returned tensor is the
    graph's output buffer, overwritten by the next replay. A model whose step takes a different
    path by position (the U-Net's pooled stages run every p-th sample) gets one graph per phase
    (sharing one memory pool); `graphed(tokens, phase)` replays that phase's graph.
    `cache` is anything with `tensors()`, the state tensors to restore after the warm-up.
    """

    def __init__(self, step: Callable, cache, batch_size: int, device: torch.device, phases: int = 1):
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        saved = [t.clone() for t in cache.tensors()]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: cuBLAS handles, Triton compilation
            for _ in range(2):
                for phase in range(phases):
                    step(self.tokens, cache, phase)
        torch.cuda.current_stream(device).wait_stream(side)
        for t, s in zip(cache.tensors(), saved):  # the warm-up steps must not count
            t.copy_(s)
        pool = torch.cuda.graph_pool_handle()
        self.graphs, self.outputs = [], []
        for phase in range(phases):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs.append(step(self.tokens, cache, phase))
            self.graphs.append(graph)

    def __call__(self, tokens: torch.Tensor, phase: int = 0) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.graphs[phase].replay()
        return self.outputs[phase]


def decoder(step: Callable, sample: Callable, cache, batch_size: int, device, cuda_graph: bool,
            generator: torch.Generator | None, phases: int = 1):  # fmt: skip
    """(read, next_token) for a decoding loop: `read(tokens, phase)` takes a step whose output is
    not needed (a prompt), `next_token(tokens, phase) -> (B,)` steps and draws.

    step(tokens, cache, phase) -> logits; sample(logits) -> tokens. With cuda_graph the step is
    replayed from captured graphs, and so is the draw when `generator` is None: the default
    generator is graph-safe, a torch.Generator object is not (the draw then runs after the replay).
    """
    if not cuda_graph:
        read = lambda tokens, phase=0: step(tokens, cache, phase)
        return read, lambda tokens, phase=0: sample(read(tokens, phase))
    if generator is None:
        graphed = GraphedStep(lambda t, c, p: sample(step(t, c, p)), cache, batch_size, device, phases)
        return graphed, graphed
    graphed = GraphedStep(step, cache, batch_size, device, phases)
    return graphed, lambda tokens, phase=0: sample(graphed(tokens, phase))


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row from logits (B, V); returns (B,) int64.

    temperature 0 means greedy (argmax); top_k 0 and top_p 1.0 disable those filters.
    The draw is the Gumbel-max trick, argmax(logits - log(-log U)) with U uniform, which samples
    softmax(logits) exactly and uses only ops a CUDA graph can capture (no multinomial, no host
    sync), so decoding can replay step and sampling as one graph.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0; got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it); got {top_k}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    candidates = None  # (B, k) vocabulary ids of the columns of `logits` after a top-k cut
    if 0 < top_k < logits.shape[-1]:
        # top-p then only needs the k best, already sorted: no sort over the whole vocabulary
        logits, candidates = torch.topk(logits, top_k, dim=-1)  # (B k), descending
    if top_p < 1.0:
        if candidates is None:
            logits, candidates = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(logits, dim=-1)
        # drop a token once the mass *before* it already reaches top_p: the top token always stays
        logits = logits.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, float("-inf"))
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
    # U = 0 would give -inf noise (never chosen); the clamp keeps log(-log U) finite
    gumbel = -torch.log(-torch.log(uniform.clamp_(min=torch.finfo(torch.float32).tiny)))
    choice = (logits + gumbel).argmax(dim=-1, keepdim=True)  # (B 1)
    return (choice if candidates is None else candidates.gather(-1, choice)).squeeze(-1)
