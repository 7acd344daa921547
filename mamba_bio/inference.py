"""Inference over FASTA files: per-window/per-record predictions and streamed record embeddings.

    Genome -> predict_windows (classifier, tiled windows) -> rows, per-record mean probabilities
    Genome -> embed_records (causal backbone, chunk by chunk, recurrent state carried) -> (R, D)

`embed_records` never holds more than one chunk of a record in memory: the backbone runs on
chunk i starting from the state left by chunk i-1 (the conv and SSM states of every layer), which
gives the same hidden states as one pass over the whole record.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from core.generation import InferenceCache

from .errors import WindowError
from .fasta import Genome
from .labelled import collate_classification


def tile_record(size: int, length: int, stride: int) -> list[int]:
    """Window starts covering a record of `size` bp: every `stride` bp, plus one window ending at the
    record's end so the tail is scored too. Records shorter than `length` give no window."""
    if size < length:
        return []
    starts = list(range(0, size - length + 1, stride))
    if starts[-1] + length < size:
        starts.append(size - length)
    return starts


@torch.inference_mode()
def predict_windows(
    model: nn.Module, genome: Genome, length: int, stride: int, batch_size: int, device: str = "cpu"
) -> Iterator[tuple[str, int, int, np.ndarray]]:
    """Yield (record, start, end, class probabilities (C,)) for every window of every record."""
    todo = [(chrom, s) for chrom, size in genome.sizes.items() for s in tile_record(size, length, stride)]
    if not todo:
        raise WindowError(
            f"{genome.path}: window length {length} is longer than every record "
            f"(longest {max(genome.sizes.values())} bp)"
        )
    for i in range(0, len(todo), batch_size):
        part = todo[i : i + batch_size]
        batch = collate_classification([(torch.from_numpy(genome.fetch_ids(c, s, s + length)), 0) for c, s in part])
        probs = torch.softmax(model(batch["input_ids"].to(device), batch["lengths"].to(device)).float(), -1).cpu()
        for (chrom, start), p in zip(part, probs.numpy()):
            yield chrom, start, start + length, p


def new_backbone_cache(backbone: nn.Module, batch_size: int) -> InferenceCache:
    """Empty recurrent state for a causal Mamba backbone (one cache per layer's mixer)."""
    return InferenceCache([layer.mixer.allocate_cache(batch_size) for layer in backbone.layers])


@torch.inference_mode()
def embed_record(backbone: nn.Module, genome: Genome, chrom: str, chunk: int, device: str = "cpu") -> np.ndarray:
    """Mean of the final hidden states over a whole record, streamed in chunks of `chunk` bp -> (D,)."""
    size = genome.check_chrom(chrom)
    if size == 0:
        return np.zeros(backbone.embedding.embedding_dim, dtype=np.float32)
    cache = new_backbone_cache(backbone, 1)
    total = None
    for start in range(0, size, chunk):
        ids = torch.from_numpy(genome.fetch_ids(chrom, start, min(size, start + chunk)))[None].to(device)
        hidden = backbone(ids, cache=cache)[0].float()  # (l D)
        part = hidden.sum(0)
        total = part if total is None else total + part
    return (total / size).cpu().numpy()


def embed_records(backbone: nn.Module, genome: Genome, chunk: int, device: str = "cpu") -> dict[str, np.ndarray]:
    """Record name -> mean hidden state (D,), for every record of `genome` (see `embed_record`)."""
    return {chrom: embed_record(backbone, genome, chrom, chunk, device) for chrom in genome.sizes}
