"""A `last.ckpt` loads on any number of devices: `mamba-bio pretrain` trained by 2 DDP processes
(gloo, CPU), resumed by 1 process, then resumed again by 2, continues each time at the same point
of the epoch's data order and from the saved step."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import torch

from mamba_bio.cli import main
from tests.pipelines.launch import console_script

DATA = Path(__file__).resolve().parents[1] / "data" / "bio"
# two_records.fa with L=32: 11 training windows (every 20th held out), batch 2: an epoch is 3
# batches per rank on 2 ranks (10 windows used) and 6 batches on 1.
ARGS = [
    "pretrain", "--device", "cpu", "--fasta", str(DATA / "two_records.fa"), "--length", "32", "--batch-size", "2",
    "--d-model", "16", "--n-layer", "1", "--checkpoint-every", "2", "--log-every", "1", "--val-every", "100",
    "--no-progress",
]  # fmt: skip


def _two_processes(out: Path, max_steps: int, *extra: str) -> dict:
    command = [console_script("mamba-bio"), *ARGS, "--max-steps", str(max_steps), "--devices", "2"]
    done = subprocess.run([*command, "--strategy", "ddp", "--out", str(out), *extra], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _checkpoint(out: Path) -> dict:
    return torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)


def _logged_steps(out: Path) -> list[int]:
    with open(out / "metrics.csv", newline="") as fh:
        return sorted(int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss"))


def test_checkpoint_moves_between_two_processes_and_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert _two_processes(out, 4)["world_size"] == 2
    saved = _checkpoint(out)
    # step 4 on 2 ranks: epoch 0 took 3 batches each, then 1 batch of epoch 1
    assert saved["global_step"] == 4
    assert {k: saved["resume"][k] for k in ("epoch", "batches", "world_size")} == {
        "epoch": 1,
        "batches": 1,
        "world_size": 2,
    }
    weights = saved["state_dict"]

    # 2 -> 1: the 4 windows of epoch 1 the ranks trained are 2 batches on one process; steps 4, 5
    # take batches 2 and 3. (Without the translation the position would read batch 3 of 6.)
    assert main([*ARGS, "--max-steps", "6", "--resume", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["world_size"] == 1
    single = _checkpoint(out)
    assert single["global_step"] == 6 and _logged_steps(out) == [4, 5]  # resumed, not restarted
    assert {k: single["resume"][k] for k in ("epoch", "batches", "world_size")} == {
        "epoch": 1,
        "batches": 4,
        "world_size": 1,
    }
    assert any(not torch.equal(weights[k], single["state_dict"][k]) for k in weights)  # it trained on

    # 1 -> 2: 8 windows of epoch 1 are 2 batches per rank, so step 6 finishes epoch 1 and steps
    # 7-9 are epoch 2. (Untranslated, batch 4 of an epoch of 3 would skip the rest of epoch 1.)
    assert _two_processes(out, 10, "--resume")["world_size"] == 2
    double = _checkpoint(out)
    assert double["global_step"] == 10 and _logged_steps(out) == [6, 7, 8, 9]
    assert {k: double["resume"][k] for k in ("epoch", "batches", "world_size")} == {
        "epoch": 2,
        "batches": 3,
        "world_size": 2,
    }
