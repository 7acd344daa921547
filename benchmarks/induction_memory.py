"""Where a trained induction-heads model keeps the answer: per layer, the channels that forget least
over noise tokens (benchmarks/results/README.md, session 6).

    python benchmarks/induction_memory.py runs/induction/model --length 8192 --top 6

Runs the model on induction sequences of --length (pipelines.synthetic's generator, seeded) and
records, at each layer's scan, the step sizes it uses: dt = softplus(delta + delta_bias), (B, E, L).
Noise positions are those more than 8 steps after a trigger or 1 before it (outside every conv
window that sees one). For each channel its slowest state keeps exp(-65536 * mean(dt) * |A|) of
its contents over 65,536 noise tokens: a model that answers at 2^20 needs a few channels near 1.
Prints one JSON line: per layer, the --top channels by that retention, with their dt on noise.
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager

import torch
import torch.nn.functional as F

import core.modules.mamba as mamba_module
from core.models import MambaLM
from pipelines.synthetic import induction_batch

NOISE_STEPS = 65536


@contextmanager
def scan_inputs():
    """Record (delta after bias and softplus (B, E, L), A (E, N)) of every selective_scan the Mamba
    blocks call inside the block: the model's own path, no second copy of its maths."""
    calls, real = [], mamba_module.selective_scan

    def recording(u, delta, A, *args, delta_bias=None, delta_softplus=False, **kwargs):
        dt = delta.float() + (0 if delta_bias is None else delta_bias.float()[:, None])
        calls.append((F.softplus(dt) if delta_softplus else dt, A.float()))
        return real(u, delta, A, *args, delta_bias=delta_bias, delta_softplus=delta_softplus, **kwargs)

    mamba_module.selective_scan = recording
    try:
        yield calls
    finally:
        mamba_module.selective_scan = real


def noise_mask(ids: torch.Tensor, trigger: int) -> torch.Tensor:
    """(B, L) True where no trigger is within 1 step ahead or 8 behind."""
    near = torch.zeros_like(ids, dtype=torch.bool)
    rows, cols = (ids == trigger).nonzero(as_tuple=True)
    for k in range(-1, 9):
        near[rows, (cols + k).clamp(0, ids.shape[1] - 1)] = True
    return ~near


def memory_report(model: MambaLM, length: int, batch: int, top: int, seed: int = 5) -> list[dict]:
    vocab = model.config.vocab_size
    ids, _ = induction_batch(batch, length, vocab, torch.Generator().manual_seed(seed))
    noise = noise_mask(ids, vocab - 1)
    with torch.no_grad(), scan_inputs() as calls:
        model(ids)
    layers = []
    for i, (dt, A) in enumerate(calls):
        dt_noise = dt.transpose(1, 2)[noise]  # (positions, E)
        slowest = (dt_noise.mean(0)[:, None] * A.abs()).min(1).values  # (E,) decay rate of each channel's slowest state
        retention = torch.exp(-NOISE_STEPS * slowest)
        median = dt_noise.median(0).values
        order = retention.argsort(descending=True)[:top].tolist()
        layers.append({
            "layer": i,
            "channels": [{"channel": j, "retention_65536": retention[j].item(), "dt_noise_median": median[j].item(),
                          "dt_noise_max": dt_noise[:, j].max().item()} for j in order],
        })  # fmt: skip
    return layers


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model folder pipelines.synthetic saved (<out>/model)")
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--top", type=int, default=6)
    args = p.parse_args(argv)
    model = MambaLM.from_pretrained(args.model).eval()
    layers = memory_report(model, args.length, args.batch, args.top)
    result = {"model": args.model, "length": args.length, "layers": layers}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
