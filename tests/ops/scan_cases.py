"""Random selective-scan inputs shared by the backend tests."""

from __future__ import annotations

import torch


def make_scan_inputs(
    batch,
    dim,
    length,
    d_state,
    groups=1,
    b_const=False,
    c_const=False,
    with_d=True,
    with_z=True,
    with_bias=True,
    with_h0=True,
    dtype=torch.float32,
    param_dtype=torch.float32,
    seed=0,
):
    """Inputs in the layouts of DESIGN.md; groups=0 means the 3-D (batch, d_state, length) B/C."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, dt=dtype: torch.randn(*shape, generator=g).to(dt)

    def bc():
        if groups == 0:
            return rand(batch, d_state, length)
        return rand(batch, groups, d_state, length)

    return dict(
        u=rand(batch, dim, length),
        delta=(0.5 * rand(batch, dim, length, dt=torch.float32)).to(dtype),
        A=-(0.5 + torch.rand(dim, d_state, generator=g)).to(param_dtype),
        B=rand(dim, d_state) if b_const else bc(),
        C=rand(dim, d_state) if c_const else bc(),
        D=rand(dim, dt=param_dtype) if with_d else None,
        z=rand(batch, dim, length) if with_z else None,
        delta_bias=(0.3 * rand(dim, dt=param_dtype)) if with_bias else None,
        initial_state=rand(batch, dim, d_state, dt=torch.float32) if with_h0 else None,
    )


def differentiable(inputs: dict) -> dict:
    return {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}


def run_with_grads(scan, inputs: dict, softplus: bool, seed: int = 1, **kwargs):
    """Forward with last state, then backward of a random projection of (y, last); returns
    (y, last, {name: grad})."""
    xs = differentiable(inputs)
    y, last = scan(**xs, delta_softplus=softplus, return_last_state=True, **kwargs)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g).to(y.dtype)
    gl = torch.randn(last.shape, generator=g).to(last.dtype)
    loss = (y.float() * gy.float()).sum() + (last * gl).sum()
    names = [k for k, v in xs.items() if v is not None]
    grads = torch.autograd.grad(loss, [xs[k] for k in names])
    return y, last, dict(zip(names, grads))
