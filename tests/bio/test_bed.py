import pytest

from mamba_bio.errors import BedError, SplitError, UnknownChromosomeError
from mamba_bio.fasta import Genome
from mamba_bio.windows import Interval, check_intervals, parse_region, read_bed


def test_bed_is_read_as_zero_based_half_open_with_split_aliases(bio_data):
    intervals = read_bed(bio_data / "intervals.bed")
    assert intervals == [
        Interval("chrA", 0, 200, "train"),
        Interval("chrA", 200, 300, "valid"),
        Interval("chrB", 0, 120, "test"),
    ]


def test_region_strings_are_converted_once_from_one_based():
    assert parse_region("chr1:1,001-2,000") == Interval("chr1", 1000, 2000)
    assert len(parse_region("chr2:5-5")) == 1


@pytest.mark.parametrize(
    "line, error, match",
    [
        ("chrA\t10\n", BedError, "3 columns"),
        ("chrA\tten\t20\n", BedError, "integers"),
        ("chrA\t20\t20\n", BedError, "start < end"),
        ("chrA\t0\t20\tholdout\n", SplitError, "unknown split 'holdout'"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, error, match):
    bed = tmp_path / "x.bed"
    bed.write_text("chrA\t0\t10\ttrain\n" + line)
    with pytest.raises(error, match=match) as info:
        read_bed(bed)
    assert "x.bed:2" in str(info.value)


def test_empty_bed(tmp_path):
    (tmp_path / "e.bed").write_text("# nothing\n")
    with pytest.raises(BedError, match="no intervals"):
        read_bed(tmp_path / "e.bed")


def test_intervals_are_checked_against_the_fasta(bio_data):
    genome = Genome(bio_data / "two_records.fa")
    with pytest.raises(UnknownChromosomeError, match="chr9"):
        check_intervals([Interval("chr9", 0, 10)], genome, "x.bed")
    with pytest.raises(BedError, match="past the end of chrB"):
        check_intervals([Interval("chrB", 100, 121)], genome, "x.bed")
    check_intervals([Interval("chrB", 100, 120)], genome, "x.bed")  # exactly to the end is fine
