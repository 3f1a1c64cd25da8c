"""Pieces shared by the Mamba and Mamba-2 layers.

- :class:`SSMMixer`: a :class:`Mixer` whose numerics parameters (``A_log``,
  ``D``, the Δ bias) stay float32 when the module is cast to a half dtype.
- :func:`inverse_softplus_dt`: the Δ bias init of Mamba (Gu & Dao, 2023): Δ drawn
  log-uniformly in [dt_min, dt_max], stored as softplus^{-1}(Δ).
- :func:`conv_backend_for`: which causal-conv1d backend a layer backend uses (:func:`step_backend_for`: a step op's);
  :func:`norm_backend_for`: the same for the gated RMSNorm.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import torch
from torch import nn

from .._checks import check_choice
from ..ops.backends import BACKEND_NAMES
from ..ops.conv import CONV1D_BACKENDS
from ..ops.decode import TYPE_CODES
from ..ops.linear import project
from ..ops.norm import GATED_RMSNORM_BACKENDS
from .base import Mixer, MixerState

HALF_DTYPES = (torch.float16, torch.bfloat16)


def keep_fp32(param: nn.Parameter) -> nn.Parameter:
    """Mark ``param`` as a float32 numerics parameter, out of weight decay.

    Sets ``param._no_weight_decay = True`` (read by the optimizer groups) and
    ``param._keep_fp32 = True`` (read by :meth:`SSMMixer._apply`).
    """
    param._no_weight_decay = True
    param._keep_fp32 = True
    return param


def inverse_softplus_dt(
    n: int, dt_min: float, dt_max: float, dt_init_floor: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """A Δ bias whose softplus is log-uniform in [dt_min, dt_max] (then floored at dt_init_floor).

    Δ = exp(U * (log dt_max - log dt_min) + log dt_min), U ~ Uniform(0, 1);
    bias = softplus^{-1}(Δ) = Δ + log(1 - exp(-Δ)) = Δ + log(-expm1(-Δ)).

    Returns:
        (n,) float32.
    """
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
    return (dt + torch.log(-torch.expm1(-dt))).float()  # (n,)


def check_dt_range(fn: str, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    """Raise ValueError unless 0 < dt_min <= dt_max and dt_init_floor > 0."""
    if not (0 < dt_min <= dt_max):
        raise ValueError(f"{fn}: expected 0 < `dt_min` <= `dt_max`, got dt_min={dt_min}, dt_max={dt_max}")
    if not dt_init_floor > 0:
        raise ValueError(f"{fn}: argument `dt_init_floor` must be > 0, got {dt_init_floor}")


def conv_backend_for(backend: str) -> str:
    """The causal-conv1d backend run under a layer's ``backend``.

    The short conv has "reference" and "torch" implementations; a layer backend
    the conv does not implement ("c", "triton": kernels of the scan) runs the
    conv's "torch" path (``F.conv1d``, itself a compiled kernel). See the
    layer's ``op_backends()`` for what actually runs.
    """
    return backend if backend in CONV1D_BACKENDS.impls or backend == "auto" else "torch"


def step_backend_for(backend: str, table) -> str:
    """The backend of a one-token step op (``table``: its ``OpBackends``) run under a layer's ``backend``: the
    same name where the step has it, else "torch" (the step's readable PyTorch path: "reference" has no step
    of its own, and the conv step has no "c")."""
    return backend if backend in table.impls or backend == "auto" else "torch"


def norm_backend_for(backend: str) -> str:
    """The gated-RMSNorm backend run under a layer's ``backend``: the same name when the
    norm has it ("reference", "torch", "triton"), else the norm's own "auto" (e.g. under "c")."""
    return backend if backend in GATED_RMSNORM_BACKENDS.impls else "auto"


def hooked(m: nn.Module) -> bool:
    """Whether ``m`` has forward hooks (a fused step would skip them)."""
    return bool(m._forward_hooks or m._forward_pre_hooks)


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """What a layer's fused CPU block step needs that does not change from token to token
    (``SSMMixer._block_plan``). Built on every token it cost ~40 µs of Python per layer: a 24-layer bf16 Mamba
    LM at d_model 768 steps in 12.5 ms on 2 cores with the plans kept, 13.4 without."""

    params: Any  # the kernel's ctypes struct of weights, sizes and constants (``ssmkit.ops.decode``)
    keep: tuple  # the tensors its pointers address (the float32 copies among them)
    act: torch.dtype  # the activations' dtype
    state_shapes: tuple  # (conv, ssm) state shapes at batch 1
    step: Callable  # (params, residual, pending, conv_state, ssm_state) -> (residual, out, conv, ssm)


