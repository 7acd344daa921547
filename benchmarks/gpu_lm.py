"""Mamba LM training and decoding on one GPU, against mamba_ssm's numbers on an H200.

    python benchmarks/gpu_lm.py --out results.json
    python benchmarks/gpu_lm.py --only dna_d256_l8_L1M gen_130m_B1

Settings as the anchor file (shared/anchors/mamba_ssm_h200.json, "how"): float32 parameters,
bf16 autocast, AdamW step included, cross-entropy on random ids, median of 5 steps after 2
warm-ups; decoding: the 130M model in bf16, a 16-token prompt then 1000 sampled tokens, wall time
of the second call. mamba_ssm is not installed on the GPU machine, so its numbers (measured there
with those settings) are copied below and each result is printed with its ratio to them.
The *_ckpt run recomputes each mixer in backward (MambaConfig.checkpoint_mixer); the *_unfused run
sets Mamba.fused_inner = False (separate autograd ops for conv, projections and scan), the baseline
of the fused step (core/ops/mamba_inner.py) in the same run.
The *_chunked runs train one sequence of 2, 4 and 8 Mi tokens with exact gradients computed
chunk by chunk (core.chunked.chunked_backward), where one pass would not fit in memory.
--profile: after a training run's timing, one more step under torch.profiler; the GPU time per
kernel (top 30, grouped by name) goes into its result as "profile" - where the step's time goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from core.chunked import chunked_backward
from core.models import MambaConfig, MambaLM

# mamba_ssm 2.3.2.post1 on one H200, torch 2.11 (shared/anchors/mamba_ssm_h200.json)
ANCHOR = {
    "dna_d256_l8_L131072": {"tokens_per_s": 1733019, "peak_GiB": 23.89, "step_ms": 302.5},
    "dna_d256_l8_L1M": {"tokens_per_s": 1387545, "peak_GiB": 47.52, "step_ms": 755.7},
    "lm130m_L2048": {"tokens_per_s": 174777, "peak_GiB": 33.9, "step_ms": 187.5},
    "gen_130m_B1": {"tokens_per_s": 1228},
    "gen_130m_B64": {"tokens_per_s": 65384},
}
TRAIN = {  # name: (d_model, n_layer, vocab, batch, length, checkpoint_mixer)
    "dna_d256_l8_L131072": (256, 8, 16, 4, 2**17, False),
    "dna_d256_l8_L1M": (256, 8, 16, 1, 2**20, False),
    "dna_d256_l8_L1M_ckpt": (256, 8, 16, 1, 2**20, True),
    "dna_d256_l8_L1M_unfused": (256, 8, 16, 1, 2**20, False),
    "lm130m_L2048": (768, 24, 50277, 16, 2048, False),
}
GEN = {"gen_130m_B1": 1, "gen_130m_B64": 64}
# one sequence longer than memory allows in one pass: exact gradients chunk by chunk (core.chunked)
CHUNKED = {f"dna_d256_l8_L{2**k // 2**20}M_chunked": 2**k for k in (21, 22, 23)}
CHUNK_LENGTH = 2**19


def kernel_times(step, top=30) -> list:
    """[(kernel name, GPU ms, calls)] of one call of `step`, the largest first (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        gpu_us = getattr(event, "self_device_time_total", None)
        if gpu_us is None:  # older torch
            gpu_us = getattr(event, "self_cuda_time_total", 0)
        if gpu_us > 0:
            rows.append((event.key[:120], round(gpu_us / 1e3, 2), event.count))
    return sorted(rows, key=lambda r: -r[1])[:top]


def train_step_bench(
    d_model, n_layer, vocab, batch, length, checkpoint_mixer=False, steps=5, warmup=2, chunk_length=None,
    profile=False, fused_inner=True,
):  # fmt: skip
    torch.manual_seed(0)
    config = MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab, checkpoint_mixer=checkpoint_mixer)
    model = MambaLM(config).cuda()
    for module in model.modules():
        if hasattr(module, "fused_inner"):
            module.fused_inner = fused_inner
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, length + 1), device="cuda")
    times = []
    torch.cuda.reset_peak_memory_stats()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if chunk_length is None:
                loss = F.cross_entropy(model(ids[:, :-1]).float().flatten(0, 1), ids[:, 1:].flatten())
                loss.backward()
            else:
                loss = torch.tensor(chunked_backward(model, ids[:, :-1], ids[:, 1:], chunk_length))
        optimizer.step()
        return loss

    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    params = sum(p.numel() for p in model.parameters())
    extra = {"profile": kernel_times(step)} if profile else {}
    return {
        "step_ms": round(step_s * 1e3, 1),
        "tokens_per_s": round(batch * length / step_s),
        "peak_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "params_M": round(params / 1e6, 2),
        "loss": round(loss.item(), 3),
        **extra,
    }


