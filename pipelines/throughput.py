"""Training tokens per second, timed by a Lightning callback over the steps after a warm-up.

Why a callback: the run's wall time includes data setup, kernel builds, validation and export,
which say nothing about the training step; here each timed step is bracketed by device syncs.
With several ranks each meters its own steps; every rank takes a batch of the same size, so the
run's rate is one rank's times the world size.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import lightning.pytorch as pl
import torch


class Throughput(pl.Callback):
    """Tokens (`count(batch)` per batch) per second of the steps from `warmup_steps` on (kernel
    builds and autotuning happen in the first ones)."""

    def __init__(self, count: Callable[[object], int], warmup_steps: int = 5):
        self.count, self.warmup_steps = count, warmup_steps
        self.tokens, self.start, self.elapsed_s = 0, None, 0.0

    def _sync(self, trainer):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.warmup_steps:
            self._sync(trainer)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start is not None:
            self._sync(trainer)
            self.elapsed_s += time.perf_counter() - self.start
            self.tokens += self.count(batch)
            self.start = None

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else None
