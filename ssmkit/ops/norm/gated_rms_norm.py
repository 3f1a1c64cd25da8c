"""Gated RMSNorm: Mamba-2's output norm, and plain (grouped) RMSNorm when there is no gate.

For y, z of shape (..., D), per channel c in group k (groups of g = ``group_size`` channels):

    x      = y * silu(z)        (norm_before_gate=False, Mamba-2)   or   y   (True, or z None)
    out_c  = x_c / sqrt(mean_{group k}(x^2) + eps) * weight_c   [* silu(z_c) when norm_before_gate]

See ``reference.py`` for the spec. Backends (table ``GATED_RMSNORM_BACKENDS``):
``"reference"`` (float64, autograd through it), ``"torch"`` (a few PyTorch
elementwise and reduction kernels, float32 statistics, float64 for float64
input; any device), ``"triton"`` (one fused kernel forward, one backward:
``gated_rms_norm_triton.py``; float32/16 and bfloat16 inputs). ``"auto"``
picks "triton" on CUDA and "torch" elsewhere. Every backend returns y's dtype
and computes in float32 at least.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange

from ..._checks import check_divisible, check_float, check_positive_int, check_same_device, check_shape
from .._triton import TRITON_DTYPES, triton_unavailable_reason
from ..backends import OpBackends, always
from .reference import gated_rms_norm_reference

# -- implementations: (y, weight, z, eps, group_size, norm_before_gate) -> out (..., D) in y's dtype ----


def _norm_torch(y, weight, z, eps, group_size, norm_before_gate):
    """The PyTorch path: float32 statistics (float64 for float64 input), autograd for the backward."""
    work = torch.float64 if y.dtype == torch.float64 else torch.float32
    x = y.to(work)
    gate = None if z is None else F.silu(z.to(work))  # (..., D)
    if gate is not None and not norm_before_gate:
        x = x * gate
    xg = rearrange(x, "... (n g) -> ... n g", g=group_size)  # (..., D/g, g)
    xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)
    out = rearrange(xg, "... n g -> ... (n g)") * weight.to(work)  # (..., D)
    if gate is not None and norm_before_gate:
        out = out * gate
    return out.to(y.dtype)


def _norm_triton(y, weight, z, eps, group_size, norm_before_gate):
    """Triton kernels (``gated_rms_norm_triton.py``), imported on first use."""
    from .gated_rms_norm_triton import gated_rms_norm_triton

    return gated_rms_norm_triton(y, weight, z, eps, group_size, norm_before_gate)


GATED_RMSNORM_BACKENDS = OpBackends(
    op="gated_rms_norm",
    impls={"reference": gated_rms_norm_reference, "torch": _norm_torch, "triton": _norm_triton},
    available={"reference": always, "torch": always, "triton": triton_unavailable_reason},
    auto_order={"cuda": ("triton", "torch"), "cpu": ("torch",)},
    dtypes={"triton": TRITON_DTYPES},
)


# -- public function --------------------------------------------------------------------------------


def _check_inputs(fn, y, weight, z, eps, group_size, norm_before_gate) -> int:
    """Validate the arguments; return the group size (D when ``group_size`` is None)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{fn}: argument `y` must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() < 1:
        raise ValueError(f"{fn}: argument `y` expected shape (..., D), got {tuple(y.shape)}")
    check_float(fn, "y", y)
    D = y.shape[-1]
    check_shape(fn, "weight", weight, ("D",), {"D": D})
    check_float(fn, "weight", weight)
    if z is not None:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{fn}: argument `z` must be a torch.Tensor or None, got {type(z).__name__}")
        if z.shape != y.shape:
            raise ValueError(f"{fn}: argument `z` expected shape {tuple(y.shape)} (that of `y`), got {tuple(z.shape)}")
        check_float(fn, "z", z)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"{fn}: argument `eps` must be a number >= 0, got {eps!r}")
    if not isinstance(norm_before_gate, bool):
        raise TypeError(f"{fn}: argument `norm_before_gate` must be a bool, got {type(norm_before_gate).__name__}")
    if group_size is None:
        return D
    check_positive_int(fn, "group_size", group_size)
    check_divisible(fn, "D (y.shape[-1])", D, "group_size", group_size)
    return group_size


def gated_rms_norm(
    y: torch.Tensor,
    weight: torch.Tensor,
    z: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    group_size: Optional[int] = None,
    norm_before_gate: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """RMS-normalise ``y`` (gated by silu(z) when z is given) per group of channels, times ``weight``.

    Args:
        y: (..., D) input, any leading shape and strides.
        weight: (D,) per-channel gain.
        z: (..., D) gate input (shape of y), or None for a plain RMSNorm.
        eps: added to the mean square.
        group_size: channels per group, divides D (None: one group of all D channels).
        norm_before_gate: False (Mamba-2): normalise y * silu(z); True: normalise y, then multiply by silu(z).
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"`` (table ``GATED_RMSNORM_BACKENDS``).
    Returns:
        (..., D) in y's dtype.
    """
    fn = "gated_rms_norm"
    g = _check_inputs(fn, y, weight, z, eps, group_size, norm_before_gate)
    device = check_same_device(fn, {"y": y, "weight": weight, "z": z})
    impl = GATED_RMSNORM_BACKENDS.get(backend, device, y.dtype)
    return impl(y, weight, z, float(eps), g, norm_before_gate)
