"""Load what the `mamba-bio` commands export: a run folder, its model.safetensors, or last.ckpt.

    run folder/ {config.json, model.safetensors, last.ckpt} -> load_run -> (task, model, config dict)

config.json holds the model config plus "task" ("lm" or "classify"), "length" and, for
classifiers, "labels". Lightning's last.ckpt is read with torch.load(weights_only=True), so no
pickled code is ever executed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from core.models import MambaConfig, MambaLM

from .errors import CheckpointError
from .models import ClassifierConfig, DNAClassifier


def _read_state(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    if path.is_dir():
        folder, weights = path, path / "model.safetensors"
    else:
        folder, weights = path.parent, path
    if not weights.is_file():
        raise CheckpointError(
            f"{weights}: not found; pass a run folder written by `mamba-bio pretrain` or "
            "`classify train`, its model.safetensors or its last.ckpt"
        )
    if weights.suffix == ".ckpt":
        try:
            ckpt = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors vary; any failure means "not a usable checkpoint"
            raise CheckpointError(f"{weights}: cannot read as a weights-only checkpoint: {err}") from err
        state = {k[len("model.") :]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")}
    else:
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{weights}: not a safetensors file: {err}") from err
    return folder, state


def load_run(path: str | os.PathLike, task: str | None = None) -> tuple[str, nn.Module, dict]:
    """Rebuild the model of a run. Returns (task, model in eval mode on CPU, config dict).

    `task`: "lm" or "classify" to insist on one (CheckpointError otherwise).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    folder, state = _read_state(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: not found beside the weights")
    config = json.loads(config_file.read_text())
    found = config.get("task")
    if task is not None and found != task:
        raise CheckpointError(f"{path}: a {found!r} checkpoint, but this command needs a {task!r} one")
    if found == "lm":
        known = MambaConfig.__dataclass_fields__
        model: nn.Module = MambaLM(MambaConfig(**{k: v for k, v in config.items() if k in known}))
    elif found == "classify":
        model = DNAClassifier(ClassifierConfig.from_dict(config))
    else:
        raise CheckpointError(f"{config_file}: unknown task {found!r} (expected 'lm' or 'classify')")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return found, model.eval(), config
