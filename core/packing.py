"""Packing variable-length records into fixed-length rows, with the `seq_idx` that keeps them apart.

    record lengths -> record_order(seed, epoch) -> pack(lengths, L, align, order) -> PackPlan
    (EpochPlans does both for a data set, once per epoch)
        PackPlan.segments(row) -> (record, start, stop, offset) pieces placed in row r
        PackPlan.seq_idx(row)  -> (L,) int32, 0, 1, 2, ... one index per piece; the model resets there

Records are laid end to end in `order` and the stream is cut every L positions, so a record
longer than the room left in a row continues at the start of the next one (a new piece, with a
new index: a row always starts a fresh sequence). Only the last row has unused room at its end.
With `align` > 1 each record starts at a multiple of `align` (its end is padded up to one): a
multi-rate model that pools by `align` then never mixes two records in one pooled step.

Domain-free: DNA and audio data sets both build their rows from a plan. The padding a plan
wastes is `PackPlan.padding_fraction`; `padded_fraction` gives the waste of the unpacked
alternative (each record tiled into its own rows of L, its last row padded) for comparison.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PackPlan:
    """Where every piece of every record goes. S pieces over R rows of `row_length`.

    row_ptr: (R + 1,) the pieces of row r are row_ptr[r]:row_ptr[r + 1], in row order.
    record, start, stop, offset: (S,) each piece is tokens [start, stop) of `record`, placed at
        positions [offset, offset + stop - start) of its row.
    align: records start at multiples of it (see the module docstring).
    """

    row_length: int
    align: int
    row_ptr: np.ndarray
    record: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    offset: np.ndarray

    def __len__(self) -> int:
        return len(self.row_ptr) - 1

    def segments(self, row: int) -> Iterator[tuple[int, int, int, int]]:
        """(record, start, stop, offset) of each piece in `row`, in row order."""
        lo, hi = self.row_ptr[row], self.row_ptr[row + 1]
        for i in range(lo, hi):
            yield int(self.record[i]), int(self.start[i]), int(self.stop[i]), int(self.offset[i])

    def seq_idx(self, row: int) -> np.ndarray:
        """(L,) int32: piece k of the row holds k over its tokens and its alignment padding; the
        unused end of the last row is one more sequence of its own."""
        lo, hi = self.row_ptr[row], self.row_ptr[row + 1]
        offsets = self.offset[lo:hi]
        idx = np.searchsorted(offsets, np.arange(self.row_length), side="right") - 1  # (L,)
        slot_end = offsets[-1] + _round_up(self.stop[hi - 1] - self.start[hi - 1], self.align)
        idx[slot_end:] = hi - lo
        return idx.astype(np.int32)

    @property
    def n_tokens(self) -> int:
        return int((self.stop - self.start).sum())

    @property
    def padding_fraction(self) -> float:
        """Share of the rows' positions that hold no record token (alignment and the last row's end)."""
        return 1.0 - self.n_tokens / max(1, len(self) * self.row_length)


def _round_up(n, multiple: int):
    return -(-n // multiple) * multiple


def record_order(n_records: int, seed: int, epoch: int = 0, shuffle: bool = True) -> np.ndarray:
    """(n_records,) the order records are laid down in: a permutation drawn from (seed, epoch) alone,
    so a resumed or re-launched run packs the same rows; file order when not shuffling."""
    if not shuffle:
        return np.arange(n_records)
    return np.random.default_rng((seed, epoch)).permutation(n_records)


def pack(lengths: Sequence[int], row_length: int, align: int = 1, order: Sequence[int] | None = None) -> PackPlan:
    """Plan rows of `row_length` holding records of `lengths`, laid down in `order` (default: as given).

    Every token of every record is placed exactly once, records in `order` and each record's
    tokens in their own order. Zero-length records are skipped.
    """
    if align < 1 or row_length % align:
        raise ValueError(f"pack: row_length {row_length} must be a positive multiple of align {align}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.arange(len(lengths)) if order is None else np.asarray(order, dtype=np.int64)
    order = order[lengths[order] > 0]
    if len(order) == 0:
        raise ValueError("pack: no record holds a token")
    length = lengths[order]  # (R,)
    slot = _round_up(length, align)
    begin = np.cumsum(slot) - slot  # (R,) stream position of each record's first token
    end = begin + length
    first_row, last_row = begin // row_length, (end - 1) // row_length
    n_pieces = last_row - first_row + 1  # (R,) rows each record touches
    owner = np.repeat(np.arange(len(order)), n_pieces)  # (S,) which laid-down record
    row = first_row[owner] + np.arange(len(owner)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
    lo = np.maximum(row * row_length, begin[owner])  # (S,) stream span of each piece
    hi = np.minimum((row + 1) * row_length, end[owner])
    n_rows = int(_round_up(int(slot.sum()), row_length) // row_length)
    return PackPlan(
        row_length=row_length,
        align=align,
        row_ptr=np.searchsorted(row, np.arange(n_rows + 1)),
        record=order[owner],
        start=lo - begin[owner],
        stop=hi - begin[owner],
        offset=lo - row * row_length,
    )


class EpochPlans:
    """The plan of a data set's current epoch: records re-ordered from (seed, epoch) when shuffling,
    so each epoch packs them with other neighbours; the row count is the same every epoch.

    Called with the epoch; the last plan is kept, since every item of an epoch asks for it.
    """

    def __init__(self, lengths: Sequence[int], row_length: int, align: int = 1, seed: int = 0, shuffle: bool = True):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.row_length, self.align, self.seed, self.shuffle = row_length, align, seed, shuffle
        self._last: tuple[int, PackPlan] | None = None

    def __call__(self, epoch: int) -> PackPlan:
        if self._last is None or self._last[0] != epoch:
            order = record_order(len(self.lengths), self.seed, epoch, self.shuffle)
            self._last = (epoch, pack(self.lengths, self.row_length, self.align, order))
        return self._last[1]

    @property
    def padding_fraction_unpacked(self) -> float:
        """What tiling each record into its own padded rows would waste (see `padded_fraction`)."""
        return padded_fraction(self.lengths, self.row_length)


class PackedRows:
    """What a Dataset of packed rows shares whatever its records are (DNA intervals, audio clips):
    the current epoch's plan, its row count and its padding shares. A subclass sets `_plans`
    (EpochPlans) in its __init__; the training loop sets `epoch`."""

    epoch = 0
    _plans: EpochPlans

    def plan(self) -> PackPlan:
        """This epoch's rows (the row count is the same every epoch: only the order changes)."""
        return self._plans(self.epoch)

    def __len__(self) -> int:
        return len(self.plan()) if len(self._plans.lengths) else 0

    @property
    def padding_fraction(self) -> float:
        """Share of the rows' positions that are padding (alignment, and the end of the last row)."""
        return self.plan().padding_fraction

    @property
    def padding_fraction_unpacked(self) -> float:
        """The same share if each record were tiled into its own rows of L, its last row padded."""
        return self._plans.padding_fraction_unpacked


def padded_fraction(lengths: Sequence[int], row_length: int) -> float:
    """Padding share without packing: each record tiled into its own rows of `row_length`, the last padded."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = _round_up(lengths, row_length) // row_length
    return 1.0 - float(lengths.sum()) / max(1, int(rows.sum()) * row_length)
