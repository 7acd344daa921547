"""Packed rows on CUDA (Triton scan, strided seq_idx of the pooled stages): MambaLM and Sashimi give each
packed sequence the logits it gets alone."""

import pytest
import torch

from core.models import MambaConfig, MambaLM
from core.models.sashimi import Sashimi, SashimiConfig
from core.packing import pack

pytestmark = pytest.mark.gpu

LENGTHS = [300, 57, 1000, 8, 129, 700, 2000, 64]


def _rows(align: int, row_length: int = 1024):
    plan = pack(LENGTHS, row_length, align)
    seq_idx = torch.stack([torch.from_numpy(plan.seq_idx(r)) for r in range(len(plan))]).cuda()
    return plan, seq_idx


def _assert_pieces_match(model, plan, ids, seq_idx, align):
    with torch.no_grad():
        packed = model(ids, seq_idx=seq_idx)
        for row in range(len(plan)):
            for _, start, stop, offset in plan.segments(row):
                n = stop - start
                slot = -(-n // align) * align
                alone = model(ids[row : row + 1, offset : offset + slot])[:, :n]
                torch.testing.assert_close(packed[row : row + 1, offset : offset + n], alone, rtol=1e-3, atol=1e-3)


def test_packed_mamba_lm_on_cuda():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=12, backend="triton")).cuda()
    plan, seq_idx = _rows(1)
    ids = torch.randint(7, 11, seq_idx.shape, device="cuda")
    _assert_pieces_match(model, plan, ids, seq_idx, 1)


def test_packed_sashimi_on_cuda():
    torch.manual_seed(0)
    model = Sashimi(SashimiConfig(d_model=32, n_layer=2, pool=(4, 4))).cuda()
    plan, seq_idx = _rows(16)
    ids = torch.randint(0, 256, seq_idx.shape, device="cuda")
    _assert_pieces_match(model, plan, ids, seq_idx, 16)
