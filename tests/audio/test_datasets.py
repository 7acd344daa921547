"""Audio data sets: pad/crop clips, cut windows, split by file, shifted mu-law examples, entropy."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mamba_audio import mulaw
from mamba_audio.datasets import AudioWindows, cut_windows, fit_length, split_files, unigram_entropy_bits
from mamba_audio.errors import AudioDatasetError
from mamba_audio.io import list_audio_files, read

DATA = Path(__file__).resolve().parents[1] / "data" / "audio"


def test_fit_length_pads_with_zeros_or_crops():
    x = np.arange(1, 6, dtype=np.float32)
    assert fit_length(x, 3).tolist() == [1, 2, 3]
    assert fit_length(x, 7).tolist() == [1, 2, 3, 4, 5, 0, 0]


def test_cut_windows_drops_the_tail_and_pads_short_clips():
    x = np.arange(10, dtype=np.float32)
    windows = cut_windows(x, 4)
    assert [w.tolist() for w in windows] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [w.tolist() for w in cut_windows(x[:3], 4)] == [[0, 1, 2, 0]]


def test_split_is_by_file_88_6_6_and_seeded():
    files = [Path(f"f{i:02d}.wav") for i in range(50)]
    parts = split_files(files, seed=3)
    assert (len(parts["train"]), len(parts["valid"]), len(parts["test"])) == (44, 3, 3)
    assert set().union(*map(set, parts.values())) == set(files)
    assert not set(parts["train"]) & (set(parts["valid"]) | set(parts["test"]))
    assert split_files(files, seed=3) == parts and split_files(files, seed=4) != parts
    with pytest.raises(AudioDatasetError, match="at least 3"):
        split_files(files[:2])
    with pytest.raises(AudioDatasetError, match="sum"):
        split_files(files, (0.5, 0.2, 0.2))


def test_clip_examples_are_fixed_length_and_shifted_behind_silence():
    files = list_audio_files(DATA)
    ds = AudioWindows(files, 8000, 4096, mode="clips")
    assert len(ds) == len(files)
    inputs, targets = ds[0]
    assert inputs.shape == targets.shape == (4096,) and inputs.dtype == torch.int64
    assert inputs[0] == mulaw.SILENCE_CLASS and torch.equal(inputs[1:], targets[:-1])
    clip = read(files[0], 8000)
    assert torch.equal(targets, mulaw.encode(torch.from_numpy(fit_length(clip, 4096))))


def test_window_mode_cuts_each_file():
    files = list_audio_files(DATA)
    ds = AudioWindows(files, 8000, 1024, mode="windows")
    expected = sum(max(1, read(f, 8000).shape[0] // 1024) for f in files)
    assert len(ds) == expected > len(files)
    with pytest.raises(AudioDatasetError, match="mode"):
        AudioWindows(files, 8000, 1024, mode="chunks")


def test_unigram_entropy_in_bits():
    assert unigram_entropy_bits(torch.tensor([3, 3, 3, 3])) == 0.0
    assert unigram_entropy_bits(torch.tensor([0, 1, 2, 3])) == pytest.approx(2.0)
    assert unigram_entropy_bits(torch.tensor([0, 0, 0, 1])) == pytest.approx(0.8112781, abs=1e-6)


def test_silent_file_gives_silence_classes_not_nan(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "silence.wav", np.zeros(3000, dtype=np.float32), 8000)
    inputs, targets = AudioWindows([tmp_path / "silence.wav"], 8000, 1024, mode="windows")[1]
    assert (targets == mulaw.SILENCE_CLASS).all() and (inputs == mulaw.SILENCE_CLASS).all()
