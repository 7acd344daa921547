"""Labelled DNA sequences for other classification tasks (promoters, enhancers, ...).

    table.csv|.tsv (sequence, label[, split])  -> SequenceTable -> datasets of (ids (l,), label)
    Genomic Benchmarks folder (train|test/<class>/*.txt, one sequence per file) -> SequenceTable

Sequences keep their own lengths (cropped to at most `length`): batches are padded with [PAD] on
the right by `collate_classification`, and the models read only positions < length, so padding
never reaches a prediction. Without a split column, a seeded 80/10/10 train/valid/test split is
made; a Genomic Benchmarks folder has train and test, and 10% of train (seeded) becomes valid.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import InvalidSequenceError, SplitError, TableError
from .tables import parse_table, read_table_text
from .tokenizer import PAD_ID, encode_array
from .windows import normalize_split


def _seeded_split(n: int, seed: int, fractions: tuple[float, float]) -> list[str]:
    """Assign n items to train/valid(/test) with a seeded permutation; fractions = (valid, test)."""
    order = np.random.default_rng(seed).permutation(n)
    n_valid, n_test = (max(1 if n >= 3 else 0, round(n * f)) if f else 0 for f in fractions)
    splits = ["train"] * n
    for rank, i in enumerate(order):
        splits[i] = "valid" if rank < n_valid else "test" if rank < n_valid + n_test else "train"
    return splits


def read_sequence_table(path: str | os.PathLike, seed: int = 0) -> list[tuple[str, str, str]]:
    """CSV or TSV with columns `sequence`, `label`, optional `split` -> [(sequence, label, split)]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sequence table not found")
    text = read_table_text(path)
    first = text.splitlines()[0] if text else ""
    delimiter = "\t" if "\t" in first else ","
    header, table = parse_table(path, text, delimiter)
    if "sequence" not in header or "label" not in header:
        raise TableError(f"{path}: need a header with columns 'sequence' and 'label' (optional 'split'); got {header}")
    rows = []
    for lineno, row in table:
        if not row.get("sequence") or not row.get("label"):
            raise TableError(f"{path}:{lineno}: empty sequence or label")
        split = normalize_split(row["split"], f"{path}:{lineno}") if row.get("split") else ""
        rows.append((row["sequence"], row["label"], split))
    if not rows:
        raise TableError(f"{path}: no rows below the header")
    if not any(split for _, _, split in rows):
        splits = _seeded_split(len(rows), seed, (0.1, 0.1))
        rows = [(s, lab, sp) for (s, lab, _), sp in zip(rows, splits)]
    elif not all(split for _, _, split in rows):
        raise TableError(f"{path}: the split column is empty on some rows; fill it on every row or drop it")
    return rows


def read_genomic_benchmark(folder: str | os.PathLike, seed: int = 0) -> list[tuple[str, str, str]]:
    """A Genomic Benchmarks folder (train|test/<class>/*.txt) -> [(sequence, label, split)]."""
    folder = Path(folder)
    if not (folder / "train").is_dir():
        raise TableError(
            f"{folder}: not a Genomic Benchmarks folder (expected {folder}/train/<class>/ and {folder}/test/<class>/)"
        )
    rows = []
    for part in ("train", "test"):
        part_rows = []
        for class_dir in sorted(p for p in (folder / part).glob("*") if p.is_dir()):
            for file in sorted(class_dir.glob("*.txt")):
                try:
                    seq = "".join(file.read_bytes().decode("ascii").split())
                except UnicodeDecodeError as err:  # nucleotide codes are ASCII; anything else is not a sequence
                    raise InvalidSequenceError(f"{file}: not a plain-text DNA sequence ({err.reason})") from err
                if seq:
                    part_rows.append((seq, class_dir.name, part))
        if part == "train" and part_rows:
            splits = _seeded_split(len(part_rows), seed, (0.1, 0.0))
            part_rows = [(s, lab, sp) for (s, lab, _), sp in zip(part_rows, splits)]
        rows += part_rows
    if not rows:
        raise TableError(f"{folder}: no sequences found in train/<class>/*.txt")
    return rows


