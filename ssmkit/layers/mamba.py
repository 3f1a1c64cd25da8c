"""Mamba: the selective state space layer of Gu & Dao (2023), as a Mixer.

Code names and the paper's symbols (per channel d of the inner width E*D):

    in_proj        x -> (u, z), the SSM branch u and the gate z          (B, L, 2*d_inner)
    conv1d         causal depthwise conv (K = d_conv taps), then silu    u: (B, L, d_inner)
    x_proj         u -> (dt, B, C): the selection (input-dependent) part  dt: (B, L, R), B, C: (B, L, N)
    dt_proj        Δ = softplus(dt_proj(dt)) = softplus(W dt + bias)      `delta`: (B, L, d_inner)
    A_log          A = -exp(A_log), S4D-real init A[d, n] = -(n + 1)     (d_inner, N), float32
    D              skip connection D * u                                  (d_inner,), float32
    scan           h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t ;  y_t = C_t . h_t + D u_t
    gate           y = y * silu(z) ;  out = out_proj(y)                   (B, L, d_model)

R = ``dt_rank`` (ceil(d_model / 16) by default), N = ``d_state``. Parameter
names and shapes equal the public Mamba checkpoints'. The state is
``MambaState(conv=(B, d_conv-1, d_inner), ssm=(B, d_inner, N) float32)``.
With ``state_norm=True`` a :class:`StateNorm` normalises y across channels
before the gate (so the scan runs ungated).

Padding: where ``mask`` is False, u is zeroed before and after the conv and
Δ is set to 0 (Ā = 1, no input), so a masked token changes no other
position's output and leaves the ``ssm`` state as it was (a right-padded
sequence ends with the ssm state of its last real token; the ``conv`` state
then holds zeros for the padded inputs). Left padding from a zero state
equals running the real tokens alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from .._checks import check_choice, check_positive_int
from ..ops.conv import CONV1D_BACKENDS, CONV1D_STEP_BACKENDS, causal_conv1d, causal_conv1d_step
from ..ops.decode import MAX_STATE, mamba_block_available, mamba_block_params, mamba_block_step_cpu
from ..ops._triton import f32
from ..ops.scan import SCAN_BACKENDS, SCAN_STEP_BACKENDS, selective_scan, selective_scan_step
from ._ssm_common import (BlockPlan, SSMMixer, check_dt_range, conv_backend_for, inverse_softplus_dt, keep_fp32,
                          step_backend_for)
from .base import MixerState
from .norm import StateNorm


@dataclasses.dataclass
class MambaState(MixerState):
    """Mamba's recurrent state: fixed size, whatever the context length."""

    conv: torch.Tensor  # (B, d_conv - 1, d_inner): the last d_conv-1 inputs of the conv, in the activation dtype
    ssm: torch.Tensor  # (B, d_inner, d_state): h, float32 (float64 for a float64 layer)


