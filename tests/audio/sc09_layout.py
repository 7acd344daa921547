"""A tiny Speech Commands-like folder: digit and non-digit word folders, the two official list files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

WORDS = ("zero", "one", "two", "yes")  # "yes" is not a digit: it is in the lists but never in SC09
VALID = ["zero/a_nohash_0.wav", "one/b_nohash_0.wav", "yes/c_nohash_0.wav"]
TEST = ["two/a_nohash_1.wav", "yes/d_nohash_0.wav"]


def write_speech_commands(root: Path, rate_hz: int = 16000, samples: int = 400) -> Path:
    """root/{zero,one,two,yes}/*.wav (3 clips each), _background_noise_/, validation/testing lists."""
    rng = np.random.default_rng(0)
    names = ("a_nohash_0.wav", "a_nohash_1.wav", "b_nohash_0.wav", "c_nohash_0.wav", "d_nohash_0.wav")
    for word in WORDS:
        for name in names:
            path = root / word / name
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, rng.uniform(-0.5, 0.5, samples).astype(np.float32), rate_hz, subtype="PCM_16")
    noise = root / "_background_noise_" / "white_noise.wav"
    noise.parent.mkdir(parents=True, exist_ok=True)
    sf.write(noise, rng.uniform(-0.5, 0.5, samples * 4).astype(np.float32), rate_hz, subtype="PCM_16")
    (root / "validation_list.txt").write_text("\n".join(VALID) + "\n")
    (root / "testing_list.txt").write_text("\n".join(TEST) + "\n")
    return root
