"""Pieces shared by the Mamba and Mamba-2 layers.

- :class:`SSMMixer`: a :class:`Mixer` whose numerics parameters (``A_log``,
  ``D``, the Δ bias) stay float32 when the module is cast to a half dtype.
- :func:`inverse_softplus_dt`: the Δ bias init of Mamba (Gu & Dao, 2023): Δ drawn
  log-uniformly in [dt_min, dt_max], stored as softplus^{-1}(Δ).
- :func:`conv_backend_for`: which causal-conv1d backend a layer backend uses (:func:`step_backend_for`: a step op's);
  :func:`norm_backend_for`: the same for the gated RMSNorm.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .._checks import check_choice
from ..ops.backends import BACKEND_NAMES
from ..ops.conv import CONV1D_BACKENDS
from ..ops.decode import TYPE_CODES
from ..ops.linear import project
from ..ops.norm import GATED_RMSNORM_BACKENDS
from .base import Mixer

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


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


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

    def _fused_block_applies(self, residual: torch.Tensor, pending: Optional[torch.Tensor], norm: nn.Module,
                             state, projs: tuple[nn.Linear, ...], biased: tuple[nn.Linear, ...]) -> bool:  # fmt: skip
        """The conditions every fused CPU block step (``ssmkit.ops.decode``) shares: the CPU, one row, no autograd,
        backend "auto" or "c", plain tensors outside ``torch.compile``; ``projs`` plain nn.Linear modules without
        hooks, their weights contiguous and in one dtype, float32 or bfloat16 (the activations'); the biases of
        ``biased`` (those the C code reads in that dtype) in it too, as the norm's weight (the norm without
        hooks); the residual float32 or in it, ``pending`` None or like the residual in it; the conv state in it
        and the ssm state float32, both contiguous. A state of the wrong shape raises as ``step`` would (the C
        code trusts the shapes)."""
        if residual.device.type != "cpu" or residual.dim() != 2 or residual.shape[0] != 1:  # (first: GPU decoding)
            return False
        act = projs[0].weight.dtype
        if (torch.is_grad_enabled() or self.backend not in ("auto", "c") or act not in TYPE_CODES
                or type(residual) is not torch.Tensor or torch.compiler.is_compiling()):  # fmt: skip
            return False
        if residual.dtype not in (torch.float32, act) or norm.weight.dtype != act or _hooked(norm):
            return False
        if any(type(m) is not nn.Linear or _hooked(m) or m.weight.dtype != act or not m.weight.is_contiguous()
               for m in projs):  # fmt: skip
            return False
        if any(m.bias is not None and (m.bias.dtype != act or not m.bias.is_contiguous()) for m in biased):
            return False
        if pending is not None and (pending.dtype != act or pending.shape != residual.shape or not pending.is_contiguous()):
            return False
        self._check_state(state, 1)
        return (residual.is_contiguous() and state.conv.dtype == act and state.conv.is_contiguous()
                and state.ssm.dtype == torch.float32 and state.ssm.is_contiguous())  # fmt: skip

    def _set_backend(self, backend: str) -> None:
        check_choice(type(self).__name__, "backend", backend, BACKEND_NAMES)
        self.backend = backend

    def _apply(self, fn, recurse: bool = True):
        """Casting to float16/bfloat16 leaves the ``keep_fp32`` parameters in float32 (exact values)."""
        kept = {name: p.data for name, p in self.named_parameters() if getattr(p, "_keep_fp32", False)}
        super()._apply(fn, recurse)
        for name, p in self.named_parameters():
            if name in kept and p.dtype in HALF_DTYPES:
                p.data = kept[name].to(device=p.device, dtype=torch.float32)
                keep_fp32(p)
        return self
