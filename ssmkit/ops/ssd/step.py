"""SSD one-token update for decoding: the recurrence of ``reference.py`` for one t.

    Δ = `delta` = softplus(dt + dt_bias) or dt + dt_bias       (B, H)
    h' = exp(Δ A) h + Δ x B^T                                  (B, H, P, N)
    y  = h' C + D x, then y * silu(z)                          (B, H, P)

Pure function: the new state is returned, the old one is left untouched. The
state is kept in float32 (float64 for float64 `x`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import repeat


def ssd_step_torch(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SSD step (inputs assumed validated).

    Args:
        state: (B, H, P, N) state before this token.
        x: (B, H, P);  dt: (B, H);  A: (H,);  B, C: (B, G, N);
        D: (H,) or (H, P) or None;  z: (B, H, P) or None;  dt_bias: (H,) or None.
    Returns:
        y: (B, H, P) in x's dtype; new_state: (B, H, P, N), float32 (float64 for float64 x).
    """
    wd = torch.float64 if x.dtype == torch.float64 else torch.float32
    R = x.shape[1] // B.shape[1]  # heads per group
    delta = dt.to(wd) + (0 if dt_bias is None else dt_bias.to(wd))  # (B, H)
    if dt_softplus:
        delta = F.softplus(delta)
    xw = x.to(wd)
    Bh = repeat(B.to(wd), "b g n -> b (g r) n", r=R)  # (B, H, N)
    Ch = repeat(C.to(wd), "b g n -> b (g r) n", r=R)  # (B, H, N)
    decay = torch.exp(delta * A.to(wd))  # Ā: (B, H)
    new_state = decay[:, :, None, None] * state.to(wd) + torch.einsum(
        "bhp,bhn->bhpn", xw * delta[..., None], Bh
    )  # (B, H, P, N)
    y = torch.einsum("bhpn,bhn->bhp", new_state, Ch)  # (B, H, P)
    if D is not None:
        Dw = D.to(wd)
        y = y + xw * (Dw[:, None] if Dw.dim() == 1 else Dw)
    if z is not None:
        y = y * F.silu(z.to(wd))
    return y.to(x.dtype), new_state
