"""Fuzzed classification tables: species.tsv (`read_species_table`, `SpeciesTable`) and labelled
sequence CSV/TSV (`read_sequence_table`, `SequenceTable`, `open_classification_data`) end in
TableError / SplitError / InvalidSequenceError (or, for species rows, the FASTA and window errors)
or give well-formed rows; never a csv.Error, a UnicodeDecodeError, a KeyError or a hang."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mamba_bio.errors import (
    FastaFormatError,
    FastaNotFoundError,
    InvalidSequenceError,
    SplitError,
    TableError,
    UnknownChromosomeError,
    WindowError,
)
from mamba_bio.labelled import SequenceTable, open_classification_data, read_sequence_table
from mamba_bio.species import SpeciesTable, read_species_table
from mamba_bio.windows import SPLITS
from tests.fuzz.fuzz_settings import AWKWARD_BYTES, AWKWARD_TEXT, FUZZ, mutated, no_hang, written

GENOME_FASTA = b">chr1\nACGTACGTACGTACGTACGT\n>chr2\nNNNNNNNNNN\n"
VALID_SPECIES = b"species\tfasta\tsplit\trecords\nape\tgenome.fa\ttrain\tchr1\nape\tgenome.fa\ttest\t\n"
VALID_SEQUENCES = b"sequence,label,split\nACGT,a,train\nGGCC,b,valid\nacgtn,a,test\n"

CELL = st.one_of(
    st.sampled_from(["species", "fasta", "split", "records", "sequence", "label", "genome.fa", "missing.fa"]),
    st.sampled_from(["train", "valid", "val", "test", "TEST", "dev", "", "chr1", "chr1,chr2", "chr3", ",,"]),
    st.sampled_from(["ACGT", "acgtn", "ACGU", "NNNN", "A C", "a", "b"]),
    st.text(max_size=6),
    AWKWARD_TEXT,
    st.just('"' + "A" * 200_000 + '"'),  # over csv's default field size limit (a long sequence)
)


def _table(delimiter: str):
    row = st.lists(CELL, max_size=5).map(delimiter.join)
    return st.lists(row, max_size=5).map(lambda rows: "\n".join(rows).encode("utf-8"))


def _any(valid: bytes, header: bytes, delimiter: str):
    return st.one_of(
        _table(delimiter),
        _table(delimiter).map(lambda body: header + b"\n" + body),
        mutated(valid),
        st.lists(st.one_of(AWKWARD_BYTES, st.binary(max_size=8)), max_size=6).map(
            lambda p: header + b"\n" + b"".join(p)
        ),
    )


SPLIT = st.one_of(st.sampled_from(["train", "valid", "val", "test", "TEST", " test ", "dev", ""]), AWKWARD_TEXT)
SPECIES_ROW = st.tuples(
    st.sampled_from(["ape", "human", "", " ", "a\x00b"]),
    st.sampled_from(["genome.fa", "missing.fa", "", "../genome.fa", "genome.fa\x00"]),
    SPLIT,
    st.sampled_from(["", "chr1", "chr2", "chr1,chr2", "chr3", ",,", "chr1 ,"]),
).map("\t".join)
SEQUENCE_ROW = st.tuples(
    st.sampled_from(["ACGT", "acgtn", "ACGU", "NNNN", "A C", "", "RYKM"]),
    st.sampled_from(["a", "b", "", '"b"']),
    SPLIT,
).map(",".join)


def _rows(header: bytes, row) -> st.SearchStrategy[bytes]:
    """Header plus rows that are right column by column, each cell drawn from good and bad values."""
    return st.lists(row, min_size=1, max_size=5).map(lambda rows: header + b"\n" + "\n".join(rows).encode("utf-8"))


ANY_SPECIES = st.one_of(
    _any(VALID_SPECIES, b"species\tfasta\tsplit\trecords", "\t"),
    _rows(b"species\tfasta\tsplit\trecords", SPECIES_ROW),
    _rows(b"species\tfasta\tsplit\trecords", SPECIES_ROW),
)
ANY_SEQUENCES = st.one_of(
    _any(VALID_SEQUENCES, b"sequence,label,split", ","),
    _any(VALID_SEQUENCES, b"sequence\tlabel", "\t"),
    _rows(b"sequence,label,split", SEQUENCE_ROW),
    _rows(b"sequence,label,split", SEQUENCE_ROW),
)


@FUZZ
@given(data=ANY_SPECIES)
def test_malformed_species_table_gives_project_error(data):
    with written("species.tsv", data) as path, no_hang():
        (path.parent / "genome.fa").write_bytes(GENOME_FASTA)
        try:
            rows = read_species_table(path)
        except (TableError, SplitError) as err:
            assert str(path) in str(err)
            return
        assert rows and all(r.species and r.split in SPLITS for r in rows)
        try:
            table = SpeciesTable(path, length=8)
        except (FastaNotFoundError, FastaFormatError, UnknownChromosomeError, WindowError) as err:
            assert str(err)
            return
        assert table.labels == sorted({r.species for r in rows})


@FUZZ
@given(data=ANY_SEQUENCES)
def test_malformed_sequence_table_gives_project_error(data):
    with written("table.csv", data) as path, no_hang():
        try:
            rows = read_sequence_table(path)
        except (TableError, SplitError) as err:
            assert str(path) in str(err)
            return
        assert rows and all(seq and label and split in SPLITS for seq, label, split in rows)
        try:
            table = SequenceTable(path, length=16)
        except InvalidSequenceError as err:
            assert str(path) in str(err)
            return
        assert table.splits() and set(table.splits()) <= set(SPLITS)


@FUZZ
@given(data=st.one_of(ANY_SPECIES, ANY_SEQUENCES))
def test_classification_data_sniffing_gives_project_error(data):
    """`--data` is told apart by its header; whatever the header, the error is the project's."""
    with written("data.tsv", data) as path, no_hang():
        (path.parent / "genome.fa").write_bytes(GENOME_FASTA)
        try:
            open_classification_data(path, length=8)
        except (
            TableError,
            SplitError,
            InvalidSequenceError,
            FastaNotFoundError,
            FastaFormatError,
            UnknownChromosomeError,
            WindowError,
        ) as err:
            assert str(err)


