"""Bidirectional and reverse-complement-equivariant backbones built from Mamba blocks.

- `BiMambaBackbone`: Caduceus's BiMamba (Schiff et al. 2024, arXiv 2403.03234, sec. 3.1): every
  layer runs its mixer forward and on the reversed sequence, the two directions sharing in_proj
  and out_proj (so the parameter count grows only by the conv/SSM parameters), outputs added.
- `RCEquivariantBackbone`: wraps any backbone f into h(x) = [f(x), flip(f(rc(x)))] (channels
  concatenated), with one set of parameters for both strands. Then h(rc(x)) = flip(swap(h(x))),
  where swap exchanges the two channel halves: the equivariance Caduceus gets from RC parameter
  sharing (there per layer, here around the whole backbone).

Both accept right-padded batches with `lengths`: reversal happens inside each sequence's length,
so padding is never read by any position < length in either direction.

"Reverse complement" is given as a token permutation, so this file stays domain-free.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from core.models.lm import MambaConfig, add_norm, make_norm
from core.modules.mamba import Mamba


def flip_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse x (B, L, ...) along L within each sequence's length; positions >= length stay put."""
    if lengths is None:
        return x.flip(1)
    B, L = x.shape[:2]
    pos = torch.arange(L, device=x.device).expand(B, L)  # (B L)
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(pos < lengths, lengths - 1 - pos, pos)  # (B L)
    index = index.view(B, L, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class BiMamba(nn.Module):
    """y = fwd(x) + reverse(rev(reverse(x))); rev shares fwd's in_proj and out_proj. x: (B, L, D)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, backend: str = "auto"):
        super().__init__()
        self.fwd = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
        self.rev = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
        # the weight tie of Caduceus's BiMambaWrapper: projections shared, SSM/conv per direction
        self.rev.in_proj = self.fwd.in_proj
        self.rev.out_proj = self.fwd.out_proj

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        backward = flip_padded(self.rev(flip_padded(hidden, lengths)), lengths)
        return self.fwd(hidden) + backward


class BiBlock(nn.Module):
    """Add -> Norm -> BiMamba, the same residual layout as `core.models.lm.Block`."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = make_norm(config)
        self.mixer = BiMamba(config.d_model, config.d_state, config.d_conv, config.expand, config.backend)

    def forward(self, hidden, residual, lengths):
        hidden, residual = add_norm(self.norm, hidden, residual, self.residual_in_fp32)
        return self.mixer(hidden, lengths), residual


class BiMambaBackbone(nn.Module):
    """input_ids (B, L), optional lengths (B,) -> hidden states after the final norm (B, L, D)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(BiBlock(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        hidden, residual = self.embedding(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, lengths)
        residual = hidden + residual
        return self.norm_f(residual.to(self.norm_f.weight.dtype))


def call_backbone(backbone: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Call a backbone with `lengths` when its forward takes them (bidirectional), without otherwise
    (causal backbones never look right, so right padding cannot reach positions < length)."""
    if "lengths" in inspect.signature(backbone.forward).parameters:
        return backbone(input_ids, lengths=lengths)
    return backbone(input_ids)


class RCEquivariantBackbone(nn.Module):
    """h(x) = [f(x), flip(f(rc(x)))]: (B, L) ids -> (B, L, 2 D), with f's parameters used for both strands.

    Args:
        backbone: f, ids (B, L) [+ lengths] -> (B, L, D).
        complement: (V,) token permutation giving each token's complement (an involution).
    """

    def __init__(self, backbone: nn.Module, complement: torch.Tensor):
        super().__init__()
        if not torch.equal(complement[complement], torch.arange(len(complement))):
            raise ValueError("RCEquivariantBackbone: complement must be an involution (complement[complement] == id)")
        self.backbone = backbone
        self.register_buffer("complement", complement.clone().long(), persistent=False)

    def reverse_complement(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """rc of each sequence within its length; padding stays at the right."""
        return flip_padded(self.complement[input_ids], lengths)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        forward_strand = call_backbone(self.backbone, input_ids, lengths)  # (B L D)
        reverse_strand = call_backbone(self.backbone, self.reverse_complement(input_ids, lengths), lengths)
        return torch.cat([forward_strand, flip_padded(reverse_strand, lengths)], dim=-1)  # (B L 2D)
