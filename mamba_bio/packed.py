"""Packed pretraining rows: variable-length records end to end in rows of L tokens, no padding waste.

    Intervals (BED, or whole records split by `record_splits`) -> PackedRecords -> (ids (L,), seq_idx (L,))

The windows of `windows.GenomeWindows` leave out records shorter than L and the tail of every
longer one (or, for BED intervals, pad or run past them). Here every token of every interval is
used once: intervals are laid end to end in an order drawn from (seed, epoch) and cut into rows
of L (core.packing), so only the last row has padding ([PAD]). `seq_idx` numbers the pieces of
a row; the model restarts its state where it changes and the loss skips the target across it.
Coordinates are 0-based, half-open, as everywhere in the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from core.packing import EpochPlans, PackedRows

from .errors import WindowError
from .fasta import Genome
from .tokenizer import COMPLEMENT, PAD_ID
from .windows import Interval


def record_splits(genome: Genome, valid_fraction: float = 0.1) -> list[Interval]:
    """Whole records as intervals, for packing a FASTA given without a BED file.

    Every record is kept, however short: the last `valid_fraction` of it (rounded to whole bp) is
    the valid split, the rest the training split.
    """
    intervals = []
    for chrom, size in genome.sizes.items():
        cut = size - round(size * valid_fraction)
        if cut > 0:
            intervals.append(Interval(chrom, 0, cut, "train"))
        if cut < size:
            intervals.append(Interval(chrom, cut, size, "valid"))
    return intervals


class PackedRecords(PackedRows, Dataset):
    """Rows of `length` tokens packed from intervals of one or more genomes.

    Item: (ids (L,) int64, seq_idx (L,) int32); the unused end of the last row is [PAD] with a
    seq_idx of its own.

    Args:
        genomes: the FASTA files.
        records: (genome index, Interval) pairs; each interval is one packed sequence.
        length: row length L in tokens.
        rc_prob: training augmentation, probability of reverse-complementing each piece.
        seed: seeds the packing order and the augmentation.
        shuffle: re-pack in a new order every epoch (training); False keeps the given order (evaluation).
    """

    def __init__(
        self,
        genomes: Sequence[Genome],
        records: Sequence[tuple[int, Interval]],
        length: int,
        rc_prob: float = 0.0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        self.genomes, self.records = list(genomes), list(records)
        self.length, self.rc_prob, self.seed = length, rc_prob, seed
        lengths = [len(iv) for _, iv in self.records]
        if sum(lengths) == 0:
            raise WindowError("no sequence to pack: every interval is empty")
        self.epoch = 0  # set by the training loop (pipelines.common.pass_epoch_to_dataset)
        self._plans = EpochPlans(lengths, length, seed=seed, shuffle=shuffle)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self.plan()
        rng = np.random.default_rng((self.seed, self.epoch, index))
        ids = np.full(self.length, PAD_ID, dtype=np.int64)
        for record, start, stop, offset in plan.segments(index):
            g, iv = self.records[record]
            piece = self.genomes[g].fetch_ids(iv.chrom, iv.start + start, iv.start + stop)
            if self.rc_prob and rng.random() < self.rc_prob:
                piece = COMPLEMENT.numpy()[piece][::-1]
            ids[offset : offset + stop - start] = piece
        return torch.from_numpy(ids), torch.from_numpy(plan.seq_idx(index))
