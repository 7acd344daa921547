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


@pytest.mark.parametrize("dtype,rank", [(torch.float32, 3), (torch.bfloat16, 6)])
def test_step_with_dt_projection(dtype, rank):
    """dt given low-rank with dt_proj_weight: the kernel projects it, as F.linear then the step would
    (the Mamba block's decoding path). Rank 3 and 6 leave masked lanes in the projection."""
    args = make_step(3, 10, 4, 0, 0, dtype)
    g = torch.Generator().manual_seed(7)
    low = torch.randn(3, rank, generator=g).to(dtype).to(DEVICE)
    weight = (0.5 * torch.randn(10, rank, generator=g)).to(dtype).to(DEVICE)
    state_ref, state_ref2 = args["state"].clone(), args["state"].clone()
    y = selective_state_update_triton(**{**args, "dt": low}, dt_softplus=True, dt_proj_weight=weight)
    # the unfused path: project first, then the plain reference step
    dt = torch.nn.functional.linear(low, weight)
    y_ref = selective_state_update_ref(**{**args, "state": state_ref, "dt": dt}, dt_softplus=True)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(args["state"], state_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=tol, atol=tol)
    # and the reference's own dt_proj_weight argument means the same thing
    y_ref2 = selective_state_update_ref(
        **{**args, "state": state_ref2, "dt": low}, dt_softplus=True, dt_proj_weight=weight
    )
    torch.testing.assert_close(y_ref2.float(), y.float(), rtol=tol, atol=tol)


def test_step_dt_projection_shape_errors():
    args = make_step(2, 6, 4, 0, 0, torch.float32)
    with pytest.raises(ValueError, match="dt_proj_weight"):
        selective_state_update_ref(**args, dt_proj_weight=torch.zeros(5, 3, device=DEVICE))
    with pytest.raises(ValueError, match="`dt`.*rank"):
        selective_state_update_ref(**args, dt_proj_weight=torch.zeros(6, 3, device=DEVICE))
