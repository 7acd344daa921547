"""Compile the Triton scan kernels for an H100/H200 (sm_90) without a GPU and count what they issue.

The scan kernels are bound by instruction issue (benchmarks/results/README.md), so the SASS of the
per-channel step is the number to drive down between device runs. Triton compiles for a target
GPU without one present; its bundled ptxas and cuobjdump give registers, spills and SASS.

    python benchmarks/sass_stats.py                      # forward and backward at the first anchor shape
    python benchmarks/sass_stats.py --kernel bwd --dump  # also print the backward's SASS

Prints one JSON line per kernel: registers, spill bytes, SASS instructions in total and in the
innermost loop body, and counts of the instruction classes that matter here (shuffles, MUFU
exp/rcp, FMA, global loads/stores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # as the device runs set it

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.ops import triton_scan as ts  # noqa: E402

# pointer arguments read or written in the inputs' dtype (bf16 in the anchor's settings); every
# other pointer is float32 (parameters, states, partial sums, gradients of parameters)
BF16_POINTERS = {"u_ptr", "delta_ptr", "z_ptr", "dy_ptr", "du_ptr", "ddelta_ptr", "dz_ptr", "y_ptr", "B_ptr", "C_ptr"}
DIVISIBLE_INTS = ("dim", "length", "d_state", "bc_len", "zero", "b_group_dim", "c_group_dim")
FP32_BC = {
    "_selective_scan_fwd_seq_kernel",
    "_segment_state_fwd_seq_kernel",
    "_segment_state_bwd_seq_kernel",
    "_selective_scan_bwd_seq_kernel",
}  # kernels whose launcher converts B and C to float32 first
CLASSES = {
    "shuffle": r"^SHFL",
    "mufu": r"^MUFU",
    "fma": r"^(FFMA|FMUL|FADD|FSEL|FMNMX)",
    "int": r"^(IMAD|IADD3|LEA|ISETP|SHF(?!L)|LOP3|IMNMX)",  # SHF, not SHFL (a shuffle)
    "load_global": r"^LDG",
    "store_global": r"^STG",
    "local (spills)": r"^(LDL|STL)",
    "shared": r"^(LDS|STS)",
    "barrier": r"^BAR",
    "branch": r"^(BRA|BSYNC|BSSY|WARPSYNC)",
}


def signature(kernel, constexprs: dict) -> dict:
    sig = {}
    for param in kernel.params:
        if param.is_constexpr or param.name in constexprs:
            sig[param.name] = "constexpr"
        elif param.name.endswith("_ptr"):
            bf16 = param.name in BF16_POINTERS and not (
                kernel.fn.__name__ in FP32_BC and param.name in ("B_ptr", "C_ptr")
            )
            sig[param.name] = "*bf16" if bf16 else "*fp32"
        else:
            sig[param.name] = "i32"  # (`zero` too: a launch passes 0, which Triton does not specialise)
    return sig


def compile_sm90(kernel, constexprs: dict, num_warps: int, maxnreg: int | None):
    options = {"num_warps": num_warps, **({"maxnreg": maxnreg} if maxnreg else {})}
    sig = signature(kernel, constexprs)
    # as a real launch specialises them: torch allocations are 16-byte aligned (vector loads)
    aligned = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(sig.values()) if kind.startswith("*")}
    # and so are these integers at the anchor shapes (Triton specialises multiples of 16; 0 is one)
    names = list(sig)
    aligned.update({(names.index(k),): [["tt.divisibility", 16]] for k in DIVISIBLE_INTS if k in names})
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=aligned)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def sass_of(cubin: bytes) -> tuple[str, str]:
    """(SASS text, resource usage text) from the cubin, with the cuobjdump Triton ships."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return sass, res


def instructions(sass: str) -> list[tuple[int, str]]:
    """(address, opcode line) of every instruction."""
    out = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2) + m.group(3)))
    return out


def innermost_loop(instrs: list[tuple[int, str]]) -> list[str]:
    """The body of the shortest backward branch (a loop) that contains no other backward branch."""
    best = None
    for addr, text in instrs:
        m = re.match(r"BRA\S*\s+.*?`?\(?\.?L?_?x?_?(\w+)?\)?.*?0x([0-9a-f]+)", text)
        target = None
        if m:
            target = int(m.group(2), 16)
        if target is not None and target < addr:
            body = [t for a, t in instrs if target <= a <= addr]
            if best is None or len(body) < len(best):
                best = body
    return best or []


