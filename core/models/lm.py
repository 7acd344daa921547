"""Mamba language model, state_dict-compatible with mamba_ssm's `MambaLMHeadModel`.

    ids (B, L) -> embedding -> n_layer x [residual add -> norm -> Mamba] -> residual add -> norm_f
        -> lm_head -> logits (B, L, V)   (V = vocab_size padded to a multiple of 8)

Keys: backbone.embedding.weight, backbone.layers.{i}.norm.weight, backbone.layers.{i}.mixer.*,
backbone.norm_f.weight, lm_head.weight, so a mamba_ssm checkpoint loads with `load_state_dict`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.generation import InferenceCache, decoder, sample_logits
from core.modules.lti import MambaLTI
from core.modules.mamba import Mamba
from core.modules.norm import RMSNorm, add_rms_norm_autograd
from core.ops import add_rms_norm


@dataclass
class MambaConfig:
    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    rms_norm: bool = True  # False: LayerNorm (weight and bias), as mamba_ssm's rms_norm=False
    residual_in_fp32: bool = True  # the residual stream sums n_layer updates: keep it out of bf16
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 8  # lm_head rows padded so the matmul tiles evenly
    norm_epsilon: float = 1e-5
    backend: str = "auto"  # selective-scan backend for every layer, see core.ops.selective_scan
    # "mamba": selective SSM (S6); "lti" / "lti_complex": the same block with a time-invariant SSM
    # (S4D-Real / S4D-Lin A), the paper's ablation baseline. Non-default mixers change the state_dict.
    mixer: str = "mamba"
    # recompute each mixer's forward during backward (torch.utils.checkpoint): a layer then keeps
    # only its input for backward instead of ~6 (B, L, E) activations; costs one more mixer forward
    checkpoint_mixer: bool = False

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return math.ceil(self.vocab_size / m) * m


def make_norm(config: MambaConfig) -> nn.Module:
    """The pre-mixer / final norm: RMSNorm, or LayerNorm (weight and bias) when rms_norm is False."""
    if config.rms_norm:
        return RMSNorm(config.d_model, eps=config.norm_epsilon)
    return nn.LayerNorm(config.d_model, eps=config.norm_epsilon)


def add_norm(norm: nn.Module, hidden, residual, residual_in_fp32: bool, backend: str = "auto"):
    """residual += hidden, then hidden = norm(residual); the residual stream optionally kept in fp32.
    RMSNorm: under autograd a function with a smaller backward (on CUDA one Triton kernel each
    way), outside it on CUDA one fused kernel (`core.ops.add_rms_norm`)."""
    if isinstance(norm, RMSNorm):
        if torch.is_grad_enabled():  # training: the backward that keeps less (core.modules.norm)
            return add_rms_norm_autograd(hidden, residual, norm.weight, norm.eps, residual_in_fp32, backend)
        return add_rms_norm(hidden, residual, norm.weight, norm.eps, residual_in_fp32, backend=backend)
    residual = hidden if residual is None else hidden + residual
    hidden = norm(residual.to(norm.weight.dtype))
    return hidden, residual.float() if residual_in_fp32 else residual


class Block(nn.Module):
    """Add -> Norm -> Mixer: the residual add sits before the norm so add and norm fuse (mamba_ssm's order)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.backend = config.backend
        self.checkpoint_mixer = config.checkpoint_mixer
        self.norm = make_norm(config)
        size = {"d_state": config.d_state, "d_conv": config.d_conv, "expand": config.expand}
        if config.mixer == "mamba":
            self.mixer = Mamba(config.d_model, **size, backend=config.backend)
        elif config.mixer in ("lti", "lti_complex"):
            self.mixer = MambaLTI(config.d_model, **size, complex_a=config.mixer == "lti_complex")
        else:
            raise ValueError(f"MambaConfig.mixer must be 'mamba', 'lti' or 'lti_complex'; got {config.mixer!r}")

    def _add_norm(self, hidden, residual):
        return add_norm(self.norm, hidden, residual, self.residual_in_fp32, self.backend)

    def forward(self, hidden, residual=None, cache=None, seq_idx=None):
        """hidden, residual: (B, L, D) -> (mixer output, residual)."""
        hidden, residual = self._add_norm(hidden, residual)
        if self.checkpoint_mixer and cache is None and torch.is_grad_enabled():
            return checkpoint(self.mixer, hidden, None, seq_idx, use_reentrant=False), residual
        return self.mixer(hidden, cache, seq_idx), residual

    def step(self, hidden, residual, cache):
        """hidden, residual: (B, D) one position."""
        hidden, residual = self._add_norm(hidden, residual)
        return self.mixer.step(hidden, cache), residual


class MambaBackbone(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.backend = config.backend

    def _final(self, hidden, residual):
        return add_norm(self.norm_f, hidden, residual, False, self.backend)[0]

    def forward(
        self, input_ids: torch.Tensor, cache: InferenceCache | None = None, seq_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids: (B, L) -> hidden states after the final norm (B, L, D); seq_idx: packed sequences."""
        hidden, residual = self.embedding(input_ids), None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, None if cache is None else cache.layers[i], seq_idx)
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return self._final(hidden, residual)

    def step(self, tokens: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """tokens: (B,) -> hidden state after the final norm (B, D)."""
        hidden, residual = self.embedding(tokens), None
        for layer, layer_cache in zip(self.layers, cache.layers):
            hidden, residual = layer.step(hidden, residual, layer_cache)
        cache.seqlen_offset += 1
        return self._final(hidden, residual)


class MambaLM(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self.apply(lambda module: _init_weights(module, config.n_layer))
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward(
        self, input_ids: torch.Tensor, cache: InferenceCache | None = None, seq_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids: (B, L) int64 -> logits (B, L, V). With `cache`, continue from it and update it.

        seq_idx (B, L) int: several sequences packed in a row, kept apart (no padding needed).
        """
        return self.lm_head(self.backbone(input_ids, cache, seq_idx))

    def new_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> InferenceCache:
        """Empty recurrent state for `batch_size` sequences; fill it with `model(ids, cache=cache)`."""
        return InferenceCache([layer.mixer.allocate_cache(batch_size, dtype) for layer in self.backbone.layers])

    def step(self, tokens: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """tokens: (B,) the next token of each sequence -> logits (B, V); updates `cache`."""
        return self.lm_head(self.backbone.step(tokens, cache))

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        cuda_graph: bool | None = None,
    ) -> torch.Tensor:
        """Sample continuations: input_ids (B, L0) -> (B, L0 + max_new_tokens).

        The prompt is run in parallel once, then one recurrent `step` per new token; padding
        rows of the vocabulary are never sampled. On CUDA (or with cuda_graph=True) each step
        replays one captured CUDA graph.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"generate: input_ids must be (batch, length >= 1); got shape {tuple(input_ids.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be >= 0; got {max_new_tokens}")
        if max_new_tokens == 0:
            return input_ids.clone()
        cache = self.new_cache(input_ids.shape[0])
        sample = lambda logits: sample_logits(logits[:, : self.config.vocab_size], temperature, top_k, top_p, generator)
        token = sample(self(input_ids, cache=cache)[:, -1])  # (B,) from the prompt's last logits
        use_graph = (input_ids.is_cuda if cuda_graph is None else cuda_graph) and max_new_tokens > 1
        step = lambda tokens, c, _phase: self.step(tokens, c)
        _, next_token = decoder(step, sample, cache, input_ids.shape[0], input_ids.device, use_graph, generator)
        out = [input_ids, token[:, None]]
        for _ in range(max_new_tokens - 1):
            token = next_token(token)
            out.append(token[:, None].clone())  # a graph reuses its output buffer
        cache.seqlen_offset = input_ids.shape[1] + max_new_tokens - 1  # graph replays skip the Python counter
        return torch.cat(out, dim=1)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json and model.safetensors (tied weights stored once, as safetensors requires)."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        save_model(self, str(directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device=None) -> MambaLM:
        """Load what `save_pretrained` wrote, or a mamba_ssm checkpoint folder (its config.json with
        `ssm_cfg`, and pytorch_model.bin read with weights_only=True: no pickled code runs)."""
        directory = Path(directory)
        model = cls(config_from_dict(json.loads((directory / "config.json").read_text())))
        if (directory / "model.safetensors").exists():
            from safetensors.torch import load_model

            load_model(model, str(directory / "model.safetensors"), device=str(device or "cpu"))
        elif (directory / "pytorch_model.bin").exists():
            state = torch.load(directory / "pytorch_model.bin", map_location=device or "cpu", weights_only=True)
            model.load_state_dict(state)
        else:
            raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin next to config.json")
        return model.to(device) if device is not None else model


def config_from_dict(fields: dict) -> MambaConfig:
    """MambaConfig from our config.json or mamba_ssm's (whose block sizes sit in `ssm_cfg`).

    mamba_ssm options this model does not implement (Mamba-2 layers, attention layers) are refused
    rather than silently dropped, since the weights would not mean the same thing.
    """
    fields = dict(fields)
    ssm_cfg = fields.pop("ssm_cfg", None) or {}
    layer = ssm_cfg.pop("layer", "Mamba1")
    if layer != "Mamba1" or fields.get("attn_layer_idx"):
        raise ValueError(f"config: only Mamba-1 layers are supported; got layer={layer!r}, "
                         f"attn_layer_idx={fields.get('attn_layer_idx')!r}")  # fmt: skip
    for key in ("d_state", "d_conv", "expand"):
        if key in ssm_cfg:
            fields[key] = ssm_cfg.pop(key)
    unknown_ssm = sorted(set(ssm_cfg) - {"dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor",
                                         "conv_bias", "bias", "use_fast_path"})  # fmt: skip
    if (
        unknown_ssm
        or ssm_cfg.get("dt_rank", "auto") != "auto"
        or ssm_cfg.get("bias")
        or not ssm_cfg.get("conv_bias", True)
    ):
        raise ValueError(f"config: ssm_cfg {ssm_cfg} has options this Mamba block does not implement")
    known = MambaConfig.__dataclass_fields__
    return MambaConfig(**{k: v for k, v in fields.items() if k in known})


def _init_weights(module: nn.Module, n_layer: int) -> None:
    """mamba_ssm's init: zero biases (except dt_proj's), N(0, 0.02) embeddings, and out_proj scaled
    by 1/sqrt(n_layer) so the residual stream's variance does not grow with depth (GPT-2's rule)."""
    if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, Mamba):
        nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
        with torch.no_grad():
            module.out_proj.weight /= math.sqrt(n_layer)
