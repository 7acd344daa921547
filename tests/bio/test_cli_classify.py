import json

from mamba_bio.cli import main

TINY = [
    "--length",
    "64",
    "--batch-size",
    "8",
    "--d-model",
    "16",
    "--n-layer",
    "1",
    "--d-state",
    "4",
    "--no-progress",
    "--device",
    "cpu",
    "--seed",
    "0",
    "--windows",
    "6",
]


def _json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_eval_predict(bio_data, tmp_path, capsys):
    out = tmp_path / "clf"
    table = str(bio_data / "species.tsv")
    assert main(["classify", "train", "--data", table, "--max-steps", "4", "--out", str(out), *TINY]) == 0
    trained = _json(capsys)
    assert trained["labels"] == ["human", "orangutan"] and 0 <= trained["val_accuracy"] <= 1

    assert (
        main(
            [
                "classify",
                "eval",
                "--checkpoint",
                str(out),
                "--data",
                table,
                "--split",
                "test",
                "--windows",
                "5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    evaluated = _json(capsys)
    assert evaluated["n"] == 10 and set(evaluated["per_species"]) == {"human", "orangutan"}
    per = evaluated["per_species"]
    assert abs(evaluated["accuracy"] - (per["human"]["accuracy"] + per["orangutan"]["accuracy"]) / 2) < 1e-3

    tsv = tmp_path / "pred.tsv"
    assert (
        main(
            [
                "classify",
                "predict",
                "--checkpoint",
                str(out / "model.safetensors"),
                "--fasta",
                str(bio_data / "two_records.fa"),
                "--out",
                str(tsv),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    predicted = _json(capsys)
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    assert rows[0] == ["record", "start", "end", "kind", "predicted", "p_human", "p_orangutan"]
    windows = [r for r in rows[1:] if r[3] == "window"]
    # chrA (400 bp): starts 0, 64, ..., 320 plus a tail window ending at 400; chrB (120 bp): 0 and 56
    assert [(r[0], int(r[1])) for r in windows] == [("chrA", s) for s in (0, 64, 128, 192, 256, 320, 336)] + [
        ("chrB", 0),
        ("chrB", 56),
    ]
    assert predicted["records"] == 2 and predicted["windows"] == 9
    assert all(abs(float(r[5]) + float(r[6]) - 1) < 1e-3 for r in rows[1:])