def test_valid_tables_still_read(tmp_path):
    (tmp_path / "genome.fa").write_bytes(GENOME_FASTA)
    (tmp_path / "species.tsv").write_bytes(VALID_SPECIES)
    (tmp_path / "table.csv").write_bytes(VALID_SEQUENCES)
    rows = read_species_table(tmp_path / "species.tsv")
    assert [(r.species, r.split, r.records) for r in rows] == [("ape", "train", ("chr1",)), ("ape", "test", ())]
    assert read_sequence_table(tmp_path / "table.csv") == [
        ("ACGT", "a", "train"),
        ("GGCC", "b", "valid"),
        ("acgtn", "a", "test"),
    ]


@pytest.mark.parametrize(
    "name, data",
    [
        ("species.tsv", b"species\tfasta\tsplit\n\xff\tgenome.fa\ttrain\n"),  # not UTF-8
        ("species.tsv", b"\x00species\tfasta\tsplit\n"),
        ("table.csv", b"sequence,label\n\xe9,a\n"),
        ("table.csv", b"\xef\xbb\xbf"),  # a BOM and nothing else
    ],
)
def test_known_malformed_tables(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    reader = read_species_table if name == "species.tsv" else read_sequence_table
    with pytest.raises(TableError, match=name):
        reader(path)


def test_long_sequences_are_read(tmp_path):
    """A 200 kbp cell is a long-range example, not a malformed table (csv's default limit is 128 KiB)."""
    path = tmp_path / "table.csv"
    path.write_bytes(b'sequence,label\n"' + b"A" * 200_000 + b'",a\nACGT,b\nGG,a\n')
    rows = read_sequence_table(path)
    assert len(rows[0][0]) == 200_000 and [r[1] for r in rows] == ["a", "b", "a"]
