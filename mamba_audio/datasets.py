"""Audio data sets of 8-bit token windows: folder -> files split by file -> clips -> windows -> tokens.

Two ways to cut clips into fixed-length examples of `length_samples`:
- "clips" (SC09-like): one example per file, zero-padded at the end or cropped to the length;
- "windows" (YouTubeMix-like): consecutive non-overlapping windows of each long file; the tail
  shorter than a window is dropped, a file shorter than one window gives one padded window.

Each example is quantised on its own (mu-law by default, or linear: see `quantize`; SaShiMi's
per-clip scaling, padding included) and returned as (inputs, targets), both (L,) int64: targets
are the L classes, inputs are the same sequence shifted right by one behind the silence class, so
position t predicts sample t from samples < t and the first sample is predicted from silence.

Files are split into train/valid/test either by file with seeded fractions (`split_files`), or,
for a Speech Commands / SC09 folder that holds the official `validation_list.txt` and
`testing_list.txt`, by those lists (`sc09.list_splits`); `folder_splits` picks the lists when
they are there.

A third way, `PackedClips`, neither pads nor crops: whole clips (each quantised on its own) are
laid end to end into rows of L (core.packing) with a `seq_idx` per row; a clip that does not
fit continues at the start of the next row. Each piece is its own sequence, again starting from
silence, so no input ever comes from another clip and no target needs dropping at a boundary.
Pieces start at multiples of `align` (the model's total pooling factor); the few positions that
pad a clip up to one, and the end of the last row, have target IGNORE_INDEX.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from core.packing import EpochPlans, PackedRows

from . import quantize
from .errors import AudioDatasetError, AudioReadError
from .io import ReadSummary, list_audio_files, read
from .sc09 import has_split_lists, list_splits

MODES = ("clips", "windows")
SPLITS = ("train", "valid", "test")
IGNORE_INDEX = -100  # target of padding in packed rows; torch's cross_entropy skips it by default


def split_files(
    files: Sequence[Path], fractions: Sequence[float] = (0.88, 0.06, 0.06), seed: int = 0
) -> dict[str, list[Path]]:
    """Split files (not windows: no clip leaks across splits) into train/valid/test by `fractions`.

    Files are shuffled with `seed`. With 3 files or more, valid and test get at least one file each.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise AudioDatasetError(
            f"split fractions must be three non-negative numbers summing to 1; got {list(fractions)}"
        )
    files = sorted(Path(f) for f in files)
    n = len(files)
    if n < 3:
        raise AudioDatasetError(f"need at least 3 audio files to split into train/valid/test; got {n}")
    random.Random(seed).shuffle(files)
    n_valid = max(1, round(n * fractions[1])) if fractions[1] > 0 else 0
    n_test = max(1, round(n * fractions[2])) if fractions[2] > 0 else 0
    if n - n_valid - n_test < 1:
        raise AudioDatasetError(f"{n} files leave no training file after the valid/test split {list(fractions)}")
    return {
        "valid": files[:n_valid],
        "test": files[n_valid : n_valid + n_test],
        "train": files[n_valid + n_test :],
    }


def fit_length(clip: np.ndarray, length_samples: int) -> np.ndarray:
    """Zero-pad at the end or crop a clip (L,) to `length_samples`."""
    if clip.shape[0] >= length_samples:
        return clip[:length_samples]
    return np.pad(clip, (0, length_samples - clip.shape[0]))


def cut_windows(clip: np.ndarray, length_samples: int) -> list[np.ndarray]:
    """Non-overlapping windows of `length_samples`; the short tail is dropped, a short clip padded."""
    n = clip.shape[0] // length_samples
    if n == 0:
        return [fit_length(clip, length_samples)]
    return [clip[i * length_samples : (i + 1) * length_samples] for i in range(n)]


def to_example(window: np.ndarray, quantization: str = quantize.DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveform (L,) -> (inputs (L,), targets (L,)) int64 classes, inputs shifted behind silence."""
    targets = quantize.quantizer(quantization).encode(torch.from_numpy(np.ascontiguousarray(window)))
    inputs = torch.cat([torch.tensor([quantize.SILENCE_CLASS]), targets[:-1]])
    return inputs, targets


def read_or_skip(path: Path, sample_rate_hz: int, summary: ReadSummary | None) -> np.ndarray | None:
    """The clip (L,) at `sample_rate_hz`; without a summary a bad file raises AudioReadError, with
    one it is skipped (None) with a warning and recorded there."""
    if summary is None:
        return read(path, sample_rate_hz)
    try:
        clip = read(path, sample_rate_hz)
    except AudioReadError as err:
        warnings.warn(f"skipping {err}", stacklevel=3)  # the data set's caller
        summary.skipped.append((str(path), str(err)))
        return None
    summary.n_read += 1
    return clip


class AudioWindows(Dataset):
    """Fixed-length quantised examples cut from audio files (see the module docstring for `mode`).

    files: the audio files, read at `sample_rate_hz` (mono, resampled). Unreadable files raise
    AudioReadError naming the file unless `summary` is given, in which case they are skipped
    with a warning and recorded there. quantization: "mulaw" or "linear" (`quantize.QUANTIZERS`).
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        sample_rate_hz: int,
        length_samples: int,
        mode: str = "clips",
        summary: ReadSummary | None = None,
        quantization: str = quantize.DEFAULT,
    ):
        quantize.quantizer(quantization)  # unknown names fail here, not at the first batch
        if mode not in MODES:
            raise AudioDatasetError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
        if length_samples < 1:
            raise AudioDatasetError(f"length_samples must be >= 1; got {length_samples}")
        self.sample_rate_hz, self.length_samples, self.mode = sample_rate_hz, length_samples, mode
        self.quantization = quantization
        self.windows: list[np.ndarray] = []
        self.files: list[Path] = []
        for path in files:
            clip = read_or_skip(Path(path), sample_rate_hz, summary)
            if clip is None:
                continue
            self.files.append(Path(path))
            if mode == "clips":
                self.windows.append(fit_length(clip, length_samples))
            else:
                self.windows.extend(cut_windows(clip, length_samples))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_example(self.windows[index], self.quantization)


