import csv
import json
import math

import torch
from safetensors.torch import load_file

from core.models import MambaConfig, MambaLM
from mamba_bio.cli import main
from mamba_bio.tokenizer import VOCAB_SIZE

TINY = [
    "--length",
    "64",
    "--batch-size",
    "4",
    "--d-model",
    "16",
    "--n-layer",
    "1",
    "--d-state",
    "4",
    "--no-progress",
    "--device",
    "cpu",
    "--checkpoint-every",
    "2",
    "--seed",
    "0",
]


def test_pretrain_then_resume_then_embed(bio_data, tmp_path, capsys):
    out = tmp_path / "run"
    fasta = str(bio_data / "human_mt.fa")
    assert main(["pretrain", "--fasta", fasta, "--max-steps", "3", "--out", str(out), *TINY]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 3 and math.isfinite(result["val_ppl"]) and result["val_ppl"] > 1
    assert result["train_tokens_per_s"] > 0  # step 2, timed after the warm-up (min(5, steps - 1))
    for name in ("last.ckpt", "model.safetensors", "config.json", "metrics.csv", "metrics.png", "run_config.yaml"):
        assert (out / name).is_file(), name

    ckpt = torch.load(out / "last.ckpt", weights_only=True)  # no pickled code needed
    assert ckpt["global_step"] == 3
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "lm" and config["vocab_size"] == VOCAB_SIZE
    known = MambaConfig.__dataclass_fields__
    model = MambaLM(MambaConfig(**{k: v for k, v in config.items() if k in known}))
    model.load_state_dict(load_file(out / "model.safetensors"))
    weights = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items()}
    torch.testing.assert_close(model.state_dict()["backbone.norm_f.weight"], weights["backbone.norm_f.weight"])

    assert main(["pretrain", "--fasta", fasta, "--max-steps", "5", "--out", str(out), "--resume", *TINY]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 5
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == 5
    # the first run's curves survive the resume (CSVLogger would otherwise delete metrics.csv)
    with open(out / "metrics.part0.csv") as fh:
        earlier = list(csv.DictReader(fh))
    assert max(int(r["step"]) for r in earlier if r["step"]) == 2  # Lightning logs the last step as 3 - 1
    assert any(r.get("val/loss") for r in earlier) and (out / "metrics.csv").is_file()
