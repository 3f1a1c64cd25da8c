"""Selective scan, one token (decoding): h <- Ā h + Δ B u ; y = C · h + D u.

Symbols as in ``reference.py``: ``delta`` = Δ (before bias / softplus),
Ā = exp(Δ A), ``state`` = h. A pure function of fixed cost: the state is not
modified in place, a new one is returned. Math in float32 (float64 stays
float64), whatever the input dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .reference import expand_groups_step


def selective_scan_step_impl(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the selective scan (inputs already validated).

    Args:
        state: (B, D, N).  u, delta, z: (B, D).  A: (D, N).
        B, C: (B, N) or (B, G, N).  D, delta_bias: (D,).
    Returns:
        y: (B, D) in u's dtype; new_state: (B, D, N) in float32 (float64 for
        float64 ``u``).
    """
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    dim = u.shape[1]
    dt = delta.to(work)
    if delta_bias is not None:
        dt = dt + delta_bias.to(work)
    if delta_softplus:
        dt = F.softplus(dt)
    B = expand_groups_step(B.to(work), dim)  # (B, D, N)
    C = expand_groups_step(C.to(work), dim)  # (B, D, N)
    u_w = u.to(work)
    dA = torch.exp(dt[..., None] * A.to(work))  # (B, D, N)
    new_state = dA * state.to(work) + (dt * u_w)[..., None] * B  # (B, D, N)
    y = (new_state * C).sum(-1)  # (B, D)
    if D is not None:
        y = y + D.to(work) * u_w
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(u.dtype), new_state
