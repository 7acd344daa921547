"""Fuzzed audio files: `mamba_audio.io.read` ends in AudioReadError or returns a finite mono
float32 clip in [-1, 1]; `parse` skips what `read` refuses. Never a raw soundfile/soxr error,
a NaN, a hang, or a clip blown up by a corrupt sample-rate field."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st

from mamba_audio.errors import AudioReadError
from mamba_audio.io import ReadSummary, parse, read
from tests.fuzz.fuzz_settings import FUZZ, mutated, no_hang, written

MODEL_RATE_HZ = 16000


def _encode(frames: np.ndarray, rate_hz: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, frames, rate_hz, format=fmt, subtype=subtype)
    return buffer.getvalue()


@st.composite
def audio_file(draw) -> bytes:
    """A real wav/flac file (any channel count, rate, length, float samples possibly NaN/inf)."""
    fmt, subtype = draw(
        st.sampled_from([("WAV", "PCM_16"), ("WAV", "PCM_U8"), ("WAV", "FLOAT"), ("WAV", "DOUBLE"), ("FLAC", "PCM_16")])
    )
    rate_hz = draw(st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]))
    shape = (draw(st.integers(0, 300)), draw(st.integers(1, 3)))
    special = st.sampled_from([np.nan, np.inf, -np.inf, 2.0, -7.5]) if subtype in ("FLOAT", "DOUBLE") else st.nothing()
    samples = st.one_of(st.floats(-1, 1, width=32), special)
    frames = np.array(draw(st.lists(samples, min_size=shape[0] * shape[1], max_size=shape[0] * shape[1])))
    frames = frames.reshape(shape).astype(np.float32)
    if fmt == "FLAC" and shape[0] == 0:
        fmt, subtype = "WAV", "PCM_16"  # libsndfile cannot write an empty FLAC stream
    return _encode(frames, rate_hz, fmt, subtype)


VALID_WAV = _encode(np.linspace(-0.5, 0.5, 64, dtype=np.float32).reshape(-1, 1), 8000, "WAV", "PCM_16")
ANY_AUDIO = st.one_of(
    audio_file(),
    audio_file().flatmap(mutated),
    mutated(VALID_WAV),
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda tail: VALID_WAV[:44] + tail),  # a good header over garbage
)


def _check_clip(clip: np.ndarray) -> None:
    assert clip.dtype == np.float32 and clip.ndim == 1 and clip.size > 0
    assert np.isfinite(clip).all()


@FUZZ
@given(data=ANY_AUDIO, suffix=st.sampled_from([".wav", ".flac", ".ogg"]))
def test_malformed_audio_gives_project_error(data, suffix):
    with written("clip" + suffix, data) as path, no_hang():
        try:
            clip = read(path, MODEL_RATE_HZ)
        except AudioReadError as err:
            assert str(path) in str(err)
            return
        _check_clip(clip)


@FUZZ
@given(files=st.lists(ANY_AUDIO, min_size=1, max_size=3))
def test_parse_skips_unreadable_files(files):
    with written("placeholder.txt", b"") as path, no_hang():
        for i, data in enumerate(files):
            (path.parent / f"clip{i}.wav").write_bytes(data)
        summary = ReadSummary()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # each skipped file warns; counted in the summary instead
            clips = list(parse(path.parent, MODEL_RATE_HZ, summary))
        assert summary.n_read == len(clips) and summary.n_read + summary.n_skipped == len(files)
        for _, clip in clips:
            _check_clip(clip)


def test_valid_audio_still_reads(tmp_path):
    path = tmp_path / "clip.wav"
    path.write_bytes(VALID_WAV)
    clip = read(path, 8000)
    np.testing.assert_allclose(clip, np.linspace(-0.5, 0.5, 64), atol=1e-4)


def _with_rate(wav: bytes, rate_hz: int) -> bytes:
    """`wav` with the sample-rate (bytes 24-27) and byte-rate (28-31) fields of its header rewritten."""
    data = bytearray(wav)
    data[24:28] = rate_hz.to_bytes(4, "little")
    data[28:32] = (rate_hz * 2).to_bytes(4, "little") if rate_hz * 2 < 2**32 else b"\xff\xff\xff\xff"
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"RIFF\x00\x00\x00\x00WAVE",  # header only
        VALID_WAV[:40],  # cut inside the header
        _with_rate(VALID_WAV, 0),  # zero sample rate
        _with_rate(VALID_WAV, 1),  # 1 Hz: resampling to 16 kHz would make 16000 samples per sample
        _with_rate(VALID_WAV, 2**31 - 1),  # absurd rate
        _encode(np.full((8, 1), np.nan, dtype=np.float32), 16000, "WAV", "FLOAT"),
    ],
)
def test_known_malformed_audio(tmp_path, data):
    path = tmp_path / "bad.wav"
    path.write_bytes(data)
    with pytest.raises(AudioReadError, match="bad.wav"):
        read(path, MODEL_RATE_HZ)
