"""Fuzzed BED input: `read_bed` and `check_intervals` end in BedError / SplitError /
UnknownChromosomeError or give valid 0-based half-open intervals; never a UnicodeDecodeError,
a bare ValueError from int(), or a hang."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mamba_bio.errors import BedError, SplitError, UnknownChromosomeError
from mamba_bio.fasta import Genome
from mamba_bio.windows import SPLITS, check_intervals, read_bed
from tests.fuzz.fuzz_settings import AWKWARD_BYTES, AWKWARD_TEXT, FUZZ, mutated, no_hang, written

GENOME_FASTA = b">chr1\nACGTACGTACGTACGTACGT\n>chr2\nACGTACGTAC\n"
VALID_BED = b"track name=x\n# comment\nchr1\t0\t10\ttrain\nchr1\t10\t20\tvalid\nchr2 2 8 test\n"

FIELD = st.one_of(
    st.sampled_from(["chr1", "chr2", "chrUn", "", "train", "val", "validation", "test", "TRAIN", "split"]),
    st.integers(-5, 40).map(str),
    st.sampled_from(["1e3", "0x10", "1_0", "+3", " 4", "NaN", "inf", "99999999999999999999999"]),
    st.text(max_size=6),
    AWKWARD_TEXT,
)
LINE = st.lists(FIELD, min_size=0, max_size=6).flatmap(
    lambda fields: st.sampled_from(["\t", " ", ",", "  "]).map(lambda sep: sep.join(fields))
)
TEXT_BED = st.lists(LINE, max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8"))
ANY_BED = st.one_of(
    TEXT_BED,
    mutated(VALID_BED),
    st.lists(st.one_of(AWKWARD_BYTES, st.binary(max_size=8)), max_size=6).map(b"".join),
)


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Genome:
    path = tmp_path_factory.mktemp("bed") / "genome.fa"
    path.write_bytes(GENOME_FASTA)
    return Genome(path)


@FUZZ
@given(data=ANY_BED)
def test_malformed_bed_gives_project_error(genome, data):
    with written("regions.bed", data) as path, no_hang():
        try:
            intervals = read_bed(path)
        except (BedError, SplitError) as err:
            assert str(path) in str(err)  # the message names the file (and line)
            return
        assert intervals
        for iv in intervals:
            assert isinstance(iv.start, int) and isinstance(iv.end, int)
            assert 0 <= iv.start < iv.end and iv.split in SPLITS
        try:
            check_intervals(intervals, genome, str(path))
        except (BedError, UnknownChromosomeError) as err:
            assert str(path) in str(err)
            return
        for iv in intervals:
            assert iv.end <= genome.sizes[iv.chrom]


def test_valid_bed_still_reads(tmp_path):
    path = tmp_path / "regions.bed"
    path.write_bytes(VALID_BED)
    assert [(iv.chrom, iv.start, iv.end, iv.split) for iv in read_bed(path)] == [
        ("chr1", 0, 10, "train"),
        ("chr1", 10, 20, "valid"),
        ("chr2", 2, 8, "test"),
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"chr1\t\xff\xfe\t10\n",  # not UTF-8
        b"chr1\t1e3\t2000\n",  # float notation for a coordinate
        b"chr1\tNaN\t10\n",
        b"chr1\t5\t5\n",  # empty interval
        b"\x00\x00\x00\n",  # binary
    ],
)
def test_known_malformed_bed(tmp_path, data):
    path = tmp_path / "bad.bed"
    path.write_bytes(data)
    with pytest.raises(BedError, match="bad.bed"):
        read_bed(path)
