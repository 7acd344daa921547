import torch

from core.models import MambaConfig
from core.models.bidirectional import RCEquivariantBackbone, flip_padded
from mamba_bio.models import ClassifierConfig, DNAClassifier
from mamba_bio.tokenizer import COMPLEMENT, reverse_complement


def test_backbone_of_reverse_complement_is_flipped_and_strand_swapped():
    torch.manual_seed(0)
    cfg = ClassifierConfig(MambaConfig(16, 2, 12, d_state=4, backend="ref"), 2, rc_equivariant=True)
    backbone = DNAClassifier(cfg).backbone.eval()
    assert isinstance(backbone, RCEquivariantBackbone)
    x = torch.randint(7, 12, (2, 30))
    h, h_rc = backbone(x), backbone(reverse_complement(x))  # (B L 2D)
    d = 16
    expected = torch.cat([h[..., d:], h[..., :d]], -1).flip(1)  # swap strands, reverse positions
    torch.testing.assert_close(h_rc, expected, atol=1e-5, rtol=1e-5)


def test_classifier_logits_are_rc_invariant_but_not_trivially_constant():
    torch.manual_seed(1)
    for bidirectional in (False, True):
        cfg = ClassifierConfig(MambaConfig(16, 2, 12, d_state=4, backend="ref"), 3, "mean", bidirectional, True)
        model = DNAClassifier(cfg).eval()
        x = torch.randint(7, 12, (4, 25))
        torch.testing.assert_close(model(reverse_complement(x)), model(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(x)[0], model(x)[1])  # different inputs still differ


def test_plain_classifier_is_not_rc_invariant():
    torch.manual_seed(2)
    model = DNAClassifier(ClassifierConfig(MambaConfig(16, 2, 12, d_state=4, backend="ref"), 3)).eval()
    x = torch.randint(7, 11, (2, 25))
    assert not torch.allclose(model(reverse_complement(x)), model(x), atol=1e-4)


def test_flip_padded_reverses_inside_lengths_only():
    x = torch.arange(5)[None, :, None].repeat(2, 1, 1).float()
    out = flip_padded(x, torch.tensor([5, 3]))[..., 0]
    assert out.tolist() == [[4, 3, 2, 1, 0], [2, 1, 0, 3, 4]]
    assert torch.equal(COMPLEMENT[COMPLEMENT], torch.arange(12))
