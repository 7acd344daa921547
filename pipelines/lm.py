"""LightningModule for next-token pretraining of a `core.models.MambaLM` on windows of tokens.

Optimiser defaults follow the Mamba paper's DNA pretraining (app. E.3): AdamW with betas
(0.9, 0.95) and weight decay 0.1 (none on norms, biases, A_log and D), linear warmup over 10% of
the steps then cosine decay, gradient clipping 1.0 (set on the Trainer).

Sequence-length warmup (paper, sec. 4.3.2): training starts at `seq_warmup_min` tokens and the
length doubles every `seq_warmup_steps` steps until it reaches the window length. Each batch of
windows (B, L) is cut into (B * L / l, l) pieces, so the batch halves in tokens-per-sequence
terms as the length doubles and the tokens per step stay constant.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from mamba_bio.tokenizer import NUCLEOTIDE_IDS
from pipelines.common import optimizer_groups, pass_epoch_to_dataset


def lm_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    scored_ids: tuple[int, ...] | None,
    seq_idx: torch.Tensor | None = None,
) -> tuple:
    """Next-token cross-entropy. logits (B, L, V) predict input_ids (B, L) shifted by one.

    Only targets in `scored_ids` count (for DNA: A, C, G, T, so N and [PAD] never enter the loss);
    None scores every target. With seq_idx (B, L) (packed rows), a target in another sequence than
    its input (the first token of the next record) does not count either. Returns (sum of losses,
    number of scored targets): the caller divides, so a batch with no scored target gives 0 / 0
    -> skipped, never NaN.
    """
    targets = input_ids[:, 1:]  # (B L-1)
    logits = logits[:, :-1].float()  # (B L-1 V)
    if scored_ids is None:
        mask = torch.ones_like(targets, dtype=torch.bool)
    else:
        mask = torch.isin(targets, torch.tensor(scored_ids, device=targets.device))
    if seq_idx is not None:
        mask = mask & (seq_idx[:, 1:] == seq_idx[:, :-1])  # (B L-1) input and target in one sequence
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    losses = losses.view_as(targets) * mask
    return losses.sum(), mask.sum()


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def seq_len_at(step: int, full_length: int, min_length: int, steps_per_stage: int) -> int:
    """Sequence-length warmup: min_length * 2^(step // steps_per_stage), capped at full_length."""
    if steps_per_stage <= 0 or min_length >= full_length:
        return full_length
    length = min_length * 2 ** (step // steps_per_stage)
    return min(length, full_length)


class LMModule(pl.LightningModule):
    """Wraps a MambaLM; batches are token windows (B, L) int64, or packed rows [ids, seq_idx] (B, L) each.

    Args:
        model: the core LM (passed in, so this module holds only the training logic).
        lr: peak learning rate.
        weight_decay: AdamW weight decay on matrices.
        betas: AdamW betas.
        warmup_fraction: fraction of max_steps spent in linear LR warmup.
        max_steps: total optimiser steps (for the schedule).
        seq_warmup_min: first sequence length of the length warmup (0 disables it).
        seq_warmup_steps: steps per length stage.
        score_nucleotides_only: count only A/C/G/T targets in the loss and perplexity.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 8e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_fraction: float = 0.1,
        max_steps: int = 1000,
        seq_warmup_min: int = 0,
        seq_warmup_steps: int = 0,
        score_nucleotides_only: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.scored_ids = NUCLEOTIDE_IDS if score_nucleotides_only else None
        # mean loss per scored token over the whole validation epoch: torchmetrics keeps the sum of
        # losses and the token count and sums both over ranks before dividing, so the loss and the
        # perplexity are those of all validation tokens, however unevenly the ranks' shards split them
        self.val_token_loss = MeanMetric().set_dtype(torch.float64)

    def forward(self, input_ids: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        if seq_idx is None:
            return self.model(input_ids)
        return self.model(input_ids, seq_idx=seq_idx)

    def _crop_for_warmup(self, batch: torch.Tensor) -> torch.Tensor:
        B, L = batch.shape
        length = seq_len_at(self.global_step, L, self.hparams.seq_warmup_min, self.hparams.seq_warmup_steps)
        if length < L:
            usable = (L // length) * length
            batch = batch[:, :usable].reshape(-1, length)  # (B * L/l, l)
        return batch

    def _shared_step(self, batch: torch.Tensor | list[torch.Tensor], stage: str):
        # windows: ids (B, L); packed rows (pipelines.genome_data, pack=True): [ids, seq_idx], both (B, L)
        batch, seq_idx = (batch, None) if isinstance(batch, torch.Tensor) else batch
        if stage == "train":
            batch = self._crop_for_warmup(batch)
            # a piece cut off at the crop starts a new row, where the model restarts anyway
            seq_idx = None if seq_idx is None else self._crop_for_warmup(seq_idx)
            self.log("train/seq_len", float(batch.shape[1]), on_step=True, on_epoch=False)
        total, count = lm_loss(self(batch, seq_idx), batch, self.scored_ids, seq_idx)
        loss = total / count.clamp(min=1)
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch.shape[0])
        else:  # weight: a batch with no scored token adds nothing
            self.val_token_loss.update(total.detach().double() / count.clamp(min=1), weight=count.double())
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def on_train_epoch_start(self):
        pass_epoch_to_dataset(self)

    def validation_step(self, batch, batch_idx):
        return self._shared_step(batch, "val")

    def on_validation_epoch_end(self):
        # perplexity over all scored tokens of the epoch (not a mean of per-batch perplexities);
        # compute() sums every rank's states first (a no-op on one device)
        mean = self.val_token_loss.compute().float()
        self.val_token_loss.reset()
        # already equal on every rank; sync_dist only tells Lightning so (and keeps it from warning)
        self.log("val/loss", mean, prog_bar=True, sync_dist=True)
        self.log("val/ppl", torch.exp(mean), prog_bar=True, sync_dist=True)
        self.log("val/bits_per_base", mean / math.log(2), sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(optimizer_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        warmup = int(hp.warmup_fraction * hp.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, hp.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
