"""Triton selective scan on one GPU against mamba_ssm's CUDA kernel (anchor numbers), same settings.

    python benchmarks/gpu_scan.py --out benchmarks/results/h200.json
    python benchmarks/gpu_scan.py --sweep          # also time a few chunk / warp / occupancy variants

mamba_ssm is not installed on the benchmark machine, so its times come from the anchor file
measured on the same kind of GPU (NVIDIA H200, torch 2.11) and are copied below. The settings
reproduce the anchor's "how": selective_scan(u, delta, A, B, C, D, z, delta_bias,
delta_softplus=True); u, delta, z, B, C bf16 random normal (delta scaled by 0.5); B and C shaped
(batch, 1, d_state, length); A = -(1..16) float32 (dim, 16); D ones; delta_bias -4.0;
fwd+bwd = forward plus torch.autograd.grad w.r.t. all 8 inputs; CUDA events, median of 10
after 3 warm-ups. The device-to-device copy bandwidth (bytes read + written) is measured in the
same run; bytes are counted as the anchor counts them: forward reads u, delta, z and writes y
(8 bytes per element in bf16); forward+backward adds the backward's reads of u, delta, z, dy and
writes of du, ddelta, dz (22 bytes per element in all). B and C are under 1% at one group.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

# ../shared/anchors/mamba_ssm_h200.json: mamba_ssm 2.3.2.post1 on one NVIDIA H200, torch 2.11.0+cu130
ANCHOR = {
    "source": "mamba_ssm 2.3.2.post1 selective_scan_fn, NVIDIA H200, torch 2.11.0+cu130, measured 2026-11-28",
    "copy_TBps_rw": 4.22,
    "scan": {
        "lm_B8_D2048_L4096": dict(batch=8, dim=2048, length=4096, fwd_ms=1.262, fwdbwd_ms=5.869),
        "audio_B4_D1536_L16384": dict(batch=4, dim=1536, length=16384, fwd_ms=2.275, fwdbwd_ms=9.533),
        "dna_B1_D512_L1M": dict(batch=1, dim=512, length=1 << 20, fwd_ms=11.561, fwdbwd_ms=72.774),
        "dna_B2_D256_L1M": dict(batch=2, dim=256, length=1 << 20, fwd_ms=12.012, fwdbwd_ms=72.174),
    },
}
D_STATE = 16
FWD_BYTES, FWDBWD_BYTES = 8, 22  # per (batch, dim, length) element, bf16
# the module settings of core.ops.triton_scan recorded with each result: the plan's (_PLAN_SETTINGS,
# so a new planning knob is recorded without a change here) and these, which pick kernels and launches
KERNEL_SETTINGS = (
    "NUM_WARPS",
    "BWD_NUM_WARPS",
    "FWD_SEG_KERNEL",
    "FWD_MAXNREG",
    "BWD_MAXNREG",
    "BWD_KERNEL",
    "BWD_SEG_KERNEL",
    "BWD_LOAD_RUN",
)


def cuda_time_ms(fn, warmup=3, reps=10) -> float:
    """Median of `reps` CUDA-event timings after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_TBps() -> float:
    """Device-to-device copy of 2 GiB, bytes read + written per second."""
    src = torch.randn(1 << 29, device="cuda")  # 2 GiB of float32
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), warmup=3, reps=20)
    return 2 * (1 << 31) / (ms * 1e-3) / 1e12


def make_inputs(batch, dim, length, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device="cuda", generator=g)).to(torch.bfloat16).requires_grad_(True)

    A = -torch.arange(1, D_STATE + 1, dtype=torch.float32, device="cuda").repeat(dim, 1)  # (dim, 16)
    return dict(
        u=randn(batch, dim, length),
        delta=randn(batch, dim, length, scale=0.5),
        A=A.requires_grad_(True),
        B=randn(batch, 1, D_STATE, length),
        C=randn(batch, 1, D_STATE, length),
        D=torch.ones(dim, device="cuda", requires_grad=True),
        z=randn(batch, dim, length),
        delta_bias=torch.full((dim,), -4.0, device="cuda", requires_grad=True),
    )