class PackedClips(PackedRows, Dataset):
    """Whole clips packed into rows of `length_samples` (see the module docstring).

    Item: (inputs (L,) int64, targets (L,) int64, seq_idx (L,) int32); padding positions have
    input SILENCE_CLASS and target IGNORE_INDEX. The packing order is drawn from (seed, epoch),
    so every epoch packs the clips with other neighbours; the number of rows stays the same.

    Args:
        files: the audio files, read at `sample_rate_hz` (mono, resampled).
        sample_rate_hz: rate the model runs at.
        length_samples: row length L, a multiple of `align`.
        align: every piece starts at a multiple of it (the model's total pooling factor).
        seed: seeds the packing order.
        shuffle: re-pack in a new order every epoch (training); False keeps file order.
        summary: skip unreadable files into it, as `AudioWindows`.
        quantization: "mulaw" or "linear" (`quantize.QUANTIZERS`), as `AudioWindows`.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        sample_rate_hz: int,
        length_samples: int,
        align: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        summary: ReadSummary | None = None,
        quantization: str = quantize.DEFAULT,
    ):
        encode = quantize.quantizer(quantization).encode  # unknown names fail here
        if length_samples < 1 or length_samples % align:
            raise AudioDatasetError(
                f"length_samples {length_samples} must be a positive multiple of the alignment {align} "
                "(the model's total pooling factor)"
            )
        self.sample_rate_hz, self.length_samples, self.align = sample_rate_hz, length_samples, align
        self.epoch = 0  # set by the training loop (pipelines.common.pass_epoch_to_dataset)
        self.files: list[Path] = []
        self.classes: list[torch.Tensor] = []  # per clip (n,) uint8: 1 byte a sample, encoded once
        for path in files:
            clip = read_or_skip(Path(path), sample_rate_hz, summary)
            if clip is None or clip.shape[0] == 0:
                continue
            self.files.append(Path(path))
            self.classes.append(encode(torch.from_numpy(np.ascontiguousarray(clip))).to(torch.uint8))
        self._plans = EpochPlans([c.shape[0] for c in self.classes], length_samples, align, seed, shuffle)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        plan = self.plan()
        inputs = torch.full((self.length_samples,), quantize.SILENCE_CLASS, dtype=torch.long)
        targets = torch.full((self.length_samples,), IGNORE_INDEX, dtype=torch.long)
        for clip, start, stop, offset in plan.segments(index):
            piece = self.classes[clip][start:stop].long()  # (n,)
            targets[offset : offset + len(piece)] = piece
            # the piece restarts from silence: its first input stays SILENCE_CLASS
            inputs[offset + 1 : offset + len(piece)] = piece[:-1]
        return inputs, targets, torch.from_numpy(plan.seq_idx(index))


def folder_splits(
    data_dir: str | os.PathLike,
    sample_rate_hz: int,
    length_samples: int,
    mode: str = "clips",
    fractions: Sequence[float] = (0.88, 0.06, 0.06),
    seed: int = 0,
    summary: ReadSummary | None = None,
    quantization: str = quantize.DEFAULT,
    pack_align: int | None = None,
) -> dict[str, AudioWindows | PackedClips]:
    """The three splits of an audio folder: by its Speech Commands split lists when it has them
    (see `split_method`), otherwise all its audio files (read recursively) split by file with
    `fractions` and `seed`.

    pack_align: pack the training split (`PackedClips` aligned to it); valid and test stay
    `AudioWindows` of `mode`, so their scores compare with unpacked runs.
    """
    if has_split_lists(data_dir):
        parts = list_splits(data_dir)
    else:
        parts = split_files(list_audio_files(data_dir), fractions, seed)
    splits = {
        name: PackedClips(parts[name], sample_rate_hz, length_samples, pack_align, seed, True, summary, quantization)
        if name == "train" and pack_align is not None
        else AudioWindows(parts[name], sample_rate_hz, length_samples, mode, summary, quantization)
        for name in SPLITS
    }
    for name in ("train", "valid"):
        if len(splits[name]) == 0:
            raise AudioDatasetError(f"no readable audio left in the {name} split of {data_dir}")
    return splits


def split_method(data_dir: str | os.PathLike) -> str:
    """How `folder_splits` splits `data_dir`: "lists" (the official Speech Commands lists) or "fractions"."""
    return "lists" if has_split_lists(data_dir) else "fractions"


def unigram_entropy_bits(targets: torch.Tensor, n_classes: int = quantize.N_CLASSES) -> float:
    """Entropy in bits of the empirical class distribution of `targets` (any shape).

    The best a context-free model could do on exactly these samples: the baseline BPB must beat.
    """
    counts = torch.bincount(targets.reshape(-1), minlength=n_classes).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * torch.log2(p)).sum())