def generate_bench(batch, prompt=16, new_tokens=1000):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=768, n_layer=24, vocab_size=50277)).cuda().to(torch.bfloat16).eval()
    ids = torch.randint(0, 50277, (batch, prompt), device="cuda")
    result = {}
    for graph in (True, False):
        for _ in range(2):  # the second call is timed, as in the anchor
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(ids, new_tokens, top_k=50, top_p=0.9, cuda_graph=graph)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        key = "cuda_graph" if graph else "no_graph"
        result[key] = {"s": round(seconds, 3), "tokens_per_s": round(batch * new_tokens / seconds)}
    assert out.shape == (batch, prompt + new_tokens)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="names of the runs to do (default: all)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--profile", action="store_true", help="add GPU time per kernel of one training step")
    parser.add_argument(
        "--scan-variants",
        default="[]",
        help='JSON list of core.ops.triton_scan settings (e.g. [{"CHUNK": 64}]): after the runs, time '
        "dna_d256_l8_L1M again under each, as runs named dna_d256_l8_L1M+SETTINGS",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_lm.py needs a CUDA GPU")
    wanted = lambda name: args.only is None or name in args.only
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": {}}

    def record(name, r):
        results["runs"][name] = r
        print(name, r, file=sys.stderr, flush=True)
        if args.out:  # after every run, so a run cut short still leaves what it measured
            with open(args.out, "w") as f:
                f.write(json.dumps(results) + "\n")
        torch.cuda.empty_cache()

    # the anchor comparisons first, then the runs that go beyond them
    order = ["dna_d256_l8_L131072", "dna_d256_l8_L1M", "dna_d256_l8_L1M_unfused", "gen_130m_B1", "gen_130m_B64",
             "lm130m_L2048", "dna_d256_l8_L1M_ckpt", *CHUNKED]  # fmt: skip
    for name in filter(wanted, order):
        if name in TRAIN:
            r = train_step_bench(*TRAIN[name], profile=args.profile, fused_inner=not name.endswith("_unfused"))
            anchor = ANCHOR[name.removesuffix("_ckpt").removesuffix("_unfused")]
            r["tokens_per_s_vs_mamba_ssm"] = round(r["tokens_per_s"] / anchor["tokens_per_s"], 3)
            r["peak_memory_vs_mamba_ssm"] = round(r["peak_GiB"] / anchor["peak_GiB"], 3)
        elif name in GEN:
            r = generate_bench(GEN[name])
            r["cuda_graph"]["vs_mamba_ssm"] = round(r["cuda_graph"]["tokens_per_s"] / ANCHOR[name]["tokens_per_s"], 3)
        else:
            r = train_step_bench(256, 8, 16, 1, CHUNKED[name], steps=2, warmup=1, chunk_length=CHUNK_LENGTH)
            r["chunk_length"] = CHUNK_LENGTH
        record(name, r)
        for kernel, ms, calls in r.get("profile", []):
            print(f"  {ms:9.2f} ms {calls:6d}x  {kernel}", file=sys.stderr)
    from core.ops import triton_scan

    base = "dna_d256_l8_L1M"
    for variant in json.loads(args.scan_variants):
        saved = {k: getattr(triton_scan, k) for k in variant}
        for k, v in variant.items():
            setattr(triton_scan, k, v)
        r = train_step_bench(*TRAIN[base])
        r["tokens_per_s_vs_mamba_ssm"] = round(r["tokens_per_s"] / ANCHOR[base]["tokens_per_s"], 3)
        r["peak_memory_vs_mamba_ssm"] = round(r["peak_GiB"] / ANCHOR[base]["peak_GiB"], 3)
        record(f"{base}+{json.dumps(variant, sort_keys=True)}", r)
        for k, v in saved.items():
            setattr(triton_scan, k, v)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