def scan_calls(batch, dim, length):
    """The two timed calls on the anchor's inputs: the forward (no autograd) and forward+backward
    (gradients of all 8 inputs)."""
    from core.ops import selective_scan

    x = make_inputs(batch, dim, length)
    leaves = list(x.values())
    dy = torch.randn(batch, dim, length, device="cuda", dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            return selective_scan(**x, delta_softplus=True, backend="triton")

    def fwdbwd():
        y = selective_scan(**x, delta_softplus=True, backend="triton")
        return torch.autograd.grad(y, leaves, dy)

    return fwd, fwdbwd


def time_shape(batch, dim, length, warmup=3, reps=10):
    fwd, fwdbwd = scan_calls(batch, dim, length)
    fwd_ms = cuda_time_ms(fwd, warmup, reps)
    fwdbwd_ms = cuda_time_ms(fwdbwd, warmup, reps)
    return fwd_ms, fwdbwd_ms, torch.cuda.max_memory_allocated() / 2**30


def profile_shape(batch, dim, length, reps=5) -> str:
    """CUDA time per kernel over `reps` forward+backward calls (after warm-up), as a table."""
    from torch.profiler import ProfilerActivity, profile

    _, fwdbwd = scan_calls(batch, dim, length)
    for _ in range(3):
        fwdbwd()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fwdbwd()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60)
    # one more call's GPU timeline: each kernel's start, length and the idle time before it (the GPU
    # waiting for the host), from the call's first kernel
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fwdbwd()
        torch.cuda.synchronize()
    kernels = sorted(
        (e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda e: e.time_range.start
    )
    t0 = prev_end = kernels[0].time_range.start
    lines = []
    for e in kernels:
        start, end = e.time_range.start, e.time_range.end
        lines.append(
            f"{start - t0:9.1f} us  {end - start:8.1f} us  idle before {start - prev_end:7.1f} us  {e.name[:60]}"
        )
        prev_end = end
    return table + "\none call's GPU timeline (us from its first kernel):\n" + "\n".join(lines)


def overhead_shape(batch, dim, length, reps=20) -> dict:
    """Where the host's time goes: per call, the host time to queue the forward (and forward+backward)
    while the GPU is busy, and the GPU time alone (events recorded behind a sleeping kernel, so the
    calls' kernels are already queued when the clock starts). The usual timing minus the GPU time is
    what the GPU spends waiting for the host."""
    fwd, fwdbwd = scan_calls(batch, dim, length)
    out = {}
    for name, fn in (("fwd", fwd), ("fwdbwd", fwdbwd)):
        for _ in range(3):
            fn()
        host, gpu = [], []
        for _ in range(reps):
            torch.cuda.synchronize()
            torch.cuda._sleep(50_000_000)  # ~25 ms of GPU work ahead of the call
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1e3)
            end.record()
            end.synchronize()
            gpu.append(start.elapsed_time(end))
        out[f"{name}_host_ms"] = round(statistics.median(host), 3)
        out[f"{name}_gpu_ms"] = round(statistics.median(gpu), 3)
        out[f"{name}_timed_ms"] = round(cuda_time_ms(fn), 3)
    return out


