"""Readable plain-PyTorch reference of the selective scan (Mamba, arXiv 2312.00752, Alg. 2).

This is the spec every fast backend (`cpu.py`, `triton_scan.py`, `triton_step.py`) is tested
against: one loop over the length, maths in float32 (float64 if an input is float64), cast
back to `u`'s dtype at the end. It materialises exp(delta * A) for the whole sequence, so it
is for tests and tiny inputs, not for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_scan_args, check_step_args, compute_dtype


def _per_channel(M: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """B or C as (batch, dim, N, L) for input-dependent matrices, (dim, N) for constant ones."""
    M = M.to(dtype)
    if M.dim() == 2:  # constant (D N)
        return M
    if M.dim() == 3:  # (B N L): one group
        M = M.unsqueeze(1)
    # channel d reads group d // (dim // groups)
    return M.repeat_interleave(dim // M.shape[1], dim=1)  # (B D N L)


def selective_scan_ref(
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
    """Selective scan, written as the recurrence it is.

    u, delta, z: (B, D, L)   A: (D, N)   B, C: (B, N, L) | (B, G, N, L) | (D, N)
    D, delta_bias: (D,)      initial_state: (B, D, N)      seq_idx: (B, L) int

        delta = softplus(delta + delta_bias)  (or without softplus)
        h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,   h_{-1} = initial_state or 0
        y_t = <C_t, h_t> + D * u_t;   y = y * silu(z)

    Packed sequences: where seq_idx[:, t] != seq_idx[:, t-1], h_{t-1} is dropped (the new
    sequence starts from zero); initial_state only feeds the row's first sequence.

    Returns y (B, D, L) in u's dtype, and with `return_last_state` also h_{L-1} (B, D, N).
    """
    batch, dim, length, d_state = check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    u_f, delta_f = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        delta_f = delta_f + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta_f = F.softplus(delta_f)
    A_f = A.to(dtype)
    B_f, C_f = _per_channel(B, dim, dtype), _per_channel(C, dim, dtype)

    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta_f, A_f))  # (B D L N)
    if seq_idx is not None:  # a zero decay at the first step of each packed sequence
        keep = torch.ones(batch, length, dtype=dtype, device=u.device)
        keep[:, 1:] = (seq_idx[:, 1:] == seq_idx[:, :-1]).to(dtype)
        deltaA = deltaA * keep[:, None, :, None]
    if B_f.dim() == 2:
        deltaB_u = torch.einsum("bdl,dn,bdl->bdln", delta_f, B_f, u_f)
    else:
        deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta_f, B_f, u_f)

    h = torch.zeros(batch, dim, d_state, dtype=dtype, device=u.device)
    if initial_state is not None:
        h = initial_state.to(dtype)
    # unbind (not indexing) keeps the backward linear in the length
    C_steps = [C_f] * length if C_f.dim() == 2 else C_f.unbind(3)
    ys = []
    for a_t, bu_t, c_t in zip(deltaA.unbind(2), deltaB_u.unbind(2), C_steps):
        h = a_t * h + bu_t  # (B D N)
        ys.append((h * c_t).sum(-1))  # (B D)
    y = torch.stack(ys, dim=2) if ys else u_f.new_zeros(batch, dim, 0)  # (B D L)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_f
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y


def selective_state_update_ref(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_proj_weight=None
):
    """One step of the recurrence; `state` is updated in place.

    state: (B, D, N)   x, dt, z: (B, D)   A: (D, N)   B, C: (B, N) | (B, G, N)   D, dt_bias: (D,)
    dt_proj_weight (D, R): dt is then (B, R) and projected first, F.linear(dt, dt_proj_weight) in
    dt's dtype (the Mamba block's dt_proj, which the Triton step kernel fuses).
    Returns y (B, D) in x's dtype.
    """
    check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight)
    if dt_proj_weight is not None:
        dt = F.linear(dt, dt_proj_weight.to(dt.dtype))
    dim = state.shape[1]
    dtype = compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    dt_f = dt.to(dtype)
    if dt_bias is not None:
        dt_f = dt_f + dt_bias.to(dtype)
    if dt_softplus:
        dt_f = F.softplus(dt_f)
    x_f = x.to(dtype)

    def per_channel(M):  # (B N) | (B G N) -> (B D N)
        M = M.to(dtype)
        if M.dim() == 2:
            return M.unsqueeze(1)
        return M.repeat_interleave(dim // M.shape[1], dim=1)

    B_f, C_f = per_channel(B), per_channel(C)
    h = state.to(dtype) * torch.exp(dt_f[..., None] * A.to(dtype)) + (dt_f * x_f)[..., None] * B_f
    state.copy_(h)
    y = (h * C_f).sum(-1)  # (B D)
    if D is not None:
        y = y + D.to(dtype) * x_f
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(x.dtype)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis, statistics in float32; x's dtype out.
    float32 statistics: a bf16 mean of squares over 768+ channels loses ~3 digits."""
    acc = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64 (gradcheck)
    x_f = x.to(acc)
    y = x_f * torch.rsqrt(x_f.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(acc)).to(x.dtype)


def add_rms_norm_ref(hidden, residual, weight, eps: float, residual_in_fp32: bool):
    """The pre-norm block's entry: residual += hidden (residual None: residual = hidden), then
    normed = rms_norm(residual in weight's dtype). hidden, residual: (..., D).
    Returns (normed in weight's dtype, residual; float32 if residual_in_fp32)."""
    residual = hidden if residual is None else hidden + residual
    normed = rms_norm_ref(residual.to(weight.dtype), weight, eps)
    return normed, residual.to(torch.promote_types(residual.dtype, torch.float32)) if residual_in_fp32 else residual


def causal_conv1d_step_ref(conv_state, x, weight, bias=None):
    """One position of the causal depthwise conv, then silu.

    conv_state: (B, E, K) the last K inputs, oldest first; shifted left in place and x appended.
    x: (B, E)   weight: (E, K)   bias: (E,) or None.   Returns silu(conv) (B, E) in x's dtype.
    """
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x.to(conv_state.dtype)
    out = (conv_state * weight).sum(-1).to(x.dtype)  # (B E)
    if bias is not None:
        out = out + bias
    return F.silu(out)
