"""Mamba-2: the state space duality (SSD) layer of Dao & Gu (2024), as a Mixer.

Code names and the paper's symbols (H = nheads = d_inner / headdim heads of P =
headdim channels; G = ngroups groups of B/C shared by H/G heads each; N = d_state):

    in_proj        x -> (z, x, B, C, dt), in this order                   (B, L, 2*d_inner + 2*G*N + H)
    conv1d         causal depthwise conv + silu over the (x, B, C) channels  conv_dim = d_inner + 2*G*N
    dt_bias        Δ = softplus(dt + dt_bias), clamped to dt_limit        (B, L, H); dt_bias (H,) float32
    A_log          A = -exp(A_log), a scalar per head, init A ~ U[1, 16]  (H,) float32
    D              skip connection D * x                                  (H,) float32
    ssd            h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t^T ; y_t = h_t C_t + D x_t   h: (B, H, P, N)
    norm           GatedRMSNorm(y, z) over groups of d_inner/G channels (rmsnorm=True), else y * silu(z)
    out_proj       (B, L, d_inner) -> (B, L, d_model)

Parameter names and shapes equal the public Mamba-2 checkpoints'. The state is
``Mamba2State(conv=(B, d_conv-1, conv_dim), ssm=(B, H, P, N) float32)``.
Padding (``mask`` False): the conv channels are zeroed before and after the
conv and Δ is set to 0, so a masked token changes no other position's output
and leaves the ``ssm`` state as it was (the ``conv`` state holds zeros for
padded inputs). Left padding from a zero state equals running the real tokens alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._checks import check_divisible, check_positive_int
from ..ops.conv import CONV1D_BACKENDS, CONV1D_STEP_BACKENDS, causal_conv1d, causal_conv1d_step
from ..ops.decode import mamba2_block_available, mamba2_block_params, mamba2_block_step_cpu
from ..ops.ssd import SSD_BACKENDS, SSD_STEP_BACKENDS, ssd, ssd_step
from ..ops.norm import GATED_RMSNORM_BACKENDS
from ..ops._triton import TRITON_DTYPES, eager_call, f32
from ._ssm_common import (BlockPlan, SSMMixer, check_dt_range, conv_backend_for, hooked, inverse_softplus_dt, keep_fp32,
                          norm_backend_for, step_backend_for)
from .base import MixerState
from .norm import GatedRMSNorm


@dataclasses.dataclass
class Mamba2State(MixerState):
    """Mamba-2's recurrent state: fixed size, whatever the context length."""

    conv: torch.Tensor  # (B, d_conv - 1, conv_dim): the last d_conv-1 (x, B, C) inputs of the conv
    ssm: torch.Tensor  # (B, nheads, headdim, d_state): h, float32 (float64 for a float64 layer)


