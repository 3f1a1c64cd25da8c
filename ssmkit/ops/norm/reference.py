"""Gated RMSNorm, the spec: a short float64 computation, one group of channels at a time.

Symbols (one row ``y`` of D channels, split into D / g groups of g = ``group_size`` channels):

    gate       = silu(z) = z * sigmoid(z)                  (1 when z is None)
    x          = y * gate   (gate first, Mamba-2's default)   or   y   (norm_before_gate=True)
    rstd_k     = 1 / sqrt(mean_{c in group k}(x_c^2) + eps)
    out_c      = x_c * rstd_k(c) * weight_c  [* gate_c when norm_before_gate=True]

With ``z=None`` this is the plain RMSNorm (grouped when g < D). Gradients come
from autograd through these float64 operations.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def gated_rms_norm_reference(
    y: torch.Tensor,
    weight: torch.Tensor,
    z: Optional[torch.Tensor],
    eps: float,
    group_size: int,
    norm_before_gate: bool,
) -> torch.Tensor:
    """y, z: (..., D); weight: (D,); group_size divides D. Returns (..., D) in y's dtype, computed in float64."""
    y64, w64 = y.double(), weight.double()
    gate = None if z is None else F.silu(z.double())  # (..., D)
    x = y64 * gate if gate is not None and not norm_before_gate else y64  # (..., D)
    groups = []
    for start in range(0, y.shape[-1], group_size):
        v = x[..., start : start + group_size]  # (..., g)
        rms = torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        groups.append(v / rms)
    out = torch.cat(groups, dim=-1) * w64  # (..., D)
    if gate is not None and norm_before_gate:
        out = out * gate
    return out.to(y.dtype)
