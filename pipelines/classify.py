"""LightningModule for sequence classification with a `mamba_bio.models.DNAClassifier`.

Batches are {"input_ids": (B, L), "lengths": (B,), "labels": (B,)} (see
`mamba_bio.labelled.collate_classification`). Logs f"{stage}/loss" and f"{stage}/acc".

Validation and test metrics are exact over all ranks: each rank adds its examples' losses and
hits to torchmetrics states that are summed across ranks before dividing, so the accuracy is the
global count correct / global count even when the ranks' shards differ in size (a mean of
per-rank means would weight a short shard's examples more).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from pipelines.common import optimizer_groups, pass_epoch_to_dataset

from .lm import warmup_cosine


class ClassifierModule(pl.LightningModule):
    """Wraps a classifier `model(input_ids, lengths) -> logits (B, C)`.

    Args:
        model: the classifier (passed in).
        lr: peak learning rate (AdamW, linear warmup then cosine decay).
        weight_decay: AdamW weight decay on matrices.
        warmup_fraction: fraction of max_steps in LR warmup.
        max_steps: total optimiser steps (for the schedule).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 2e-3,
        weight_decay: float = 0.1,
        warmup_fraction: float = 0.1,
        max_steps: int = 1000,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        # per-example loss and hit (1/0) means for evaluation, keyed "{stage}_{name}"
        self.eval_means = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("val", "test") for name in ("loss", "acc")}
        )

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, lengths)

    def _shared_step(self, batch: dict, stage: str):
        logits = self(batch["input_ids"], batch["lengths"])  # (B C)
        losses = F.cross_entropy(logits.float(), batch["labels"], reduction="none")  # (B)
        hits = (logits.argmax(-1) == batch["labels"]).float()  # (B)
        loss = losses.mean()
        if stage == "train":  # this rank's batch: a per-step progress signal, not a metric
            size = batch["labels"].shape[0]
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
            self.log("train/acc", hits.mean(), prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
            return loss
        for name, values in (("loss", losses), ("acc", hits)):
            metric = self.eval_means[f"{stage}_{name}"]
            metric.update(values.detach())
            # a Metric object: Lightning calls compute() (synced over ranks) at epoch end, then resets it
            self.log(f"{stage}/{name}", metric, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def on_train_epoch_start(self):
        pass_epoch_to_dataset(self)

    def validation_step(self, batch, batch_idx):
        return self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._shared_step(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(optimizer_groups(self.model, hp.weight_decay), lr=hp.lr, betas=(0.9, 0.95))
        warmup = int(hp.warmup_fraction * hp.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, hp.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
