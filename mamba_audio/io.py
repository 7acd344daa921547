"""Audio file I/O: path -> soundfile -> mono float32 -> soxr resample -> model rate.

`read` returns one mono clip at the rate you ask for (there is no default rate: the caller
always says which rate the model runs at); `parse` yields the readable clips of a folder,
recursively, warning about and counting the files it skips; `write` stores 16-bit PCM wav and
returns the number of frames written. Samples are float32 in [-1, 1].
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioFileNotFoundError, AudioReadError

# Lower-case suffixes that `list_audio_files` picks up; all are read by libsndfile.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
# Plausible file sample rates. A rate outside this range is a corrupt header, and resampling from
# it would turn each stored sample into thousands (1 Hz -> 16 kHz) or almost none.
_MIN_FILE_RATE_HZ, _MAX_FILE_RATE_HZ = 1_000, 1_000_000


def _check_rate(sample_rate_hz: int, name: str = "sample_rate_hz") -> int:
    if not isinstance(sample_rate_hz, (int, np.integer)) or isinstance(sample_rate_hz, bool) or sample_rate_hz <= 0:
        raise ValueError(f"{name} must be a positive integer number of samples per second; got {sample_rate_hz!r}")
    return int(sample_rate_hz)


def resample(audio: np.ndarray, from_rate_hz: int, to_rate_hz: int) -> np.ndarray:
    """Resample a mono clip (L,) with soxr's high-quality filter; returns float32 (L * to / from,)."""
    from_rate_hz, to_rate_hz = _check_rate(from_rate_hz, "from_rate_hz"), _check_rate(to_rate_hz, "to_rate_hz")
    if from_rate_hz == to_rate_hz:
        return np.asarray(audio, dtype=np.float32)
    return soxr.resample(np.asarray(audio, dtype=np.float32), from_rate_hz, to_rate_hz, quality="HQ").astype(np.float32)


def read(path: str | os.PathLike, sample_rate_hz: int) -> np.ndarray:
    """Read one audio file as a mono float32 clip (L,) at `sample_rate_hz`.

    Channels are averaged (downmix); the clip is resampled with soxr when the file's rate differs.
    Raises AudioFileNotFoundError if the file is missing, AudioReadError if it is unreadable,
    empty, or holds NaN/inf samples (the message names the file).
    """
    sample_rate_hz = _check_rate(sample_rate_hz)
    path = Path(path)
    if not path.is_file():
        raise AudioFileNotFoundError(f"audio file not found: {path}")
    try:
        data, file_rate_hz = sf.read(str(path), dtype="float32", always_2d=True)  # (L, C)
    except Exception as err:  # libsndfile raises RuntimeError/LibsndfileError/TypeError for bad files
        raise AudioReadError(f"cannot read audio file {path}: {err}; check that it is a valid wav/flac/ogg") from err
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioReadError(f"audio file {path} holds no samples; remove it or replace it with a non-empty file")
    if not np.isfinite(data).all():
        raise AudioReadError(f"audio file {path} contains NaN or infinite samples; re-export it from its source")
    if not _MIN_FILE_RATE_HZ <= file_rate_hz <= _MAX_FILE_RATE_HZ:
        raise AudioReadError(
            f"audio file {path} declares a sample rate of {file_rate_hz} Hz, outside "
            f"{_MIN_FILE_RATE_HZ}-{_MAX_FILE_RATE_HZ} Hz; its header is probably corrupt"
        )
    mono = data.mean(axis=1)  # (L,) downmix by averaging channels
    clip = resample(mono, int(file_rate_hz), sample_rate_hz)
    if clip.size == 0:
        raise AudioReadError(
            f"audio file {path} is too short: {data.shape[0]} frame(s) at {file_rate_hz} Hz give no sample at "
            f"{sample_rate_hz} Hz"
        )
    return clip


def list_audio_files(folder: str | os.PathLike) -> list[Path]:
    """Sorted paths of the .wav/.flac/.ogg files under `folder` (recursive); a single file is returned as is."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise AudioFileNotFoundError(f"audio folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise AudioFileNotFoundError(
            f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder}; point --data at a folder of clips"
        )
    return files


@dataclass
class ReadSummary:
    """What `parse` read: counts and the skipped files with the reason for each."""

    n_read: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def parse(
    folder: str | os.PathLike, sample_rate_hz: int, summary: ReadSummary | None = None
) -> Iterator[tuple[Path, np.ndarray]]:
    """Yield (path, mono clip (L,)) for each readable audio file under `folder`, recursively.

    Unreadable, empty or NaN files are skipped with a warning and recorded in `summary`.
    """
    sample_rate_hz = _check_rate(sample_rate_hz)
    for path in list_audio_files(folder):
        try:
            clip = read(path, sample_rate_hz)
        except AudioReadError as err:
            warnings.warn(f"skipping {err}", stacklevel=2)
            if summary is not None:
                summary.skipped.append((str(path), str(err)))
            continue
        if summary is not None:
            summary.n_read += 1
        yield path, clip


def write(path: str | os.PathLike, audio: np.ndarray, sample_rate_hz: int) -> int:
    """Write a mono clip (L,) in [-1, 1] as 16-bit PCM wav; returns the number of frames written.

    Samples outside [-1, 1] are clipped. The file is written to a temporary name and renamed, so
    a failure never leaves a half-written wav behind.
    """
    sample_rate_hz = _check_rate(sample_rate_hz)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if not np.isfinite(audio).all():
        raise ValueError(f"refusing to write {path}: the audio contains NaN or infinite samples")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".wav", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), sample_rate_hz, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return int(audio.shape[0])
