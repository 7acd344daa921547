"""BED intervals and fixed-length genome windows for next-token pretraining.

    BED (chrom start end [split]) -> read_bed -> Interval list -> window_starts -> GenomeWindows[i] -> ids (L,)

BED coordinates are 0-based, half-open, exactly as used inside the package, so `read_bed` does no
shifting; region strings "chr1:1,001-2,000" are 1-based closed and `parse_region` converts them
once. The 4th BED column, when present, is the split (train, valid/val/validation, test), as in
the Basenji `sequences_human.bed` that HyenaDNA and the Mamba paper pretrain on.

Window sampling follows the Mamba paper (sec. 4.3, app. E.3): for a window length L that fits
the interval (the paper's intervals are 2^17 = 131,072 bp), the interval is tiled with
non-overlapping windows of L; for longer L, two windows per interval, one starting at its start
and one ending at its end, clipped to the chromosome and padded with [PAD].
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import BedError, SplitError, WindowError
from .fasta import Genome
from .tokenizer import COMPLEMENT, N_ID, PAD_ID

SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
PAPER_INTERVAL_BP = 2**17
# eager all-N filtering reads every window once; above this many bp it is done lazily instead
_EAGER_FILTER_MAX_BP = 50_000_000
_BED_COORD = re.compile(r"[0-9]+")


def normalize_split(name: str, context: str = "") -> str:
    """'val'/'validation' -> 'valid'; SplitError for anything but train, valid, test."""
    key = name.strip().lower()
    if key not in _SPLIT_ALIASES:
        where = f"{context}: " if context else ""
        raise SplitError(f"{where}unknown split {name!r}; use train, valid (or val) or test")
    return _SPLIT_ALIASES[key]


@dataclass(frozen=True)
class Interval:
    """A 0-based half-open interval [start, end) of record `chrom`, belonging to `split`."""

    chrom: str
    start: int
    end: int
    split: str = "train"

    def __len__(self) -> int:
        return self.end - self.start


def read_bed(path: str | os.PathLike, default_split: str = "train") -> list[Interval]:
    """Read a BED file (columns chrom, start, end, optional split) into Intervals.

    BED is already 0-based half-open, the package's convention. Blank, '#', 'track' and 'browser'
    lines are skipped. Raises BedError naming the file and line for malformed lines, start >= end,
    unknown split names, or a file with no intervals.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: BED file not found")
    intervals = []
    with open(path, "rb") as fh:  # bytes, decoded per line, so a bad byte is reported with its line
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise BedError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x}); is this a BED file?"
                ) from err
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            fields = line.rstrip("\n\r").split("\t")
            if len(fields) < 3:
                fields = line.split()  # space-separated BED, common in hand-written files
            if len(fields) < 3:
                raise BedError(f"{path}:{lineno}: expected at least 3 columns (chrom start end), got {line.strip()!r}")
            chrom = fields[0]
            if not chrom.strip() or chrom != chrom.strip():
                raise BedError(f"{path}:{lineno}: empty or padded chromosome name {chrom!r}")
            # plain ASCII digits only: int() would also take '+3', '1_0', ' 4' and non-Latin digits
            if not (_BED_COORD.fullmatch(fields[1]) and _BED_COORD.fullmatch(fields[2])):
                raise BedError(
                    f"{path}:{lineno}: start/end must be non-negative integers, got {fields[1]!r} {fields[2]!r}"
                )
            start, end = int(fields[1]), int(fields[2])
            if start < 0 or end <= start:
                raise BedError(f"{path}:{lineno}: need 0 <= start < end, got {chrom}:{start}-{end}")
            split = default_split if len(fields) < 4 else normalize_split(fields[3], f"{path}:{lineno}")
            intervals.append(Interval(chrom, start, end, split))
    if not intervals:
        raise BedError(f"{path}: no intervals found (empty BED file?)")
    return intervals


def parse_region(region: str) -> Interval:
    """'chr1:1,001-2,000' (1-based, closed, as genome browsers write it) -> Interval('chr1', 1000, 2000)."""
    try:
        chrom, span = region.rsplit(":", 1)
        first, last = (int(x.replace(",", "")) for x in span.split("-"))
    except ValueError as err:
        raise BedError(f"region {region!r}: expected CHROM:START-END (1-based, inclusive)") from err
    if first < 1 or last < first:
        raise BedError(f"region {region!r}: need 1 <= START <= END")
    return Interval(chrom, first - 1, last)


