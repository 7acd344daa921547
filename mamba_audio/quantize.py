"""The 8-bit quantisers a model can be trained with, by name: "mulaw" (the default) and "linear".

Both map a clip to 256 classes with the same per-clip scaling and decode class 128 to silence, so
models, data sets and sampling only differ in which `encode` / `decode` they call. The name is
stored in each checkpoint's config.json (`quantization`) so that `bpb` and `generate` use the
quantiser the model was trained with.
"""

from __future__ import annotations

from types import ModuleType

from . import linear, mulaw
from .errors import AudioDatasetError

QUANTIZERS: dict[str, ModuleType] = {"mulaw": mulaw, "linear": linear}
DEFAULT = "mulaw"
N_CLASSES = 256
SILENCE_CLASS = 128
# config.json's `encoding` field, kept beside `quantization` for readers of older checkpoints
ENCODING_NAMES = {"mulaw": "mulaw8", "linear": "linear8"}

assert all(q.N_CLASSES == N_CLASSES and q.SILENCE_CLASS == SILENCE_CLASS for q in QUANTIZERS.values())


def quantizer(name: str) -> ModuleType:
    """The module with `encode(audio) -> classes` and `decode(classes) -> audio` for `name`."""
    try:
        return QUANTIZERS[name]
    except KeyError:
        raise AudioDatasetError(f"unknown quantization {name!r}; choose one of {', '.join(QUANTIZERS)}") from None
