"""Audio packing: whole clips packed into rows give a Sashimi the same logits, loss and gradients as
each clip run on its own; every sample appears once; the loss skips the padding; LTI is refused."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.models.sashimi import Sashimi, SashimiConfig
from mamba_audio import mulaw
from mamba_audio.datasets import IGNORE_INDEX, PackedClips
from mamba_audio.io import list_audio_files, read

DATA = Path(__file__).resolve().parents[1] / "data" / "audio"
ROW = 256


def _model(stage_blocks=("mamba", "mamba", "mamba")):
    torch.manual_seed(0)
    return Sashimi(SashimiConfig(d_model=8, n_layer=1, pool=(2, 4), stage_blocks=stage_blocks, d_state=4))


@pytest.fixture(scope="module")
def clips():
    # align 8 = the model's total pooling factor; the clips are 6000-9000 samples, so rows hold
    # clip ends, clip starts and pieces of clips that continue from the row before
    return PackedClips(list_audio_files(DATA), 8000, ROW, align=8, seed=0)


def _rows_with_boundaries(data, k=2):
    plan = data.plan()
    rows = [r for r in range(len(plan)) if r == len(plan) - 1 or len(list(plan.segments(r))) > 1]
    return rows[:k] + [len(plan) - 1]


def test_packed_sashimi_equals_clips_run_separately(clips):
    model = _model()
    rows = _rows_with_boundaries(clips)
    inputs, targets, seq_idx = (torch.stack(t) for t in zip(*(clips[r] for r in rows)))
    logits = model(inputs, seq_idx=seq_idx)  # (B L V)
    loss = F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1), reduction="sum")
    grads = torch.autograd.grad(loss, list(model.parameters()))

    sep_loss, n_scored = 0.0, 0
    for b, row in enumerate(rows):
        for _, start, stop, offset in clips.plan().segments(row):
            n = stop - start
            slot = -(-n // 8) * 8  # the piece and its alignment padding, run as a sequence of its own
            piece_logits = model(inputs[b : b + 1, offset : offset + slot])[:, :n]
            torch.testing.assert_close(logits[b : b + 1, offset : offset + n], piece_logits, rtol=1e-4, atol=1e-5)
            sep_loss = sep_loss + F.cross_entropy(piece_logits[0], targets[b, offset : offset + n], reduction="sum")
            n_scored += n
    sep_grads = torch.autograd.grad(sep_loss, list(model.parameters()))

    assert int((targets != IGNORE_INDEX).sum()) == n_scored  # padding is never scored
    torch.testing.assert_close(loss, sep_loss, rtol=1e-5, atol=1e-4)
    for (name, _), a, b in zip(model.named_parameters(), grads, sep_grads):
        # summed over ~1500 samples, a gradient entry carries float32 rounding of that sum's size
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()), msg=f"grad of {name}")


def test_without_seq_idx_clips_leak_into_each_other(clips):
    """The check above can fail: the same row unpacked lets a clip see the one before it."""
    model = _model().eval()
    row = _rows_with_boundaries(clips)[0]
    inputs, _, seq_idx = clips[row]
    second = list(clips.plan().segments(row))[1][3]  # offset of the row's second piece
    with torch.no_grad():
        packed, leaky = model(inputs[None], seq_idx=seq_idx[None]), model(inputs[None])
    assert not torch.allclose(packed[0, second:], leaky[0, second:], atol=1e-4)


def test_every_sample_of_every_clip_appears_once_in_order(clips):
    clips.epoch = 1  # another packing order, the same samples
    pieces = {i: [] for i in range(len(clips.files))}
    for row in range(len(clips)):
        inputs, targets, seq_idx = clips[row]
        covered = torch.zeros(ROW, dtype=torch.bool)
        for clip, start, stop, offset in clips.plan().segments(row):
            n = stop - start
            assert offset % 8 == 0
            piece = targets[offset : offset + n]
            pieces[clip].append(piece)
            # each piece starts from silence and then reads its own previous samples only
            assert inputs[offset] == mulaw.SILENCE_CLASS
            assert torch.equal(inputs[offset + 1 : offset + n], piece[:-1])
            covered[offset : offset + n] = True
        assert (targets[~covered] == IGNORE_INDEX).all()
    for i, path in enumerate(clips.files):
        expected = mulaw.encode(torch.from_numpy(read(path, 8000)))
        assert torch.equal(torch.cat(pieces[i]), expected)
    assert clips.padding_fraction < clips.padding_fraction_unpacked
    clips.epoch = 0


def test_lti_stages_and_misaligned_sequences_are_refused():
    ids = torch.zeros(1, 16, dtype=torch.long)
    seq_idx = torch.zeros(1, 16, dtype=torch.int32)
    with pytest.raises(ValueError, match="lti"):
        _model(("lti", "mamba", "mamba"))(ids, seq_idx=seq_idx)
    seq_idx[0, 4:] = 1  # a sequence starting at 4, inside a pooled group of 8
    with pytest.raises(ValueError, match="position 4.*multiple of the total pooling factor 8"):
        _model()(ids, seq_idx=seq_idx)
