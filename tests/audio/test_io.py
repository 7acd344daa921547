"""Audio I/O: read (downmix, resample), write 16-bit PCM, clear errors for bad files, folder skipping."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mamba_audio import io
from mamba_audio.errors import AudioFileNotFoundError, AudioReadError

DATA = Path(__file__).resolve().parents[1] / "data" / "audio"


def test_read_real_clip_at_native_rate():
    clip = io.read(DATA / "digit-1.wav", 8000)
    info = sf.info(str(DATA / "digit-1.wav"))
    assert clip.dtype == np.float32 and clip.ndim == 1 and clip.shape[0] == info.frames
    assert 0.05 < np.abs(clip).max() <= 1.0


def test_read_downmixes_and_resamples(tmp_path):
    mono = io.read(DATA / "digit-2.wav", 8000)
    stereo = np.stack([mono, 0.5 * mono], axis=1)
    sf.write(tmp_path / "stereo.flac", stereo, 8000)
    out = io.read(tmp_path / "stereo.flac", 16000)
    assert out.ndim == 1
    assert abs(out.shape[0] - 2 * mono.shape[0]) <= 2
    # downmix is the channel mean: 0.75 * mono, so the energy ratio is 0.75^2
    ratio = np.sum(out.astype(np.float64) ** 2) / (2 * np.sum(mono.astype(np.float64) ** 2))
    assert ratio == pytest.approx(0.75**2, rel=0.05)


def test_write_is_16_bit_pcm_and_round_trips(tmp_path):
    clip = io.read(DATA / "digit-3.wav", 8000)
    n = io.write(tmp_path / "out" / "x.wav", clip, 8000)
    info = sf.info(str(tmp_path / "out" / "x.wav"))
    assert n == clip.shape[0] == info.frames and info.subtype == "PCM_16" and info.samplerate == 8000
    np.testing.assert_allclose(io.read(tmp_path / "out" / "x.wav", 8000), clip, atol=1 / 32768)


def test_write_refuses_nan_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        io.write(tmp_path / "bad.wav", np.array([0.0, np.nan], dtype=np.float32), 8000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rate", [0, -8000, 8000.0, None])
def test_sample_rate_must_be_a_positive_int(rate):
    with pytest.raises(ValueError, match="sample_rate_hz"):
        io.read(DATA / "digit-1.wav", rate)


def test_bad_files_raise_errors_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 8000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2], dtype=np.float32), 8000, subtype="FLOAT")
    for path, pattern in ((corrupt, "cannot read"), (empty, "no samples"), (nan, "NaN")):
        with pytest.raises(AudioReadError, match=pattern) as info:
            io.read(path, 8000)
        assert str(path) in str(info.value)
    with pytest.raises(AudioFileNotFoundError, match="missing.wav"):
        io.read(tmp_path / "missing.wav", 8000)
    assert isinstance(AudioReadError("x"), ValueError) and isinstance(AudioFileNotFoundError("x"), FileNotFoundError)


def test_parse_skips_bad_files_with_a_warning_and_counts_them(tmp_path):
    sub = tmp_path / "nested"
    sub.mkdir()
    for name in ("digit-1.wav", "digit-2.wav"):
        (sub / name).write_bytes((DATA / name).read_bytes())
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    (tmp_path / "notes.txt").write_text("ignored: not an audio suffix")
    summary = io.ReadSummary()
    with pytest.warns(UserWarning, match="broken.wav"):
        got = list(io.parse(tmp_path, 8000, summary))
    assert sorted(p.name for p, _ in got) == ["digit-1.wav", "digit-2.wav"]
    assert summary.n_read == 2 and summary.n_skipped == 1 and "broken.wav" in summary.skipped[0][0]


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(AudioFileNotFoundError, match="no audio files"):
        io.list_audio_files(tmp_path)
