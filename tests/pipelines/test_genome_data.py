import torch

from core.models import MambaConfig, MambaLM
from mamba_bio.tokenizer import PAD_ID
from pipelines.genome_data import GenomeDataModule, sample_fastas
from pipelines.lm import LMModule


def test_bed_splits_select_the_windows(bio_data):
    data = GenomeDataModule(
        fasta=[str(bio_data / "two_records.fa")], bed=str(bio_data / "intervals.bed"), length=50, batch_size=2
    )
    data.setup("fit")
    # train interval chrA:0-200 tiles into 4 windows; valid chrA:200-300 is all N, so it is skipped
    # and the module falls back to holding out training windows
    assert len(data.train_set) + len(data.val_set) == 4
    assert all(c == "chrA" and s in (0, 50, 100, 150) for _, c, s in data.train_set.windows + data.val_set.windows)


def test_windows_longer_than_the_interval_are_padded_not_dropped(bio_data):
    data = GenomeDataModule(
        fasta=[str(bio_data / "two_records.fa")], bed=str(bio_data / "intervals.bed"), length=150, batch_size=2
    )
    data.setup("fit")
    # chrB:0-120 (test) is ignored; chrA:200-300 (valid, 100 bp < 150) gives windows at 200 and 150
    assert sorted(s for _, _, s in data.val_set.windows) == [150, 200]
    assert (data.train_set[0] != PAD_ID).all()


def test_default_data_is_the_bundled_genomes():
    assert {p.name for p in sample_fastas()} >= {"MT-human.fa", "MT-orang.fa", "chr17.hg19.part.fa"}
    data = GenomeDataModule(length=512)
    data.setup("fit")
    assert len(data.train_set) > 500 and 50 < len(data.val_set) <= 64  # all-N windows of chr17 dropped


def test_sequence_length_warmup_cuts_windows_into_shorter_rows():
    torch.manual_seed(0)
    module = LMModule(MambaLM(MambaConfig(8, 1, 12, d_state=4)), seq_warmup_min=16, seq_warmup_steps=10)
    batch = torch.arange(2 * 64).view(2, 64)
    cropped = module._crop_for_warmup(batch)  # step 0: first stage, 16 tokens, 4x the rows
    assert cropped.shape == (8, 16) and torch.equal(cropped.reshape(-1), batch.reshape(-1))