def check_intervals(intervals: Sequence[Interval], genome: Genome, source: str) -> None:
    """Every interval must name a record of `genome` and lie inside it (UnknownChromosomeError / BedError)."""
    for iv in intervals:
        size = genome.check_chrom(iv.chrom, source)
        if iv.end > size:
            raise BedError(
                f"{source}: interval {iv.chrom}:{iv.start}-{iv.end} runs past the end of "
                f"{iv.chrom} (length {size}) in {genome.path}"
            )


def window_starts(interval: Interval, length: int) -> list[int]:
    """Window starts for one interval (the paper's scheme, see the module docstring)."""
    if length <= len(interval):
        return [interval.start + i * length for i in range(len(interval) // length)]
    return [interval.start, interval.end - length]


def record_intervals(genome: Genome, length: int, valid_fraction: float = 0.1) -> list[Interval]:
    """Whole records as intervals, for a FASTA given without a BED file.

    The last `valid_fraction` of each record (whole windows of `length`, at least one when the
    record holds two or more) is the valid split; records shorter than `length` are left out.
    """
    intervals = []
    for chrom, size in genome.sizes.items():
        n = size // length
        if n == 0:
            continue
        n_valid = max(1, round(n * valid_fraction)) if n >= 2 else 0
        cut = (n - n_valid) * length
        if cut:
            intervals.append(Interval(chrom, 0, cut, "train"))
        if n_valid:
            intervals.append(Interval(chrom, cut, n * length, "valid"))
    if not intervals:
        longest = max(genome.sizes.values())
        raise WindowError(
            f"{genome.path}: window length {length} is longer than every record "
            f"(longest {longest} bp); use a smaller --length"
        )
    return intervals


class GenomeWindows(Dataset):
    """Fixed-length windows of one or more genomes, as token ids.

    Item: int64 ids (L,) with [PAD] where a window ran past a chromosome end.

    Args:
        genomes: the FASTA files.
        windows: (genome index, chrom, start) triples, 0-based.
        length: window length L in bp.
        max_shift: training augmentation, shift each window by up to this many bp either way.
        rc_prob: training augmentation, probability of reverse-complementing a window.
        seed: seeds the augmentation (a window's draw depends on seed and its index only).
        skip_all_n: drop windows made only of N (and [PAD]); done eagerly for small sets, lazily
            (the next non-N window is returned) above 50 Mbp.
    """

    def __init__(
        self,
        genomes: Sequence[Genome],
        windows: Sequence[tuple[int, str, int]],
        length: int,
        max_shift: int = 0,
        rc_prob: float = 0.0,
        seed: int = 0,
        skip_all_n: bool = True,
    ):
        self.genomes = list(genomes)
        self.length, self.max_shift, self.rc_prob, self.seed = length, max_shift, rc_prob, seed
        self.epoch = 0
        self.skip_all_n = skip_all_n
        self.windows = list(windows)
        if skip_all_n and len(self.windows) * length <= _EAGER_FILTER_MAX_BP:
            self.windows = [w for w in self.windows if not self._all_n(self._read(*w))]
            self._lazy = False
        else:
            self._lazy = skip_all_n
        if not self.windows:
            raise WindowError("no windows left: every window is made only of N")

    def __len__(self) -> int:
        return len(self.windows)

    def _read(self, g: int, chrom: str, start: int) -> np.ndarray:
        return self.genomes[g].fetch_ids(chrom, start, start + self.length)

    @staticmethod
    def _all_n(ids: np.ndarray) -> bool:
        return bool(np.all((ids == N_ID) | (ids == PAD_ID)))

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        for probe in range(len(self.windows)):
            g, chrom, start = self.windows[(index + probe) % len(self.windows)]
            if self.max_shift:
                size = self.genomes[g].sizes[chrom]
                shifted = start + int(rng.integers(-self.max_shift, self.max_shift + 1))
                start = min(max(shifted, 0), max(size - self.length, 0)) if size >= self.length else start
            ids = self._read(g, chrom, start)
            if not (self._lazy and self._all_n(ids)):
                break
        if self.rc_prob and rng.random() < self.rc_prob:
            ids = COMPLEMENT.numpy()[ids][::-1].copy()
        return torch.from_numpy(ids)


def build_windows(
    genomes: Sequence[Genome], intervals_per_genome: Sequence[Sequence[Interval]], length: int, split: str
) -> list[tuple[int, str, int]]:
    """(genome index, chrom, start) for every window of `split` (paper's sampling, see module docstring)."""
    split = normalize_split(split)
    out = []
    for g, intervals in enumerate(intervals_per_genome):
        for iv in intervals:
            if iv.split == split:
                out.extend((g, iv.chrom, s) for s in window_starts(iv, length))
    return out
