"""Hyena operator (Poli et al., 2023, "Hyena Hierarchy: Towards Larger Convolutional Language Models").

Paper symbols -> code, for order N (``order``) and width D (``d_model``):

- ``in_proj`` maps x (B, L, D) to (N+1) projections; a short depthwise causal
  convolution (``short_conv_weight`` (C, K), C = (N+1) D, K = ``short_filter_order``)
  runs over them; they split into v = z^1 and the gates x^1 .. x^N, each (B, L, D).
- h^1 .. h^N: implicit long filters (``filter``, :mod:`.hyena_filter`), each
  (max_len, D), plus a learned skip ("bias", ``filter_bias`` (N, D), the D term
  of an SSM).
- The recurrence (Algorithm 1, in the paper's order: convolve, then gate):
      z^{n+1}_t = x^n_t * ( (h^n * z^n)_t + bias^n * z^n_t ),   n = 1 .. N
  where (h * z)_t = sum_{j=0}^{t} h[j] z_{t-j} is a causal long convolution
  (``long_conv``: FFT for ``backend="torch"``, direct float64 sums for
  ``"reference"``).
- y = ``out_proj``(z^{N+1}).

Decoding (``step``) and chunked prefill: the state (:class:`HyenaState`) keeps
the short convolution's last K-1 inputs and, for each order n, the last
``max_len`` inputs z^n of the long convolution (a history buffer, oldest
first). So one step costs O(max_len * D) per order, and the state holds
``max_len * N * D`` numbers: fixed, whatever the number of tokens generated,
but proportional to ``max_len`` -- unlike an SSM state, it is a window of the
past, because an implicit filter has no recurrent form. The filters are
evaluated once per state (cached in ``state.kernel``) and reused by every step.
A sequence longer than ``max_len`` tokens raises an error (the filters are
defined on max_len positions).

Padding (``mask``): the projections are zeroed at padded positions before and
after the short convolution, so padding enters every convolution as zeros. A
left-padded sequence therefore gives the same outputs and final state as the
unpadded one (positions count real tokens; padding inside a sequence acts as
zero input for the elapsed time).

``bidirectional=True`` adds anti-causal filters (``fft_conv``'s ``k_reverse``):
the output sees the whole sequence; such a layer has no state and no ``step``
(its short convolution stays causal).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_positive_int
from ..ops.backends import BACKEND_NAMES
from ..ops.conv import causal_conv1d, causal_conv1d_step
from ..ops.conv.long_conv import LONG_CONV_BACKENDS, long_conv
from .base import Mixer, MixerState
from .hyena_filter import HyenaFilter


@dataclasses.dataclass
class HyenaState(MixerState):
    """Short-conv window and long-conv history; ``kernel`` caches the filters for ``step``."""

    conv: torch.Tensor  # (B, K-1, (N+1) D): the last K-1 projected inputs
    history: torch.Tensor  # (B, max_len, N, D): long-conv inputs z^1..z^N of the last max_len positions
    pos: torch.Tensor  # (B,) int64: real tokens seen
    kernel: Optional[torch.Tensor] = dataclasses.field(default=None, repr=False)  # (N, max_len, D) flipped h

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The batch-first tensors (not ``kernel``, which is shared by the batch and derived from parameters)."""
        return ((name, t) for name, t in super().tensors() if name != "kernel")