def run_sweep(shapes, variants):
    """Time fwd+bwd under a few plans (module settings of core.ops.triton_scan) against the defaults."""
    from core.ops import triton_scan as ts

    # the first sweeps (benchmarks/results/README.md) settled chunk 32, one warp per program,
    # the segment rules, the backward's register cap, the step-by-step forward and (session 4) its
    # step-by-step segment pass; the default variants time the older kernels against the defaults
    rows = []
    for variant in variants:
        saved = {k: getattr(ts, k) for k in variant}
        for k, v in variant.items():
            setattr(ts, k, v)
        for name, s in shapes.items():
            try:
                fwd_ms, fwdbwd_ms, _ = time_shape(s["batch"], s["dim"], s["length"])
            except Exception as err:  # e.g. a Triton without the maxnreg option: record, go on
                print(f"sweep {variant} {name}: failed: {err!r}"[:300], file=sys.stderr, flush=True)
                fwd_ms = fwdbwd_ms = float("inf")
            torch.cuda.empty_cache()
            rows.append(dict(settings=variant, shape=name, fwd_ms=round(fwd_ms, 3), fwdbwd_ms=round(fwdbwd_ms, 3)))
            print(
                f"sweep {variant or 'defaults'} {name}: fwd {fwd_ms:.3f} ms  fwd+bwd {fwdbwd_ms:.3f} ms",
                file=sys.stderr,
                flush=True,
            )
        for k, v in saved.items():
            setattr(ts, k, v)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON result here")
    parser.add_argument("--sweep", action="store_true", help="first time plan variants on --sweep-shapes")
    parser.add_argument(
        "--pick-best", action="store_true", help="then run the table with the sweep's fastest variant (total fwd+bwd)"
    )
    parser.add_argument("--shapes", default=",".join(ANCHOR["scan"]), help="comma-separated anchor shape names")
    parser.add_argument(
        "--sweep-variants",
        default='[{}, {"FWD_SEG_KERNEL": "sum"}, {"FWD_KERNEL": "scan"}]',
        help="JSON list of core.ops.triton_scan settings to time",
    )
    parser.add_argument("--sweep-shapes", default="lm_B8_D2048_L4096,dna_B1_D512_L1M", help="shapes for --sweep")
    parser.add_argument("--set", default="{}", help="JSON dict of core.ops.triton_scan settings to apply first")
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="print each shape's host time per call and GPU time alone (see overhead_shape) and stop",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print each shape's forward+backward split by kernel (torch.profiler, CUDA time) and stop",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="run each shape's forward+backward twice, untimed, and stop: for a profiler (ncu -k ...)",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_scan.py needs a CUDA GPU")
    from core.ops import triton_scan as ts

    for k, v in json.loads(args.set).items():
        setattr(ts, k, v)
    shapes = {name: ANCHOR["scan"][name] for name in args.shapes.split(",")}
    if args.overhead:
        for name, s in shapes.items():
            print(json.dumps({"shape": name, **overhead_shape(s["batch"], s["dim"], s["length"])}))
        return
    if args.profile:
        for name, s in shapes.items():
            print(f"== {name}")
            print(profile_shape(s["batch"], s["dim"], s["length"]))
        return
    if args.once:
        for s in shapes.values():
            time_shape(s["batch"], s["dim"], s["length"], warmup=1, reps=1)
        return
    sweep, chosen = None, {}
    if args.sweep:
        shapes = {name: ANCHOR["scan"][name] for name in args.sweep_shapes.split(",")}
        sweep = run_sweep(shapes, json.loads(args.sweep_variants))
        if args.pick_best:
            totals = {}
            for row in sweep:
                key = json.dumps(row["settings"], sort_keys=True)
                totals[key] = totals.get(key, 0.0) + row["fwdbwd_ms"]
            chosen = json.loads(min(totals, key=totals.get))
            for k, v in chosen.items():
                setattr(ts, k, v)
            print(f"picked {chosen or 'defaults'}", file=sys.stderr, flush=True)
    copy_TBps = copy_bandwidth_TBps()
    results = {}
    for name, s in shapes.items():
        torch.cuda.reset_peak_memory_stats()
        fwd_ms, fwdbwd_ms, peak = time_shape(s["batch"], s["dim"], s["length"])
        torch.cuda.empty_cache()
        elems = s["batch"] * s["dim"] * s["length"]
        results[name] = dict(
            fwd_ms=round(fwd_ms, 3),
            fwdbwd_ms=round(fwdbwd_ms, 3),
            fwd_Melem_per_ms=round(elems / fwd_ms / 1e6, 2),
            fwdbwd_Melem_per_ms=round(elems / fwdbwd_ms / 1e6, 2),
            fwd_speedup_vs_mamba_ssm=round(s["fwd_ms"] / fwd_ms, 3),
            fwdbwd_speedup_vs_mamba_ssm=round(s["fwdbwd_ms"] / fwdbwd_ms, 3),
            fwd_GBps=round(FWD_BYTES * elems / fwd_ms / 1e6, 1),
            fwdbwd_GBps=round(FWDBWD_BYTES * elems / fwdbwd_ms / 1e6, 1),
            fwd_copy_bw_fraction=round(FWD_BYTES * elems / fwd_ms / 1e9 / copy_TBps, 3),
            fwdbwd_copy_bw_fraction=round(FWDBWD_BYTES * elems / fwdbwd_ms / 1e9 / copy_TBps, 3),
            peak_GiB=round(peak, 2),
            mamba_ssm_fwd_ms=s["fwd_ms"],
            mamba_ssm_fwdbwd_ms=s["fwdbwd_ms"],
        )
        print(f"{name}: fwd {fwd_ms:.3f} ms, fwd+bwd {fwdbwd_ms:.3f} ms", file=sys.stderr, flush=True)
    out = dict(
        what="core.ops.selective_scan(backend='triton') vs mamba_ssm's selective_scan_fn (anchor), one GPU",
        command="python benchmarks/gpu_scan.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        gpu=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=__import__("triton").__version__,
        settings={k: getattr(ts, k) for k in (*ts._PLAN_SETTINGS, *KERNEL_SETTINGS)},
        how=__doc__.split("\n\n")[2].replace("\n", " "),
        anchor=ANCHOR["source"],
        copy_TBps_rw=round(copy_TBps, 3),
        anchor_copy_TBps_rw=ANCHOR["copy_TBps_rw"],
        scan=results,
    )
    if sweep is not None:
        out["sweep"] = sweep
        out["picked"] = chosen
    header = (
        f"{'shape':24} {'fwd ms':>8} {'x mamba':>8} {'f+b ms':>8} {'x mamba':>8} {'Melem/ms':>9} "
        f"{'fwd GB/s':>9} {'of copy':>8}"
    )
    print(f"copy bandwidth {copy_TBps:.2f} TB/s (read + write; anchor's machine {ANCHOR['copy_TBps_rw']})")
    print(header)
    for name, r in results.items():
        print(
            f"{name:24} {r['fwd_ms']:8.3f} {r['fwd_speedup_vs_mamba_ssm']:8.2f} {r['fwdbwd_ms']:8.3f} "
            f"{r['fwdbwd_speedup_vs_mamba_ssm']:8.2f} {r['fwdbwd_Melem_per_ms']:9.2f} {r['fwd_GBps']:9.1f} "
            f"{r['fwd_copy_bw_fraction']:8.3f}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps({k: v["fwdbwd_speedup_vs_mamba_ssm"] for k, v in results.items()}))


if __name__ == "__main__":
    main()
