"""Bytes a training step keeps for backward per token, counted on CPU, and the projection to a
1 x 2^20-token step of the 3.5M DNA LM (8 layers, d_model 256) that benchmarks/gpu_lm.py times.

    TRITON_INTERPRET=1 python benchmarks/activation_memory.py

Saved tensors are counted with torch.autograd.graph.saved_tensors_hooks (each storage once) under
bf16 autocast, on the Triton backend in the interpreter (the code path CUDA training takes), with
the fused Mamba step (core/ops/mamba_inner.py) on and off. Parameters are not counted. The
GPU peak adds parameters, AdamW state, gradients and the backward's temporaries on top.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from core.models import MambaConfig, MambaLM  # noqa: E402


def kept_bytes(model: MambaLM, ids: torch.Tensor) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    return sum(seen.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=2048, help="tokens counted (the count is linear in it)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    config = MambaConfig(d_model=256, n_layer=8, vocab_size=16, backend="triton")
    model = MambaLM(config)
    ids = torch.randint(0, 16, (1, args.length + 1))
    out = {"length": args.length}
    for fused in (False, True):
        for module in model.modules():
            if hasattr(module, "fused_inner"):
                module.fused_inner = fused
        per_token = kept_bytes(model, ids) / args.length
        out["fused" if fused else "separate"] = {
            "bytes_per_token": round(per_token),
            "bytes_per_token_per_layer": round(per_token / config.n_layer),
            "GiB_at_2^20_tokens": round(per_token * 2**20 / 2**30, 1),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
