"""DNA models: the next-token LM is `core.models.MambaLM`; here, the sequence classifier.

    ids (B, L), lengths (B,) -> backbone (causal, BiMamba, optionally RC-equivariant) -> (B, L, D')
        -> pooling over positions < length (mean, or the last token) -> linear head -> logits (B, C)

With `rc_equivariant`, the backbone gives [f(x), flip f(rc x)] and the head scores each half with
the same weights and adds them, so the logits of a sequence and of its reverse complement are equal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from core.models import MambaConfig, MambaLM
from core.models.bidirectional import BiMambaBackbone, RCEquivariantBackbone, call_backbone

from .tokenizer import COMPLEMENT, VOCAB_SIZE

POOLINGS = ("mean", "last")


@dataclass
class ClassifierConfig:
    backbone: MambaConfig = field(default_factory=lambda: MambaConfig(d_model=64, n_layer=2, vocab_size=VOCAB_SIZE))
    num_classes: int = 2
    pooling: str = "mean"  # "mean" over positions < length, or "last" (the last real token)
    bidirectional: bool = False  # BiMamba layers (Caduceus): each position sees both sides
    rc_equivariant: bool = False  # same logits for a sequence and its reverse complement

    @classmethod
    def from_dict(cls, data: dict) -> ClassifierConfig:
        fields = dict(data)
        known = MambaConfig.__dataclass_fields__
        fields["backbone"] = MambaConfig(**{k: v for k, v in fields["backbone"].items() if k in known})
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


def pool(hidden: torch.Tensor, lengths: torch.Tensor, how: str, from_right: bool = False) -> torch.Tensor:
    """hidden (B, L, D) -> (B, D) over positions < length. `last` takes position length-1, or
    position 0 when `from_right` (a strand that was flipped back reads its last token there)."""
    if how == "mean":
        mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None].to(hidden.device)
        mask = mask.to(hidden.dtype)[..., None]  # (B L 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if how == "last":
        index = torch.zeros_like(lengths) if from_right else lengths - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index.to(hidden.device)]
    raise ValueError(f"pooling must be one of {POOLINGS}; got {how!r}")


class DNAClassifier(nn.Module):
    """Sequence classifier on a Mamba backbone; `forward(ids (B, L), lengths (B,)) -> logits (B, C)`."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        if config.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {config.pooling!r}")
        self.config = config
        # the causal backbone is MambaLM's, so a pretrained LM's `backbone.*` weights load directly
        backbone = BiMambaBackbone(config.backbone) if config.bidirectional else MambaLM(config.backbone).backbone
        self.backbone = RCEquivariantBackbone(backbone, COMPLEMENT) if config.rc_equivariant else backbone
        self.head = nn.Linear(config.backbone.d_model, config.num_classes)

    def features(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features (B, D), or (B, 2, D) forward/reverse strands with rc_equivariant."""
        if lengths is None:
            lengths = torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device)
        hidden = call_backbone(self.backbone, input_ids, lengths)  # (B L D) or (B L 2D)
        if not self.config.rc_equivariant:
            return pool(hidden, lengths, self.config.pooling)
        d = self.config.backbone.d_model
        fwd = pool(hidden[..., :d], lengths, self.config.pooling)
        rev = pool(hidden[..., d:], lengths, self.config.pooling, from_right=True)
        return torch.stack([fwd, rev], dim=1)  # (B 2 D)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.features(input_ids, lengths)
        if self.config.rc_equivariant:
            return self.head(feats).mean(1)  # same head on both strands: swapping them changes nothing
        return self.head(feats)

    def load_backbone_from_lm(self, lm_state: dict[str, torch.Tensor]) -> int:
        """Copy `backbone.*` weights of a pretrained MambaLM (causal backbone only); returns the count."""
        if self.config.bidirectional:
            raise ValueError("--init-from: a pretrained (causal) LM cannot initialise a bidirectional classifier")
        target = self.backbone.backbone if self.config.rc_equivariant else self.backbone
        state = {k[len("backbone.") :]: v for k, v in lm_state.items() if k.startswith("backbone.")}
        try:
            missing, unexpected = target.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatch
            raise ValueError(
                f"--init-from: LM weights have other shapes than this classifier's backbone "
                f"({str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}); "
                "use the same --d-model/--n-layer/--d-state"
            ) from err
        if missing or unexpected:
            raise ValueError(
                f"--init-from: LM weights do not fit the backbone (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}); use the same --d-model/--n-layer"
            )
        return len(state)
