"""Fused CPU selective scan vs the sequential torch loop, measured in the same run.

    python benchmarks/cpu_scan.py                   # batch 1, dim 512, lengths 2048 and 8192, d_state 16
    python benchmarks/cpu_scan.py --lengths 2048 --repeats 5

Baseline: the loop of Hugging Face's `MambaMixer.slow_forward` (exp(delta*A) and delta*B*u for the
whole sequence, then one state update per position), written with `unbind` so its backward is
linear in the length. Also mambapy's parallel scan (`mambapy.pscan`) when that package is installed.
Arguments as in a Mamba layer: softplus(delta + bias), D, z gating. Prints a table and, last, one
JSON line with the times (ms) and ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from core.ops import selective_scan


def loop_scan(u, delta, A, B, C, D, z, delta_bias):
    """HF slow_forward: u, delta, z (B, D, L); A (D, N); B, C (B, N, L)."""
    dt = F.softplus(delta + delta_bias[:, None])
    deltaA = torch.exp(dt[..., None] * A[None, :, None, :])  # (B D L N)
    deltaB_u = dt[..., None] * B.transpose(1, 2)[:, None] * u[..., None]  # (B D L N)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for a_t, bu_t, c_t in zip(deltaA.unbind(2), deltaB_u.unbind(2), C.unbind(2)):
        h = a_t * h + bu_t
        ys.append(torch.matmul(h, c_t.unsqueeze(-1))[..., 0])  # (B D)
    y = torch.stack(ys, dim=-1) + u * D[:, None]
    return y * F.silu(z)


def mambapy_scan(u, delta, A, B, C, D, z, delta_bias):
    from mambapy.pscan import pscan  # optional peer, measured only when installed

    dt = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (B L D)
    deltaA = torch.exp(dt[..., None] * A)  # (B L D N)
    deltaB_u = dt[..., None] * B.transpose(1, 2)[:, :, None] * u.transpose(1, 2)[..., None]
    hs = pscan(deltaA, deltaB_u)  # (B L D N)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)  # (B D L)
    return (y + u * D[:, None]) * F.silu(z)


def fused_scan(u, delta, A, B, C, D, z, delta_bias):
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, backend="cpu")


def make_inputs(batch, dim, length, d_state, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=g)
    delta = 0.5 * torch.randn(batch, dim, length, generator=g)
    A = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1)
    B = torch.randn(batch, d_state, length, generator=g)
    C = torch.randn(batch, d_state, length, generator=g)
    D = torch.ones(dim)
    z = torch.randn(batch, dim, length, generator=g)
    delta_bias = torch.full((dim,), -4.0)
    return [u, delta, A, B, C, D, z, delta_bias]


def time_ms(fn, repeats):
    fn()  # warm-up (and the kernel's one-off compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(impl, inputs, repeats):
    def fwd():
        with torch.no_grad():
            impl(*inputs)

    def fwdbwd():
        xs = [t.detach().requires_grad_() for t in inputs]
        y = impl(*xs)
        torch.autograd.grad(y.sum(), xs)

    return time_ms(fwd, repeats), time_ms(fwdbwd, repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    impls = {"loop": loop_scan, "fused": fused_scan}
    try:
        import mambapy.pscan  # noqa: F401

        impls["mambapy"] = mambapy_scan
    except ImportError:
        print("mambapy not installed: its parallel scan is not measured", file=sys.stderr)

    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "shapes": {}}
    print(f"{'shape':<22}{'impl':<9}{'fwd ms':>10}{'fwd+bwd ms':>12}{'fwd x':>8}{'f+b x':>8}")
    for length in args.lengths:
        inputs = make_inputs(args.batch, args.dim, length, args.d_state)
        # same maths check before timing, so a fast wrong kernel cannot report a ratio
        with torch.no_grad():
            ref = loop_scan(*inputs)
            err = (fused_scan(*inputs) - ref).abs().max().item() / ref.abs().max().item()
        shape = f"{args.batch}x{args.dim}x{length}"
        row = {"fused_vs_loop_rel_err": err}
        for name, impl in impls.items():
            row[name] = dict(zip(("fwd_ms", "fwdbwd_ms"), measure(impl, inputs, args.repeats)))
        for name in impls:
            fwd_x = row["loop"]["fwd_ms"] / row[name]["fwd_ms"]
            fb_x = row["loop"]["fwdbwd_ms"] / row[name]["fwdbwd_ms"]
            row[name].update(fwd_speedup_vs_loop=round(fwd_x, 2), fwdbwd_speedup_vs_loop=round(fb_x, 2))
            print(
                f"{shape:<22}{name:<9}{row[name]['fwd_ms']:>10.1f}{row[name]['fwdbwd_ms']:>12.1f}"
                f"{fwd_x:>8.1f}{fb_x:>8.1f}"
            )
        results["shapes"][shape] = row
    print(json.dumps(results))


if __name__ == "__main__":
    main()
