"""8-bit mu-law quantisation exactly as SaShiMi (Goel et al. 2022) trains on raw audio.

Per clip: min-max scale to [-1, 1] (each clip uses its own min and max, with SaShiMi's 1e-6 in
the denominator), mu-law compand with mu = 255, shift to [0, 1] and quantise linearly to 256
classes with SaShiMi's epsilon = 0.01 guard so that 1.0 still lands in class 255:

    s = -1 + 2 (x - min) / (max - min + 1e-6)
    e = sign(s) * log1p(mu |s + 1e-8|) / log1p(mu)
    q = floor(((e + 1) / 2) * (256 - 0.01) + 0.005)

Decoding inverts the last two steps: e = q / 128 - 1, x = sign(e) ((1 + mu)^|e| - 1) / mu.
Class 128 decodes to exactly 0 and is the "silence" class used to start generation.

One deliberate difference: a constant clip (e.g. digital silence) has max == min; SaShiMi's
formula would send every sample to -1 (class 0), here it goes to 0 (class 128, silence) so a
silent clip stays silent. No clip ever produces NaN.
"""

from __future__ import annotations

import torch

BITS = 8
N_CLASSES = 1 << BITS  # 256
MU = N_CLASSES - 1  # 255
SILENCE_CLASS = N_CLASSES // 2  # 128 decodes to 0.0
_EPSILON = 0.01  # SaShiMi's guard: keeps the top of [0, 1] inside class 255


def minmax_scale(audio: torch.Tensor) -> torch.Tensor:
    """Scale each clip along the last axis to [-1, 1]; audio (..., L) -> (..., L) float32."""
    audio = audio.float()
    low = audio.amin(dim=-1, keepdim=True)
    high = audio.amax(dim=-1, keepdim=True)
    scaled = -1.0 + 2.0 * (audio - low) / (high - low + 1e-6)
    # constant clip: report silence instead of the -1 the formula gives (see the module docstring)
    return torch.where(high > low, scaled, torch.zeros_like(scaled))


def encode(audio: torch.Tensor) -> torch.Tensor:
    """Waveform (..., L) float -> mu-law classes (..., L) int64 in [0, 255], scaled per clip."""
    s = minmax_scale(audio)
    e = torch.sign(s) * torch.log1p(MU * torch.abs(s + 1e-8)) / torch.log1p(torch.tensor(float(MU)))
    unit = (e + 1.0) / 2.0  # [0, 1]
    return (unit * (N_CLASSES - _EPSILON) + _EPSILON / 2).long().clamp_(0, N_CLASSES - 1)


def decode(classes: torch.Tensor) -> torch.Tensor:
    """Mu-law classes (..., L) int -> waveform (..., L) float32 in [-1, 1]."""
    e = classes.float() / (N_CLASSES / 2) - 1.0
    return torch.sign(e) * ((1.0 + MU) ** torch.abs(e) - 1.0) / MU
