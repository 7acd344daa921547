"""`mamba-bio pretrain --pack` end to end on the bundled sample genomes; the JSON reports the padding saved."""

import json

from mamba_bio.cli import main

TINY = ["--length", "2048", "--batch-size", "2", "--d-model", "16", "--n-layer", "1", "--d-state", "4"]
TINY += ["--no-progress", "--device", "cpu", "--max-val-windows", "4", "--checkpoint-every", "2"]


def test_pretrain_pack_on_bundled_genomes_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--pack", "--max-steps", "2", "--out", str(out), *TINY]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["val_ppl"] > 1
    # the bundled records are 4-40 kb: one padded row-tail in total instead of one per record
    assert 0 <= result["padding_fraction"] < 0.01 < result["padding_fraction_unpacked"]
    assert result["train_rows"] == result["train_windows"] and result["train_records"] > 30

    assert main(["pretrain", "--pack", "--max-steps", "3", "--out", str(out), "--resume", *TINY]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3


def test_pack_with_max_shift_is_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--pack", "--max-shift", "5", "--max-steps", "1", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-shift" in err[0] and "--pack" in err[0]
    assert not out.exists()