class Mamba2(SSMMixer):
    """SSD mixer (Mamba-2). See the module docstring for the computation.

    Args:
        d_model: model width D.
        d_state: N, state size per head channel.
        d_conv: K, taps of the causal conv.
        expand: d_inner = expand * d_model.
        headdim: P, channels per head; must divide d_inner.
        ngroups: G, groups of B/C; must divide nheads.
        chunk_size: chunk length of the SSD algorithm (a speed knob: the result depends on it only
            through rounding, and the GPU kernels may run smaller chunks, ``docs/ssd.md``).
        dt_min, dt_max, dt_init_floor: softplus(dt_bias) is drawn log-uniformly in [dt_min, dt_max], floored.
        dt_limit: (lo, hi) clamp of Δ after the softplus.
        A_init_range: A is drawn uniformly in this range (Mamba-2: [1, 16]).
        rmsnorm: gated RMSNorm on the output (else a plain silu(z) gate).
        norm_eps: epsilon of that gated RMSNorm (mamba_ssm: 1e-5; transformers: its layer_norm_epsilon).
        norm_before_gate: normalise y before multiplying by silu(z).
        conv_bias: bias in conv1d.  bias: bias in in_proj and out_proj.
        backend: op backend for the SSD ("auto", "reference", "torch", "triton"); the conv and the gated
            RMSNorm run the same name when they have it (else the conv runs "torch", the norm its "auto":
            the fused Triton kernel on CUDA); see ``op_backends()``.
    Shapes: forward x (B, L, d_model) -> y (B, L, d_model); step x_t (B, d_model) -> (B, d_model).
    """

    state_type = Mamba2State

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        A_init_range: tuple[float, float] = (1.0, 16.0),
        rmsnorm: bool = True,
        norm_eps: float = 1e-5,
        norm_before_gate: bool = False,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        fn = "Mamba2"
        self.d_model = check_positive_int(fn, "d_model", d_model)
        self.d_state = check_positive_int(fn, "d_state", d_state)
        self.d_conv = check_positive_int(fn, "d_conv", d_conv)
        self.d_inner = check_positive_int(fn, "expand", expand) * d_model
        self.headdim = check_positive_int(fn, "headdim", headdim)
        self.ngroups = check_positive_int(fn, "ngroups", ngroups)
        self.chunk_size = check_positive_int(fn, "chunk_size", chunk_size)
        check_divisible(fn, "d_inner (expand * d_model)", self.d_inner, "headdim", headdim)
        self.nheads = self.d_inner // headdim
        check_divisible(fn, "nheads (d_inner / headdim)", self.nheads, "ngroups", ngroups)
        check_dt_range(fn, dt_min, dt_max, dt_init_floor)
        if not (0 <= dt_limit[0] < dt_limit[1]):
            raise ValueError(f"{fn}: argument `dt_limit` must be (lo, hi) with 0 <= lo < hi, got {dt_limit}")
        if not (0 < A_init_range[0] <= A_init_range[1]):
            raise ValueError(f"{fn}: argument `A_init_range` must be (lo, hi) with 0 < lo <= hi, got {A_init_range}")
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self._set_backend(backend)
        d_inner, G, N, H = self.d_inner, ngroups, d_state, self.nheads
        self.conv_dim = d_inner + 2 * G * N

        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * G * N + H, bias=bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1, bias=conv_bias
        )
        self.dt_bias = keep_fp32(nn.Parameter(inverse_softplus_dt(H, dt_min, dt_max, dt_init_floor)))
        self.dt_bias._no_reinit = True  # a model-wide init must not zero this bias
        A = torch.empty(H, dtype=torch.float32).uniform_(*A_init_range)  # (H,)
        self.A_log = keep_fp32(nn.Parameter(torch.log(A)))
        self.D = keep_fp32(nn.Parameter(torch.ones(H)))
        self.norm = GatedRMSNorm(d_inner, eps=norm_eps, group_size=d_inner // G, norm_before_gate=norm_before_gate) \
            if rmsnorm else None  # fmt: skip
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    # -- state ---------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Mamba2State:
        """Zero state: conv (B, d_conv-1, conv_dim) in ``dtype`` (default: in_proj's), ssm (B, H, P, N) float32."""
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return Mamba2State(
            conv=torch.zeros(batch_size, self.d_conv - 1, self.conv_dim, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=ssm_dtype),
        )

    def op_backends(self, device: torch.device | str | None = None) -> dict[str, str]:
        """The implementation each op runs under ``self.backend`` on ``device`` (default: the parameters')."""
        device = torch.device(device) if device is not None else self.in_proj.weight.device
        ops = {
            "causal_conv1d": CONV1D_BACKENDS.resolve(conv_backend_for(self.backend), device),
            "ssd": SSD_BACKENDS.resolve(self.backend, device),
            "causal_conv1d_step": CONV1D_STEP_BACKENDS.resolve(step_backend_for(self.backend, CONV1D_STEP_BACKENDS), device),
            "ssd_step": SSD_STEP_BACKENDS.resolve(step_backend_for(self.backend, SSD_STEP_BACKENDS), device),
        }
        if self.norm is not None:
            ops["gated_rms_norm"] = GATED_RMSNORM_BACKENDS.resolve(norm_backend_for(self.backend), device)
        return ops

    # -- computation ---------------------------------------------------------------------------------

    def _split_in(self, zxbcdt: torch.Tensor):
        """(..., d_in_proj) -> z (..., d_inner), xBC (..., conv_dim), dt (..., H)."""
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _fused_inner(self, zxbcdt: torch.Tensor) -> bool:
        """Whether ``forward`` runs the part between the projections as one Function on the Triton kernels
        (``ops/ssd/triton_layer.py``: the same kernels as the ops, without the gradient concatenations):
        eager mode, plain tensors, a non-empty sequence, the gated RMSNorm, default Δ limits, and the
        conv, SSD and norm all resolving to "triton" (the caller has checked: no mask, no state)."""
        if self.norm is None or self.dt_limit != (0.0, math.inf) or zxbcdt.shape[1] == 0:
            return False
        if not eager_call(zxbcdt) or zxbcdt.dtype not in TRITON_DTYPES:
            return False
        return set(self.op_backends(zxbcdt.device).values()) == {"triton"}

    def _conv_tail(self, zxbcdt: torch.Tensor) -> torch.Tensor:
        """The conv's state after the sequence: its last d_conv-1 (x, B, C) inputs (zeros before the start)."""
        _, xBC, _ = self._split_in(zxbcdt)
        K1, L = self.d_conv - 1, xBC.shape[1]
        if L >= K1:
            return xBC[:, L - K1 :].contiguous()
        return torch.cat([xBC.new_zeros(xBC.shape[0], K1 - L, xBC.shape[2]), xBC], dim=1)

    def _split_xbc(self, xBC: torch.Tensor):
        """(..., conv_dim) -> x (..., H, P), B (..., G, N), C (..., G, N)."""
        G, N = self.ngroups, self.d_state
        xs, Bm, Cm = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        xs = rearrange(xs, "... (h p) -> ... h p", p=self.headdim)  # (..., H, P)
        Bm = rearrange(Bm, "... (g n) -> ... g n", g=G)  # (..., G, N)
        Cm = rearrange(Cm, "... (g n) -> ... g n", g=G)  # (..., G, N)
        return xs, Bm, Cm

    def _delta(self, dt: torch.Tensor, pad: Optional[torch.Tensor]):
        """(dt, dt_bias, dt_softplus) for the SSD op. Fused in the op unless Δ is clamped or masked."""
        if pad is None and self.dt_limit == (0.0, math.inf):
            return dt, self.dt_bias, True
        work = torch.float64 if dt.dtype == torch.float64 else torch.float32
        delta = F.softplus(dt.to(work) + self.dt_bias.to(work)).clamp(*self.dt_limit)  # (..., H)
        if pad is not None:  # Δ = 0 at padding: the state neither decays nor takes input there
            delta = delta.masked_fill(pad, 0.0)
        return delta, None, False

    def _out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y, z: (..., d_inner) -> (..., d_model). Without the norm, the gate was applied in the SSD op."""
        if self.norm is not None:
            y = self.norm(y, z, backend=norm_backend_for(self.backend))  # one fused kernel on CUDA
        return self._project(self.out_proj, y)

    def forward(
        self, x: torch.Tensor, state: Optional[Mamba2State] = None, mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Mamba2State]:
        """Run a sequence. x: (B, L, d_model); state: from init_state / a previous call, or None (zeros);
        mask: (B, L) bool, True = real token. Returns y (B, L, d_model) and the state after the last token."""
        self._check_input(x)
        self._check_state(state, x.shape[0])
        self._check_mask(mask, x)
        zxbcdt = self.in_proj(x)  # (B, L, d_in_proj)
        if state is None and mask is None and self._fused_inner(zxbcdt):
            from ..ops.ssd.triton_layer import mamba2_inner_triton  # (imports Triton: only once it runs)

            y, ssm_state = mamba2_inner_triton(
                zxbcdt, self.conv1d.weight[:, 0], self.conv1d.bias, self.dt_bias, self.A_log, self.D,
                self.norm.weight, headdim=self.headdim, ngroups=self.ngroups, chunk_size=self.chunk_size,
                eps=self.norm.eps, group_size=self.norm.group_size or self.d_inner,
                norm_before_gate=self.norm.norm_before_gate,
            )  # (B, L, d_inner), (B, H, P, N)
            conv_state = self._conv_tail(zxbcdt)
            return self.out_proj(y), Mamba2State(conv=conv_state, ssm=ssm_state)
        z, xBC, dt = self._split_in(zxbcdt)  # (B, L, d_inner), (B, L, conv_dim), (B, L, H)
        pad = None if mask is None else ~mask[..., None]  # (B, L, 1)
        if pad is not None:
            xBC = xBC.masked_fill(pad, 0.0)
        xBC, conv_state = causal_conv1d(
            xBC, self.conv1d.weight[:, 0], self.conv1d.bias, None if state is None else state.conv,
            activation="silu", return_final_state=True, backend=conv_backend_for(self.backend),
        )  # (B, L, conv_dim), (B, K-1, conv_dim)
        if pad is not None:
            xBC = xBC.masked_fill(pad, 0.0)
        xs, Bm, Cm = self._split_xbc(xBC)  # (B, L, H, P), (B, L, G, N), (B, L, G, N)
        delta, dt_bias, softplus = self._delta(dt, pad)
        zh = None if self.norm is not None else rearrange(z, "b l (h p) -> b l h p", p=self.headdim)
        y, ssm_state = ssd(
            xs, delta, -torch.exp(self.A_log), Bm, Cm, D=self.D, z=zh, dt_bias=dt_bias, dt_softplus=softplus,
            chunk_size=self.chunk_size, initial_state=None if state is None else state.ssm,
            return_final_state=True, backend=self.backend,
        )  # (B, L, H, P), (B, H, P, N)
        y = rearrange(y, "b l h p -> b l (h p)")  # (B, L, d_inner)
        return self._out(y, z), Mamba2State(conv=conv_state, ssm=ssm_state)

    def step(self, x_t: torch.Tensor, state: Optional[Mamba2State] = None) -> tuple[torch.Tensor, Mamba2State]:
        """One token. x_t: (B, d_model) -> y_t (B, d_model) and the new state (the old one is untouched)."""
        self._check_input(x_t, ndim=2, name="x_t")
        if state is None:
            state = self.init_state(x_t.shape[0], device=x_t.device, dtype=x_t.dtype)
        self._check_state(state, x_t.shape[0])
        z, xBC, dt = self._split_in(self._project(self.in_proj, x_t))  # (B, d_inner), (B, conv_dim), (B, H)
        xBC, conv_state = causal_conv1d_step(xBC, state.conv, self.conv1d.weight[:, 0], self.conv1d.bias, "silu",
                                             backend=step_backend_for(self.backend, CONV1D_STEP_BACKENDS))  # fmt: skip
        xs, Bm, Cm = self._split_xbc(xBC)  # (B, H, P), (B, G, N), (B, G, N)
        delta, dt_bias, softplus = self._delta(dt, None)
        zh = None if self.norm is not None else rearrange(z, "b (h p) -> b h p", p=self.headdim)
        y, ssm_state = ssd_step(
            state.ssm, xs, delta, self._neg_exp_A(), Bm, Cm, D=self.D, z=zh, dt_bias=dt_bias,
            dt_softplus=softplus, backend=step_backend_for(self.backend, SSD_STEP_BACKENDS),
        )  # (B, H, P), (B, H, P, N)
        y = rearrange(y, "b h p -> b (h p)")  # (B, d_inner)
        return self._out(y, z), Mamba2State(conv=conv_state, ssm=ssm_state)

    fused_modules = ("in_proj", "out_proj", "conv1d", "norm")

    def _block_plan_config(self) -> tuple:
        gated = None if self.norm is None else (self.norm.eps, self.norm.group_size, self.norm.norm_before_gate)
        return self.dt_limit, gated

    def _make_block_plan(self, norm: nn.Module) -> Optional[BlockPlan]:
        """The fused step (``ssmkit.ops.decode.mamba2_block``) covers the gated RMSNorm and the plain gate, any
        groups, Δ limits and state size."""
        act = self._block_act_dtype(norm, (self.in_proj, self.out_proj), (self.in_proj, self.out_proj))
        if act is None or (self.norm is not None and (type(self.norm) is not GatedRMSNorm or hooked(self.norm))):
            return None
        if not mamba2_block_available():
            return None
        small = (f32(norm.weight), f32(self.conv1d.weight[:, 0]), f32(self.conv1d.bias), f32(self.dt_bias),
                 f32(self._neg_exp_A()), f32(self.D), None if self.norm is None else f32(self.norm.weight))  # fmt: skip
        norm_w, conv_w, conv_b, dt_b, A, D, gnorm_w = small
        gnorm = None if self.norm is None else \
            (gnorm_w, self.norm.eps, self.norm.group_size or self.d_inner, self.norm.norm_before_gate)  # fmt: skip
        weights = (self.in_proj.weight, self.in_proj.bias, self.out_proj.weight, self.out_proj.bias)
        params = mamba2_block_params(norm_w, norm.eps, weights[0], weights[1], conv_w, conv_b, dt_b, A, D, gnorm,
                                     weights[2], weights[3], self.headdim, self.d_state, self.ngroups,
                                     self.dt_limit)  # fmt: skip
        shapes = tuple(shape for _, shape in self.state_shapes(1))
        return BlockPlan(params, small + weights, act, shapes, mamba2_block_step_cpu)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, nheads={self.nheads}, headdim={self.headdim}, "
            f"ngroups={self.ngroups}, d_state={self.d_state}, chunk_size={self.chunk_size}, backend={self.backend!r}"
        )