class SSMMixer(Mixer):
    """Mixer base for the selective SSM layers (float32 numerics parameters, backend check)."""

    backend: str
    graph_step = True  # (step: projections, the conv and state-update ops; no host reads)

    def _neg_exp_A(self) -> torch.Tensor:
        """A = -exp(A_log) for ``step``. Without autograd (decoding) it is formed once per version of A_log
        (an in-place update, a move or a cast forms it anew): two kernels fewer per layer and token, which at
        batch 1 is a share of the step's time (``benchmarks/generate_gpu.py``)."""
        return self._cached_for_step("_step_A", (self.A_log,), lambda: -torch.exp(self.A_log))

    def _project(self, proj: nn.Linear, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """``proj(x)`` (``bias=False``: without proj's bias). One row (batch-1 decoding) through a plain nn.Linear
        without hooks takes a matrix-vector kernel (``ssmkit.ops.linear.row_kernel``): Triton on CUDA under
        backend "auto" or "triton", C on the CPU under "auto" or "c"."""
        return project(proj, x, self.backend, bias)

    # -- a block's decode step as one C call on the CPU (``ssmkit.ops.decode``) ----------------------------

    fused_modules: tuple[str, ...] = ()  # the submodules whose weights a fused block step reads

    def fused_block_step(self, residual: torch.Tensor, pending: Optional[torch.Tensor], norm: nn.Module,
                         state: MixerState) -> Optional[tuple[torch.Tensor, torch.Tensor, MixerState]]:  # fmt: skip
        """``Block.step_pending`` for a block of this layer and ``norm`` (its RMSNorm) without an MLP, as one C call
        on the CPU: (residual + pending, the block's output, the new state). None where it does not apply, and
        the caller runs the usual path: autograd on, not the CPU, more than one row, backend other than "auto" /
        "c", weights not float32 / bfloat16 or not all in one dtype, modules that are not the plain ones (hooks,
        subclasses), a layer the kernel does not cover (``_make_block_plan``), or no C compiler. The residual is
        float32 or in the activations' dtype, ``pending`` None or in it; the conv state in it and the ssm state
        float32, all contiguous. A state of another shape raises, as ``step`` does (the C code trusts it)."""
        if (residual.device.type != "cpu" or torch.is_grad_enabled() or residual.dim() != 2 or residual.shape[0] != 1
                or type(residual) is not torch.Tensor or torch.compiler.is_compiling()):  # fmt: skip
            return None
        plan = self._block_plan(norm)
        if plan is None:
            return None
        if type(state) is not self.state_type or (state.conv.shape, state.ssm.shape) != plan.state_shapes:
            self._check_state(state, 1)  # (raises)
            return None
        act, conv, ssm = plan.act, state.conv, state.ssm
        if not (residual.dtype in (torch.float32, act) and residual.is_contiguous() and conv.dtype == act
                and conv.is_contiguous() and ssm.dtype == torch.float32 and ssm.is_contiguous()):  # fmt: skip
            return None
        if pending is not None and (pending.dtype != act or pending.shape != residual.shape
                                    or not pending.is_contiguous()):  # fmt: skip
            return None
        res, out, conv, ssm = plan.step(plan.params, residual, pending, conv, ssm)
        return res, out, self.state_type(conv=conv, ssm=ssm)

    def _block_plan(self, norm: nn.Module) -> Optional["BlockPlan"]:
        """The plan of a fused step for a block of this layer with ``norm``, kept and made anew
        (``_make_block_plan``) when anything it was made from may have changed: the backend; which module sits
        at ``norm`` and at each of ``fused_modules``, and whether it has hooks; each of their parameters' and
        the layer's own: identity, storage, version (in-place updates) and dtype; the norms' epsilons and the
        settings of ``_block_plan_config``."""
        key: list = [self.backend, norm.eps, *self._block_plan_config()]
        for m in (norm, self, *(self._modules.get(name) for name in self.fused_modules)):
            if m is None:
                key.append(None)
                continue
            key.append((id(m), hooked(m)))
            key.extend(None if p is None else (id(p), p.data_ptr(), p._version, p.dtype)
                       for p in m._parameters.values())  # fmt: skip
        cached = self.__dict__.get("_block_plan_cache")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_block_plan_cache"] = (key, self._make_block_plan(norm))
        return cached[1]

    def _block_plan_config(self) -> tuple:
        """Plain attributes, besides parameters, that a subclass's plan is made from."""
        return ()

    def _make_block_plan(self, norm: nn.Module) -> Optional["BlockPlan"]:
        """The fused step's static part for a block with ``norm``, or None where it does not apply (subclasses)."""
        return None

    def _block_act_dtype(self, norm: nn.Module, projs: tuple[nn.Linear, ...],
                         biased: tuple[nn.Linear, ...]) -> Optional[torch.dtype]:  # fmt: skip
        """The activations' dtype of a fused block step, or None where the step does not apply: ``projs`` are
        plain nn.Linear modules without hooks, their weights contiguous and in one dtype, float32 or bfloat16,
        as are the biases of ``biased`` (those the C code reads in it) and the block norm's weight (the norm
        without hooks); the backend is "auto" or "c"."""
        act = projs[0].weight.dtype
        if self.backend not in ("auto", "c") or act not in TYPE_CODES or norm.weight.dtype != act or hooked(norm):
            return None
        if any(type(m) is not nn.Linear or hooked(m) or m.weight.dtype != act or not m.weight.is_contiguous()
               for m in projs):  # fmt: skip
            return None
        if any(m.bias is not None and (m.bias.dtype != act or not m.bias.is_contiguous()) for m in biased):
            return None
        return act

    def _set_backend(self, backend: str) -> None:
        check_choice(type(self).__name__, "backend", backend, BACKEND_NAMES)
        self.backend = backend

    def __getstate__(self) -> dict:
        """Pickling and deep copies leave out the fused step's plan (a C struct of raw pointers; made anew on use)."""
        state = super().__getstate__()
        state.pop("_block_plan_cache", None)
        return state

    def _apply(self, fn, recurse: bool = True):
        """Casting to float16/bfloat16 leaves the ``keep_fp32`` parameters in float32 (exact values). A move or a
        cast drops the fused step's plan (its float32 copies and the weights it holds)."""
        self.__dict__.pop("_block_plan_cache", None)
        kept = {name: p.data for name, p in self.named_parameters() if getattr(p, "_keep_fp32", False)}
        super()._apply(fn, recurse)
        for name, p in self.named_parameters():
            if name in kept and p.dtype in HALF_DTYPES:
                p.data = kept[name].to(device=p.device, dtype=torch.float32)
                keep_fp32(p)
        return self
