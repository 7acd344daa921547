"""Argument checks shared by every selective-scan backend.

Each backend calls `check_scan_args` / `check_step_args` first, so a wrong shape, dtype or
device fails the same way everywhere: a `ValueError` naming the argument, the shape it got
and the shape it needs.
"""

from __future__ import annotations

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# A, D and delta_bias are parameters kept in full precision (mamba_ssm keeps A_log in fp32);
# float64 is accepted so gradcheck can run the whole op in double precision.
_PARAM_DTYPES = (torch.float32, torch.float64)


def _fail(name: str, expected: str, got: torch.Tensor | None) -> None:
    shown = "None" if got is None else f"shape {tuple(got.shape)}, dtype {got.dtype}, device {got.device}"
    raise ValueError(f"selective_scan: `{name}` must be {expected}; got {shown}")


def _check_tensor(name, t, shape, dtypes, device, shape_text):
    if not isinstance(t, torch.Tensor):
        raise ValueError(
            f"selective_scan: `{name}` must be a torch.Tensor of shape {shape_text}; got {type(t).__name__}"
        )
    if tuple(t.shape) != tuple(shape):
        _fail(name, f"of shape {shape_text} = {tuple(shape)}", t)
    if t.dtype not in dtypes:
        _fail(name, "a floating tensor of dtype " + " or ".join(str(d) for d in dtypes), t)
    if t.device != device:
        _fail(name, f"on the same device as `u` ({device})", t)


def bc_kind(name: str, t: torch.Tensor, batch: int, dim: int, length: int, d_state: int, device) -> int:
    """Validate B or C and return its number of groups (0 for a constant (D, N) matrix).

    Allowed layouts: (B, N, L) input-dependent, (B, G, N, L) grouped (dim divisible by G),
    (D, N) constant.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"selective_scan: `{name}` must be a torch.Tensor; got {type(t).__name__}")
    if t.dim() == 2:
        _check_tensor(name, t, (dim, d_state), _FLOAT_DTYPES, device, "(dim, d_state)")
        return 0
    if t.dim() == 3:
        _check_tensor(name, t, (batch, d_state, length), _FLOAT_DTYPES, device, "(batch, d_state, length)")
        return 1
    if t.dim() == 4:
        groups = t.shape[1]
        if groups < 1 or dim % groups != 0:
            raise ValueError(
                f"selective_scan: `{name}` has {groups} groups, which does not divide dim={dim}; "
                "use a group count that divides the number of channels"
            )
        _check_tensor(
            name, t, (batch, groups, d_state, length), _FLOAT_DTYPES, device, "(batch, groups, d_state, length)"
        )
        return groups
    _fail(name, "(batch, d_state, length), (batch, groups, d_state, length) or (dim, d_state)", t)
    return -1  # unreachable


def check_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None, seq_idx=None):
    """Validate the arguments of `selective_scan`; return (batch, dim, length, d_state)."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        got = f"shape {tuple(u.shape)}" if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"selective_scan: `u` must be a tensor of shape (batch, dim, length); got {got}")
    if u.dtype not in _FLOAT_DTYPES:
        _fail("u", "a floating tensor (float16, bfloat16, float32 or float64)", u)
    batch, dim, length = u.shape
    device = u.device
    _check_tensor("delta", delta, u.shape, _FLOAT_DTYPES, device, "(batch, dim, length)")
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim:
        _fail("A", f"of shape (dim, d_state) with dim={dim}", A if isinstance(A, torch.Tensor) else None)
    d_state = A.shape[1]
    _check_tensor("A", A, (dim, d_state), _PARAM_DTYPES, device, "(dim, d_state)")
    bc_kind("B", B, batch, dim, length, d_state, device)
    bc_kind("C", C, batch, dim, length, d_state, device)
    if D is not None:
        _check_tensor("D", D, (dim,), _PARAM_DTYPES, device, "(dim,)")
    if z is not None:
        _check_tensor("z", z, u.shape, _FLOAT_DTYPES, device, "(batch, dim, length)")
    if delta_bias is not None:
        _check_tensor("delta_bias", delta_bias, (dim,), _PARAM_DTYPES, device, "(dim,)")
    if initial_state is not None:
        _check_tensor(
            "initial_state", initial_state, (batch, dim, d_state), _FLOAT_DTYPES, device, "(batch, dim, d_state)"
        )
    if seq_idx is not None:
        if not isinstance(seq_idx, torch.Tensor) or seq_idx.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                "selective_scan: `seq_idx` must be an int32/int64 tensor of shape (batch, length); got "
                + (f"dtype {seq_idx.dtype}" if isinstance(seq_idx, torch.Tensor) else type(seq_idx).__name__)
            )
        if tuple(seq_idx.shape) != (batch, length) or seq_idx.device != device:
            _fail("seq_idx", f"of shape (batch, length) = {(batch, length)} on {device}", seq_idx)
    return batch, dim, length, d_state


def check_step_args(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_proj_weight=None):
    """Validate the arguments of `selective_state_update`; return the number of groups."""
    if not isinstance(state, torch.Tensor) or state.dim() != 3:
        got = f"shape {tuple(state.shape)}" if isinstance(state, torch.Tensor) else type(state).__name__
        raise ValueError(f"selective_state_update: `state` must be (batch, dim, d_state); got {got}")
    batch, dim, d_state = state.shape
    device = state.device

    def check(name, t, shape, dtypes, text):
        try:
            _check_tensor(name, t, shape, dtypes, device, text)
        except ValueError as err:
            raise ValueError(str(err).replace("selective_scan:", "selective_state_update:", 1)) from None

    check("x", x, (batch, dim), _FLOAT_DTYPES, "(batch, dim)")
    if dt_proj_weight is None:
        check("dt", dt, (batch, dim), _FLOAT_DTYPES, "(batch, dim)")
    else:  # dt is low-rank: (batch, rank), projected by dt_proj_weight (dim, rank)
        rank = dt_proj_weight.shape[-1] if isinstance(dt_proj_weight, torch.Tensor) else -1
        check("dt_proj_weight", dt_proj_weight, (dim, rank), _FLOAT_DTYPES, "(dim, rank)")
        check("dt", dt, (batch, rank), _FLOAT_DTYPES, "(batch, rank) with dt_proj_weight")
    check("A", A, (dim, d_state), _PARAM_DTYPES, "(dim, d_state)")
    groups = 1
    for name, t in (("B", B), ("C", C)):
        if isinstance(t, torch.Tensor) and t.dim() == 3:
            groups = t.shape[1]
            if dim % groups != 0:
                raise ValueError(
                    f"selective_state_update: `{name}` has {groups} groups, which does not divide dim={dim}"
                )
            check(name, t, (batch, groups, d_state), _FLOAT_DTYPES, "(batch, groups, d_state)")
        else:
            check(name, t, (batch, d_state), _FLOAT_DTYPES, "(batch, d_state)")
    if D is not None:
        check("D", D, (dim,), _PARAM_DTYPES, "(dim,)")
    if z is not None:
        check("z", z, (batch, dim), _FLOAT_DTYPES, "(batch, dim)")
    if dt_bias is not None:
        check("dt_bias", dt_bias, (dim,), _PARAM_DTYPES, "(dim,)")
    return groups


def compute_dtype(*tensors) -> torch.dtype:
    """float64 if any input is float64 (gradcheck), else float32: the maths never runs in 16 bits."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
