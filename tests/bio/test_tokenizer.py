import numpy as np
import pytest
import torch

from mamba_bio.errors import InvalidSequenceError
from mamba_bio.tokenizer import PAD_ID, decode, encode, reverse_complement, reverse_complement_array


def test_ids_follow_hyenadna_caduceus_convention():
    # the ids DESIGN.md fixes: A=7 C=8 G=9 T=10 N=11
    assert encode("ACGTN").tolist() == [7, 8, 9, 10, 11]


def test_soft_masked_lower_case_reads_as_upper_case():
    assert encode("acgtn").tolist() == encode("ACGTN").tolist()


@pytest.mark.parametrize("code", list("RYKMSWBDHVrykmswbdhv"))
def test_iupac_ambiguity_codes_become_n(code):
    assert encode(code).tolist() == [11]


@pytest.mark.parametrize("bad", ["AC-GT", "ACGU", "AC GT", "AC>T", "A1"])
def test_non_nucleotide_characters_are_rejected_with_position(bad):
    with pytest.raises(InvalidSequenceError, match="position"):
        encode(bad)


def test_reverse_complement_of_known_sequence():
    assert decode(reverse_complement(encode("AACGTN"))) == "NACGTT"


def test_reverse_complement_is_an_involution_and_keeps_special_tokens():
    torch.manual_seed(0)
    ids = torch.randint(0, 12, (3, 50))
    assert torch.equal(reverse_complement(reverse_complement(ids)), ids)
    padded = torch.tensor([PAD_ID, 7, 8])
    assert reverse_complement(padded).tolist() == [9, 10, PAD_ID]


def test_numpy_reverse_complement_matches_torch():
    ids = encode("ACGGTTNACG")
    assert np.array_equal(reverse_complement_array(ids.numpy()), reverse_complement(ids).numpy())
