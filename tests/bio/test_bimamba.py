import torch

from core.models import MambaConfig
from core.models.bidirectional import BiMambaBackbone
from mamba_bio.models import ClassifierConfig, DNAClassifier


def test_bimamba_positions_see_the_future_and_causal_ones_do_not():
    torch.manual_seed(0)
    cfg = MambaConfig(16, 2, 12, d_state=4, backend="ref")
    bi = BiMambaBackbone(cfg).eval()
    causal = DNAClassifier(ClassifierConfig(cfg, 2)).backbone.eval()
    x = torch.randint(7, 11, (1, 20))
    y = x.clone()
    y[0, 15] = 7 if x[0, 15] != 7 else 8  # change one token after position 5
    assert not torch.allclose(bi(x)[0, 5], bi(y)[0, 5])
    torch.testing.assert_close(causal(x)[0, 5], causal(y)[0, 5])


def test_bimamba_shares_in_and_out_projections():
    bi = BiMambaBackbone(MambaConfig(16, 1, 12, d_state=4, backend="ref"))
    mixer = bi.layers[0].mixer
    assert mixer.fwd.in_proj.weight is mixer.rev.in_proj.weight
    assert mixer.fwd.out_proj.weight is mixer.rev.out_proj.weight
    assert mixer.fwd.A_log is not mixer.rev.A_log
    # shared weights are counted once: two directions cost less than two full mixers
    single = sum(p.numel() for p in mixer.fwd.parameters())
    assert sum(p.numel() for p in mixer.parameters()) < 2 * single
