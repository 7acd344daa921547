"""The CLIs under the launchers clusters use, two CPU processes over gloo each:

- torchrun (`python -m torch.distributed.run --standalone`, Lightning's TorchElasticEnvironment):
  `mamba-bio classify train` on validation shards of unequal size logs the accuracy and loss of
  the whole split, equal to a single-process `classify eval` of the exported weights;
- SLURM (the variables srun sets, Lightning's SLURMEnvironment): `mamba-bio pretrain` runs with
  world size 2, and only global rank 0 prints the JSON line and exports model.safetensors.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mamba_bio.cli import main

DATA = Path(__file__).resolve().parents[1] / "data" / "bio"
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's or scheduler's variables (CI may itself run under SLURM)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))}
    for key in LAUNCHER_VARS:
        env.pop(key, None)
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _table(path: Path) -> Path:
    """Random training sequences; five identical validation sequences labelled a, b, a, b, a.

    Identical inputs get one prediction, so the single-process accuracy is 3/5 or 2/5. Rank 0 of
    2 scores positions 0, 2, 4 (all a) and rank 1 positions 1, 3 (all b): rank 0 alone would
    report 1 or 0, a mean of the two ranks' accuracies 0.5.
    """
    rng = np.random.default_rng(0)
    rows = ["sequence,label,split"]
    for i in range(8):
        rows.append(f"{''.join(rng.choice(list('ACGT'), 40))},{'ab'[i % 2]},train")
    same = "".join(rng.choice(list("ACGT"), 40))
    rows += [f"{same},{label},valid" for label in "ababa"]
    path.write_text("\n".join(rows) + "\n")
    return path


def _single_process_loss(out: Path, table: Path) -> float:
    from mamba_bio.checkpoints import load_run
    from mamba_bio.labelled import collate_classification, open_classification_data

    _, model, config = load_run(out, task="classify")
    examples = open_classification_data(table, config["length"]).eval_dataset("valid", 0, 0)
    batch = collate_classification([examples[i] for i in range(len(examples))])
    with torch.inference_mode():
        logits = model(batch["input_ids"], batch["lengths"])
    return float(torch.nn.functional.cross_entropy(logits.float(), batch["labels"]))


def test_torchrun_classify_logs_metrics_of_the_whole_split(tmp_path, capsys):
    table, out = _table(tmp_path / "table.csv"), tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        "-m", "mamba_bio.cli", "classify", "train",
        "--data", str(table), "--device", "cpu", "--length", "32", "--max-steps", "2", "--batch-size", "2",
        "--d-model", "16", "--n-layer", "1", "--no-progress", "--devices", "2", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=_clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    results = _json_lines(done.stdout)
    assert len(results) == 1, done.stdout  # global rank 0 only
    result = results[0]
    assert result["world_size"] == 2 and result["cluster_environment"] == "TorchElasticEnvironment"
    assert result["steps"] == 2
    assert torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2
    assert not list(out.glob(".*.tmp"))  # nothing half-written left by either rank

    capsys.readouterr()
    args = ["classify", "eval", "--checkpoint", str(out), "--data", str(table), "--split", "valid", "--device", "cpu"]
    assert main(args) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert single["n"] == 5 and single["accuracy"] in (0.4, 0.6)  # the construction holds
    assert result["val_accuracy"] == pytest.approx(single["accuracy"], abs=1e-6)
    assert result["val_loss"] == pytest.approx(_single_process_loss(out, table), rel=1e-5)


# Counts exports: each process appends its SLURM_PROCID to $EXPORT_LOG when it writes model.safetensors.
_COUNT_EXPORTS = """
import os, sys
import pipelines.common as common
export = common.export_model
def counted(*args, **kwargs):
    with open(os.environ["EXPORT_LOG"], "a") as fh:
        fh.write(os.environ["SLURM_PROCID"] + "\\n")
    return export(*args, **kwargs)
common.export_model = counted
from mamba_bio.cli import main
sys.exit(main())
"""


def test_slurm_pretrain_runs_two_ranks_and_writes_once(tmp_path):
    out, log = tmp_path / "run", tmp_path / "exports.txt"
    args = [
        "pretrain", "--device", "cpu", "--fasta", str(DATA / "two_records.fa"), "--length", "32",
        "--max-steps", "4", "--batch-size", "2", "--d-model", "16", "--n-layer", "1", "--checkpoint-every", "2",
        "--no-progress", "--devices", "2", "--out", str(out),
    ]  # fmt: skip
    # what `srun` sets for `sbatch --nodes 1 --ntasks-per-node 2` (see lightning's SLURMEnvironment)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "mamba-bio",  # "bash" or "interactive" would switch SLURM detection off
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "MASTER_PORT": str(_free_port()),
        "EXPORT_LOG": str(log),
    }
    procs = []
    for rank in range(2):
        env = _clean_env(**slurm, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank))
        stdout, stderr = open(tmp_path / f"{rank}.out", "w"), open(tmp_path / f"{rank}.err", "w")
        procs.append(
            subprocess.Popen([sys.executable, "-c", _COUNT_EXPORTS, *args], env=env, stdout=stdout, stderr=stderr)
        )
    try:
        codes = [proc.wait(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert codes == [0, 0], (tmp_path / "0.err").read_text()[-2000:] + (tmp_path / "1.err").read_text()[-2000:]
    assert (tmp_path / "1.out").read_text() == ""  # rank 1 prints nothing
    results = _json_lines((tmp_path / "0.out").read_text())
    assert len(results) == 1
    result = results[0]
    assert result["world_size"] == 2 and result["cluster_environment"] == "SLURMEnvironment"
    assert result["steps"] == 4 and 1.0 < result["val_ppl"] < 20.0
    assert log.read_text().split() == ["0"]  # model.safetensors exported once, by global rank 0
    assert torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("devices", ["1", "4"])
def test_slurm_tasks_must_match_devices(tmp_path, monkeypatch, capsys, devices):
    """A job of 2 tasks with other --devices: exit 2 and one line on stderr, not two single-device
    runs writing one folder (--devices 1) or ranks waiting for peers that never start (--devices 4)."""
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "mamba-bio", "SLURM_NNODES": "1"}
    for key, value in {**slurm, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    args = ["pretrain", "--device", "cpu", "--fasta", str(DATA / "two_records.fa"), "--length", "32"]
    code = main([*args, "--max-steps", "1", "--devices", devices, "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"SLURM started 2 processes but --devices {devices}" in err[0], err
    assert not (tmp_path / "x").exists()
