"""8-bit linear quantisation: formula pinned against hand-computed classes, round trip, silence;
`--quantization linear` stored by pretrain and honoured by bpb and generate."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mamba_audio import linear, mulaw, quantize
from mamba_audio.cli import build_parser, main
from mamba_audio.datasets import AudioWindows
from mamba_audio.errors import AudioDatasetError

DATA = Path(__file__).resolve().parents[1] / "data" / "audio"


def test_encode_matches_hand_computed_classes():
    # clip min -1, max 1: unit = (x + 1) / (2 + 1e-6), q = floor(unit * 255.99 + 0.005)
    #   x = -1  : 0 * 255.99 + 0.005 = 0.005 -> 0
    #   x = -0.5: 0.24999988 * 255.99 = 63.99747 + 0.005 = 64.0025 -> 64
    #   x = 0   : 0.49999975 * 255.99 = 127.99494 + 0.005 = 127.9999 -> 127
    #   x = 0.25: 0.62499969 * 255.99 = 159.99367 + 0.005 = 159.9987 -> 159
    #   x = 0.5 : 0.74999963 * 255.99 = 191.99241 + 0.005 = 191.9974 -> 191
    #   x = 1   : 0.9999995 * 255.99 = 255.98987 + 0.005 = 255.9949 -> 255
    clip = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0])
    assert linear.encode(clip).tolist() == [0, 64, 127, 159, 191, 255]


def test_scaling_is_per_clip_like_mu_law():
    # a quiet clip in [-0.1, 0.1] uses the whole range, exactly as the same clip scaled to [-1, 1]
    clip = torch.tensor([[-0.1, -0.05, 0.0, 0.025, 0.05, 0.1], [-1.0, -0.5, 0.0, 0.25, 0.5, 1.0]])
    classes = linear.encode(clip)
    assert classes[0].tolist() == classes[1].tolist() == [0, 64, 127, 159, 191, 255]


def test_decode_matches_hand_computed_values():
    # x = q / 128 - 1: the lower edge of each of the 256 equal-width classes on [-1, 1)
    out = linear.decode(torch.tensor([0, 64, 127, 128, 192, 255]))
    expected = torch.tensor([-1.0, -0.5, -0.0078125, 0.0, 0.5, 0.9921875])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_round_trip_error_is_within_one_class():
    torch.manual_seed(0)
    x = torch.rand(4, 1000) * 2 - 1
    x[:, 0], x[:, 1] = -1.0, 1.0  # min and max of each clip are -1 and 1, so scaling is the identity
    error = (linear.decode(linear.encode(x)) - x).abs()
    # decoding gives a class's lower edge: error below one class width (2 / 256), plus the tiny
    # stretch of SaShiMi's 0.01 epsilon (classes are 2 / 255.99 wide in the encoder)
    assert error.max() <= 2 / 256 + 1e-4
    # and the middle of every class encodes back to that class
    middles = linear.decode(torch.arange(256)) + 1 / 256
    clip = torch.cat([torch.tensor([-1.0]), middles, torch.tensor([1.0])])
    assert linear.encode(clip)[1:-1].tolist() == list(range(256))


def test_silence_and_constant_clips():
    assert linear.SILENCE_CLASS == mulaw.SILENCE_CLASS == 128
    assert linear.decode(torch.tensor([128])).item() == 0.0
    assert linear.encode(torch.full((5,), 0.3)).tolist() == [128] * 5
    assert not torch.isnan(linear.decode(linear.encode(torch.zeros(3)))).any()


def test_registry_and_dataset_use_the_named_quantiser():
    assert quantize.quantizer("linear") is linear and quantize.quantizer("mulaw") is mulaw
    with pytest.raises(AudioDatasetError, match="unknown quantization 'alaw'"):
        quantize.quantizer("alaw")
    files = sorted(DATA.glob("*.wav"))[:2]
    lin = AudioWindows(files, 8000, 256, quantization="linear")
    mu = AudioWindows(files, 8000, 256)
    window = torch.from_numpy(lin.windows[0])
    assert torch.equal(lin[0][1], linear.encode(window)) and torch.equal(mu[0][1], mulaw.encode(window))
    assert lin[0][0][0].item() == 128  # inputs start behind silence


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]) if code == 0 else None


def test_linear_checkpoint_is_honoured_by_bpb_and_generate(tmp_path, capsys):
    tiny = ["--d-model", "8", "--n-layer", "1", "--d-state", "4", "--length", "256", "--batch-size", "2"]
    out = tmp_path / "run"
    code, result = _run(
        capsys,
        ["pretrain", "--data", str(DATA), "--max-steps", "1", "--quantization", "linear", "--out", str(out), *tiny],
    )
    assert code == 0 and result["quantization"] == "linear"
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == "linear" and config["encoding"] == "linear8"

    code, bpb = _run(capsys, ["bpb", "--checkpoint", str(out), "--data", str(DATA), "--device", "cpu"])
    assert code == 0 and bpb["quantization"] == "linear" and 0 < bpb["bpb"] < 9

    code, gen = _run(
        capsys, ["generate", "--checkpoint", str(out), "--seconds", "0.02", "--out", str(tmp_path / "gen")]
    )
    assert code == 0 and gen["quantization"] == "linear"
    audio, _ = sf.read(gen["files"][0], dtype="float64")
    # linear classes decode onto the grid k / 128 (up to 16-bit PCM rounding, < 1 / 32768);
    # mu-law classes other than 128 decode off it (class 129 -> 1.7e-4)
    assert np.abs(audio * 128 - np.round(audio * 128)).max() * (1 / 128) < 4e-5


def test_pretrain_default_is_mu_law_and_bad_choice_exits_2(tmp_path, capsys):
    assert build_parser().parse_args(["pretrain", "--out", str(tmp_path / "x")]).quantization == "mulaw"
    code = main(["pretrain", "--quantization", "alaw", "--out", str(tmp_path / "x")])
    captured = capsys.readouterr()
    assert code == 2 and len(captured.err.strip().splitlines()) == 1 and "alaw" in captured.err
    assert not (tmp_path / "x").exists()
