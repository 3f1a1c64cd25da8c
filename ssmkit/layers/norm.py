"""Normalisation layers: RMSNorm, Mamba-2's gated RMSNorm, and StateNorm.

All three compute their statistics in float32 (float64 inputs stay float64)
and return the input's dtype, so bfloat16 activations are normalised with
float32 sums of squares. Symbols:

    rms(v) = sqrt(mean(v^2) + eps)          over the last dimension (or over each group of it)
    RMSNorm(x)          = x / rms(x) * weight
    GatedRMSNorm(x, z)  = (x * silu(z)) / rms(x * silu(z)) * weight     (norm_before_gate=False, Mamba-2)
                        = x / rms(x) * weight * silu(z)                  (norm_before_gate=True)
    StateNorm(y)        = y / rms(y) * weight                            (y: the SSM branch's output)

``weight`` (the per-channel gain, named as in the public checkpoints) starts at 1.
All three are the op :func:`ssmkit.ops.norm.gated_rms_norm` (z=None for RMSNorm and
StateNorm); ``forward`` takes its ``backend`` ("auto": the fused Triton kernels on
CUDA, PyTorch elsewhere; see ``GATED_RMSNORM_BACKENDS``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._checks import check_divisible, check_float, check_positive_int
from ..ops.norm import gated_rms_norm


def _check_last_dim(fn: str, name: str, x: torch.Tensor, d: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: argument `{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != d:
        raise ValueError(f"{fn}: argument `{name}` expected shape (..., {d}), got {tuple(x.shape)}")
    check_float(fn, name, x)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension: x / rms(x) * weight.

    Args:
        d: number of channels D.
        eps: added to the mean square.
    Shapes: (..., D) -> (..., D), in the input's dtype.
    """

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.d = check_positive_int("RMSNorm", "d", d)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        _check_last_dim("RMSNorm.forward", "x", x, self.d)
        return gated_rms_norm(x, self.weight, eps=self.eps, backend=backend)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: RMS-normalise y gated by silu(z), per group of channels.

    With ``norm_before_gate=False`` (Mamba-2's default) the gate is applied
    first: ``rms_norm(y * silu(z)) * weight``; otherwise ``rms_norm(y) * weight * silu(z)``.
    The mean square is taken over each group of ``group_size`` channels (Mamba-2
    uses d_inner / ngroups, so that each group of heads is normalised on its
    own and the layer shards over groups).

    Args:
        d: channels D; eps: added to the mean square;
        group_size: divides D (None: one group of D channels); norm_before_gate: see above.
    Shapes: y (..., D), z (..., D) or None -> (..., D) in y's dtype. ``forward(y, z, backend)``:
    the op's backend (the Mamba-2 layer passes its own).
    """

    def __init__(self, d: int, eps: float = 1e-5, group_size: Optional[int] = None, norm_before_gate: bool = False):
        super().__init__()
        fn = "GatedRMSNorm"
        self.d = check_positive_int(fn, "d", d)
        if group_size is not None:
            check_positive_int(fn, "group_size", group_size)
            check_divisible(fn, "d", d, "group_size", group_size)
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, z: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
        _check_last_dim("GatedRMSNorm.forward", "y", y, self.d)  # z is checked by the op
        return gated_rms_norm(y, self.weight, z, self.eps, self.group_size, self.norm_before_gate, backend=backend)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, group_size={self.group_size}, norm_before_gate={self.norm_before_gate}"


class StateNorm(nn.Module):
    """A learned per-channel scale of the state-space branch, on a normalised signal.

    What it normalises: the output of the selective scan, ``y_t = C_t . h_t + D * u_t``
    (Mamba's branch before the silu(z) gate and the out-projection), RMS-normalised
    across its D channels at each position, then scaled per channel by ``weight``
    (initialised to 1): ``StateNorm(y) = y / sqrt(mean_d(y^2) + eps) * weight``.

    Why: ``C_t . h_t`` sums ``N`` (d_state) products, and ``h_t`` accumulates the
    inputs of the last ~1/(delta*|A|) tokens, so the raw scan output's scale
    grows with the state size and with how much of the sequence the state
    remembers. After this norm the gate and out-projection see a unit-RMS
    signal whatever ``d_state`` and the sequence length, and the learned gain
    alone sets the branch's per-channel scale.

    Args:
        d: channels D (Mamba's d_inner); eps: added to the mean square.
    Shapes: (..., D) -> (..., D), in the input's dtype.
    """

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.d = check_positive_int("StateNorm", "d", d)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        _check_last_dim("StateNorm.forward", "y", y, self.d)
        return gated_rms_norm(y, self.weight, eps=self.eps, backend=backend)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"
