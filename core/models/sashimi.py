"""SaShiMi-style multi-rate U-Net over a token sequence (Goel et al. 2022, arXiv 2202.09729).

Domain-free: it models any sequence of `vocab_size` classes (8-bit mu-law audio in
`mamba_audio`). With pools [p1, p2] the network has three stages, outer to inner:

    tokens (B, L) -> embedding (B, L, D)
    stage 0 (rate 1, width D)  ----------------------------- skip ----------+
      DownPool p1: reshape (B, L/p1, p1*D) -> linear -> (B, L/p1, eD)        |
      stage 1 (rate 1/p1, width eD)  ------------ skip ----------+           |
        DownPool p2 -> stage 2 (centre, rate 1/(p1 p2), width e^2 D):        |
          x = blocks(x) + x                                      |           |
        UpPool p2: linear -> shift one coarse step -> reshape    |           |
        x = up + skip;  x = blocks(x) + x  <---------------------+           |
      UpPool p1; x = up + skip;  x = blocks(x) + x  <------------------------+
    RMSNorm -> lm_head -> logits (B, L, vocab_size)

This is SaShiMi's non-U-Net layout: the down path only pools, each stage's `n_layer` residual
blocks sit after its UpPool (the centre's at the bottom), and each stage has the extra skip around
its block stack. The UpPool shift by one coarse step is what keeps the whole network causal: the
coarse output made from inputs [k p, (k+1) p) is only used from position (k+1) p on.

Each stage picks its block separately (`stage_blocks`, outer first): "mamba" (selective) or
"lti" (time-invariant, `MambaLTI`), so "LTI outside, selective inside" is one config line.

`step` runs the same network one position at a time: the outer stage runs every position, the
next every p1-th, the centre every (p1 p2)-th, and the outputs equal `forward`'s.

Packed sequences (`forward(ids, seq_idx)`, see core.packing): every sequence must start at a
multiple of prod(pool), so a pooled step never mixes two sequences; stage i then reads
seq_idx[:, ::p1...pi], its Mamba blocks reset where it changes, and UpPool's causal shift feeds
zeros (not the previous sequence's last coarse step) into the first group of each sequence, as
it does at position 0. Each packed sequence then gets exactly the outputs it gets on its own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from core.modules import Mamba, MambaCache, RMSNorm
from core.modules.lti import MambaLTI

BLOCK_KINDS = ("mamba", "lti")


@dataclass
class SashimiConfig:
    vocab_size: int = 256  # classes per position: 256 for 8-bit mu-law audio
    d_model: int = 64  # width of the outer stage; stage i is d_model * expand**i wide
    n_layer: int = 8  # residual blocks per stage (SaShiMi and Mamba's SC09 models use 8)
    pool: tuple[int, ...] = (4, 4)  # pooling factor between consecutive stages, outer first
    expand: int = 2  # width multiplier at each pooling (SaShiMi's default)
    stage_blocks: tuple[str, ...] = ("mamba", "mamba", "mamba")  # one of BLOCK_KINDS per stage, outer first
    d_state: int = 16
    d_conv: int = 4
    mixer_expand: int = 2  # the Mamba block's own inner expansion E = mixer_expand * width
    lti_complex: bool = False  # LTI stages: False = real S4D-Real A, True = complex S4D-Lin A

    def __post_init__(self):
        self.pool = tuple(int(p) for p in self.pool)
        self.stage_blocks = tuple(self.stage_blocks)
        if len(self.stage_blocks) != len(self.pool) + 1:
            raise ValueError(
                f"stage_blocks needs one entry per stage, len(pool) + 1 = {len(self.pool) + 1}; "
                f"got {list(self.stage_blocks)} for pool {list(self.pool)}"
            )
        bad = [k for k in self.stage_blocks if k not in BLOCK_KINDS]
        if bad:
            raise ValueError(f"unknown block kind(s) {bad} in stage_blocks; choose from {list(BLOCK_KINDS)}")
        if any(p < 1 for p in self.pool):
            raise ValueError(f"pooling factors must be >= 1; got {list(self.pool)}")

    @property
    def total_pool(self) -> int:
        """Sequence lengths given to `forward` must be a multiple of this."""
        total = 1
        for p in self.pool:
            total *= p
        return total


class ResidualBlock(nn.Module):
    """x + mixer(RMSNorm(x)) with a Mamba or LTI mixer; x: (B, L, H)."""

    def __init__(self, width: int, kind: str, config: SashimiConfig):
        super().__init__()
        self.norm = RMSNorm(width)
        if kind == "mamba":
            self.mixer = Mamba(width, config.d_state, config.d_conv, config.mixer_expand)
        else:
            self.mixer = MambaLTI(
                width, config.d_state, config.d_conv, config.mixer_expand, complex_a=config.lti_complex
            )

    def forward(self, x: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, H), seq_idx (B, L) or None -> (B, L, H)."""
        if seq_idx is None:
            return x + self.mixer(self.norm(x))
        return x + self.mixer(self.norm(x), None, seq_idx)

    def step(self, x: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """x: (B, H) one position -> (B, H)."""
        return x + self.mixer.step(self.norm(x), cache)


class DownPool(nn.Module):
    """(B, L, H) -> (B, L/p, H * expand): p consecutive positions concatenated, then a linear map."""

    def __init__(self, width: int, expand: int, pool: int):
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(width * pool, width * expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        return self.linear(x.reshape(B, L // self.pool, self.pool * H))  # (B L/p pH) -> (B L/p eH)


class UpPool(nn.Module):
    """(B, Lc, Hc) -> (B, Lc * p, Hc / expand): a linear map to p positions, shifted one coarse step."""

    def __init__(self, width: int, expand: int, pool: int):
        super().__init__()
        self.pool, self.out_width = pool, width // expand
        self.linear = nn.Linear(width, self.out_width * pool)

    def forward(self, x: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Lc, Hc), seq_idx (B, Lc) of the coarse steps or None -> (B, Lc * p, Hc / expand)."""
        B, Lc, _ = x.shape
        y = self.linear(x)  # (B Lc pH)
        # causal shift: coarse step k feeds fine positions of block k + 1; block 0 gets zeros
        y = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)
        if seq_idx is not None:  # so does the first block of every packed sequence
            same = torch.ones_like(seq_idx, dtype=torch.bool)
            same[:, 1:] = seq_idx[:, 1:] == seq_idx[:, :-1]  # (B Lc)
            y = y * same.unsqueeze(-1).to(y.dtype)
        return y.reshape(B, Lc * self.pool, self.out_width)  # (B L H)


@dataclass
class SashimiCache:
    """Recurrent state of the whole U-Net.

    position: positions seen at the outer rate.
    down: per pooling level, (B, p, H) the inputs of the current unfinished group of p.
    up: per pooling level, (B, p, H) the UpPool outputs for the current group of p positions.
    blocks: per stage (outer first), the caches of its blocks.
    """

    position: int
    down: list[torch.Tensor]
    up: list[torch.Tensor]
    blocks: list[list[MambaCache]]

    def tensors(self) -> list[torch.Tensor]:
        """Every state tensor (pooling buffers, then the blocks' conv and SSM states)."""
        return [*self.down, *self.up, *(t for stage in self.blocks for c in stage for t in (c.conv_state, c.ssm_state))]


class Sashimi(nn.Module):
    def __init__(self, config: SashimiConfig):
        super().__init__()
        self.config = config
        widths = [config.d_model * config.expand**i for i in range(len(config.pool) + 1)]
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.down_pools = nn.ModuleList(DownPool(widths[i], config.expand, p) for i, p in enumerate(config.pool))
        self.up_pools = nn.ModuleList(UpPool(widths[i + 1], config.expand, p) for i, p in enumerate(config.pool))
        # stages[i]: the blocks at rate 1 / (p1 ... pi); the last one is the centre
        self.stages = nn.ModuleList(
            nn.ModuleList(ResidualBlock(w, kind, config) for _ in range(config.n_layer))
            for w, kind in zip(widths, config.stage_blocks)
        )
        self.norm_f = RMSNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    # -- parallel ------------------------------------------------------------------------------
    def _stage(self, level: int, x: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Stage `level` and everything inside it; x (B, L_level, H_level) -> same shape.

        seq_idx (B, L_level) or None: the packed sequence of each position at this stage's rate.
        """
        if level < len(self.down_pools):
            pool = self.down_pools[level].pool
            coarse_idx = None if seq_idx is None else seq_idx[:, ::pool]  # (B L/p): each group's sequence
            inner = self._stage(level + 1, self.down_pools[level](x), coarse_idx)
            x = self.up_pools[level](inner, coarse_idx) + x
        h = x
        for block in self.stages[level]:
            h = block(h, seq_idx)
        return h + x

    def forward(self, input_ids: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: (B, L) int64, L a multiple of prod(pool) -> logits (B, L, vocab_size).

        seq_idx (B, L) int: packed sequences, each starting at a multiple of prod(pool) (see the
        module docstring); selective ("mamba") stages only.
        """
        length = input_ids.shape[1]
        if length % self.config.total_pool:
            raise ValueError(
                f"Sashimi.forward: length {length} is not a multiple of the total pooling factor "
                f"{self.config.total_pool} (pool {list(self.config.pool)}); pad or crop the input"
            )
        if seq_idx is not None:
            self._check_packed(seq_idx, input_ids.shape)
        x = self._stage(0, self.embedding(input_ids), seq_idx)  # (B L D)
        return self.lm_head(self.norm_f(x))

    def _check_packed(self, seq_idx: torch.Tensor, shape: torch.Size) -> None:
        """ValueError unless seq_idx fits `shape`, every stage can reset, and sequences start aligned."""
        if tuple(seq_idx.shape) != tuple(shape):
            raise ValueError(f"Sashimi.forward: seq_idx has shape {tuple(seq_idx.shape)}, expected {tuple(shape)}")
        if "lti" in self.config.stage_blocks:
            raise ValueError(
                f"Sashimi: packed sequences (seq_idx) need selective stages; stage_blocks "
                f"{list(self.config.stage_blocks)} has 'lti' stages, whose FFT convolution cannot reset "
                "between sequences: use stage_blocks of 'mamba' only, or unpacked (padded) rows"
            )
        total = self.config.total_pool
        starts = torch.zeros_like(seq_idx, dtype=torch.bool)
        starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]  # (B L) where a sequence starts
        misplaced = starts & (torch.arange(shape[1], device=seq_idx.device) % total != 0)
        if bool(misplaced.any()):  # one host sync per forward: cheap next to the model
            first = int(misplaced.nonzero()[0, 1])
            raise ValueError(
                f"Sashimi.forward: a packed sequence starts at position {first}, not a multiple of the total "
                f"pooling factor {total}; place sequences at aligned offsets (core.packing.pack(align={total}))"
            )

    # -- recurrent -----------------------------------------------------------------------------
    def new_cache(self, batch_size: int) -> SashimiCache:
        """Zero state for `batch_size` sequences starting at position 0."""
        param = self.lm_head.weight
        zeros = lambda p, h: torch.zeros(batch_size, p, h, device=param.device, dtype=param.dtype)  # noqa: E731
        return SashimiCache(
            position=0,
            down=[zeros(dp.pool, dp.linear.in_features // dp.pool) for dp in self.down_pools],
            up=[zeros(up.pool, up.out_width) for up in self.up_pools],
            blocks=[[b.mixer.allocate_cache(batch_size) for b in stage] for stage in self.stages],
        )

    def _stage_step(self, level: int, x: torch.Tensor, cache: SashimiCache, position: int) -> torch.Tensor:
        """One position of stage `level` at its own rate; x (B, H_level) -> (B, H_level)."""
        if level < len(self.down_pools):
            pool = self.down_pools[level].pool
            phase = position % pool
            cache.down[level][:, phase] = x
            # cache.up (B p H) was made by the coarse stage from the previous group; read it before
            # a completed group refreshes it (in place, so a captured CUDA graph sees the update)
            x = cache.up[level][:, phase] + x
            if phase == pool - 1:  # a group is complete: the coarse stage takes one step
                coarse = self.down_pools[level].linear(cache.down[level].flatten(1))  # (B eH)
                coarse = self._stage_step(level + 1, coarse, cache, position // pool)
                cache.up[level].copy_(self.up_pools[level].linear(coarse).view_as(cache.up[level]))
        h = x
        for block, block_cache in zip(self.stages[level], cache.blocks[level]):
            h = block.step(h, block_cache)
        return h + x

    def step(self, tokens: torch.Tensor, cache: SashimiCache) -> torch.Tensor:
        """tokens: (B,) int64 at position `cache.position` -> logits (B, vocab_size); advances the cache."""
        logits = self.step_at(tokens, cache, cache.position)
        cache.position += 1
        return logits

    def step_at(self, tokens: torch.Tensor, cache: SashimiCache, position: int) -> torch.Tensor:
        """`step` at an explicit position, leaving cache.position alone. The path through the
        stages depends only on position % total_pool: a CUDA graph per phase replays any position."""
        return self.lm_head(self.norm_f(self._stage_step(0, self.embedding(tokens), cache, position)))

    # -- save / load ---------------------------------------------------------------------------
    def save_config(self, directory: str | Path) -> Path:
        """Write config.json into `directory` (beside the weights); returns its path."""
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(asdict(self.config), indent=2))
        return path

    @staticmethod
    def load_config(directory: str | Path) -> SashimiConfig:
        """Read the SashimiConfig written by `save_config`."""
        return SashimiConfig(**json.loads((Path(directory) / "config.json").read_text()))
