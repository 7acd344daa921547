"""Crash-safe resume: a `mamba-bio pretrain` killed with SIGKILL and resumed with --resume logs the
same per-step losses as a run that was never interrupted; a damaged last.ckpt is refused with
exit code 2 and one line on stderr instead of quietly training from scratch."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mamba_bio.cli import main
from pipelines.common import ResumeError, resume_checkpoint

DATA = Path(__file__).resolve().parents[1] / "data" / "bio"
AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"
STEPS = 20
# two_records.fa holds 400 + 120 bp: with L=32, 11 training windows (every 20th is held out for
# validation), so with batch 2 an epoch is 6 steps; 20 steps cross three epoch boundaries.
ARGS = [
    "pretrain",
    "--device", "cpu",
    "--fasta", str(DATA / "two_records.fa"),
    "--length", "32",
    "--max-steps", str(STEPS),
    "--batch-size", "2",
    "--d-model", "16",
    "--n-layer", "1",
    "--checkpoint-every", "1",
    "--log-every", "1",
    "--val-every", "100",
    "--no-progress",
]  # fmt: skip


def _cli(*extra: str) -> list[str]:
    # the console script's entry point, with this interpreter (no reliance on PATH)
    return [sys.executable, "-c", "import sys; from mamba_bio.cli import main; sys.exit(main())", *ARGS, *extra]


def _losses(out: Path) -> dict[int, float]:
    with open(out / "metrics.csv", newline="") as fh:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}


def _saved_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # not written yet, or being renamed into place
        return -1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


def test_sigkill_then_resume_gives_the_same_losses(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli("--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while _saved_step(out / "last.ckpt") < 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed; give it more steps"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = _saved_step(out / "last.ckpt")
    assert 8 <= killed_at < STEPS

    resumed = subprocess.run(_cli("--out", str(out), "--resume"), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = _losses(uninterrupted), _losses(out)
    # the resumed run logs exactly the steps after the checkpoint, each with the same loss
    assert sorted(got) == list(range(killed_at, STEPS))
    for step, loss in got.items():
        assert loss == pytest.approx(expected[step], abs=1e-6), f"step {step}"


# Dies like SIGKILL (os._exit: no cleanup, no flush) right after the save at step $DIE_AT, so the
# checkpoint position is exact rather than wherever a timed kill happens to land.
_DIE_AFTER_SAVE = """
import os, sys
import pipelines.common as common
make = common._make_save_last_callback
def dying(every):
    class Dying(make(every)):
        def _save(self, trainer):
            super()._save(trainer)
            if trainer.global_step == int(os.environ["DIE_AT"]):
                os._exit(9)
    return Dying
common._make_save_last_callback = dying
from {cli} import main
sys.exit(main())
"""


@pytest.mark.parametrize("die_at", [6, 12])  # 6 batches per epoch: the last batch of epochs 0 and 1
def test_death_at_an_epoch_end_then_resume_gives_the_same_losses(uninterrupted, tmp_path, die_at):
    out = tmp_path / "died"
    command = [sys.executable, "-c", _DIE_AFTER_SAVE.format(cli="mamba_bio.cli"), *ARGS, "--out", str(out)]
    env = {**os.environ, "DIE_AT": str(die_at)}
    assert subprocess.run(command, env=env, capture_output=True, timeout=120).returncode == 9
    env["DIE_AT"] = "-1"
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = _losses(uninterrupted), _losses(out)
    assert sorted(got) == list(range(die_at, STEPS))
    for step, loss in got.items():
        assert loss == pytest.approx(expected[step], abs=1e-6), f"step {step}"


def test_audio_death_then_resume_gives_the_same_losses(tmp_path):
    """The same for `mamba-audio pretrain`: 3 training files, batch 1, killed inside epoch 1."""
    args = [
        "pretrain", "--data", str(AUDIO), "--device", "cpu",
        "--d-model", "8", "--n-layer", "1", "--d-state", "4", "--length", "512", "--batch-size", "1",
        "--stage-blocks", "lti,mamba,mamba", "--max-steps", "6", "--checkpoint-every", "1", "--log-every", "1",
    ]  # fmt: skip
    command = [sys.executable, "-c", _DIE_AFTER_SAVE.format(cli="mamba_audio.cli"), *args]
    env = {**os.environ, "DIE_AT": "-1"}
    whole = subprocess.run([*command, "--out", str(tmp_path / "whole")], env=env, capture_output=True, timeout=120)
    assert whole.returncode == 0, whole.stderr[-2000:]
    env["DIE_AT"] = "4"
    died = subprocess.run([*command, "--out", str(tmp_path / "died")], env=env, capture_output=True, timeout=120)
    assert died.returncode == 9
    env["DIE_AT"] = "-1"
    resume = [*command, "--out", str(tmp_path / "died"), "--resume"]
    resumed = subprocess.run(resume, env=env, capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = _losses(tmp_path / "whole"), _losses(tmp_path / "died")
    assert sorted(got) == [4, 5]
    for step, loss in got.items():
        assert loss == pytest.approx(expected[step], abs=1e-6), f"step {step}"


def test_resume_from_the_finished_run_adds_no_step(uninterrupted, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(uninterrupted, out)
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == STEPS


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "not_a_checkpoint"])
def test_damaged_checkpoint_is_refused_with_exit_2(uninterrupted, tmp_path, capsys, damage):
    out = tmp_path / "damaged"
    shutil.copytree(uninterrupted, out)
    ckpt = out / "last.ckpt"
    data = ckpt.read_bytes()
    if damage == "truncate":
        ckpt.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        middle = len(data) // 2
        ckpt.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(2)}, ckpt)
    damaged = ckpt.read_bytes()
    capsys.readouterr()

    assert main([*ARGS, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mamba-bio: error: ") and "last.ckpt" in err[0]
    # nothing was trained or overwritten: the folder and the damaged file are as they were
    assert ckpt.read_bytes() == damaged
    assert (out / "model.safetensors").read_bytes() == (uninterrupted / "model.safetensors").read_bytes()


def test_resume_checkpoint_rules(tmp_path):
    assert resume_checkpoint(tmp_path, resume=False) is None
    stale = tmp_path / ".last.ckpt.abc123.tmp"  # what a save cut short by a kill leaves
    stale.write_bytes(b"half")
    assert resume_checkpoint(tmp_path, resume=True) is None  # nothing saved yet: a fresh start
    assert not stale.exists()
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(ResumeError, match="truncated or corrupt"):
        resume_checkpoint(tmp_path, resume=True)
