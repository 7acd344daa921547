"""The fused conv + projections + scan + out_proj step of the Mamba block (core/ops/mamba_inner.py)
against the same block run as separate autograd ops: outputs and every gradient, with and without
packed sequences and under bf16 autocast, and what it keeps for backward. Triton backend in the
interpreter, as CI runs it."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from core.modules.mamba import Mamba  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def run(block, hidden, seq_idx, fused, bf16=False):
    block.fused_inner = fused
    block.zero_grad(set_to_none=True)
    x = hidden.detach().clone().requires_grad_(True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
        out = block(x, seq_idx=seq_idx)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    (out.float() * weights).sum().backward()
    return out, x.grad, {n: p.grad.clone() for n, p in block.named_parameters()}


@pytest.mark.parametrize(
    "packed,bf16,options",
    [(False, False, {}), (True, False, {}), (False, True, {}), (True, True, {}),
     (False, False, dict(bias=True, conv_bias=False))],
)  # fmt: skip
def test_fused_inner_equals_separate_ops(packed, bf16, options):
    torch.manual_seed(0)
    block = Mamba(8, d_state=4, backend="triton", **options).to(DEVICE)  # 16 inner channels, rank 1
    hidden = torch.randn(2, 37, 8).to(DEVICE)
    seq_idx = torch.tensor([[0] * 20 + [1] * 17, [0] * 5 + [1] * 30 + [2] * 2]).to(DEVICE) if packed else None
    out, dx, grads = run(block, hidden, seq_idx, True, bf16)
    assert out.is_contiguous()  # token-major (B, L, D): the next residual add + norm read it without a copy
    out_ref, dx_ref, grads_ref = run(block, hidden, seq_idx, False, bf16)
    tol = dict(rtol=2e-2, atol=2e-2) if bf16 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, out_ref, **tol)
    torch.testing.assert_close(dx, dx_ref, **tol)
    assert grads.keys() == grads_ref.keys() and all(g is not None for g in grads.values())
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], **tol, msg=lambda m, n=name: f"d{n}: {m}")


def test_fused_inner_through_the_step_backward(monkeypatch):
    """The same with the step-by-step backward kernel, whose recomputed y (emit_y) feeds out_proj's
    weight gradient: packed sequences, float32."""
    from core.ops import triton_scan

    monkeypatch.setattr(triton_scan, "BWD_KERNEL", "seq")
    test_fused_inner_equals_separate_ops(True, False, {})


def test_fused_inner_keeps_less_for_backward():
    """Three (B, E, L) activations fewer: u and delta are recomputed, y comes out of the scan's backward."""
    torch.manual_seed(0)
    block = Mamba(8, d_state=4, backend="triton").to(DEVICE)
    hidden = torch.randn(1, 64, 8, device=DEVICE, requires_grad=True)
    kept = {}
    for fused in (True, False):
        block.fused_inner = fused
        seen = set()

        def pack(t, seen=seen):
            if tuple(t.shape) == (1, block.d_inner, 64):  # (B, E, L), whatever its strides
                seen.add((t.untyped_storage().data_ptr(), t.storage_offset()))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(hidden)
        kept[fused] = len(seen)
    assert kept[True] == 2 and kept[False] == 5, kept


def test_projections_under_autocast_cast_the_weight_not_its_batch_copies():
    """Under autocast the (out, in) weight is cast before it is expanded over the batch: no copy or
    cast makes a (B, out, in) tensor, forward or backward (the bmm's own (B, out, in) weight
    gradient is the one left), and the products are autocast's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from core.ops.mamba_inner import _out_proj, channel_major

    made = []

    class RecordCopies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func._schema.name in ("aten::_to_copy", "aten::copy_", "aten::clone"):
                made.append(tuple(out.shape))
            return out

    g = torch.Generator().manual_seed(3)
    w, w_out = torch.randn(24, 8, generator=g), torch.randn(6, 24, generator=g)
    x = torch.randn(5, 8, 7, generator=g)
    leaves = [t.to(DEVICE).requires_grad_(True) for t in (w, w_out, x)]
    with RecordCopies(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        hidden = channel_major(leaves[0], leaves[2])  # (5, 24, 7)
        out = _out_proj(leaves[1], None, hidden)  # (5, 7, 6)
        out.float().square().sum().backward()
    assert hidden.dtype == out.dtype == torch.bfloat16
    assert (5, 24, 8) not in made and (5, 24, 6) not in made and (5, 6, 24) not in made
    ref = [t.detach().clone().requires_grad_(True) for t in leaves]
    want = torch.einsum("ei,bil->bel", ref[0], ref[2])
    torch.einsum("de,bel->bld", ref[1], want).square().sum().backward()
    for got, expect in zip(leaves, ref, strict=True):
        torch.testing.assert_close(got.grad, expect.grad, rtol=5e-2, atol=5e-2 * expect.grad.abs().max().item())


@pytest.mark.parametrize("token_major", [False, True])
def test_channel_major_product_gradients_and_layout(token_major):
    """channel_major against float64 gradcheck, for a channel-major x and for the transposed view of
    a token-major (B, L, in) tensor, whose gradient must keep that layout (no copy back for the
    residual stream's backward)."""
    from core.ops.mamba_inner import channel_major

    g = torch.Generator().manual_seed(4)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    x = torch.randn(2, 6, 3, generator=g, dtype=torch.float64).transpose(1, 2) if token_major else (
        torch.randn(2, 3, 6, generator=g, dtype=torch.float64))  # fmt: skip
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(channel_major, (w, x))
    (dx,) = torch.autograd.grad(channel_major(w, x).sum(), x)
    assert dx.transpose(1, 2).is_contiguous() == token_major and dx.is_contiguous() != token_major
