"""`mamba-audio` CLI end to end on real clips: pretrain -> bpb (with --lengths plot) -> generate; bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mamba_audio.cli import main

DATA = Path(__file__).resolve().parents[1] / "data" / "audio"
TINY = [
    "--d-model",
    "8",
    "--n-layer",
    "1",
    "--d-state",
    "4",
    "--length",
    "512",
    "--batch-size",
    "2",
    "--stage-blocks",
    "lti,mamba,mamba",
    "--device",
    "cpu",
]


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 else None), captured.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    for f in DATA.glob("*.wav"):
        shutil.copy(f, data / f.name)
    (data / "broken.wav").write_bytes(b"RIFF....WAVE this is not audio")
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(["pretrain", "--data", str(data), "--max-steps", "3", "--out", str(out), *TINY])
    assert code == 0
    return data, out


def test_pretrain_writes_checkpoints_and_skips_corrupt_files(run_dir, capsys):
    data, out = run_dir
    for name in ("last.ckpt", "model.safetensors", "config.json", "metrics.csv", "run_config.yaml"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["sample_rate_hz"] == 8000 and config["stage_blocks"] == ["lti", "mamba", "mamba"]


def test_pretrain_json_reports_bpb_and_skipped(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    (data / "empty.wav").write_bytes(b"")
    with pytest.warns(UserWarning, match="empty.wav"):
        code, result, _ = _run(
            capsys, ["pretrain", "--data", str(data), "--max-steps", "1", "--out", str(tmp_path / "run"), *TINY]
        )
    assert code == 0
    assert result["skipped_files"] == 1
    assert result["steps"] == 1 and 0 < result["valid_bpb"] < 9 and result["valid_unigram_entropy_bits"] > 0


def test_bpb_with_lengths_writes_a_plot(run_dir, tmp_path, capsys):
    data, out = run_dir
    code, result, _ = _run(
        capsys,
        ["bpb", "--checkpoint", str(out), "--data", str(DATA), "--lengths", "64,512", "--out", str(tmp_path / "bpb")],
    )
    assert code == 0
    assert result["n_files"] == 5 and result["n_samples"] == 5 * 512
    assert set(result["bpb_by_length"]) == {"64", "512"}
    assert result["bpb_by_length"]["512"] == pytest.approx(result["bpb"], abs=1e-3)
    assert (tmp_path / "bpb" / "bpb_vs_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generate_writes_the_requested_clips(run_dir, tmp_path, capsys):
    _, out = run_dir
    code, result, _ = _run(
        capsys,
        [
            "generate",
            "--checkpoint",
            str(out / "last.ckpt"),
            "--num",
            "3",
            "--seconds",
            "0.05",
            "--batch-size",
            "2",
            "--top-p",
            "0.9",
            "--temperature",
            "0.8",
            "--prompt",
            str(DATA / "digit-1.wav"),
            "--out",
            str(tmp_path / "gen"),
        ],
    )
    assert code == 0
    assert len(result["files"]) == 3 and result["rtf"] > 0 and result["prompt_seconds"] > 0.5
    for path in result["files"]:
        info = sf.info(path)
        assert (info.frames, info.samplerate, info.channels, info.subtype) == (400, 8000, 1, "PCM_16")
        assert np.isfinite(sf.read(path)[0]).all()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["pretrain", "--data", "/nonexistent/folder"], "not found"),
        (["pretrain", "--data", str(DATA), "--length", "500"], "multiple of the total pooling factor"),
        (["generate", "--checkpoint", "/nonexistent/run", "--seconds", "1"], "not found"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_output(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([*argv, "--out", str(out)] if "--length" not in argv else [*argv, "--out", str(out), "--d-model", "8"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("mamba-audio")
    assert not out.exists() and captured.out == ""


def test_generate_rejects_a_non_audio_checkpoint(run_dir, tmp_path, capsys):
    _, out = run_dir
    fake = tmp_path / "fake"
    shutil.copytree(out, fake)
    config = json.loads((fake / "config.json").read_text())
    config["task"] = "dna-lm"
    (fake / "config.json").write_text(json.dumps(config))
    code = main(["generate", "--checkpoint", str(fake), "--seconds", "0.1", "--out", str(tmp_path / "g")])
    assert code == 2 and "not a mamba-audio model" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
