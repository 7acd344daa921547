import gzip
import shutil

import numpy as np
import pytest
import torch

from mamba_bio.errors import FastaFormatError, FastaNotFoundError, UnknownChromosomeError, WindowError
from mamba_bio.fasta import Genome
from mamba_bio.tokenizer import N_ID, PAD_ID, encode_array
from mamba_bio.windows import GenomeWindows, Interval, build_windows, record_intervals, window_starts


def _raw(path, name):
    """The record's sequence read without pyfaidx, as the expected value."""
    seqs, cur = {}, None
    for line in open(path):
        if line.startswith(">"):
            cur = line[1:].split()[0]
            seqs[cur] = ""
        else:
            seqs[cur] += line.strip()
    return seqs[name]


@pytest.fixture
def genome(bio_data, tmp_path):
    shutil.copy(bio_data / "two_records.fa", tmp_path / "g.fa")
    return Genome(tmp_path / "g.fa")


def test_sizes_and_fetch_match_the_file(genome):
    raw = _raw(genome.path, "chrA")
    assert genome.sizes == {"chrA": len(raw), "chrB": 120}
    assert np.array_equal(genome.fetch_ids("chrA", 10, 70), encode_array(raw[10:70]))


def test_windows_past_chromosome_ends_are_padded(genome):
    ids = genome.fetch_ids("chrB", -5, 125)
    assert ids[:5].tolist() == [PAD_ID] * 5 and ids[-5:].tolist() == [PAD_ID] * 5
    assert not np.isin(ids[5:-5], [PAD_ID]).any()


def test_unknown_chromosome_names_file_and_records(genome):
    with pytest.raises(UnknownChromosomeError, match="chrZ.*g.fa.*chrA"):
        genome.fetch_ids("chrZ", 0, 10)


def test_paper_tiling_for_short_windows():
    iv = Interval("chr1", 1000, 1000 + 2**17)
    starts = window_starts(iv, 2**15)
    assert starts == [1000 + i * 2**15 for i in range(4)]


def test_paper_two_windows_for_windows_longer_than_the_interval():
    iv = Interval("chr1", 1000, 1000 + 2**17)
    assert window_starts(iv, 2**18) == [1000, 1000 + 2**17 - 2**18]


def test_all_n_windows_are_skipped(genome):
    # chrA holds 100 N at [200, 300): the window starting at 200 is all N and must be dropped
    windows = [(0, "chrA", 0), (0, "chrA", 200), (0, "chrA", 300)]
    ds = GenomeWindows([genome], windows, 100)
    assert len(ds) == 2
    assert all(not (ds[i] == N_ID).all() for i in range(len(ds)))


def test_augmentation_is_seeded_and_reverse_complements(genome):
    ds = GenomeWindows([genome], [(0, "chrA", 0)], 50, rc_prob=1.0, seed=3)
    plain = GenomeWindows([genome], [(0, "chrA", 0)], 50)
    comp = torch.tensor([0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11])
    assert torch.equal(ds[0], comp[plain[0]].flip(0))
    shifted = GenomeWindows([genome], [(0, "chrA", 100)], 50, max_shift=20, seed=1)
    assert torch.equal(shifted[0], GenomeWindows([genome], [(0, "chrA", 100)], 50, max_shift=20, seed=1)[0])


def test_record_intervals_hold_out_the_end_of_each_record(genome):
    intervals = record_intervals(genome, 50)
    train = build_windows([genome], [intervals], 50, "train")
    valid = build_windows([genome], [intervals], 50, "valid")
    assert valid and train
    assert max(s for _, c, s in train if c == "chrA") < min(s for _, c, s in valid if c == "chrA")


def test_window_longer_than_every_record(genome):
    with pytest.raises(WindowError, match="longer than every record"):
        record_intervals(genome, 10_000)


def test_plain_gzip_is_refused_with_the_fix(bio_data, tmp_path):
    gz = tmp_path / "g.fa.gz"
    with open(bio_data / "two_records.fa", "rb") as fin, gzip.open(gz, "wb") as fout:
        fout.write(fin.read())
    with pytest.raises(FastaFormatError, match="bgzip"):
        Genome(gz)


def test_bgzip_is_read_through_the_index(bio_data, tmp_path):
    from Bio import bgzf

    bgz = tmp_path / "g.fa.gz"
    with open(bio_data / "two_records.fa", "rb") as fin, bgzf.BgzfWriter(str(bgz), "wb") as fout:
        fout.write(fin.read())
    plain = Genome(bio_data / "two_records.fa")
    assert np.array_equal(Genome(bgz).fetch_ids("chrA", 5, 305), plain.fetch_ids("chrA", 5, 305))


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "empty"),
        ("ACGT\nACGT\n", "malformed"),
        (">a\nACGTACGT\nAC\nACGTACGT\n", "malformed"),
    ],
)
def test_malformed_fasta(tmp_path, content, match):
    path = tmp_path / "bad.fa"
    path.write_text(content)
    with pytest.raises(FastaFormatError, match=match):
        Genome(path)


def test_missing_fasta(tmp_path):
    with pytest.raises(FastaNotFoundError, match="not found"):
        Genome(tmp_path / "nope.fa")
