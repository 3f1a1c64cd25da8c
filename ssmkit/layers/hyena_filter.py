"""Hyena's implicit long filters (Poli et al., 2023, "Hyena Hierarchy", section 3.3).

A filter is not stored tap by tap; it is a function of the position, evaluated
on the grid t = 0 .. max_len - 1:

    h(t) = FFN(PositionalEncoding(t)) * Window(t)

- ``features`` (max_len, emb_dim): PositionalEncoding(t) = [t / max_len,
  cos(2 pi f_k t / max_len), -sin(2 pi f_k t / max_len)] with ``bands =
  (emb_dim - 1) / 2`` frequencies f_k spaced linearly in [1e-4, bands - 1].
- FFN: Linear(emb_dim, F) -> Sine -> Linear(F, F) -> Sine -> Linear(F, F) ->
  Sine -> Linear(F, n_filters * D, no bias), ``F = filter_order``; Sine(x) =
  sin(freq * x) with a learned frequency per unit, initialised to ``w``.
- Window (the "modulation", ``window()``): exp(-(t / max_len) * |delta_d|) +
  ``shift``, one decay rate per channel d, delta spaced linearly from
  log(target) / slow_decay_pct (slowest) to log(target) / fast_decay_pct
  (fastest): channel d has decayed to ``target`` at the fraction
  log(target) / delta_d of max_len. This is the bias towards recent tokens.

The filters are computed in float32 (float64 when the module is float64),
whatever the model's dtype: they are a handful of (max_len, D) tensors and
their numerics matter more than their cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._checks import check_positive_int


class Sine(nn.Module):
    """sin(freq * x) with a learned frequency per unit; x: (..., width)."""

    def __init__(self, width: int, w: float) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.full((width,), float(w)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq.to(x.dtype) * x)


class HyenaFilter(nn.Module):
    """``n_filters`` implicit filters of ``max_len`` taps over ``d_model`` channels.

    ``forward()`` -> (n_filters, max_len, D) in float32 (float64 for a float64 module).
    """

    def __init__(
        self,
        d_model: int,
        n_filters: int,
        *,
        filter_order: int,
        emb_dim: int,
        max_len: int,
        w: float,
        fast_decay_pct: float,
        slow_decay_pct: float,
        decay_target: float,
        shift: float,
    ) -> None:
        super().__init__()
        fn = "Hyena"
        for name, value in (("filter_order", filter_order), ("emb_dim", emb_dim), ("max_len", max_len)):
            check_positive_int(fn, name, value)
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"{fn}: argument `emb_dim` must be odd and >= 3 (time + cos/sin pairs), got {emb_dim}")
        if not 0 < fast_decay_pct <= slow_decay_pct:
            raise ValueError(
                f"{fn}: expected 0 < `fast_decay_pct` <= `slow_decay_pct`, got {fast_decay_pct} and {slow_decay_pct}"
            )
        if not 0 < decay_target < 1:
            raise ValueError(f"{fn}: argument `decay_target` must be in (0, 1), got {decay_target}")
        self.d_model, self.n_filters, self.max_len, self.shift = d_model, n_filters, max_len, float(shift)
        self.emb_dim = emb_dim
        # decay rates |delta_d|, slowest to fastest (python floats: exact whatever the module's dtype)
        self.decay_range = (-math.log(decay_target) / slow_decay_pct, -math.log(decay_target) / fast_decay_pct)
        self.ffn = nn.ModuleList([
            nn.Linear(emb_dim, filter_order), Sine(filter_order, w),
            nn.Linear(filter_order, filter_order), Sine(filter_order, w),
            nn.Linear(filter_order, filter_order), Sine(filter_order, w),
            nn.Linear(filter_order, n_filters * d_model, bias=False),
        ])

    def _work(self) -> tuple[torch.dtype, torch.device]:
        weight = self.ffn[0].weight
        return (torch.float64 if weight.dtype == torch.float64 else torch.float32), weight.device

    def features(self) -> torch.Tensor:
        """PositionalEncoding(t) on the grid: (max_len, emb_dim), computed (not stored) in the work dtype."""
        work, device = self._work()
        t = torch.arange(self.max_len, dtype=torch.float64, device=device)[:, None]  # (max_len, 1)
        bands = (self.emb_dim - 1) // 2
        f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64, device=device)  # (bands,)
        angle = 2 * math.pi * t * f / self.max_len  # (max_len, bands)
        return torch.cat([t / self.max_len, angle.cos(), -angle.sin()], dim=-1).to(work)  # (max_len, emb_dim)

    def window(self) -> torch.Tensor:
        """The exponential decay window exp(-(t / max_len) |delta_d|) + shift: (max_len, D)."""
        work, device = self._work()
        t = torch.arange(self.max_len, dtype=torch.float64, device=device)[:, None] / self.max_len  # (max_len, 1)
        deltas = torch.linspace(*self.decay_range, self.d_model, dtype=torch.float64, device=device)  # (D,)
        return (torch.exp(-t * deltas) + self.shift).to(work)  # (max_len, D)

    def forward(self) -> torch.Tensor:
        """The filters h: (n_filters, max_len, D); h[i, j] is filter i's tap at lag j."""
        work, _ = self._work()
        z = self.features()  # (max_len, emb_dim)
        for layer in self.ffn:
            if isinstance(layer, nn.Linear):
                bias = None if layer.bias is None else layer.bias.to(work)
                z = F.linear(z, layer.weight.to(work), bias)
            else:
                z = layer(z)
        h = rearrange(z, "l (n d) -> n l d", n=self.n_filters)  # (n_filters, max_len, D)
        return h * self.window()
