"""The selective scan behind one call, with a readable reference and fast backends.

`selective_scan(..., backend=...)` picks the implementation:
- "ref": `reference.py`, plain PyTorch, the spec;
- "cpu": `cpu.py`, a fused C kernel compiled on first use (default for CPU tensors);
- "triton": `triton_scan.py`, Triton kernels (default for CUDA tensors; on CPU tensors it runs
  under TRITON_INTERPRET=1, which is how CI tests it);
- "auto": Triton on CUDA, the fused kernel on CPU.
"""

from __future__ import annotations

import torch

from .checks import check_scan_args, check_step_args
from .reference import (
    add_rms_norm_ref,
    causal_conv1d_step_ref,
    selective_scan_ref,
    selective_state_update_ref,
)

BACKENDS = ("auto", "ref", "cpu", "triton")

__all__ = [
    "BACKENDS",
    "add_rms_norm",
    "causal_conv1d_step",
    "selective_scan",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
]


def _missing_triton(err: ModuleNotFoundError) -> RuntimeError:
    if err.name != "triton":
        raise err
    return RuntimeError(
        "selective_scan backend 'triton' (the default for CUDA tensors) needs the triton package: "
        "pip install 'mamba-longseq[gpu]' (or pip install triton)"
    )


# Plain `from .x import y` inside the functions (not importlib): torch.compile traces through these.
def _load_scan_triton():
    """The Triton scan, imported on first use so `import core` works without Triton."""
    try:
        from .triton_scan import selective_scan_triton
    except ModuleNotFoundError as err:
        raise _missing_triton(err) from err
    return selective_scan_triton


def _load_step_triton():
    try:
        from .triton_step import selective_state_update_triton
    except ModuleNotFoundError as err:
        raise _missing_triton(err) from err
    return selective_state_update_triton


def _load_fused_triton():
    try:
        from . import triton_fused
    except ModuleNotFoundError as err:
        raise _missing_triton(err) from err
    return triton_fused


def resolve_backend(backend: str, is_cuda: bool) -> str:
    """Map "auto" to the fast backend of the device, and reject unknown names."""
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if is_cuda else "cpu"
    if backend == "cpu" and is_cuda:
        raise ValueError("selective_scan: backend='cpu' needs CPU tensors; got CUDA tensors (use 'auto' or 'triton')")
    return backend


def selective_scan(
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
    backend="auto",
    seq_idx=None,
):
    """Selective scan: same maths and shapes as mamba_ssm's `selective_scan_fn`, plus `initial_state`.

    u, delta, z: (B, D, L)   A: (D, N) float32   B, C: (B, N, L) | (B, G, N, L) | (D, N)
    D, delta_bias: (D,) float32   initial_state: (B, D, N)

    Returns y (B, D, L) in u's dtype; with `return_last_state`, (y, last_state (B, D, N) float32),
    gradients flowing through both. See `selective_scan_ref` for the recurrence.

    seq_idx (B, L) int: packed sequences; the state restarts from zero where the index changes.
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    backend = resolve_backend(backend, u.is_cuda)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state)
    if backend == "ref":
        return selective_scan_ref(*args, seq_idx=seq_idx)
    if backend == "cpu":
        from .cpu import selective_scan_cpu

        return selective_scan_cpu(*args, seq_idx=seq_idx)
    return _load_scan_triton()(*args, seq_idx=seq_idx)


def selective_state_update(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_proj_weight=None, backend="auto"
):
    """One recurrent step, `state` (B, D, N) updated in place; x, dt, z: (B, D); B, C: (B, N) | (B, G, N).

    dt_proj_weight (D, R): pass dt low-rank, (B, R), and the projection happens inside the step
    (one kernel less per layer per decoded token on CUDA). Returns y (B, D). CUDA tensors (or
    backend "triton") use the fused Triton step kernel; CPU tensors the reference (a handful of
    vectorised torch ops, already memory-bound at one step).
    """
    check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight)
    if resolve_backend(backend, state.is_cuda) == "triton":
        return _load_step_triton()(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_proj_weight)
    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_proj_weight)


def _fused(backend: str, t) -> bool:
    """Whether an inference helper takes its fused Triton kernel: CUDA tensors (or backend "triton",
    for the interpreter in CI) outside autograd, which the kernels do not implement."""
    return resolve_backend(backend, t.is_cuda) == "triton" and not torch.is_grad_enabled()


def add_rms_norm(hidden, residual, weight, eps: float, residual_in_fp32: bool, backend: str = "auto"):
    """residual = hidden + residual (or hidden if None), normed = RMSNorm(residual): (normed, residual).

    hidden, residual: (..., D)   weight: (D,). One Triton kernel on CUDA without autograd, else torch ops.
    """
    if _fused(backend, hidden):
        return _load_fused_triton().add_rms_norm_triton(hidden, residual, weight, eps, residual_in_fp32)
    return add_rms_norm_ref(hidden, residual, weight, eps, residual_in_fp32)


def causal_conv1d_step(conv_state, x, weight, bias=None, backend: str = "auto"):
    """One causal depthwise conv position then silu: conv_state (B, E, K) shifted in place, x (B, E),
    weight (E, K), bias (E,) -> (B, E). One Triton kernel on CUDA without autograd, else torch ops."""
    if _fused(backend, x):
        return _load_fused_triton().causal_conv1d_step_triton(conv_state, x, weight, bias)
    return causal_conv1d_step_ref(conv_state, x, weight, bias)
