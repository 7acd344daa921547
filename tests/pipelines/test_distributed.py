"""Multi-process training through Lightning's DDP strategy (gloo on CPU): `mamba-bio pretrain` and
`mamba-audio pretrain` with `--devices 2 --strategy ddp` run two ranks, write one checkpoint and
print one JSON line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from tests.pipelines.launch import console_script

DATA = Path(__file__).resolve().parents[1] / "data" / "bio"
AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"


def test_two_process_ddp_pretrain(tmp_path):
    out = tmp_path / "ddp"
    command = [
        console_script("mamba-bio"), "pretrain",
        "--device", "cpu",
        "--fasta", str(DATA / "two_records.fa"),
        "--length", "32",
        "--max-steps", "4",
        "--batch-size", "2",
        "--d-model", "16",
        "--n-layer", "1",
        "--checkpoint-every", "2",
        "--log-every", "1",
        "--no-progress",
        "--devices", "2",
        "--strategy", "ddp",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # rank 1 prints nothing
    result = json.loads(lines[0])
    assert result["world_size"] == 2 and result["steps"] == 4
    assert result["val_ppl"] is not None and 1.0 < result["val_ppl"] < 20.0
    assert result["train_tokens_per_s"] > 0
    checkpoint = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert not list(out.glob(".last.ckpt.*.tmp"))  # every save was renamed into place
    assert (out / "model.safetensors").is_file()


def test_two_process_ddp_audio_pretrain(tmp_path):
    out = tmp_path / "ddp-audio"
    command = [
        console_script("mamba-audio"), "pretrain",
        "--data", str(AUDIO),
        "--device", "cpu",
        "--d-model", "8",
        "--n-layer", "1",
        "--d-state", "4",
        "--length", "512",
        "--batch-size", "1",
        "--stage-blocks", "lti,mamba,mamba",
        "--max-steps", "2",
        "--checkpoint-every", "1",
        "--devices", "2",
        "--strategy", "ddp",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])
    assert result["steps"] == 2 and 0 < result["valid_bpb"] < 9
    assert torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2


def test_fsdp_on_cpu_is_bad_input(tmp_path, capsys):
    from mamba_bio.cli import main

    code = main(["pretrain", "--device", "cpu", "--strategy", "fsdp", "--max-steps", "1", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "--strategy fsdp needs --device cuda" in capsys.readouterr().err
