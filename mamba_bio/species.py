"""Species classification from genome windows: the Mamba paper's great-apes protocol (sec. 4.3.3).

    species.tsv -> read_species_table -> SpeciesTable -> train_dataset / eval_dataset -> (ids (L,), label)

species.tsv is tab-separated with the header `species  fasta  split  records`: one row per FASTA
file; `split` is train, valid or test; `records` an optional comma-separated list of record
(chromosome) names, empty for all. Relative FASTA paths are read relative to the table. Splitting
by file (held-out strains or assemblies) and by record (held-out chromosomes) are both rows.

Training windows are drawn as in the paper: a species uniformly, then one of its records
uniformly, then a window start uniformly. Evaluation uses a fixed set of windows drawn the same
way from a seeded generator, so every run scores the same windows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import SplitError, TableError, WindowError
from .fasta import Genome
from .tables import parse_table, read_table_text
from .tokenizer import COMPLEMENT, N_ID, PAD_ID
from .windows import normalize_split

SPECIES_COLUMNS = ("species", "fasta", "split", "records")
_MAX_DRAWS = 100  # redraws before giving up on finding a window that is not all N


@dataclass(frozen=True)
class SpeciesRow:
    species: str
    fasta: Path
    split: str
    records: tuple[str, ...]  # empty: every record of the file


def read_species_table(path: str | os.PathLike) -> list[SpeciesRow]:
    """Parse species.tsv (see the module docstring); TableError/SplitError name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: species table not found")
    header, table = parse_table(path, read_table_text(path), "\t")
    missing = [c for c in SPECIES_COLUMNS[:3] if c not in header]
    if missing:
        raise TableError(
            f"{path}: header must be {chr(9).join(SPECIES_COLUMNS)!r} (tab-separated); missing {', '.join(missing)}"
        )
    rows = []
    for lineno, row in table:
        if not any(row.values()):
            continue
        if not row["species"] or not row["fasta"]:
            raise TableError(f"{path}:{lineno}: species and fasta must not be empty")
        split = normalize_split(row["split"], f"{path}:{lineno}")
        fasta = Path(row["fasta"]).expanduser()
        fasta = fasta if fasta.is_absolute() else path.parent / fasta
        records = tuple(r.strip() for r in row.get("records", "").split(",") if r.strip())
        rows.append(SpeciesRow(row["species"], fasta, split, records))
    if not rows:
        raise TableError(f"{path}: no rows below the header")
    return rows


class SpeciesTable:
    """Open every FASTA of a species table and check it against the window length.

    Args:
        path: species.tsv.
        length: window length L in bp.
    Attributes:
        labels: species names, sorted (label id = position).
    """

    def __init__(self, path: str | os.PathLike, length: int):
        self.path, self.length = Path(path), length
        rows = read_species_table(path)
        self.labels = sorted({r.species for r in rows})
        genomes: dict[Path, Genome] = {}
        # split -> species -> list of (genome, record, size), records >= L only
        self._records: dict[str, dict[str, list[tuple[Genome, str, int]]]] = {}
        for row in rows:
            genome = genomes.get(row.fasta) or genomes.setdefault(row.fasta, Genome(row.fasta))
            names = row.records or tuple(genome.sizes)
            entries = self._records.setdefault(row.split, {}).setdefault(row.species, [])
            for name in names:
                size = genome.check_chrom(name, f"{self.path} ({row.species})")
                if size >= length:
                    entries.append((genome, name, size))
        for split, by_species in self._records.items():
            for species, entries in by_species.items():
                if not entries:
                    raise WindowError(
                        f"{self.path}: window length {length} is longer than every record of "
                        f"species {species!r} in split {split!r}; use a smaller --length"
                    )

    def splits(self) -> list[str]:
        return sorted(self._records)

    def species_in(self, split: str) -> dict[str, list[tuple[Genome, str, int]]]:
        split = normalize_split(split)
        if split not in self._records:
            raise SplitError(f"{self.path}: no rows with split {split!r} (splits present: {', '.join(self.splits())})")
        return self._records[split]

    def train_dataset(self, num_samples: int, seed: int, rc_prob: float = 0.0) -> SpeciesWindows:
        return SpeciesWindows(self, "train", num_samples, seed, fixed=False, rc_prob=rc_prob)

    def eval_dataset(self, split: str, windows_per_species: int, seed: int) -> SpeciesWindows:
        by_species = self.species_in(split)
        return SpeciesWindows(self, split, windows_per_species * len(by_species), seed, fixed=True)


def _draw(by_species, species_names, labels, length, rng):
    """Species uniformly, then record uniformly, then start uniformly (the paper's protocol)."""
    species = species_names[int(rng.integers(len(species_names)))]
    entries = by_species[species]
    genome, record, size = entries[int(rng.integers(len(entries)))]
    start = int(rng.integers(size - length + 1))
    return labels.index(species), genome, record, start


class SpeciesWindows(Dataset):
    """(ids (L,), label) pairs drawn from one split of a SpeciesTable.

    `fixed=False` (training): item i is a fresh draw seeded by (seed, epoch, i).
    `fixed=True` (evaluation): windows drawn once at construction from `seed`, the same every run;
    species are visited in turn so each gets num_samples / n_species windows.
    """

    def __init__(self, table: SpeciesTable, split: str, num_samples: int, seed: int, fixed: bool, rc_prob: float = 0.0):
        self.by_species = table.species_in(split)
        self.species_names = sorted(self.by_species)
        self.labels, self.length = table.labels, table.length
        self.num_samples, self.seed, self.fixed, self.rc_prob = num_samples, seed, fixed, rc_prob
        self.epoch = 0
        self.items = None
        if fixed:
            rng = np.random.default_rng(seed)
            self.items = []
            for i in range(num_samples):
                species = self.species_names[i % len(self.species_names)]
                self.items.append(self._draw_valid({species: self.by_species[species]}, [species], rng))

    def _draw_valid(self, by_species, names, rng):
        for _ in range(_MAX_DRAWS):
            label, genome, record, start = _draw(by_species, names, self.labels, self.length, rng)
            ids = genome.fetch_ids(record, start, start + self.length)
            if not np.all((ids == N_ID) | (ids == PAD_ID)):  # all-N windows are skipped
                return label, genome, record, start
        raise WindowError(f"{_MAX_DRAWS} draws in a row gave all-N windows for {names}; check the FASTA files")

    def __len__(self) -> int:
        return self.num_samples

    def describe(self, index: int) -> tuple[str, str, str, int]:
        """(species, fasta path, record, start) of a fixed item."""
        label, genome, record, start = self.items[index]
        return self.labels[label], str(genome.path), record, start

    def __getitem__(self, index: int):
        if self.fixed:
            label, genome, record, start = self.items[index]
        else:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            label, genome, record, start = self._draw_valid(self.by_species, self.species_names, rng)
        ids = genome.fetch_ids(record, start, start + self.length)
        flip = np.random.default_rng((self.seed, self.epoch, index, 1)).random() < self.rc_prob
        if self.rc_prob and not self.fixed and flip:
            ids = COMPLEMENT.numpy()[ids][::-1].copy()
        return torch.from_numpy(ids), label
