"""Variable-length batches: padding must never change a sequence's prediction."""

import pytest
import torch

from core.models import MambaConfig
from mamba_bio.labelled import collate_classification
from mamba_bio.models import ClassifierConfig, DNAClassifier


@pytest.mark.parametrize(
    "bidirectional, rc, pooling",
    [
        (False, False, "mean"),
        (False, False, "last"),
        (True, False, "mean"),
        (True, True, "last"),
    ],
)
def test_prediction_alone_equals_prediction_in_a_padded_batch(bidirectional, rc, pooling):
    torch.manual_seed(0)
    cfg = ClassifierConfig(MambaConfig(16, 2, 12, d_state=4, backend="ref"), 3, pooling, bidirectional, rc)
    model = DNAClassifier(cfg).eval()
    seqs = [torch.randint(7, 12, (n,)) for n in (23, 9, 16)]
    batch = collate_classification([(s, 0) for s in seqs])
    together = model(batch["input_ids"], batch["lengths"])
    for i, s in enumerate(seqs):
        torch.testing.assert_close(together[i], model(s[None])[0], atol=1e-5, rtol=1e-5)


def test_classifier_backbone_loads_pretrained_lm_weights():
    from core.models import MambaLM

    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(16, 2, 12, d_state=4, backend="ref"))
    for rc in (False, True):
        model = DNAClassifier(ClassifierConfig(MambaConfig(16, 2, 12, d_state=4, backend="ref"), 2, rc_equivariant=rc))
        n_backbone = len([k for k in lm.state_dict() if k.startswith("backbone.")])
        assert model.load_backbone_from_lm(lm.state_dict()) == n_backbone
        backbone = model.backbone.backbone if rc else model.backbone
        torch.testing.assert_close(backbone.layers[1].mixer.A_log, lm.backbone.layers[1].mixer.A_log)
    wider = DNAClassifier(ClassifierConfig(MambaConfig(32, 2, 12, d_state=4, backend="ref"), 2))
    with pytest.raises(ValueError, match="same --d-model"):
        wider.load_backbone_from_lm(lm.state_dict())
