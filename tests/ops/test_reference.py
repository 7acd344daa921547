"""Pin `selective_scan_ref` itself against the recurrence written out with Python floats."""

import math

import torch

from core.ops import selective_scan_ref, selective_state_update_ref
from tests.ops.scan_cases import make_scan_inputs


def hand_scan(u, delta, A, B, C, D, z, delta_bias, initial_state):
    """Scalar loops over batch, channel, time and state: the paper's equations, nothing vectorised."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    groups = B.shape[1]
    y = [[[0.0] * length for _ in range(dim)] for _ in range(batch)]
    last = [[[0.0] * n_state for _ in range(dim)] for _ in range(batch)]
    for b in range(batch):
        for d in range(dim):
            g = d // (dim // groups)
            h = [float(initial_state[b, d, n]) for n in range(n_state)]
            for t in range(length):
                x = float(delta[b, d, t]) + float(delta_bias[d])
                dt = math.log1p(math.exp(x))
                acc = 0.0
                for n in range(n_state):
                    h[n] = math.exp(dt * float(A[d, n])) * h[n] + dt * float(B[b, g, n, t]) * float(u[b, d, t])
                    acc += float(C[b, g, n, t]) * h[n]
                out = acc + float(D[d]) * float(u[b, d, t])
                zz = float(z[b, d, t])
                y[b][d][t] = out * zz / (1.0 + math.exp(-zz))
            last[b][d] = h
    return torch.tensor(y, dtype=torch.float64), torch.tensor(last, dtype=torch.float64)


def test_reference_matches_hand_written_recurrence():
    inp = make_scan_inputs(2, 4, 6, 3, groups=2, dtype=torch.float64, param_dtype=torch.float64)
    y, last = selective_scan_ref(**inp, delta_softplus=True, return_last_state=True)
    y_hand, last_hand = hand_scan(**inp)
    torch.testing.assert_close(y, y_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, last_hand, rtol=1e-12, atol=1e-12)


def test_reference_layouts_agree():
    """(B, N, L), (B, 1, N, L) and a constant matrix broadcast to every step give the same scan."""
    inp = make_scan_inputs(2, 4, 5, 3, groups=0)
    y3 = selective_scan_ref(**inp)
    inp4 = dict(inp, B=inp["B"].unsqueeze(1), C=inp["C"].unsqueeze(1))
    torch.testing.assert_close(selective_scan_ref(**inp4), y3)
    const = make_scan_inputs(2, 4, 5, 3, b_const=True, c_const=True)
    # 4 groups for 4 channels: channel d reads group d, i.e. its own constant row
    expanded = dict(const)
    expanded["B"] = torch.stack([const["B"][d][:, None].expand(3, 5) for d in range(4)])[None].expand(2, 4, 3, 5)
    expanded["C"] = torch.stack([const["C"][d][:, None].expand(3, 5) for d in range(4)])[None].expand(2, 4, 3, 5)
    torch.testing.assert_close(selective_scan_ref(**expanded), selective_scan_ref(**const))


def test_reference_output_dtype_follows_u_and_state_is_float32():
    inp = make_scan_inputs(1, 3, 4, 2, dtype=torch.bfloat16)
    y, last = selective_scan_ref(**inp, return_last_state=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32


def test_step_reference_equals_scan_reference():
    """L applications of the one-step update reproduce the scan's outputs and final state."""
    inp = make_scan_inputs(2, 6, 5, 4, groups=3)
    y, last = selective_scan_ref(**inp, delta_softplus=True, return_last_state=True)
    state = inp["initial_state"].clone()
    for t in range(5):
        y_t = selective_state_update_ref(
            state,
            inp["u"][:, :, t],
            inp["delta"][:, :, t],
            inp["A"],
            inp["B"][..., t],
            inp["C"][..., t],
            inp["D"],
            inp["z"][:, :, t],
            dt_bias=inp["delta_bias"],
            dt_softplus=True,
        )
        torch.testing.assert_close(y_t, y[:, :, t], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, last, rtol=1e-5, atol=1e-5)
