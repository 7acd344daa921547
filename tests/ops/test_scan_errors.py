"""Every bad-argument path of selective_scan / selective_state_update raises ValueError naming the argument."""

import pytest
import torch

from core.ops import resolve_backend, selective_scan, selective_state_update
from tests.ops.scan_cases import make_scan_inputs


def good():
    return make_scan_inputs(2, 4, 5, 3, groups=2)


BAD_SCAN = [
    ("u", lambda a: a.update(u=a["u"][0]), "u"),
    ("u int", lambda a: a.update(u=a["u"].long()), "u"),
    ("delta shape", lambda a: a.update(delta=a["delta"][:, :, :4]), "delta"),
    ("A dim", lambda a: a.update(A=a["A"][:3]), "A"),
    ("A bf16", lambda a: a.update(A=a["A"].bfloat16()), "A"),
    ("B length", lambda a: a.update(B=a["B"][..., :4]), "B"),
    ("B groups", lambda a: a.update(B=torch.randn(2, 3, 3, 5)), "B"),
    ("B 5-D", lambda a: a.update(B=a["B"][None]), "B"),
    ("C const shape", lambda a: a.update(C=torch.randn(4, 2)), "C"),
    ("C not tensor", lambda a: a.update(C=[1.0]), "C"),
    ("D shape", lambda a: a.update(D=torch.ones(5)), "D"),
    ("z shape", lambda a: a.update(z=a["z"][:1]), "z"),
    ("delta_bias shape", lambda a: a.update(delta_bias=torch.ones(4, 1)), "delta_bias"),
    ("initial_state shape", lambda a: a.update(initial_state=torch.zeros(2, 4, 2)), "initial_state"),
    ("device", lambda a: a.update(D=torch.ones(4, device="meta")), "D"),
]


@pytest.mark.parametrize("backend", ["ref", "cpu", "auto"])
@pytest.mark.parametrize("label,mutate,name", BAD_SCAN, ids=[b[0] for b in BAD_SCAN])
def test_scan_rejects_bad_argument(backend, label, mutate, name):
    args = good()
    mutate(args)
    with pytest.raises(ValueError, match=f"`{name}`"):
        selective_scan(**args, backend=backend)


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of auto, ref, cpu, triton"):
        selective_scan(**good(), backend="cuda")


def test_cpu_backend_refuses_cuda_tensors():
    with pytest.raises(ValueError, match="CPU tensors"):
        resolve_backend("cpu", is_cuda=True)
    assert resolve_backend("auto", is_cuda=True) == "triton"
    assert resolve_backend("auto", is_cuda=False) == "cpu"


def step_args():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    return dict(
        state=r(2, 4, 3),
        x=r(2, 4),
        dt=r(2, 4),
        A=-r(4, 3).abs(),
        B=r(2, 2, 3),
        C=r(2, 2, 3),
        D=r(4),
        z=r(2, 4),
        dt_bias=r(4),
    )


BAD_STEP = [
    ("state", lambda a: a.update(state=a["state"][0]), "state"),
    ("x", lambda a: a.update(x=a["x"][:, :3]), "x"),
    ("dt", lambda a: a.update(dt=a["dt"][None]), "dt"),
    ("A", lambda a: a.update(A=a["A"][:, :2]), "A"),
    ("B groups", lambda a: a.update(B=torch.randn(2, 3, 3)), "B"),
    ("C", lambda a: a.update(C=torch.randn(2, 4)), "C"),
    ("D", lambda a: a.update(D=torch.ones(3)), "D"),
    ("z", lambda a: a.update(z=torch.ones(2, 5)), "z"),
    ("dt_bias", lambda a: a.update(dt_bias=torch.ones(2)), "dt_bias"),
]


@pytest.mark.parametrize("label,mutate,name", BAD_STEP, ids=[b[0] for b in BAD_STEP])
def test_step_rejects_bad_argument(label, mutate, name):
    args = step_args()
    mutate(args)
    with pytest.raises(ValueError, match=f"selective_state_update: `{name}`"):
        selective_state_update(**args)


def test_step_updates_state_in_place_and_matches_one_scan_step():
    args = step_args()
    state = args["state"]
    before = state.clone()
    y = selective_state_update(**args, dt_softplus=True)
    assert not torch.equal(state, before)
    y_scan, last = selective_scan(
        args["x"][..., None],
        args["dt"][..., None],
        args["A"],
        args["B"][..., None],
        args["C"][..., None],
        args["D"],
        args["z"][..., None],
        args["dt_bias"],
        delta_softplus=True,
        initial_state=before,
        return_last_state=True,
        backend="ref",
    )
    torch.testing.assert_close(y, y_scan[..., 0])
    torch.testing.assert_close(state, last)


def test_missing_triton_names_the_package_to_install(monkeypatch):
    import sys

    from core.ops import _load_scan_triton

    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    monkeypatch.delitem(sys.modules, "core.ops.triton_scan", raising=False)
    with pytest.raises(RuntimeError, match="pip install"):
        _load_scan_triton()