class SequenceTable:
    """Labelled sequences from a table or a Genomic Benchmarks folder.

    Args:
        path: CSV/TSV file or Genomic Benchmarks folder.
        length: longest sequence given to the model; longer ones are cropped (randomly in
            training, centred in evaluation).
        seed: seeds the split when the data carries none.
    Attributes:
        labels: label names, sorted (label id = position).
    """

    def __init__(self, path: str | os.PathLike, length: int, seed: int = 0):
        self.path, self.length = Path(path), length
        rows = read_genomic_benchmark(path, seed) if self.path.is_dir() else read_sequence_table(path, seed)
        self.labels = sorted({label for _, label, _ in rows})
        self._by_split: dict[str, list[tuple[np.ndarray, int]]] = {}
        for i, (seq, label, split) in enumerate(rows):
            try:
                ids = encode_array(seq)
            except InvalidSequenceError as err:
                raise InvalidSequenceError(f"{self.path}: sequence {i + 1} (label {label!r}): {err}") from err
            self._by_split.setdefault(split, []).append((ids, self.labels.index(label)))

    def splits(self) -> list[str]:
        return sorted(self._by_split)

    def examples(self, split: str) -> list[tuple[np.ndarray, int]]:
        split = normalize_split(split)
        if split not in self._by_split:
            raise SplitError(
                f"{self.path}: no sequences in split {split!r} (splits present: {', '.join(self.splits())})"
            )
        return self._by_split[split]

    def train_dataset(self, num_samples: int, seed: int, rc_prob: float = 0.0) -> SequenceExamples:
        return SequenceExamples(self.examples("train"), self.length, seed, random_crop=True, rc_prob=rc_prob)

    def eval_dataset(self, split: str, windows_per_species: int, seed: int) -> SequenceExamples:
        return SequenceExamples(self.examples(split), self.length, seed, random_crop=False)


class SequenceExamples(Dataset):
    """(ids (l,), label) with l = min(len(sequence), length); random or centred crop."""

    def __init__(
        self, examples: list[tuple[np.ndarray, int]], length: int, seed: int, random_crop: bool, rc_prob: float = 0.0
    ):
        self.examples, self.length, self.seed = examples, length, seed
        self.random_crop, self.rc_prob = random_crop, rc_prob
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int):
        ids, label = self.examples[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        if len(ids) > self.length:
            spare = len(ids) - self.length
            offset = int(rng.integers(spare + 1)) if self.random_crop else spare // 2
            ids = ids[offset : offset + self.length]
        if self.rc_prob and rng.random() < self.rc_prob:
            from .tokenizer import COMPLEMENT

            ids = COMPLEMENT.numpy()[ids][::-1]
        return torch.from_numpy(np.ascontiguousarray(ids)), label


def collate_classification(batch: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """Right-pad with [PAD]: {"input_ids": (B, L_max), "lengths": (B,), "labels": (B,)}."""
    lengths = torch.tensor([len(ids) for ids, _ in batch])
    input_ids = torch.full((len(batch), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, (ids, _) in enumerate(batch):
        input_ids[i, : len(ids)] = ids
    return {"input_ids": input_ids, "lengths": lengths, "labels": torch.tensor([label for _, label in batch])}


def open_classification_data(path: str | os.PathLike, length: int, seed: int = 0):
    """`--data` of the classify commands: species.tsv, a labelled-sequence CSV/TSV, or a Genomic
    Benchmarks folder, told apart by the header (species/fasta columns) or by being a folder."""
    from .species import SpeciesTable

    path = Path(path)
    if path.is_dir():
        return SequenceTable(path, length, seed)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: --data not found (species.tsv, sequence table or Genomic Benchmarks folder)")
    text = read_table_text(path)
    header = text.splitlines()[0] if text else ""
    if not header.strip():
        raise TableError(f"{path}: empty file; expected a header line")
    columns = {c.strip() for c in header.replace(",", "\t").split("\t")}
    if {"species", "fasta"} <= columns:
        return SpeciesTable(path, length)
    if {"sequence", "label"} <= columns:
        return SequenceTable(path, length, seed)
    raise TableError(
        f"{path}: header {header.strip()!r} is neither a species table (species, fasta, split, "
        "records) nor a sequence table (sequence, label[, split])"
    )


def check_split_name(split: str) -> str:
    """Validate a --split argument early (before any file is opened)."""
    try:
        return normalize_split(split)
    except SplitError as err:
        raise SplitError(f"--split: {err}") from err
