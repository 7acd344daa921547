"""Lightning DataModules for DNA: genome windows for pretraining, labelled windows for classification.

Downloads happen only in `prepare_data` (from data_manifests, when `download=True`); datasets are
built in `setup` from files on disk, with seeded sampling. Every input error surfaces in `setup`
as a mamba_bio error (a ValueError/OSError/LookupError subclass), so a CLI can call `setup`
before creating any output and report bad input in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import Subset

from mamba_bio.errors import BedError, WindowError
from mamba_bio.fasta import Genome
from mamba_bio.labelled import collate_classification, open_classification_data
from mamba_bio.manifests import PACKAGE_DIR, fetch, local_paths
from mamba_bio.packed import PackedRecords, record_splits
from mamba_bio.windows import GenomeWindows, build_windows, check_intervals, read_bed, record_intervals
from pipelines.common import resumable_loader

SAMPLE_DIR = PACKAGE_DIR / "sample_data"


def sample_fastas() -> list[Path]:
    """Every FASTA bundled with the package (real genomes, see sample_data/ATTRIBUTION.md)."""
    return sorted(SAMPLE_DIR.glob("*.fa"))


def sample_species_table() -> Path:
    return SAMPLE_DIR / "species.tsv"


def _evenly_spaced(items: list, k: int) -> list:
    if k <= 0 or len(items) <= k:
        return items
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


class GenomeDataModule(pl.LightningDataModule):
    """Windows of FASTA files for next-token pretraining.

    Args:
        fasta: FASTA files; empty/None with no manifest -> the bundled sample genomes.
        bed: BED intervals with a split column (needs exactly one FASTA); None -> whole records,
            the last `valid_fraction` of each record as the valid split.
        manifest: a data_manifests name (e.g. "hg38") whose fasta/bed files are used instead.
        data_dir: where the manifest's files are (default ~/.cache/mamba_bio/data/NAME).
        download: let `prepare_data` fetch the manifest's files.
        length: window length L (bp).
        batch_size: windows per batch.
        max_shift: random shift of training windows (bp), 0 for none.
        rc_prob: probability of reverse-complementing a training window.
        valid_fraction: share of each record held out when there is no BED.
        max_val_windows: evenly spaced subset of the valid windows (0: all).
        num_workers: DataLoader workers.
        seed: seeds augmentation and shuffling.
        pack: pack whole intervals end to end into rows of `length` (mamba_bio.packed) instead of
            cutting windows: batches are then [ids, seq_idx]; `max_val_windows` counts rows.
    """

    def __init__(
        self,
        fasta: list[str] | None = None,
        bed: str | None = None,
        manifest: str | None = None,
        data_dir: str | None = None,
        download: bool = False,
        length: int = 1024,
        batch_size: int = 8,
        max_shift: int = 0,
        rc_prob: float = 0.0,
        valid_fraction: float = 0.1,
        max_val_windows: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        pack: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.train_set = self.val_set = None
        self._resume_position: tuple[int, int] | None = None

    def resume_from(self, epoch: int, batches: int) -> None:
        """On --resume (called by the checkpoint callback): the training loader built next skips the
        `batches` already trained in `epoch`, and augmentation draws continue from that epoch."""
        self._resume_position = (epoch, batches)
        if self.train_set is not None:
            self.train_set.epoch = epoch

    def prepare_data(self):
        hp = self.hparams
        if hp.manifest and hp.download:
            fetch(hp.manifest, hp.data_dir)

    def _sources(self) -> tuple[list[Path], str | None]:
        hp = self.hparams
        if hp.manifest:
            fastas = local_paths(hp.manifest, hp.data_dir, role="fasta")
            beds = local_paths(hp.manifest, hp.data_dir, role="bed")
            return fastas, str(beds[0]) if beds else None
        if hp.fasta:
            return [Path(f) for f in hp.fasta], hp.bed
        if hp.bed:
            raise BedError("--bed needs --fasta (the BED intervals refer to one FASTA file)")
        return sample_fastas(), None

    def setup(self, stage: str | None = None):
        if self.train_set is not None:
            return
        hp = self.hparams
        fastas, bed = self._sources()
        genomes = [Genome(f) for f in fastas]
        if hp.pack:
            self._setup_packed(genomes, bed)
            return
        longest = max(max(g.sizes.values()) for g in genomes)
        if hp.length > longest:
            raise WindowError(
                f"window length {hp.length} is longer than every record of {', '.join(map(str, fastas))} "
                f"(longest {longest} bp); use a smaller --length"
            )
        if bed is not None:
            if len(genomes) != 1:
                raise BedError(f"--bed {bed}: give exactly one --fasta with a BED file (got {len(genomes)})")
            intervals = read_bed(bed)
            check_intervals(intervals, genomes[0], str(bed))
            per_genome = [intervals]
        else:
            per_genome = [
                record_intervals(g, hp.length, hp.valid_fraction) if max(g.sizes.values()) >= hp.length else []
                for g in genomes
            ]
        train = build_windows(genomes, per_genome, hp.length, "train")
        valid = build_windows(genomes, per_genome, hp.length, "valid")
        if not train:
            raise WindowError(f"no training windows of length {hp.length} in {bed or 'the FASTA records'}")
        train_set = GenomeWindows(genomes, train, hp.length, hp.max_shift, hp.rc_prob, hp.seed)
        val_set = None
        if valid:
            try:
                val_set = GenomeWindows(genomes, _evenly_spaced(valid, hp.max_val_windows), hp.length, seed=hp.seed)
            except WindowError:  # every valid window is N
                val_set = None
        if val_set is None:
            # no usable valid split (a BED without one): hold out every 20th training window rather than stop
            print("genome data: no valid split with sequence; holding out every 20th training window", file=sys.stderr)
            kept = train_set.windows
            if len(kept) < 2:
                raise WindowError(
                    f"only {len(kept)} training window(s) of length {hp.length}: too few to hold out "
                    "a valid split; use a smaller --length or add valid intervals"
                )
            valid = _evenly_spaced(kept[::20], hp.max_val_windows)
            train_set.windows = [w for i, w in enumerate(kept) if i % 20]
            val_set = GenomeWindows(genomes, valid, hp.length, seed=hp.seed)
        self.train_set, self.val_set, self.genomes = train_set, val_set, genomes

    def _setup_packed(self, genomes: list[Genome], bed: str | None) -> None:
        """Packed rows of whole intervals; a BED without a valid split gives every 20th interval to it."""
        hp = self.hparams
        if hp.max_shift:
            raise WindowError(
                f"--max-shift {hp.max_shift} cannot be used with --pack: packed rows hold whole records, "
                "there is no window to shift; drop one of the two"
            )
        if bed is not None:
            if len(genomes) != 1:
                raise BedError(f"--bed {bed}: give exactly one --fasta with a BED file (got {len(genomes)})")
            intervals = read_bed(bed)
            check_intervals(intervals, genomes[0], str(bed))
            records = [(0, iv) for iv in intervals]
        else:
            records = [(g, iv) for g, genome in enumerate(genomes) for iv in record_splits(genome, hp.valid_fraction)]
        train = [r for r in records if r[1].split == "train"]
        valid = [r for r in records if r[1].split == "valid"]
        if not valid:
            if len(train) < 2:
                raise WindowError(
                    f"only {len(train)} training interval(s) in {bed or 'the FASTA records'}: too few to hold "
                    "out a valid split; add valid intervals"
                )
            print("genome data: no valid split; holding out every 20th training interval", file=sys.stderr)
            train, valid = [r for i, r in enumerate(train) if i % 20], train[::20]
        if not train:
            raise WindowError(f"no training intervals in {bed or 'the FASTA records'}")
        self.train_set = PackedRecords(genomes, train, hp.length, hp.rc_prob, hp.seed, shuffle=True)
        val_rows = PackedRecords(genomes, valid, hp.length, seed=hp.seed, shuffle=False)
        self.val_set = Subset(val_rows, _evenly_spaced(list(range(len(val_rows))), hp.max_val_windows))
        self.genomes = genomes

    @property
    def packing_stats(self) -> dict | None:
        """Padding share of the packed training rows against tiling each interval into its own rows
        (None without packing)."""
        if not self.hparams.pack or self.train_set is None:
            return None
        return {
            "padding_fraction": round(self.train_set.padding_fraction, 6),
            "padding_fraction_unpacked": round(self.train_set.padding_fraction_unpacked, 6),
            "train_rows": len(self.train_set),
            "train_records": len(self.train_set.records),
        }

    def train_dataloader(self):
        hp = self.hparams
        return resumable_loader(
            self.train_set,
            hp.batch_size,
            hp.seed,
            shuffle=True,
            trainer=self.trainer,
            position=self._resume_position,
            num_workers=hp.num_workers,
        )

    def val_dataloader(self):
        hp = self.hparams
        # sharded across ranks too, every window once; LMModule sums the loss over ranks before dividing
        return resumable_loader(
            self.val_set,
            hp.batch_size,
            hp.seed,
            shuffle=False,
            trainer=self.trainer,
            even=False,
            num_workers=hp.num_workers,
        )


class ClassificationDataModule(pl.LightningDataModule):
    """Labelled DNA for `classify`: species.tsv, a sequence CSV/TSV, or a Genomic Benchmarks folder.

    Args:
        data: path of the table or folder (see `mamba_bio.labelled.open_classification_data`).
        length: window length (species) or maximum sequence length (tables).
        batch_size: examples per batch.
        train_samples: training examples per epoch (species windows are drawn afresh for each).
        eval_windows: fixed evaluation windows per species (species tables only).
        eval_split: split used by `test_dataloader`.
        rc_prob: probability of reverse-complementing a training example.
        num_workers: DataLoader workers.
        seed: seeds sampling, splits and the fixed evaluation windows.
    """

    def __init__(
        self,
        data: str,
        length: int = 1024,
        batch_size: int = 16,
        train_samples: int = 4096,
        eval_windows: int = 64,
        eval_split: str = "test",
        rc_prob: float = 0.0,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.source = self.train_set = self.val_set = None
        self._resume_position: tuple[int, int] | None = None

    def resume_from(self, epoch: int, batches: int) -> None:
        """On --resume: skip the `batches` already trained in `epoch` (see GenomeDataModule.resume_from)."""
        self._resume_position = (epoch, batches)
        if self.train_set is not None and hasattr(self.train_set, "epoch"):
            self.train_set.epoch = epoch

    def setup(self, stage: str | None = None):
        hp = self.hparams
        if self.source is None:
            self.source = open_classification_data(hp.data, hp.length, hp.seed)
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self.source.train_dataset(hp.train_samples, hp.seed, hp.rc_prob)
            if "valid" in self.source.splits():
                self.val_set = self.source.eval_dataset("valid", hp.eval_windows, hp.seed + 1)

    @property
    def labels(self) -> list[str]:
        return self.source.labels

    def _loader(self, dataset, shuffle: bool = False, position: tuple[int, int] | None = None):
        hp = self.hparams
        return resumable_loader(
            dataset,
            hp.batch_size,
            hp.seed,
            shuffle=shuffle,
            trainer=self.trainer,
            position=position,
            even=shuffle,  # training: equal shards; evaluation: every example once (ClassifierModule sums)
            collate_fn=collate_classification,
            num_workers=hp.num_workers,
        )

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True, position=self._resume_position)

    def val_dataloader(self):
        return self._loader(self.val_set) if self.val_set is not None else []

    def eval_dataset(self, split: str):
        return self.source.eval_dataset(split, self.hparams.eval_windows, self.hparams.seed + 2)

    def test_dataloader(self):
        return self._loader(self.eval_dataset(self.hparams.eval_split))
