"""DNA packing: a packed MambaLM batch equals its records run one by one (logits, loss, gradients);
packed rows hold every record token once; the datamodule yields [ids, seq_idx] and reports padding."""

import numpy as np
import pytest
import torch

from core.models import MambaConfig, MambaLM
from mamba_bio.fasta import Genome
from mamba_bio.packed import PackedRecords, record_splits
from mamba_bio.tokenizer import NUCLEOTIDE_IDS
from pipelines.genome_data import GenomeDataModule
from pipelines.lm import lm_loss

ROWS = [[5, 9, 2], [7, 9], [16]]  # lengths of the records packed in each row of 16


def _seq_idx(rows):
    return torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in rows], dtype=torch.int32)


def _model():
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4, backend="cpu"))


def test_packed_lm_equals_records_run_separately():
    model = _model()
    ids = torch.randint(7, 11, (3, 16))  # A C G T
    seq_idx = _seq_idx(ROWS)
    logits = model(ids, seq_idx=seq_idx)
    total, count = lm_loss(logits, ids, NUCLEOTIDE_IDS, seq_idx)
    grads = torch.autograd.grad(total, list(model.parameters()))

    model.zero_grad()
    sep_total, sep_count = 0.0, 0
    for b, row in enumerate(ROWS):
        start = 0
        for n in row:
            piece = ids[b : b + 1, start : start + n]
            sep_logits = model(piece)
            torch.testing.assert_close(logits[b : b + 1, start : start + n], sep_logits, rtol=1e-4, atol=1e-5)
            t, c = lm_loss(sep_logits, piece, NUCLEOTIDE_IDS)
            sep_total, sep_count = sep_total + t, sep_count + c
            start += n
    sep_grads = torch.autograd.grad(sep_total, list(model.parameters()))

    # the target across each boundary (first token of the next record) is not scored
    assert int(count) == int(sep_count) == sum(n - 1 for row in ROWS for n in row)
    torch.testing.assert_close(total, sep_total, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), grads, sep_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"grad of {name}")


def test_without_seq_idx_records_leak_into_each_other():
    """The check above can fail: unpacked, the second record of a row sees the first."""
    model = _model()
    ids = torch.randint(7, 11, (3, 16))
    with torch.no_grad():
        leaky, packed = model(ids), model(ids, seq_idx=_seq_idx(ROWS))
    assert not torch.allclose(leaky[0, 5:14], packed[0, 5:14], atol=1e-4)
    torch.testing.assert_close(leaky[0, :5], packed[0, :5])


def _records(bio_data):
    genomes = [Genome(bio_data / "two_records.fa"), Genome(bio_data / "human_mt.fa")]
    records = [(g, iv) for g, genome in enumerate(genomes) for iv in record_splits(genome, 0.1)]
    return genomes, [r for r in records if r[1].split == "train"]


def test_packed_rows_hold_every_record_token_once_in_order(bio_data):
    genomes, train = _records(bio_data)
    data = PackedRecords(genomes, train, 256, seed=1)
    data.epoch = 2
    rebuilt = {i: [] for i in range(len(train))}
    for row in range(len(data)):
        ids, seq_idx = data[row]
        assert ids.shape == seq_idx.shape == (256,) and seq_idx.dtype == torch.int32
        for record, start, stop, offset in data.plan().segments(row):
            rebuilt[record].append(ids[offset : offset + stop - start].numpy())
    for i, (g, iv) in enumerate(train):
        np.testing.assert_array_equal(np.concatenate(rebuilt[i]), genomes[g].fetch_ids(iv.chrom, iv.start, iv.end))
    # records of 108..5400 bp: tiling each into its own rows of 256 pads far more than packing
    assert data.padding_fraction < 256 / (len(data) * 256) < data.padding_fraction_unpacked


def test_datamodule_packs_deterministically(bio_data):
    def make():
        dm = GenomeDataModule(fasta=[str(bio_data / "human_mt.fa")], length=512, batch_size=4, pack=True, seed=3)
        dm.setup("fit")
        return dm

    dm = make()
    ids, seq_idx = next(iter(dm.train_dataloader()))
    assert ids.shape == seq_idx.shape == (4, 512)
    again_ids, _ = next(iter(make().train_dataloader()))
    torch.testing.assert_close(ids, again_ids)  # same seed: same rows in the same order
    stats = dm.packing_stats
    assert 0 <= stats["padding_fraction"] < stats["padding_fraction_unpacked"]
    val_ids, val_seq = next(iter(dm.val_dataloader()))
    assert val_ids.shape[1] == 512 and val_seq.shape == val_ids.shape


def test_pack_refuses_max_shift(bio_data):
    dm = GenomeDataModule(fasta=[str(bio_data / "human_mt.fa")], length=512, pack=True, max_shift=10)
    with pytest.raises(ValueError, match="--max-shift.*--pack"):
        dm.setup("fit")


def test_resume_continues_with_the_same_packed_rows(bio_data):
    """A resumed run (resume_from(epoch, batches)) sees exactly the rows the uninterrupted run would."""

    def make():
        dm = GenomeDataModule(fasta=[str(bio_data / "human_mt.fa")], length=256, batch_size=2, pack=True, seed=5)
        dm.setup("fit")
        return dm

    full = make()
    full.train_set.epoch = 1  # what pass_epoch_to_dataset does at the start of epoch 1
    loader = full.train_dataloader()
    loader.sampler.set_epoch(1)
    expected = [ids for ids, _ in loader][3]
    resumed = make()
    resumed.resume_from(1, 3)
    first_ids, _ = next(iter(resumed.train_dataloader()))
    torch.testing.assert_close(first_ids, expected)
