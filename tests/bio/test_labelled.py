import pytest
import torch

from mamba_bio.errors import InvalidSequenceError, TableError
from mamba_bio.labelled import SequenceTable, collate_classification, open_classification_data
from mamba_bio.species import SpeciesTable
from mamba_bio.tokenizer import PAD_ID


def test_csv_with_split_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("sequence,label,split\nACGT,yes,train\nACGTAA,no,train\nGGG,no,test\n")
    table = SequenceTable(path, length=10)
    assert table.labels == ["no", "yes"]
    assert [(ids.tolist(), y) for ids, y in table.examples("test")] == [([9, 9, 9], 0)]


def test_tsv_without_split_gets_a_seeded_split(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sequence\tlabel\n" + "".join(f"ACGTACGT\t{i % 2}\n" for i in range(50)))
    a, b = SequenceTable(path, 8, seed=1), SequenceTable(path, 8, seed=1)
    assert a.splits() == ["test", "train", "valid"]
    assert [len(a.examples(s)) for s in ("train", "valid", "test")] == [40, 5, 5]
    assert [len(b.examples(s)) for s in ("train", "valid", "test")] == [40, 5, 5]


def test_genomic_benchmarks_folder(tmp_path):
    for part, cls, seq in [("train", "promoter", "ACGTACGTAC"), ("train", "other", "TTTT"), ("test", "other", "GGGA")]:
        (tmp_path / part / cls).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            (tmp_path / part / cls / f"{i}.txt").write_text(seq + "\n")
    source = open_classification_data(tmp_path, 8)
    assert source.labels == ["other", "promoter"]
    assert len(source.examples("test")) == 5
    assert len(source.examples("train")) + len(source.examples("valid")) == 10
    # the 10-bp promoters are centre-cropped to the length (8) for evaluation, the 4-bp ones kept whole
    lengths = {(len(ids), label) for ids, label in source.eval_dataset("test", 0, 0)}
    assert lengths == {(4, 0)}
    train = source.eval_dataset("train", 0, 0)
    assert {(len(train[i][0]), train[i][1]) for i in range(len(train))} == {(4, 0), (8, 1)}
    first_promoter = [y for _, y in source.examples("train")].index(1)
    assert train[first_promoter][0].tolist() == [8, 9, 10, 7, 8, 9, 10, 7]  # CGTACGTA


def test_collate_pads_right_and_keeps_lengths():
    batch = collate_classification([(torch.tensor([7, 8, 9]), 1), (torch.tensor([10]), 0)])
    assert batch["input_ids"].tolist() == [[7, 8, 9], [10, PAD_ID, PAD_ID]]
    assert batch["lengths"].tolist() == [3, 1] and batch["labels"].tolist() == [1, 0]


def test_dispatch_by_header(bio_data, tmp_path):
    assert isinstance(open_classification_data(bio_data / "species.tsv", 100), SpeciesTable)
    (tmp_path / "x.csv").write_text("seq,class\nACGT,a\n")
    with pytest.raises(TableError, match="neither a species table"):
        open_classification_data(tmp_path / "x.csv", 10)
    (tmp_path / "bad.csv").write_text("sequence,label\nAC-GT,a\n")
    with pytest.raises(InvalidSequenceError, match="sequence 1"):
        open_classification_data(tmp_path / "bad.csv", 10)
