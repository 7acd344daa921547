"""Fused CPU selective scan: a small C kernel (csrc/selective_scan.c) compiled on first use.

Why C through ctypes rather than a torch C++ extension or Numba: it compiles in about a second
with the system C compiler (a torch extension takes a minute and pulls the torch headers), needs
no extra Python package, and the state loop gets a compile-time length (-DNSTATE) plus an inline
exp the compiler vectorises. One build per (d_state, precision, CPU) is cached under
$MAMBA_LONGSEQ_CACHE (default ~/.cache/mamba_longseq).

The forward stores the state every CHUNK steps (1/CHUNK of what storing all states would cost);
the backward recomputes each chunk from its checkpoint, so memory stays linear in the length.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from .checks import compute_dtype

CHUNK = 64  # checkpoint interval (csrc CHUNK): ckpt memory is N/CHUNK = 1/4 of u's at d_state 16
ABI_VERSION = 4  # csrc ABI_VERSION: the pointer lists passed to scan_fwd / scan_bwd
_SOURCE = Path(__file__).with_name("csrc") / "selective_scan.c"
# "openmp": share torch's OpenMP threads (falls back to pthreads if the compiler lacks OpenMP);
# "pthreads": the kernel's own threads (tests set it to cover that path)
THREADING = "openmp"
_LIBS: dict[tuple[int, bool, str], ctypes.CDLL] = {}
_LOCK = threading.Lock()


def _cache_dir() -> Path:
    root = os.environ.get("MAMBA_LONGSEQ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mamba_longseq"
    )
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    """Part of the cache key: a build with -march=native must not be reused on another CPU model."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _torch_openmp() -> list[str]:
    """Link arguments naming torch's bundled OpenMP runtime when its file name differs from the
    system's libgomp.so.1 (older wheels ship libgomp-<hash>.so.1); none when the soname already matches."""
    lib_dir = Path(torch.__file__).parent / "lib"
    renamed = sorted(lib_dir.glob("libgomp-*.so*"))
    return [str(renamed[0]), f"-Wl,-rpath,{lib_dir}"] if renamed else []


def _compile(n_state: int, double: bool, threading: str) -> Path:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError(
            "selective_scan backend='cpu' compiles a small C kernel on first use, but no C compiler was found "
            "(set CC or install one, e.g. `apt-get install gcc`); backend='ref' works without it"
        )
    source = _SOURCE.read_bytes()
    defines = [f"-DNSTATE={n_state}", f"-DREAL={'double' if double else 'float'}", f"-DREAL_IS_DOUBLE={int(double)}"]
    # no -ffast-math: the inline exp's rounding trick relies on exact float addition
    base_flags = ["-O3", "-fPIC", "-shared", "-pthread", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
    signature = " ".join([*defines, *base_flags, threading, _cpu_signature()])
    key = hashlib.sha256(source + signature.encode()).hexdigest()[:16]
    target = _cache_dir() / f"selective_scan_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    # OpenMP first, linked so it resolves to torch's own libgomp: torch's workers spin for a while
    # after each parallel op, and a second pool of threads would fight them for the cores.
    # Then plain pthreads (e.g. a compiler without OpenMP), each with and without -march=native.
    openmp = [["-fopenmp", *_torch_openmp()]] if threading == "openmp" else []
    for extra in (*openmp, ["-march=native"], []):
        flags = [*(["-march=native"] if "-fopenmp" in extra else []), *extra]
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [compiler, *base_flags, *flags, *defines, str(_SOURCE), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, target)  # atomic: a concurrent process sees the old or the new file
            return target
        os.unlink(tmp)
        errors.append(f"$ {' '.join(cmd)}\n{proc.stderr.strip()}")
    raise RuntimeError("selective_scan backend='cpu': compiling the C kernel failed:\n" + "\n".join(errors))


def _library(n_state: int, double: bool) -> ctypes.CDLL:
    key = (n_state, double, THREADING)
    with _LOCK:
        lib = _LIBS.get(key)
        if lib is None:
            path = _compile(n_state, double, THREADING)
            lib = ctypes.CDLL(str(path))
            if lib.scan_abi_version() != ABI_VERSION * 1000 + CHUNK:
                # a stale build next to newer Python code would read its pointers wrongly: refuse it
                raise RuntimeError(f"selective_scan backend='cpu': {path} does not match this version; delete it")
            for name in ("scan_fwd", "scan_bwd"):
                getattr(lib, name).argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_void_p)]
                getattr(lib, name).restype = ctypes.c_int
            _LIBS[key] = lib
        return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _call(fn, ints, tensors) -> None:
    i64 = (ctypes.c_int64 * len(ints))(*ints)
    ptrs = (ctypes.c_void_p * len(tensors))(*[_ptr(t) for t in tensors])
    if fn(i64, ptrs) != 0:
        raise MemoryError("selective_scan backend='cpu': out of memory allocating gradient buffers")


