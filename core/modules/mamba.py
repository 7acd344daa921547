"""The Mamba block (selective SSM mixer), parameter names and initialisation as mamba_ssm's `Mamba`.

    hidden (B, L, D) -> in_proj -> x, z (B, E, L)
    x -> causal depthwise conv1d -> silu -> x_proj -> dt (B, R, L), B, C (B, N, L)
    y = selective_scan(x, dt_proj(dt), -exp(A_log), B, C, D, z, dt_proj.bias, softplus)
    out = out_proj(y)  (B, L, D)

E = expand * D inner channels, N = d_state, R = dt_rank. `forward` runs the whole sequence in
parallel; `step` runs one position from a `MambaCache`; both give the same outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.ops import causal_conv1d_step, resolve_backend, selective_scan, selective_state_update
from core.ops.mamba_inner import channel_major as _channel_major


@dataclass
class MambaCache:
    """Recurrent state of one Mamba block.

    conv_state: (B, E, d_conv) the last d_conv inputs of the conv, oldest first.
    ssm_state:  (B, E, N) float32, h after the last position seen.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


class Mamba(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,  # None: ceil(d_model / 16), mamba_ssm's "auto"
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.backend = backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        # padding kept for parity with mamba_ssm's module; forward pads explicitly (see _conv)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias, **factory
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt_proj.weight: the std keeps the variance of dt_proj(dt) at dt_scale after the rank-R product
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'constant' or 'random'; got {dt_init!r}")
        # dt_proj.bias: softplus(bias) log-uniform in [dt_min, dt_max], so the bias is the inverse
        # softplus of such a dt (https://github.com/pytorch/pytorch/issues/72759 for the formula)
        dt = torch.exp(torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True  # the LM's init must not zero this bias

        # S4D-Real: A_n = -(n + 1); kept as log in float32 so exp(A_log) stays exact under bf16 training
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # (E N)
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # (E,) float32
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        # training on the Triton backend: conv, projections, scan and out_proj as one autograd step
        # that keeps 3 fewer (B, E, L) activations (core/ops/mamba_inner.py); False: separate ops
        self.fused_inner = True

    def allocate_cache(self, batch_size: int, dtype=None) -> MambaCache:
        """Zero state for `batch_size` sequences (conv state in `dtype`, SSM state in float32)."""
        device = self.conv1d.weight.device
        dtype = dtype or self.conv1d.weight.dtype
        return MambaCache(
            conv_state=torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
            ssm_state=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def _conv(self, x: torch.Tensor, cache: MambaCache | None, seq_idx: torch.Tensor | None) -> torch.Tensor:
        """Causal depthwise conv of x (B, E, L); with a cache it continues from the cached inputs.

        With seq_idx (B, L), an output only sees inputs of its own packed sequence (cached inputs
        count as part of the row's first sequence, like `initial_state` in the scan).
        """
        k = self.d_conv
        if cache is None and seq_idx is None:
            # padding inside the conv: no padded copy of x is made (the conv keeps x itself, a view of xz)
            return F.conv1d(x, self.conv1d.weight, self.conv1d.bias, padding=k - 1, groups=self.d_inner)[
                ..., : x.shape[2]
            ]
        if cache is None:
            history = x.new_zeros(x.shape[0], self.d_inner, k - 1)
        else:
            history = cache.conv_state[:, :, 1:].to(x.dtype)  # the d_conv - 1 inputs before x
            # contiguous: `step` updates it in place, and a captured CUDA graph keeps its address
            cache.conv_state = torch.cat([cache.conv_state, x.to(cache.conv_state.dtype)], dim=2)[
                :, :, -k:
            ].contiguous()
        x_full = torch.cat([history, x], dim=2)  # (B E L + k - 1)
        if seq_idx is None:
            return F.conv1d(x_full, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)  # (B E L)
        length = x.shape[2]
        seq_full = torch.cat([seq_idx[:, :1].expand(-1, k - 1), seq_idx], dim=1)  # (B L + k - 1)
        weight = self.conv1d.weight[:, 0, :]  # (E k)
        out = 0
        for j in range(k):  # tap j reads the input k - 1 - j steps back
            same = (seq_full[:, j : j + length] == seq_idx).unsqueeze(1)  # (B 1 L)
            out = out + weight[:, j, None] * x_full[:, :, j : j + length] * same
        return out if self.conv1d.bias is None else out + self.conv1d.bias[:, None]

    def _conv_act(self, x: torch.Tensor, cache: MambaCache | None, seq_idx: torch.Tensor | None) -> torch.Tensor:
        """silu(causal conv(x)), x (B, E, L). When training without a cache, the conv's output is
        recomputed in backward instead of being kept for silu's backward: one (B, E, L) activation
        less per layer for a depthwise conv, which costs little to redo."""
        if cache is None and torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(lambda t: F.silu(self._conv(t, None, seq_idx)), x, use_reentrant=False)
        return F.silu(self._conv(x, cache, seq_idx))

    def _conv_step(self, x: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """One position of the causal conv, then silu: x (B, E) -> (B, E); shifts cache.conv_state in place."""
        bias = self.conv1d.bias
        return causal_conv1d_step(cache.conv_state, x, self.conv1d.weight.squeeze(1), bias, backend=self.backend)

    def _step_constants(self):
        """A = -exp(A_log), D and the dt bias in float32 for `step`. Outside autograd they are
        computed once per parameter version and reused: in a captured decoding graph they would
        otherwise be ~5 kernels per layer per token for values that do not change."""
        params = (self.A_log, self.D, self.dt_proj.bias)
        if torch.is_grad_enabled():
            return -torch.exp(self.A_log.float()), self.D.float(), self.dt_proj.bias.float()
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if getattr(self, "_step_cache", (None,))[0] != key:
            self._step_cache = (key, -torch.exp(self.A_log.float()), self.D.float(), self.dt_proj.bias.float())
        return self._step_cache[1:]

    def forward(
        self, hidden: torch.Tensor, cache: MambaCache | None = None, seq_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden: (B, L, D) -> (B, L, D). With `cache`, start from its state and leave the final state in it.

        seq_idx (B, L) int: packed sequences; neither the conv nor the scan crosses a change of index.
        """
        # Projections as (out, in) @ (B, in, L) products: every activation comes out channel-major
        # and contiguous, the layout the conv and the scan read, so no transposed copy is made
        # (and kept for backward) between them. Same maths as the nn.Linear calls of `step`.
        hidden_t = hidden.transpose(1, 2)  # (B D L), a view
        device = hidden.device.type
        if torch.is_autocast_enabled(device):
            # cast once: autocast would cast the input of each product separately, and both copies
            # would be kept for backward (0.5 GiB a layer at 2^20 tokens and d_model 256)
            hidden_t = hidden_t.to(torch.get_autocast_dtype(device))
        x = self._project(self.in_proj, hidden_t, 0, self.d_inner)  # (B E L)
        z = self._project(self.in_proj, hidden_t, self.d_inner, 2 * self.d_inner)  # (B E L)
        if cache is None and torch.is_grad_enabled() and self.fused_inner and self._triton(x):
            from core.ops.mamba_inner import mamba_inner

            out = mamba_inner(
                x, z, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                self.dt_proj.bias, self.A_log, self.D, self.out_proj.weight, self.out_proj.bias, self.dt_rank,
                self.d_state, seq_idx, None if seq_idx is None else (lambda t: self._conv(t, None, seq_idx)),
            )  # fmt: skip
            return out  # (B L D)
        x = self._conv_act(x, cache, seq_idx)
        dt, B, C = _channel_major(self.x_proj.weight, x).split([self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = _channel_major(self.dt_proj.weight, dt)  # (B E L); the bias goes to the scan (delta_bias)
        A = -torch.exp(self.A_log.float())  # (E N)
        y = selective_scan(
            x,
            delta,
            A,
            B,  # (B N L)
            C,
            self.D.float(),
            z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            initial_state=None if cache is None else cache.ssm_state,
            return_last_state=cache is not None,
            backend=self.backend,
            seq_idx=seq_idx,
        )
        if cache is not None:
            y, cache.ssm_state = y
        return self._project(self.out_proj, y, 0, self.d_model).transpose(1, 2)  # (B L D)

    def _triton(self, x: torch.Tensor) -> bool:
        return resolve_backend(self.backend, x.is_cuda) == "triton"

    @staticmethod
    def _project(linear: nn.Linear, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of linear applied channel-major: x (B, in, L) -> (B, stop - start, L)."""
        out = _channel_major(linear.weight[start:stop], x)
        return out if linear.bias is None else out + linear.bias[start:stop, None]

    def step(self, hidden: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """hidden: (B, D) one position -> (B, D); updates `cache` in place."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B E) each
        x = self._conv_step(x, cache)
        # dt stays low-rank: the step applies dt_proj itself (fused into its kernel on CUDA)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        A, D, dt_bias = self._step_constants()
        y = selective_state_update(
            cache.ssm_state,
            x,
            dt,
            A,
            B,
            C,
            D,
            z,
            dt_bias=dt_bias,
            dt_softplus=True,
            dt_proj_weight=self.dt_proj.weight,
            backend=self.backend,
        )
        return self.out_proj(y)
