"""The Mamba block with a linear time-invariant SSM (the "S4-like" mixer of Mamba's ablations).

Same in_proj -> causal conv -> SSM -> silu(z) gate -> out_proj structure as `Mamba` (it
subclasses it), but Delta, B and C are parameters, not functions of the input:

    Abar = exp(dt * A)   (E, N)      Bbar = dt * B   (ZOH for A, Euler for B, as `selective_scan`)
    h_t = Abar * h_{t-1} + Bbar * x_t,    y_t = <C, h_t> + D * x_t       (real A, S4D-Real init)
    y_t = 2 Re <C, h_t> + D * x_t                                        (complex A, S4D-Lin init)

The complex form keeps one of each conjugate pair of modes, hence the 2 Re (S4D, arXiv
2206.11893). Because the system is time-invariant, `forward` computes it as a causal
convolution with the kernel K_l = sum_n C_n Bbar_n Abar_n^l through the FFT (O(L log L),
no scan); `step` runs the recurrence itself, one position at a time, and gives the same outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.ops import selective_state_update

from .mamba import Mamba, MambaCache


class MambaLTI(Mamba):
    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        complex_a: bool = False,  # False: real S4D-Real A_n = -(n+1); True: complex S4D-Lin A_n = -1/2 + i pi n
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        conv_bias: bool = True,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__(
            d_model, d_state, d_conv, expand, dt_rank=1, conv_bias=conv_bias, bias=bias, device=device, dtype=dtype
        )
        # the selective parts of Mamba have no meaning here: Delta, B, C do not depend on the input
        del self.x_proj, self.dt_proj
        self.complex_a = complex_a
        E, N = self.d_inner, d_state
        # one step size per channel, log-uniform in [dt_min, dt_max] as S4D and Mamba's dt bias
        log_dt = torch.rand(E, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (E,)
        self.log_dt._no_weight_decay = True
        if complex_a:
            del self.A_log
            self.A_log_real = nn.Parameter(torch.full((E, N), math.log(0.5), device=device))  # Re A = -1/2
            self.A_imag = nn.Parameter(math.pi * torch.arange(N, device=device, dtype=torch.float32).repeat(E, 1))
            self.A_log_real._no_weight_decay = True
            self.A_imag._no_weight_decay = True
            # complex B, C stored as (..., 2) real pairs so optimisers and safetensors see real tensors
            self.B = nn.Parameter(torch.stack([torch.ones(E, N), torch.zeros(E, N)], -1).to(device))  # (E N 2)
            self.C = nn.Parameter(torch.randn(E, N, 2, device=device) * 0.5**0.5)  # (E N 2), unit variance
        else:
            # A_log (E N) from Mamba: S4D-Real
            self.B = nn.Parameter(torch.ones(E, N, device=device))  # (E N)
            self.C = nn.Parameter(torch.randn(E, N, device=device))  # (E N)

    # -- the discretised system ------------------------------------------------------------
    def _system(self):
        """(dtA (E, N), Bbar (E, N), C (E, N)), complex when `complex_a`, float32 otherwise."""
        dt = torch.exp(self.log_dt.float())[:, None]  # (E 1)
        if self.complex_a:
            A = torch.complex(-torch.exp(self.A_log_real.float()), self.A_imag.float())
            B = torch.view_as_complex(self.B.float().contiguous())
            C = torch.view_as_complex(self.C.float().contiguous())
        else:
            A, B, C = -torch.exp(self.A_log.float()), self.B.float(), self.C.float()
        return dt * A, dt * B, C

    def _readout(self, Ch: torch.Tensor) -> torch.Tensor:
        """sum over N already done; complex modes count twice (their conjugates are implicit)."""
        return 2.0 * Ch.real if self.complex_a else Ch

    def allocate_cache(self, batch_size: int, dtype=None) -> MambaCache:
        """Zero state; the SSM state is complex64 (B, E, N) when A is complex, float32 otherwise."""
        cache = super().allocate_cache(batch_size, dtype)
        if self.complex_a:
            cache.ssm_state = torch.zeros_like(cache.ssm_state, dtype=torch.complex64)
        return cache

    # -- parallel mode: FFT convolution ------------------------------------------------------
    def _ssm_conv(self, x: torch.Tensor, cache: MambaCache | None) -> torch.Tensor:
        """x (B, E, L) -> SSM output without D (B, E, L) float32; with a cache, continue from and update its state."""
        length = x.shape[-1]
        dtA, Bbar, C = self._system()
        # powers Abar^l for l = 0..L: (E N L+1); the kernel needs 0..L-1, the carried state needs L
        powers = torch.exp(dtA[..., None] * torch.arange(length + 1, device=x.device, dtype=torch.float32))
        K = self._readout(torch.einsum("en,enl->el", C * Bbar, powers[..., :length]))  # (E L)
        n_fft = 2 * length  # zero-padded to 2L so the circular convolution is the causal linear one
        x_f = x.float()
        y = torch.fft.irfft(torch.fft.rfft(x_f, n=n_fft) * torch.fft.rfft(K, n=n_fft), n=n_fft)[..., :length]
        if cache is not None:
            h0 = cache.ssm_state  # (B E N)
            # the initial state's contribution decays as Abar^(t+1) at position t
            y = y + self._readout(torch.einsum("en,enl,ben->bel", C, powers[..., 1:], h0.to(powers.dtype)))
            # h_{L-1} = sum_l Abar^(L-1-l) Bbar x_l + Abar^L h0
            x_c = x_f.to(powers.dtype)
            last = torch.einsum("enl,bel->ben", powers[..., :length].flip(-1), x_c) * Bbar + powers[..., length] * h0
            cache.ssm_state = last.to(cache.ssm_state.dtype)
        return y

    def forward(
        self, hidden: torch.Tensor, cache: MambaCache | None = None, seq_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden: (B, L, D) -> (B, L, D). With `cache`, start from its state and leave the final state in it."""
        if seq_idx is not None:
            raise ValueError(
                "MambaLTI: packed sequences (seq_idx) are not supported by the FFT convolution; "
                "pad the sequences into separate rows instead"
            )
        xz = self.in_proj(hidden).transpose(1, 2)  # (B 2E L)
        x, z = xz.chunk(2, dim=1)  # (B E L) each
        x = self._conv_act(x, cache, None)
        # the kernel's powers and the FFT need float32: bf16 autocast would round Abar^l to 3 digits
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = self._ssm_conv(x, cache) + self.D.float()[:, None] * x.float()
        y = (y * F.silu(z.float())).to(x.dtype)
        return self.out_proj(y.transpose(1, 2))  # (B L D)

    # -- recurrent mode -----------------------------------------------------------------------
    def step(self, hidden: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """hidden: (B, D) one position -> (B, D); updates `cache` in place."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B E) each
        x = self._conv_step(x, cache)
        dtA, Bbar, C = self._system()
        batch = x.shape[0]
        if not self.complex_a:
            # the shared step op with one group per channel: B and C (B, E, N), dt = exp(log_dt);
            # it forms exp(dt A) and dt B * x itself, so pass A and the raw B
            dt = torch.exp(self.log_dt.float()).expand(batch, -1)
            A = -torch.exp(self.A_log.float())
            B_g = self.B.float().expand(batch, -1, -1)
            C_g = self.C.float().expand(batch, -1, -1)
            y = selective_state_update(cache.ssm_state, x, dt, A, B_g, C_g, self.D.float(), z)
            return self.out_proj(y)
        h = torch.exp(dtA) * cache.ssm_state + Bbar * x.float()[..., None].to(Bbar.dtype)  # (B E N)
        cache.ssm_state.copy_(h)
        y = self._readout((h * C).sum(-1)) + self.D.float() * x.float()  # (B E)
        y = (y * F.silu(z.float())).to(x.dtype)
        return self.out_proj(y)
