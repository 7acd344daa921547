"""Triton decoding step against `selective_state_update_ref` (interpreter on CPU, as CI runs it)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from core.ops import selective_scan_ref, selective_state_update_ref  # noqa: E402
from core.ops.triton_step import selective_state_update_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_step(batch, dim, d_state, b_groups, c_groups, dtype, seed=0, options=True):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, dt=dtype, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(dt).to(DEVICE)

    def bc(groups):
        return rand(batch, d_state) if groups == 0 else rand(batch, groups, d_state)

    return dict(
        state=rand(batch, dim, d_state, dt=torch.float32),
        x=rand(batch, dim),
        dt=rand(batch, dim, scale=0.5),
        A=(-0.5 - torch.rand(dim, d_state, generator=g)).to(DEVICE),
        B=bc(b_groups),
        C=bc(c_groups),
        D=rand(dim, dt=torch.float32) if options else None,
        z=rand(batch, dim) if options else None,
        dt_bias=rand(dim, dt=torch.float32, scale=0.3) if options else None,
    )


@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize(
    "batch,dim,d_state,b_groups,c_groups,dtype,options",
    [
        (2, 5, 3, 0, 0, torch.float32, True),  # odd sizes: masked channels and states
        (3, 8, 16, 2, 2, torch.float32, False),
        (2, 6, 4, 3, 2, torch.bfloat16, True),  # B and C grouped differently
    ],
)
def test_step_matches_reference(batch, dim, d_state, b_groups, c_groups, dtype, options, softplus):
    args = make_step(batch, dim, d_state, b_groups, c_groups, dtype, options=options)
    state_ref = args["state"].clone()
    y = selective_state_update_triton(**args, dt_softplus=softplus)
    y_ref = selective_state_update_ref(**{**args, "state": state_ref}, dt_softplus=softplus)
    assert y.dtype == dtype and y.shape == (batch, dim)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(args["state"], state_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=tol, atol=tol)


def test_steps_replay_the_scan():
    """Ten steps from the scan's last state continue the scan exactly."""
    g = torch.Generator().manual_seed(3)
    batch, dim, d_state, length = 2, 4, 4, 10
    u = torch.randn(batch, dim, length, generator=g).to(DEVICE)
    delta = torch.randn(batch, dim, length, generator=g).to(DEVICE)
    A = (-0.5 - torch.rand(dim, d_state, generator=g)).to(DEVICE)
    B = torch.randn(batch, d_state, length, generator=g).to(DEVICE)
    C = torch.randn(batch, d_state, length, generator=g).to(DEVICE)
    y_ref = selective_scan_ref(u, delta, A, B, C, delta_softplus=True)
    state = torch.zeros(batch, dim, d_state, device=DEVICE)
    ys = [
        selective_state_update_triton(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], dt_softplus=True)
        for t in range(length)
    ]
    torch.testing.assert_close(torch.stack(ys, -1), y_ref, rtol=1e-5, atol=1e-5)
