from collections import Counter

import numpy as np
import pytest

from mamba_bio.errors import SplitError, TableError, UnknownChromosomeError, WindowError
from mamba_bio.species import SpeciesTable, read_species_table


def _write(tmp_path, rows, bio_data):
    table = tmp_path / "species.tsv"
    lines = ["species\tfasta\tsplit\trecords"]
    for sp, fa, split, recs in rows:
        lines.append(f"{sp}\t{bio_data / fa}\t{split}\t{recs}")
    table.write_text("\n".join(lines) + "\n")
    return table


def test_relative_paths_and_record_lists(bio_data):
    rows = read_species_table(bio_data / "species.tsv")
    assert rows[0].fasta == bio_data / "human_mt.fa" and rows[0].records == ("hs_train",)
    assert {r.split for r in rows} == {"train", "valid", "test"}


def test_species_then_record_then_window_sampling_is_uniform_over_species(bio_data, tmp_path):
    # human has three training records, orangutan one: species must still be drawn 50/50
    table = _write(
        tmp_path,
        [
            ("human", "human_mt.fa", "train", "hs_train,hs_valid,hs_test"),
            ("orangutan", "orang_mt.fa", "train", "pa_train"),
        ],
        bio_data,
    )
    ds = SpeciesTable(table, 100).train_dataset(num_samples=2000, seed=0)
    counts = Counter(ds[i][1] for i in range(len(ds)))
    assert abs(counts[0] - 1000) < 100  # 5 sigma of a fair coin over 2000 draws is ~112
    # and records of a species uniformly: each human record gets about a third of human draws
    draws = [ds._draw_valid(ds.by_species, ["human"], np.random.default_rng(i))[2] for i in range(600)]
    assert all(abs(c - 200) < 60 for c in Counter(draws).values())


def test_windows_come_only_from_the_split_records(bio_data):
    table = SpeciesTable(bio_data / "species.tsv", 200)
    ds = table.eval_dataset("test", windows_per_species=20, seed=0)
    assert {ds.describe(i)[2] for i in range(len(ds))} == {"hs_test", "pa_test"}


def test_fixed_eval_set_is_seeded_and_balanced(bio_data):
    table = SpeciesTable(bio_data / "species.tsv", 200)
    a = table.eval_dataset("valid", 10, seed=5)
    b = SpeciesTable(bio_data / "species.tsv", 200).eval_dataset("valid", 10, seed=5)
    assert [a.describe(i) for i in range(len(a))] == [b.describe(i) for i in range(len(b))]
    assert Counter(a[i][1] for i in range(len(a))) == {0: 10, 1: 10}
    assert all(a[i][0].shape == (200,) for i in range(len(a)))


def test_window_longer_than_every_record_of_a_species(bio_data):
    with pytest.raises(WindowError, match="longer than every record"):
        SpeciesTable(bio_data / "species.tsv", 5000)


def test_bad_tables(bio_data, tmp_path):
    with pytest.raises(SplitError, match="unknown split 'dev'"):
        SpeciesTable(_write(tmp_path, [("human", "human_mt.fa", "dev", "")], bio_data), 100)
    with pytest.raises(UnknownChromosomeError, match="chr1"):
        SpeciesTable(_write(tmp_path, [("human", "human_mt.fa", "train", "chr1")], bio_data), 100)
    (tmp_path / "h.tsv").write_text("name\tfile\n")
    with pytest.raises(TableError, match="missing species, fasta, split"):
        read_species_table(tmp_path / "h.tsv")
    table = SpeciesTable(bio_data / "species.tsv", 100)
    with pytest.raises(SplitError):
        table.species_in("holdout")
