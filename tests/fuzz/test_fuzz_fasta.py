"""Fuzzed FASTA input: `Genome` and `fetch_ids` end in FastaFormatError / InvalidSequenceError or
give well-formed token ids; never a raw pyfaidx error, a hang, or ids outside the vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mamba_bio.errors import FastaFormatError, InvalidSequenceError
from mamba_bio.fasta import Genome
from mamba_bio.tokenizer import PAD_ID, VOCAB_SIZE
from tests.fuzz.fuzz_settings import AWKWARD_TEXT, FUZZ, mutated, no_hang, written

VALID_FASTA = b">chrA first record\nACGTACGTAC\nGTNNacgtac\nACG\n>chrB\nTTTTGGGGCC\nAA\n"

NAME = st.text(st.characters(codec="ascii", exclude_characters="\n"), min_size=0, max_size=8)
SEQ_LINE = st.text(st.sampled_from("ACGTNacgtnRYKM-*. 0\t"), min_size=0, max_size=14)
LINE = st.one_of(
    NAME.map(lambda s: ">" + s),
    SEQ_LINE,
    SEQ_LINE,
    st.text(min_size=0, max_size=10),
    AWKWARD_TEXT,
)
TEXT_FASTA = st.lists(LINE, min_size=0, max_size=12).map(lambda lines: "\n".join(lines).encode("utf-8"))
ANY_FASTA = st.one_of(TEXT_FASTA, mutated(VALID_FASTA), st.binary(max_size=64))


def _check_records(genome: Genome) -> None:
    """Every record reads as ids in the vocabulary, or fails with a project error naming the file."""
    for chrom, size in genome.sizes.items():
        assert isinstance(chrom, str) and size >= 0
        try:
            ids = genome.fetch_ids(chrom, 0, size + 2)  # two past the end: must be [PAD], not an error
        except (InvalidSequenceError, FastaFormatError) as err:
            assert str(genome.path) in str(err)
            continue
        assert ids.dtype == np.int64 and ids.shape == (size + 2,)
        assert ids.min(initial=0) >= 0 and ids.max(initial=0) < VOCAB_SIZE
        assert (ids[size:] == PAD_ID).all()


@FUZZ
@given(data=ANY_FASTA)
def test_malformed_fasta_gives_project_error(data):
    with written("genome.fa", data) as path, no_hang():
        try:
            genome = Genome(path)
        except (FastaFormatError, InvalidSequenceError) as err:
            assert str(path) in str(err)  # the message names the file
            return
        assert genome.sizes
        _check_records(genome)


def test_valid_fasta_still_reads(tmp_path):
    """The seed the mutations start from is read correctly, so the fuzzing starts from a good file."""
    path = tmp_path / "genome.fa"
    path.write_bytes(VALID_FASTA)
    genome = Genome(path)
    assert genome.sizes == {"chrA": 23, "chrB": 12}
    assert genome.fetch("chrA", 10, 14) == "GTNN"


@pytest.mark.parametrize(
    "data",
    [
        b">a\nACGT\nAC\nACGT\n",  # inconsistent line lengths inside a record
        b">a\nACGT\n>a\nACGT\n",  # duplicate record names
        b"ACGT\n",  # sequence before any header
        b">\nACGT\n",  # empty record name
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00",  # plain gzip
        b">a\n\xff\xfeAC\n",  # not text
        b">a\n\rAG",  # a lone carriage return: the index and the bytes disagree on the record length
    ],
)
def test_known_malformed_fasta(tmp_path, data):
    path = tmp_path / "bad.fa"
    path.write_bytes(data)
    with pytest.raises((FastaFormatError, InvalidSequenceError), match="bad.fa"):
        genome = Genome(path)
        for chrom, size in genome.sizes.items():
            genome.fetch_ids(chrom, 0, size)