def stats(
    name: str, kernel, constexprs: dict, num_warps: int, maxnreg: int | None, dump: bool, ttgir: bool = False
) -> dict:
    compiled = compile_sm90(kernel, constexprs, num_warps, maxnreg)
    if ttgir:
        print(compiled.asm["ttgir"], file=sys.stderr)
    sass, res = sass_of(compiled.asm["cubin"])
    if dump:
        print(sass, file=sys.stderr)
    instrs = instructions(sass)
    regs = re.search(r"REG:(\d+)", res)
    stack = re.search(r"STACK:(\d+)", res)
    loop = innermost_loop(instrs)
    count = lambda lines: {k: sum(bool(re.match(p, t)) for t in lines) for k, p in CLASSES.items()}
    return {
        "kernel": name,
        "constexprs": {k: v for k, v in constexprs.items() if not isinstance(v, bool) or v},
        "num_warps": num_warps,
        "maxnreg": maxnreg,
        "registers": int(regs.group(1)) if regs else None,
        "stack_bytes": int(stack.group(1)) if stack else None,
        "sass_instructions": len(instrs),
        "by_class": count([t for _, t in instrs]),
        "innermost_loop_instructions": len(loop),
        "innermost_loop_by_class": count(loop),
        "top_opcodes": Counter(t.split()[0].split(".")[0] for _, t in instrs).most_common(8),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="8x2048x4096", help="B x D x L (d_state 16), picks the plan's block sizes")
    kernels = ["fwd", "fwdseq", "seg", "segseq", "segbwd", "segbwdseq", "bwd", "bwdseq", "both"]
    p.add_argument("--kernel", choices=kernels, default="both")
    p.add_argument("--maxnreg", type=int, default=None, help="register cap (ptx .maxnreg)")
    p.add_argument("--dk", type=int, default=None, help="channels per program (default: the plan's)")
    p.add_argument("--warps", type=int, default=None, help="warps per program (default: the module's)")
    p.add_argument("--ttgir", action="store_true", help="print the Triton GPU IR (layouts) to stderr")
    p.add_argument("--dump", action="store_true", help="print the SASS to stderr")
    args = p.parse_args(argv)
    batch, dim, length = (int(x) for x in args.shape.lower().split("x"))
    plan = ts.plan_scan(batch, dim, length, 16, dim, True, n_sm=132)
    common = dict(T=plan.chunk, NP=16, B_CONST=False, C_CONST=False, HAS_D=True, HAS_Z=True, HAS_BIAS=True,
                  SOFTPLUS=True, HAS_H0=False, HAS_SEQ=False, IS_F64=False)  # fmt: skip
    lane = {**common, "DK": 32 * ts.LANE_WARPS, "FAST_EXP": True, "EVEN_T": True}  # one channel per lane
    runs = []
    if args.kernel in ("fwd", "both"):
        runs.append(("fwd", ts._selective_scan_fwd_kernel, {**common, "DK": plan.fwd_block}, ts.NUM_WARPS))
    if args.kernel == "seg":
        runs.append(("seg", ts._segment_state_fwd_kernel, {**common, "DK": plan.fwd_block, "T": 4 * plan.chunk}, 1))
    if args.kernel == "segseq":
        runs.append(("segseq", ts._segment_state_fwd_seq_kernel, lane, ts.LANE_WARPS))
    if args.kernel == "segbwd":
        seg = {**common, "DK": plan.bwd_block, "T": 4 * plan.chunk}
        runs.append(("segbwd", ts._segment_state_bwd_kernel, seg, ts.BWD_NUM_WARPS))
    if args.kernel == "segbwdseq":
        runs.append(("segbwdseq", ts._segment_state_bwd_seq_kernel, lane, ts.LANE_WARPS))
    if args.kernel == "bwdseq":
        runs.append(("bwdseq", ts._selective_scan_bwd_seq_kernel, lane, ts.LANE_WARPS))
    if args.kernel == "fwdseq":
        runs.append(("fwdseq", ts._selective_scan_fwd_seq_kernel, lane, ts.LANE_WARPS))
    if args.kernel in ("bwd", "both"):
        bwd = {**common, "DK": plan.bwd_block, "FAST_EXP": True, "RUN": ts.BWD_LOAD_RUN, "N_FULL": True, "EVEN_T": True}
        runs.append(("bwd", ts._selective_scan_bwd_kernel, bwd, ts.BWD_NUM_WARPS))
    for name, kernel, constexprs, warps in runs:
        constexprs["DK"] = args.dk or constexprs["DK"]
        warps = args.warps or warps
        names = {param.name for param in kernel.params}
        constexprs = {k: v for k, v in constexprs.items() if k in names}
        print(json.dumps(stats(name, kernel, constexprs, warps, args.maxnreg, args.dump, args.ttgir)))


if __name__ == "__main__":
    main()
