"""Lightning wrappers for autoregressive waveform models: `AudioLM` (steps, logging, optimiser)
and `AudioDataModule` (an audio folder split by file into mu-law windows).

    model = Sashimi(SashimiConfig(d_model=32, n_layer=2))
    module = AudioLM(model, learning_rate=2e-3, max_steps=200)
    data = AudioDataModule("clips/", sample_rate_hz=8000, length_samples=4096)
    build_trainer(out_dir, "cpu", max_steps=200).fit(module, data)
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from core.models.sashimi import Sashimi
from mamba_audio.datasets import IGNORE_INDEX, AudioWindows, PackedClips, folder_splits
from mamba_audio.io import ReadSummary
from pipelines.common import optimizer_groups, pass_epoch_to_dataset, resumable_loader

LN2 = math.log(2.0)


class AudioLM(pl.LightningModule):
    """Next-sample prediction on 8-bit classes (mu-law or linear); logs `{stage}/loss` (nats) and
    `{stage}/bpb` (bits per sample).

    Evaluation losses are means over every predicted sample of the split: each rank adds its
    losses and sample counts to torchmetrics states summed across ranks before dividing.
    """

    def __init__(
        self,
        model: Sashimi,
        learning_rate: float = 2e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        max_steps: int = 1000,
    ):
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.eval_loss = nn.ModuleDict({stage: MeanMetric().set_dtype(torch.float64) for stage in ("valid", "test")})

    def forward(self, inputs: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        if seq_idx is None:
            return self.model(inputs)
        return self.model(inputs, seq_idx=seq_idx)

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        # windows: (inputs, targets); packed rows (mamba_audio.datasets.PackedClips): (inputs, targets, seq_idx)
        inputs, targets, *packed = batch  # (B L) each
        logits = self(inputs, packed[0] if packed else None)  # (B L V)
        # padding of packed rows has target IGNORE_INDEX, cross_entropy's default ignore_index
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        if stage == "train":  # this rank's batch: a per-step progress signal
            self.log("train/loss", loss, prog_bar=True, batch_size=inputs.shape[0])
            self.log("train/bpb", loss / LN2, batch_size=inputs.shape[0])
        else:
            self.eval_loss[stage].update(loss.detach().double(), weight=targets.numel())
        return loss

    def _log_eval(self, stage: str) -> None:
        mean = self.eval_loss[stage].compute().float()  # summed over ranks, then divided
        self.eval_loss[stage].reset()
        # already equal on every rank; sync_dist only tells Lightning so (and keeps it from warning)
        self.log(f"{stage}/loss", mean, sync_dist=True)
        self.log(f"{stage}/bpb", mean / LN2, prog_bar=True, sync_dist=True)

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def on_train_epoch_start(self):
        pass_epoch_to_dataset(self)  # packed rows are re-packed each epoch; windows have no epoch

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "valid")

    def on_validation_epoch_end(self):
        self._log_eval("valid")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def on_test_epoch_end(self):
        self._log_eval("test")

    def configure_optimizers(self):
        # no weight decay on the SSM parameters marked by the mixers (A, D), norms and biases (dt)
        optimizer = torch.optim.AdamW(
            optimizer_groups(self.model, self.hparams.weight_decay),
            lr=self.hparams.learning_rate,
            betas=(0.9, 0.95),
        )
        warmup, total = self.hparams.warmup_steps, max(1, self.hparams.max_steps)

        def schedule(step: int) -> float:  # linear warm-up, then cosine down to 10% of the peak
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class AudioDataModule(pl.LightningDataModule):
    """An audio folder (read recursively) split into train/valid/test windows of 8-bit classes:
    by its Speech Commands split lists when it has them (SC09), otherwise by file with fractions.

    Args:
        data_dir: folder of .wav/.flac/.ogg files.
        sample_rate_hz: rate the model runs at; files are resampled to it.
        length_samples: samples per example (a multiple of the model's total pooling factor).
        mode: "clips" (one padded/cropped example per file) or "windows" (long files cut into windows).
        batch_size: examples per batch.
        split_fractions: train/valid/test fractions of the files (unused for a folder with split lists).
        seed: seed of the file split and of the training shuffle.
        num_workers: DataLoader worker processes.
        quantization: "mulaw" (SaShiMi's default) or "linear" (SaShiMi's Beethoven).
        pack_align: pack whole training clips into rows (PackedClips), each piece starting at a
            multiple of this (the model's total pooling factor); None: `mode` for training too.
            Valid and test stay `mode` windows either way.
    """

    def __init__(
        self,
        data_dir: str,
        sample_rate_hz: int,
        length_samples: int,
        mode: str = "clips",
        batch_size: int = 8,
        split_fractions: tuple[float, float, float] = (0.88, 0.06, 0.06),
        seed: int = 0,
        num_workers: int = 0,
        quantization: str = "mulaw",
        pack_align: int | None = None,
    ):
        super().__init__()
        self.data_dir, self.sample_rate_hz, self.length_samples = data_dir, sample_rate_hz, length_samples
        self.mode, self.batch_size, self.split_fractions = mode, batch_size, tuple(split_fractions)
        self.seed, self.num_workers, self.quantization = seed, num_workers, quantization
        self.pack_align = pack_align
        self.splits: dict[str, AudioWindows | PackedClips] | None = None
        self.summary = ReadSummary()
        self._resume_position: tuple[int, int] | None = None

    def resume_from(self, epoch: int, batches: int) -> None:
        """On --resume (called by the checkpoint callback): the next training loader skips the
        `batches` already trained in `epoch` (and packed rows are laid out as in that epoch)."""
        self._resume_position = (epoch, batches)
        if self.splits is not None and isinstance(self.splits["train"], PackedClips):
            self.splits["train"].epoch = epoch

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:  # reading is the slow part; the CLI calls setup early to fail fast
            self.splits = folder_splits(
                self.data_dir,
                self.sample_rate_hz,
                self.length_samples,
                self.mode,
                self.split_fractions,
                self.seed,
                self.summary,
                self.quantization,
                self.pack_align,
            )

    @property
    def packing_stats(self) -> dict | None:
        """Padding share of the packed training rows against tiling each clip into its own rows (None unpacked)."""
        train = None if self.splits is None else self.splits["train"]
        if not isinstance(train, PackedClips):
            return None
        return {
            "padding_fraction": round(train.padding_fraction, 6),
            "padding_fraction_unpacked": round(train.padding_fraction_unpacked, 6),
            "train_rows": len(train),
        }

    def _loader(self, split: str, shuffle: bool, position: tuple[int, int] | None = None) -> DataLoader:
        # seeded order, sharded across ranks, restartable mid-epoch (see pipelines.common.ResumableSampler);
        # evaluation splits are scored item by item exactly once, AudioLM sums over ranks
        return resumable_loader(
            self.splits[split],
            self.batch_size,
            self.seed,
            shuffle=shuffle,
            trainer=self.trainer,
            position=position,
            even=split == "train",
            num_workers=self.num_workers,
        )

    def full_loader(self, split: str) -> DataLoader:
        """Every example of `split` in file order, whatever the rank (for scoring after training)."""
        return resumable_loader(
            self.splits[split], self.batch_size, self.seed, shuffle=False, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, position=self._resume_position)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def target_samples(batch) -> int:
    """Samples a training batch scores: its targets, less the padding of packed rows."""
    return int((batch[1] != IGNORE_INDEX).sum())
