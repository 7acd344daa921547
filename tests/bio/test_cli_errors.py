"""Bad input: exit code 2, one line on stderr naming the file and the problem, nothing written."""

import shutil

import pytest

from mamba_bio.cli import main

TINY = ["--max-steps", "1", "--d-model", "8", "--n-layer", "1", "--no-progress", "--device", "cpu"]


@pytest.fixture
def fa(bio_data, tmp_path):
    shutil.copy(bio_data / "two_records.fa", tmp_path / "g.fa")
    return tmp_path / "g.fa"


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mamba-bio") and " error: " in lines[0], captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert captured.out == ""


def test_missing_fasta(tmp_path, capsys):
    out = tmp_path / "run"
    _fails(["pretrain", "--fasta", str(tmp_path / "none.fa"), "--out", str(out), *TINY], capsys, "none.fa", "not found")
    assert not out.exists()


@pytest.mark.parametrize(
    "content, needle",
    [("", "empty"), ("ACGT\n", "malformed"), (">a\nACGT\nA\nACGT\n", "malformed"), (">a\nAC?T\n", "not a nucleotide")],
)
def test_malformed_or_empty_fasta(tmp_path, capsys, content, needle):
    bad = tmp_path / "bad.fa"
    bad.write_text(content)
    out = tmp_path / "run"
    _fails(["pretrain", "--fasta", str(bad), "--length", "2", "--out", str(out), *TINY], capsys, "bad.fa", needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "bed, needles",
    [
        ("chrQ\t0\t50\ttrain\n", ("chrQ", "x.bed", "g.fa")),
        ("chrB\t0\t500\ttrain\n", ("past the end of chrB", "length 120")),
        ("chrA\t0\t50\tdev\n", ("unknown split 'dev'", "x.bed:1")),
        ("", ("no intervals", "x.bed")),
    ],
)
def test_bad_bed(fa, tmp_path, capsys, bed, needles):
    (tmp_path / "x.bed").write_text(bed)
    out = tmp_path / "run"
    _fails(
        ["pretrain", "--fasta", str(fa), "--bed", str(tmp_path / "x.bed"), "--length", "32", "--out", str(out), *TINY],
        capsys,
        *needles,
    )
    assert not out.exists()


def test_window_longer_than_every_record(fa, tmp_path, capsys):
    _fails(
        ["pretrain", "--fasta", str(fa), "--length", "5000", "--out", str(tmp_path / "run"), *TINY],
        capsys,
        "5000",
        "longer than every record",
    )
    _fails(
        ["classify", "train", "--data", str(fa.parent.parent / "missing.tsv"), "--out", str(tmp_path / "r2"), *TINY],
        capsys,
        "missing.tsv",
        "not found",
    )


def test_species_table_errors(bio_data, tmp_path, capsys):
    table = tmp_path / "s.tsv"
    table.write_text(f"species\tfasta\tsplit\trecords\nhuman\t{bio_data / 'human_mt.fa'}\tholdout\t\n")
    _fails(
        ["classify", "train", "--data", str(table), "--length", "64", "--out", str(tmp_path / "run"), *TINY],
        capsys,
        "s.tsv:2",
        "unknown split 'holdout'",
    )
    assert not (tmp_path / "run").exists()
    _fails(
        [
            "classify",
            "train",
            "--data",
            str(bio_data / "species.tsv"),
            "--length",
            "9000",
            "--out",
            str(tmp_path / "run"),
            *TINY,
        ],
        capsys,
        "longer than every record",
    )


def test_eval_errors(bio_data, tmp_path, capsys):
    _fails(
        ["classify", "eval", "--checkpoint", str(tmp_path / "nothing"), "--data", str(bio_data / "species.tsv")],
        capsys,
        "nothing",
        "not found",
    )
    _fails(
        ["classify", "eval", "--checkpoint", str(tmp_path), "--data", str(bio_data / "species.tsv"), "--split", "dev"],
        capsys,
        "--split",
        "unknown split 'dev'",
    )


def test_argument_errors_are_one_line_too(capsys):
    _fails(["pretrain", "--length", "0"], capsys, "--length")
    _fails(["fetch", "no_such_data_set"], capsys, "no_such_data_set", "known:")