class Hyena(Mixer):
    """Hyena mixer; x: (B, L, D) -> (B, L, D).

    Args:
        d_model: D.
        order: N, the number of gated long convolutions.
        filter_order: width F of the implicit filter's MLP.
        emb_dim: positional features fed to the filter MLP (odd, >= 3).
        short_filter_order: K, taps of the short causal convolution.
        max_len: filter length: the longest sequence (prompt + generated tokens).
        w: initial frequency of the filter MLP's Sine activations.
        fast_decay_pct, slow_decay_pct, decay_target: the decay window; the fastest
            (slowest) channel reaches ``decay_target`` at this fraction of max_len.
        modulation_shift: added to the decay window.
        dropout: on each gated output z^{n+1}.
        bidirectional: add anti-causal filters (no state, no ``step``).
        backend: "auto", "reference" or "torch" (table ``LONG_CONV_BACKENDS``).
    """

    state_type = HyenaState

    def __init__(
        self,
        d_model: int,
        *,
        order: int = 2,
        filter_order: int = 64,
        emb_dim: int = 33,
        short_filter_order: int = 3,
        max_len: int = 2048,
        w: float = 1.0,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        decay_target: float = 1e-2,
        modulation_shift: float = 0.0,
        dropout: float = 0.0,
        bidirectional: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        fn = "Hyena"
        for name, value in (("d_model", d_model), ("order", order), ("short_filter_order", short_filter_order),
                            ("max_len", max_len)):
            check_positive_int(fn, name, value)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{fn}: argument `dropout` must be in [0, 1), got {dropout}")
        check_choice(fn, "backend", backend, BACKEND_NAMES)
        self.d_model, self.order, self.max_len, self.backend = d_model, order, max_len, backend
        self.causal = not bidirectional
        channels, K = (order + 1) * d_model, short_filter_order
        self.in_proj = nn.Linear(d_model, channels)
        bound = 1 / math.sqrt(K)  # nn.Conv1d's default init for a depthwise conv (fan_in = K)
        self.short_conv_weight = nn.Parameter(torch.empty(channels, K).uniform_(-bound, bound))  # (C, K)
        self.short_conv_bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))  # (C,)
        self.filter = HyenaFilter(
            d_model, order * (1 if self.causal else 2), filter_order=filter_order, emb_dim=emb_dim,
            max_len=max_len, w=w, fast_decay_pct=fast_decay_pct, slow_decay_pct=slow_decay_pct,
            decay_target=decay_target, shift=modulation_shift,
        )
        self.filter_bias = nn.Parameter(torch.randn(order, d_model))  # (N, D)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d_model, d_model)

    # -- pieces ----------------------------------------------------------------------------------

    def _op_backend(self, device: torch.device) -> str:
        """The long-conv backend that runs; the short conv follows it ("reference" or "torch")."""
        return LONG_CONV_BACKENDS.resolve(self.backend, device)

    def op_backends(self, device: torch.device | str | None = None) -> dict[str, str]:
        """The implementation each op runs under ``self.backend`` on ``device`` (default: the parameters').

        ``step`` computes its long convolutions as dot products with the history (no backend choice).
        """
        device = torch.device(device) if device is not None else self.in_proj.weight.device
        backend = self._op_backend(device)
        return {"causal_conv1d": backend, "long_conv": backend}

    def _check_length(self, pos: torch.Tensor, n_new: torch.Tensor | int, where: str) -> None:
        total = pos + n_new
        if bool((total > self.max_len).any()):
            raise ValueError(
                f"Hyena.{where}: the implicit filters cover max_len={self.max_len} positions, but this call would "
                f"bring a sample to {int(total.max())} tokens (prompt + generated); build the layer with a larger "
                f"`max_len`"
            )

    def _gate(self, i: int, z: torch.Tensor, conv: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """z^{i+1} = x^i * (h^i * z^i + bias^i z^i); all (B, ..., D)."""
        return self.dropout(gate * (conv + self.filter_bias[i].to(z.dtype) * z))

    # -- Mixer interface -------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> HyenaState:
        """Zeros: conv (B, K-1, (N+1) D), history (B, max_len, N, D), pos (B,) int64."""
        if not self.causal:
            raise ValueError("Hyena: a bidirectional layer has no state (it sees the whole sequence at once)")
        p = self.in_proj.weight
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        K = self.short_conv_weight.shape[1]
        return HyenaState(
            conv=torch.zeros(batch_size, K - 1, self.short_conv_weight.shape[0], device=device, dtype=dtype),
            history=torch.zeros(batch_size, self.max_len, self.order, self.d_model, device=device, dtype=dtype),
            pos=torch.zeros(batch_size, device=device, dtype=torch.int64),
        )

    def forward(
        self, x: torch.Tensor, state: Optional[HyenaState] = None, mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[HyenaState]]:
        """x: (B, L, D), state or None, mask: (B, L) bool or None -> y (B, L, D), new state.

        ``state`` is not modified; a bidirectional layer returns None as its state.
        """
        self._check_input(x)
        self._check_mask(mask, x)
        B, L, D = x.shape
        if not self.causal and state is not None:
            raise ValueError("Hyena.forward: a bidirectional layer takes no `state`")
        self._check_state(state, B)
        pos0 = torch.zeros(B, dtype=torch.int64, device=x.device) if state is None else state.pos
        n_new = L if mask is None else mask.sum(1)
        self._check_length(pos0, n_new if self.causal else L, "forward")
        backend = self._op_backend(x.device)
        keep = None if mask is None else mask[..., None]  # (B, L, 1)
        u = self.in_proj(x)  # (B, L, C)
        u = u if keep is None else u.masked_fill(~keep, 0.0)
        u, conv_state = causal_conv1d(
            u, self.short_conv_weight, self.short_conv_bias, initial_state=None if state is None else state.conv,
            return_final_state=True, backend=backend,
        )  # (B, L, C), (B, K-1, C)
        u = u if keep is None else u.masked_fill(~keep, 0.0)
        v, *gates = u.split(D, dim=-1)  # N+1 tensors (B, L, D)
        h = self.filter()  # (N or 2N, max_len, D)
        z, inputs = v, []
        for i in range(self.order):
            zc = z if state is None else torch.cat([state.history[:, :, i].to(z.dtype), z], 1)  # (B, [max_len +] L, D)
            conv = long_conv(zc, h[i], None if self.causal else h[self.order + i], backend=backend)[:, -L:]
            inputs.append(zc)
            z = self._gate(i, z, conv, gates[i])
        y = self.out_proj(z)  # (B, L, D)
        if not self.causal:
            return y, None
        pad = max(self.max_len - inputs[0].shape[1], 0)
        history = torch.stack([F.pad(zc, (0, 0, pad, 0))[:, -self.max_len :] for zc in inputs], 2)  # (B, max_len, N, D)
        return y, HyenaState(conv=conv_state, history=history, pos=pos0 + n_new)

    def step(self, x_t: torch.Tensor, state: Optional[HyenaState]) -> tuple[torch.Tensor, HyenaState]:
        """One token: x_t (B, D) -> y_t (B, D), new state (``state`` is not modified).

        Cost O(max_len * D) per order: each long convolution is a dot product of
        the filter with the history buffer.
        """
        if not self.causal:
            raise ValueError("Hyena.step: a bidirectional layer cannot decode token by token")
        self._check_input(x_t, ndim=2, name="x_t")
        B = x_t.shape[0]
        state = self.init_state(B, device=x_t.device, dtype=x_t.dtype) if state is None else state
        self._check_state(state, B)
        self._check_length(state.pos, 1, "step")
        self._op_backend(x_t.device)  # an unavailable backend raises here too
        u_t, conv_state = causal_conv1d_step(
            self.in_proj(x_t), state.conv, self.short_conv_weight, self.short_conv_bias
        )  # (B, C), (B, K-1, C)
        v, *gates = u_t.split(self.d_model, dim=-1)  # N+1 tensors (B, D)
        kernel = self.filter()[: self.order].flip(1) if state.kernel is None else state.kernel  # (N, max_len, D)
        work = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        z, history = v, []
        for i in range(self.order):
            hist = torch.cat([state.history[:, 1:, i], z[:, None].to(state.history.dtype)], 1)  # (B, max_len, D)
            conv = torch.einsum("bld,ld->bd", hist.to(work), kernel[i].to(work)).to(z.dtype)  # (B, D)
            history.append(hist)
            z = self._gate(i, z, conv, gates[i])
        y_t = self.out_proj(z)  # (B, D)
        return y_t, HyenaState(conv=conv_state, history=torch.stack(history, 2), pos=state.pos + 1, kernel=kernel)
