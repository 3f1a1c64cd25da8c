"""The recurrence of a discretised LTI SSM, one step at a time: the spec (run it in float64).

    h_t = Abar h_{t-1} + Bbar u_t,   y_t = C h_t,   h_{-1} = h0 (zero when None)

Diagonal Abar: (D, M) real, or complex conjugate pairs (y_t = 2 Re(C h_t)); Bbar, C: (D, M);
states (B, D, M). Dense Abar: (D, N, N) real; Bbar, C: (D, N); states (B, D, N).
"""

from __future__ import annotations

from typing import Optional

import torch


def ssm_step(
    u_t: torch.Tensor, h: torch.Tensor, Abar: torch.Tensor, Bbar: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step. u_t: (B, D); h: (B, D, M) or (B, D, N). Returns y_t: (B, D) real, new h."""
    if Abar.dim() == 3:
        h = torch.einsum("dnm,bdm->bdn", Abar, h) + Bbar * u_t[..., None]
    else:
        h = Abar * h + Bbar * u_t[..., None]
    y = (C * h).sum(-1)  # (B, D)
    return (2 * y.real if h.is_complex() else y), h


def recurrence_reference(
    u: torch.Tensor,
    Abar: torch.Tensor,
    Bbar: torch.Tensor,
    C: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the recurrence over u: (B, L, D). Returns y: (B, L, D) and the final state."""
    Bsz, L, D = u.shape
    shape = (Bsz, D, Bbar.shape[-1])
    h = torch.zeros(shape, dtype=Bbar.dtype, device=u.device) if h0 is None else h0.to(Bbar.dtype)
    ys = []
    for t in range(L):
        y_t, h = ssm_step(u[:, t].to(Bbar.real.dtype), h, Abar, Bbar, C)
        ys.append(y_t)
    return torch.stack(ys, dim=1), h  # (B, L, D)
