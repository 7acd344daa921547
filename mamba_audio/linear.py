"""8-bit linear quantisation, as SaShiMi (Goel et al. 2022) uses for the Beethoven data set.

The same per-clip scaling and class rounding as `mulaw`, without the companding:

    s = -1 + 2 (x - min) / (max - min + 1e-6)      (mulaw.minmax_scale: per clip, along the last axis)
    q = floor(((s + 1) / 2) * (256 - 0.01) + 0.005)

so the 256 classes are equally wide in amplitude. Decoding gives each class its lower edge on
[-1, 1): x = q / 128 - 1, so class 128 decodes to exactly 0 and is the silence class, as in `mulaw`.
A constant clip encodes to class 128 (silence), as in `mulaw`.
"""

from __future__ import annotations

import torch

from .mulaw import _EPSILON, N_CLASSES, SILENCE_CLASS, minmax_scale

__all__ = ["N_CLASSES", "SILENCE_CLASS", "decode", "encode"]


def encode(audio: torch.Tensor) -> torch.Tensor:
    """Waveform (..., L) float -> linear classes (..., L) int64 in [0, 255], scaled per clip."""
    unit = (minmax_scale(audio) + 1.0) / 2.0  # [0, 1]
    return (unit * (N_CLASSES - _EPSILON) + _EPSILON / 2).long().clamp_(0, N_CLASSES - 1)


def decode(classes: torch.Tensor) -> torch.Tensor:
    """Linear classes (..., L) int -> waveform (..., L) float32 in [-1, 1)."""
    return classes.float() / (N_CLASSES / 2) - 1.0