class Mamba(SSMMixer):
    """Selective SSM mixer (Mamba-1). See the module docstring for the computation.

    Args:
        d_model: model width D.
        d_state: N, state size per channel.
        d_conv: K, taps of the causal conv.
        expand: d_inner = expand * d_model.
        dt_rank: R, rank of the Δ projection; "auto" = ceil(d_model / 16).
        dt_min, dt_max: softplus(dt_proj.bias) is drawn log-uniformly in [dt_min, dt_max].
        dt_init: "random" (dt_proj.weight ~ U(-s, s)) or "constant" (= s), s = dt_scale / sqrt(R).
        dt_scale: scale of dt_proj.weight's init.
        dt_init_floor: lower clamp of the drawn Δ.
        conv_bias: bias in conv1d.
        bias: bias in in_proj and out_proj.
        state_norm: apply :class:`StateNorm` to the scan output before the gate.
        backend: op backend for the scan ("auto", "reference", "torch", "c", "triton");
            the conv runs the same name when it has it, else "torch" (see ``op_backends()``).
    Shapes: forward x (B, L, d_model) -> y (B, L, d_model); step x_t (B, d_model) -> (B, d_model).
    """

    state_type = MambaState

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        state_norm: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        fn = "Mamba"
        self.d_model = check_positive_int(fn, "d_model", d_model)
        self.d_state = check_positive_int(fn, "d_state", d_state)
        self.d_conv = check_positive_int(fn, "d_conv", d_conv)
        self.d_inner = check_positive_int(fn, "expand", expand) * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else check_positive_int(fn, "dt_rank", dt_rank)
        check_choice(fn, "dt_init", dt_init, ("random", "constant"))
        check_dt_range(fn, dt_min, dt_max, dt_init_floor)
        self._set_backend(backend)
        d_inner, N, R = self.d_inner, self.d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, d_inner, bias=True)
        s = dt_scale / math.sqrt(R)
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(s)
            else:
                self.dt_proj.weight.uniform_(-s, s)
            self.dt_proj.bias.copy_(inverse_softplus_dt(d_inner, dt_min, dt_max, dt_init_floor))
        keep_fp32(self.dt_proj.bias)
        self.dt_proj.bias._no_reinit = True  # a model-wide init must not zero this bias
        A = repeat(torch.arange(1, N + 1, dtype=torch.float32), "n -> d n", d=d_inner)  # (d_inner, N): S4D-real
        self.A_log = keep_fp32(nn.Parameter(torch.log(A)))
        self.D = keep_fp32(nn.Parameter(torch.ones(d_inner)))
        self.norm = StateNorm(d_inner) if state_norm else None
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    # -- state ---------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MambaState:
        """Zero state: conv (B, d_conv-1, d_inner) in ``dtype`` (default: in_proj's), ssm (B, d_inner, N) float32."""
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return MambaState(
            conv=torch.zeros(batch_size, self.d_conv - 1, self.d_inner, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype),
        )

    def op_backends(self, device: torch.device | str | None = None) -> dict[str, str]:
        """The implementation each op runs under ``self.backend`` on ``device`` (default: the parameters')."""
        device = torch.device(device) if device is not None else self.in_proj.weight.device
        return {
            "causal_conv1d": CONV1D_BACKENDS.resolve(conv_backend_for(self.backend), device),
            "selective_scan": SCAN_BACKENDS.resolve(self.backend, device),
            "causal_conv1d_step": CONV1D_STEP_BACKENDS.resolve(step_backend_for(self.backend, CONV1D_STEP_BACKENDS), device),
            "selective_scan_step": SCAN_STEP_BACKENDS.resolve(step_backend_for(self.backend, SCAN_STEP_BACKENDS), device),
        }

    # -- computation ---------------------------------------------------------------------------------

    def _conv_weight(self) -> torch.Tensor:
        return self.conv1d.weight[:, 0]  # (d_inner, K)

    def _ssm_params(self, u: torch.Tensor):
        """(dt, B, C) from the conv output u (..., d_inner): dt (..., d_inner) before bias, B, C (..., N)."""
        dt, Bm, Cm = self._project(self.x_proj, u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return self._project(self.dt_proj, dt, bias=False), Bm, Cm  # (..., d_inner), (..., N), (..., N)

    def _out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gate and project; the gate is here only when the StateNorm sits between scan and gate."""
        if self.norm is not None:
            y = self.norm(y) * F.silu(z)
        return self._project(self.out_proj, y)

    def forward(
        self, x: torch.Tensor, state: Optional[MambaState] = None, mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, MambaState]:
        """Run a sequence. x: (B, L, d_model); state: from init_state / a previous call, or None (zeros);
        mask: (B, L) bool, True = real token. Returns y (B, L, d_model) and the state after the last token."""
        self._check_input(x)
        self._check_state(state, x.shape[0])
        self._check_mask(mask, x)
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, d_inner) each
        pad = None if mask is None else ~mask[..., None]  # (B, L, 1)
        if pad is not None:
            u = u.masked_fill(pad, 0.0)
        u, conv_state = causal_conv1d(
            u, self._conv_weight(), self.conv1d.bias, None if state is None else state.conv,
            activation="silu", return_final_state=True, backend=conv_backend_for(self.backend),
        )  # (B, L, d_inner), (B, K-1, d_inner)
        if pad is not None:
            u = u.masked_fill(pad, 0.0)
        delta, Bm, Cm = self._ssm_params(u)
        delta_bias, softplus = self.dt_proj.bias, True
        if pad is not None:  # Δ = 0 at padding: the state neither decays nor takes input there
            work = torch.float64 if delta.dtype == torch.float64 else torch.float32
            delta = F.softplus(delta.to(work) + delta_bias.to(work)).masked_fill(pad, 0.0)
            delta_bias, softplus = None, False
        y, ssm_state = selective_scan(
            u, delta, -torch.exp(self.A_log), Bm, Cm, D=self.D, z=None if self.norm is not None else z,
            delta_bias=delta_bias, delta_softplus=softplus,
            initial_state=None if state is None else state.ssm, return_final_state=True, backend=self.backend,
        )  # (B, L, d_inner), (B, d_inner, N)
        return self._out(y, z), MambaState(conv=conv_state, ssm=ssm_state)

    def step(self, x_t: torch.Tensor, state: Optional[MambaState] = None) -> tuple[torch.Tensor, MambaState]:
        """One token. x_t: (B, d_model) -> y_t (B, d_model) and the new state (the old one is untouched)."""
        self._check_input(x_t, ndim=2, name="x_t")
        if state is None:
            state = self.init_state(x_t.shape[0], device=x_t.device, dtype=x_t.dtype)
        self._check_state(state, x_t.shape[0])
        u, z = self._project(self.in_proj, x_t).chunk(2, dim=-1)  # (B, d_inner) each
        u, conv_state = causal_conv1d_step(u, state.conv, self._conv_weight(), self.conv1d.bias, activation="silu",
                                           backend=step_backend_for(self.backend, CONV1D_STEP_BACKENDS))  # fmt: skip
        delta, Bm, Cm = self._ssm_params(u)  # (B, d_inner), (B, N), (B, N)
        y, ssm_state = selective_scan_step(
            state.ssm, u, delta, self._neg_exp_A(), Bm, Cm, D=self.D,
            z=None if self.norm is not None else z, delta_bias=self.dt_proj.bias, delta_softplus=True,
            backend=step_backend_for(self.backend, SCAN_STEP_BACKENDS),
        )  # (B, d_inner), (B, d_inner, N)
        return self._out(y, z), MambaState(conv=conv_state, ssm=ssm_state)

    fused_modules = ("in_proj", "x_proj", "dt_proj", "out_proj", "conv1d", "norm")

    def _make_block_plan(self, norm: nn.Module) -> Optional[BlockPlan]:
        """The fused step (``ssmkit.ops.decode.mamba_block``) covers a layer without a StateNorm or an x_proj bias,
        with d_state up to ``MAX_STATE``."""
        act = self._block_act_dtype(norm, (self.in_proj, self.x_proj, self.dt_proj, self.out_proj),
                                    (self.in_proj, self.out_proj))  # fmt: skip
        if act is None or self.norm is not None or self.d_state > MAX_STATE or self.x_proj.bias is not None:
            return None
        if not mamba_block_available():
            return None
        small = (f32(norm.weight), f32(self._conv_weight()), f32(self.conv1d.bias), f32(self.dt_proj.bias),
                 f32(self._neg_exp_A()), f32(self.D))  # fmt: skip
        norm_w, conv_w, conv_b, dt_b, A, D = small
        weights = (self.in_proj.weight, self.in_proj.bias, self.x_proj.weight, self.dt_proj.weight,
                   self.out_proj.weight, self.out_proj.bias)  # fmt: skip
        params = mamba_block_params(norm_w, norm.eps, weights[0], weights[1], conv_w, conv_b, weights[2], weights[3],
                                    dt_b, A, D, weights[4], weights[5])  # fmt: skip
        shapes = tuple(shape for _, shape in self.state_shapes(1))
        return BlockPlan(params, small + weights, act, shapes, mamba_block_step_cpu)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}, backend={self.backend!r}"
        )
