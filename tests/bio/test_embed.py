import json

import numpy as np
import torch

from core.models import MambaConfig, MambaLM
from mamba_bio.cli import main
from mamba_bio.fasta import Genome
from mamba_bio.inference import embed_record
from pipelines.common import export_model


def _lm_run(tmp_path):
    torch.manual_seed(0)
    config = MambaConfig(16, 2, 12, d_state=4)
    model = MambaLM(config).eval()
    export_model(model, config, tmp_path / "lm", extra={"task": "lm", "length": 64})
    return model


def test_streaming_in_chunks_equals_one_pass(bio_data, tmp_path):
    model = _lm_run(tmp_path)
    genome = Genome(bio_data / "two_records.fa")
    whole = embed_record(model.backbone, genome, "chrA", chunk=10_000)
    chunked = embed_record(model.backbone, genome, "chrA", chunk=37)  # odd chunk: state carried 11 times
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-5)
    direct = model.backbone(torch.from_numpy(genome.fetch_ids("chrA", 0, 400))[None])[0].mean(0)
    np.testing.assert_allclose(whole, direct.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_embed_cli_writes_matrix_and_record_index(bio_data, tmp_path, capsys):
    _lm_run(tmp_path)
    out = tmp_path / "emb.npy"
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(tmp_path / "lm"),
                "--fasta",
                str(bio_data / "two_records.fa"),
                "--out",
                str(out),
                "--chunk",
                "50",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["records"] == 2 and result["dim"] == 16
    assert np.load(out).shape == (2, 16)
    assert (tmp_path / "emb.records.tsv").read_text().splitlines()[1:] == ["0\tchrA\t400", "1\tchrB\t120"]