def _time_major(M: torch.Tensor, groups: int, dtype) -> torch.Tensor:
    """B or C (B N L) | (B G N L) -> (B groups L N) contiguous, groups a multiple of M's own."""
    M = M.to(dtype)
    if M.dim() == 3:
        M = M.unsqueeze(1)
    M = M.repeat_interleave(groups // M.shape[1], dim=1)
    return M.transpose(-1, -2).contiguous()


def _from_time_major(dM: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of _time_major for gradients: sum the repeated groups, restore like's layout."""
    batch, groups, length, n = dM.shape
    own = 1 if like.dim() == 3 else like.shape[1]
    dM = dM.view(batch, own, groups // own, length, n).sum(2).transpose(-1, -2)  # (B own N L)
    return dM.squeeze(1) if like.dim() == 3 else dM


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, seq_idx):
        dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
        batch, dim, length = u.shape
        n_state = A.shape[1]
        b_const, c_const = B.dim() == 2, C.dim() == 2
        group_counts = [1 if M.dim() == 3 else M.shape[1] for M in (B, C) if M.dim() != 2]
        groups = math.lcm(*group_counts) if group_counts else 1
        conv = lambda t: None if t is None else t.to(dtype).contiguous()
        u_c, delta_c, z_c, A_c, D_c, bias_c, h0 = map(conv, (u, delta, z, A, D, delta_bias, initial_state))
        B_c = conv(B) if b_const else _time_major(B, groups, dtype)
        C_c = conv(C) if c_const else _time_major(C, groups, dtype)
        seq = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()

        out = torch.empty(batch, dim, length, dtype=dtype)
        last = torch.empty(batch, dim, n_state, dtype=dtype)
        needs_grad = any(ctx.needs_input_grad)
        ckpt = torch.empty(batch, dim, (length + CHUNK - 1) // CHUNK, n_state, dtype=dtype) if needs_grad else None
        ints = [batch, dim, length, groups, torch.get_num_threads(), b_const, c_const, bool(softplus)]
        lib = _library(n_state, dtype == torch.float64)
        _call(lib.scan_fwd, ints, [u_c, delta_c, bias_c, z_c, A_c, B_c, C_c, D_c, h0, seq, out, last, ckpt])

        if needs_grad:
            ctx.save_for_backward(u_c, delta_c, bias_c, z_c, A_c, B_c, C_c, D_c, seq, ckpt)
            ctx.ints = ints
            ctx.originals = (u, delta, A, B, C, D, z, delta_bias, initial_state)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, dout, dlast):
        u_c, delta_c, bias_c, z_c, A_c, B_c, C_c, D_c, seq, ckpt = ctx.saved_tensors
        u, delta, A, B, C, D, z, delta_bias, initial_state = ctx.originals
        ints = list(ctx.ints)
        ints[4] = torch.get_num_threads()
        dtype = u_c.dtype
        batch, dim, _ = u_c.shape
        n_state = A_c.shape[1]
        rows = lambda *shape: torch.empty(batch, dim, *shape, dtype=dtype)
        du, ddelta = torch.empty_like(u_c), torch.empty_like(u_c)
        dz = torch.empty_like(u_c) if z_c is not None else None
        dA_rows = rows(n_state)
        # constant B/C: per-row partials (accumulated over time by the kernel, so zeroed here)
        dB = torch.zeros(batch, dim, n_state, dtype=dtype) if B_c.dim() == 2 else torch.empty_like(B_c)
        dC = torch.zeros(batch, dim, n_state, dtype=dtype) if C_c.dim() == 2 else torch.empty_like(C_c)
        dD_rows = rows() if D_c is not None else None
        dbias_rows = rows() if bias_c is not None else None
        dh0 = rows(n_state) if initial_state is not None else None
        dout = dout.to(dtype).contiguous()
        dlast = None if dlast is None else dlast.to(dtype).contiguous()
        lib = _library(n_state, dtype == torch.float64)
        _call(
            lib.scan_bwd,
            ints,
            [u_c, delta_c, bias_c, z_c, A_c, B_c, C_c, D_c, seq, ckpt, dout, dlast,
             du, ddelta, dz, dA_rows, dB, dC, dD_rows, dbias_rows, dh0],
        )  # fmt: skip

        # per-row partials summed over the batch here, in a fixed order: deterministic
        dB = dB.sum(0) if B.dim() == 2 else _from_time_major(dB, B)
        dC = dC.sum(0) if C.dim() == 2 else _from_time_major(dC, C)
        batch_sum = lambda g: None if g is None else g.sum(0)
        cast = lambda grad, like: None if grad is None or like is None else grad.to(like.dtype)
        return (
            cast(du, u), cast(ddelta, delta), cast(dA_rows.sum(0), A), cast(dB, B), cast(dC, C),
            cast(batch_sum(dD_rows), D), cast(dz, z), cast(batch_sum(dbias_rows), delta_bias),
            cast(dh0, initial_state), None, None,
        )  # fmt: skip


def selective_scan_cpu(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_last_state=False,
    seq_idx=None,
):
    """The fused CPU kernel behind `selective_scan(..., backend="cpu")`; same arguments and results."""
    if u.is_cuda:
        raise ValueError("selective_scan backend='cpu' needs CPU tensors; got CUDA tensors")
    y, last = _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, seq_idx)
    return (y, last) if return_last_state else y
