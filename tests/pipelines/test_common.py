import json
import sys

import pytest
import torch

from pipelines.common import (
    atomic_path,
    emit_result,
    export_model,
    load_exported,
    plot_metrics,
    resolve_device,
    run_command,
    save_run_config,
)


def test_bad_input_gives_exit_2_one_line_and_removes_the_new_out_dir(tmp_path, capsys):
    out = tmp_path / "run"

    def command():
        out.mkdir()
        (out / "half.txt").write_text("x")
        raise FileNotFoundError("genome.fa: FASTA file not found\n(second line)")

    assert run_command("tool", command, out_dir=out) == 2
    err = capsys.readouterr().err
    assert err == "tool: error: genome.fa: FASTA file not found (second line)\n"
    assert not out.exists()


def test_existing_out_dir_is_kept_on_error(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    assert run_command("tool", lambda: (_ for _ in ()).throw(ValueError("bad")), out_dir=tmp_path) == 2
    assert (tmp_path / "keep.txt").exists()


def test_prints_go_to_stderr_and_json_is_the_last_stdout_line(capsys):
    def command():
        print("progress chatter")
        return {"val_ppl": 3.5}

    assert run_command("tool", command) == 0
    captured = capsys.readouterr()
    assert "progress chatter" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1]) == {"val_ppl": 3.5}


def test_bugs_are_not_disguised_as_bad_input():
    with pytest.raises(ZeroDivisionError):
        run_command("tool", lambda: 1 / 0)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done" and list(tmp_path.iterdir()) == [target]


def test_export_round_trip_with_tied_weights(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # tied, as the LM's embedding and head
    export_model(model, {"d": 3}, tmp_path, extra={"task": "toy"})
    config, state = load_exported(tmp_path)
    assert config == {"d": 3, "task": "toy"}
    fresh = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh[1].weight, model[0].weight)


def test_plot_and_config(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss,val/loss\n0,1,2.0,\n0,2,1.5,\n0,2,,1.7\n")
    png = plot_metrics(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_metrics(tmp_path / "missing") is None
    path = save_run_config({"out": tmp_path, "steps": 3}, tmp_path)
    assert path.read_text() == f"out: {tmp_path}\nsteps: 3\n"


def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_emit_result_writes_one_json_line():
    class Sink:
        text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    sink = Sink()
    emit_result({"a": 1}, sink)
    assert sink.text == '{"a": 1}\n'
    assert sys.stdout is not None
