"""What the LTI SSM layers (S4, S4D) share: convolution mode, recurrent mode, states, masking.

A layer holds a continuous SSM per channel, x'(t) = A x(t) + B u(t), y = C x, with step
Delta = exp(``log_dt``). ``_discrete`` discretises it (Abar, Bbar, C); then
  convolution mode (backend "torch"):  y = K * u (``fft_conv``), K_l = C Abar^l Bbar, plus the
      output of an initial state and the final state (``ssmkit.ops.s4.state``);
  recurrent mode (backend "reference", and ``step``): h_t = Abar h_{t-1} + Bbar u_t, y_t = C h_t.
Both then add the skip term D u (S4's D) and the output stage  out = W gelu(y) + b  (S4's
position-wise output linear). Bidirectional layers run a second SSM over the reversed sequence
(channels D..2D-1; ``fft_conv(..., k_reverse=...)``), are non-causal, and have no state or step.

The SSM parameters stay float32 under half-precision casts of the module (``_apply``), and the
SSM runs in float32 (float64 for float64 inputs or modules) whatever the input dtype. The state
``h`` is real, (B, D, N), in that precision; complex modes are stored as [Re, Im] along the
last axis. Masked positions (mask False) are zeroed in the SSM's input, so a left-padded
sequence from a zero state gives the same outputs at its real positions and the same final
state as the unpadded one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_positive_int
from ..ops.backends import BACKEND_NAMES, OpBackends
from ..ops.conv import fft_conv
from ..ops.s4.discretize import METHODS
from ..ops.s4.reference import recurrence_reference, ssm_step
from .base import Mixer, MixerState

# The two modes by backend name; "auto" is convolution mode everywhere.
LTI_BACKENDS = OpBackends(
    op="s4",
    impls={"reference": "_forward_reference", "torch": "_forward_conv"},  # method names
    available={},
    auto_order={"cpu": ("torch",), "cuda": ("torch",)},
)


@dataclasses.dataclass
class LTIState(MixerState):
    """h: (B, D, N) real; complex modes as [Re, Im] along the last axis."""

    h: torch.Tensor


@dataclasses.dataclass
class Discrete:
    """A discretised system (tensors indexed by SSM channel first): the recurrence form and
    what the convolution mode needs (``aux``)."""

    Abar: torch.Tensor  # (D, M) diagonal or (D, N, N) dense
    Bbar: torch.Tensor  # (D, M) or (D, N)
    C: torch.Tensor  # (D, M) or (D, N)
    aux: dict[str, torch.Tensor]

    def select(self, sl: slice) -> "Discrete":
        return Discrete(self.Abar[sl], self.Bbar[sl], self.C[sl], {k: v[sl] for k, v in self.aux.items()})


def mark_ssm_param(p: nn.Parameter, lr: Optional[float]) -> nn.Parameter:
    """Flag an SSM parameter for the optimizer: no weight decay (``_no_weight_decay``),
    optionally its own learning rate (``_optim``). (``copy.deepcopy`` drops such attributes;
    ``LTIMixer.fp32_param_names`` lists the same parameters by name.)"""
    p._no_weight_decay = True  # type: ignore[attr-defined]
    if lr is not None:
        p._optim = {"lr": lr, "weight_decay": 0.0}  # type: ignore[attr-defined]
    return p


class LTIMixer(Mixer):
    """Base of S4 and S4D; subclasses define the SSM parameters and its algorithms."""

    state_type = LTIState
    graph_step = True  # (step: the cached discrete system's recurrence; no host reads)
    # SSM parameters: float32 under half-precision casts, no weight decay (DESIGN.md, Numerics).
    fp32_param_names: tuple[str, ...] = ("log_dt", "D", "Lambda_log_neg_re", "Lambda_im", "P", "B")
    complex_state: bool = False  # internal state complex (B, D, N/2) <-> stored [Re, Im]

    def __init__(
        self,
        d_model: int,
        d_state: int,
        discretization: str,
        dt_min: float,
        dt_max: float,
        bidirectional: bool,
        lr: Optional[float],
        backend: str,
    ) -> None:
        super().__init__()
        fn = type(self).__name__
        check_positive_int(fn, "d_model", d_model)
        check_positive_int(fn, "d_state", d_state)
        check_choice(fn, "discretization", discretization, METHODS)
        check_choice(fn, "backend", backend, BACKEND_NAMES)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"{fn}: expected 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_model, self.d_state = d_model, d_state
        self.discretization, self.bidirectional, self.backend = discretization, bidirectional, backend
        self.causal = not bidirectional
        self.n_ssm = d_model * (2 if bidirectional else 1)  # channels of SSMs (H)
        log_dt = torch.rand(self.n_ssm) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = mark_ssm_param(nn.Parameter(log_dt), lr)  # (H,) log Delta
        self.D = mark_ssm_param(nn.Parameter(torch.randn(d_model)), None)  # (D,) skip
        self.out_proj = nn.Linear(d_model, d_model)

    # -- subclass hooks ------------------------------------------------------------------

    def _discrete(self, work: torch.dtype) -> Discrete:
        """The discretised system in compute dtype ``work``."""
        raise NotImplementedError  # pragma: no cover

    def _kernel(self, disc: Discrete, L: int) -> torch.Tensor:
        """(L, H) convolution kernel."""
        raise NotImplementedError  # pragma: no cover

    def _final_state(self, disc: Discrete, u: torch.Tensor, h0: Optional[torch.Tensor]) -> torch.Tensor:
        """h_{L-1}: (B, H, M) complex or (B, H, N) real, from u: (B, L, H) and h0 (same as h or None)."""
        raise NotImplementedError  # pragma: no cover

    def _state_output(self, disc: Discrete, h0: torch.Tensor, L: int) -> torch.Tensor:
        """(B, L, H): the output of the initial state h0 alone."""
        raise NotImplementedError  # pragma: no cover

    # -- public ----------------------------------------------------------------------------

    def ssm_kernel(self, L: int) -> torch.Tensor:
        """The convolution kernel K: (L, H), H = d_model (x2 when bidirectional; the second half
        is the reverse kernel), in the module's compute precision (float32, or float64)."""
        return self._kernel(self._discrete(self._work_dtype(None)), L)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LTIState:
        self._require_causal("init_state")
        device = self.log_dt.device if device is None else device
        h = torch.zeros(batch_size, self.n_ssm, self.d_state, device=device, dtype=self._work_dtype(dtype))
        return self.state_type(h=h)

    def forward(
        self, x: torch.Tensor, state: Optional[LTIState] = None, mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[LTIState]]:
        """x: (B, L, D) -> y: (B, L, D), final state (None when bidirectional)."""
        self._check_input(x)
        if state is not None:
            self._require_causal("a `state` argument")
        self._check_state(state, x.shape[0])
        work = self._work_dtype(x.dtype)
        u = x.to(work)
        if mask is not None:
            self._check_mask(mask, x)
            u = u.masked_fill(~mask[..., None], 0.0)
        h0 = None if state is None else self._unpack(state.h.to(work))
        impl = getattr(self, LTI_BACKENDS.get(self.backend, x.device))
        y, h = impl(self._discrete(work), u, h0)
        out = self._output(y + self.D.to(work) * u, x.dtype)
        return out, (None if h is None else self.state_type(h=self._pack(h)))

    def step(self, x_t: torch.Tensor, state: LTIState) -> tuple[torch.Tensor, LTIState]:
        """x_t: (B, D) -> y_t: (B, D), new state. Recurrent mode, O(state) per token."""
        self._require_causal("step")
        self._check_input(x_t, ndim=2, name="x_t")
        if state is None:
            raise TypeError(f"{type(self).__name__}.step: argument `state` is required (use init_state), got None")
        self._check_state(state, x_t.shape[0])
        work = self._work_dtype(x_t.dtype)
        disc = self._discrete_for_step(work)
        u_t = x_t.to(work)
        y_t, h = ssm_step(u_t, self._unpack(state.h.to(work)), disc.Abar, disc.Bbar, disc.C)
        return self._output(y_t + self.D.to(work) * u_t, x_t.dtype), self.state_type(h=self._pack(h))

    # -- the two modes -----------------------------------------------------------------------

    def _forward_conv(self, disc: Discrete, u: torch.Tensor, h0: Optional[torch.Tensor]):
        L, D = u.shape[1], self.d_model
        K = self._kernel(disc, L).to(u.dtype)  # (L, H)
        if self.bidirectional:
            return fft_conv(u, K[:, :D], k_reverse=K[:, D:]), None
        y = fft_conv(u, K)  # (B, L, D)
        if h0 is not None:
            y = y + self._state_output(disc, h0, L)
        return y, self._final_state(disc, u, h0)

    def _forward_reference(self, disc: Discrete, u: torch.Tensor, h0: Optional[torch.Tensor]):
        D = self.d_model
        fwd = disc.select(slice(0, D)) if self.bidirectional else disc
        y, h = recurrence_reference(u, fwd.Abar, fwd.Bbar, fwd.C, h0)
        if not self.bidirectional:
            return y, h
        bwd = disc.select(slice(D, 2 * D))
        z, _ = recurrence_reference(u.flip(1), bwd.Abar, bwd.Bbar, bwd.C)  # z_tau over reversed time
        # y_t += sum_{s>t} K_bwd[s-t-1] u_s = z_{L-2-t}: reversed z, shifted by one.
        return y + F.pad(z.flip(1)[:, 1:], (0, 0, 0, 1)), None

    # -- helpers -----------------------------------------------------------------------------

    def _apply(self, fn, recurse=True):
        """Casts to float16/bfloat16 (``.half()``, ``.to(torch.bfloat16)``) leave the SSM
        parameters (``fp32_param_names``) in float32; float64 and device moves apply as usual."""
        params = dict(self.named_parameters(recurse=False))
        kept = {n: params[n].detach().clone() for n in self.fp32_param_names if n in params}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            p = getattr(self, name)
            if p.dtype in (torch.float16, torch.bfloat16):
                p.data = old.to(device=p.device, dtype=torch.float32)
        return self

    def _output(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        w = self.out_proj.weight
        return F.linear(F.gelu(y).to(w.dtype), w, self.out_proj.bias).to(dtype)

    def _work_dtype(self, dtype: Optional[torch.dtype]) -> torch.dtype:
        return torch.float64 if torch.float64 in (dtype, self.log_dt.dtype) else torch.float32

    def _discrete_for_step(self, work: torch.dtype) -> Discrete:
        """The discretised system, cached across steps while no parameter changes (inference)."""
        return self._cached_for_step("_step_cache", list(self.parameters()), lambda: self._discrete(work), work)

    def _pack(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h.real, h.imag], dim=-1) if h.is_complex() else h

    def _unpack(self, h: torch.Tensor) -> torch.Tensor:
        if not self.complex_state:
            return h
        M = h.shape[-1] // 2
        return torch.complex(h[..., :M].contiguous(), h[..., M:].contiguous())

    def _require_causal(self, what: str) -> None:
        if self.bidirectional:
            raise RuntimeError(
                f"{type(self).__name__}(bidirectional=True) is non-causal: it has no recurrent state, "
                f"so {what} is not supported; build it with bidirectional=False for step-by-step use"
            )

    def _check_mask(self, mask: torch.Tensor, x: torch.Tensor) -> None:
        fn = f"{type(self).__name__}.forward"
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{fn}: argument `mask` must be a torch.Tensor of dtype bool, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"{fn}: argument `mask` must have dtype bool (True = real token), got {mask.dtype}")
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"{fn}: argument `mask` expected shape (B, L)={tuple(x.shape[:2])}, got {tuple(mask.shape)}"
            )
        if mask.device != x.device:
            raise ValueError(f"{fn}: argument `mask` is on {mask.device}, expected the device of `x` ({x.device})")

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, discretization={self.discretization!r}, "
            f"bidirectional={self.bidirectional}, backend={self.backend!r}"
        )
