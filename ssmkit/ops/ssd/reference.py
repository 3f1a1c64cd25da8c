"""SSD (Mamba-2) reference: the recurrence as a loop over time, in float64. The spec.

Mamba-2's state space layer in the paper's notation (Dao & Gu, 2024), per head h:

    Δ_t   = `dt'`  = softplus(dt_t + dt_bias) or dt_t + dt_bias         (scalar per head)
    Ā_t   = exp(Δ_t A_h)        A_h = `A[h]` is a scalar (scalar-times-identity A)
    h_t   = Ā_t h_{t-1} + Δ_t x_t B_t^T                                  (P, N)
    y_t   = h_t C_t + D x_t                                              (P,)
    y_t  <- y_t * silu(z_t)                                              (when `z` is given)

`x` holds the P channels of each of the H heads; `B`, `C` are shared by the
H // G heads of a group (head h reads group h // (H // G)), as multi-value
attention shares keys/queries. The state `h` (code: `state`) is (B, H, P, N).

No input checks here: the validated entry point is
``ssmkit.ops.ssd.ssd(..., backend="reference")``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import repeat


def ssd_reference(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SSD by a loop over time, computed in float64.

    Args:
        x: (B, L, H, P) input per head.
        dt: (B, L, H) step size Δ before bias / softplus.
        A: (H,) scalar decay rate per head (negative for a stable model).
        B, C: (B, L, G, N) input and output projections; H divisible by G.
        D: (H,) or (H, P) skip connection, or None.
        z: (B, L, H, P) gate, or None.
        dt_bias: (H,) added to dt, or None.
        dt_softplus: apply softplus to dt + dt_bias.
        initial_state: (B, H, P, N) state before the first token, or None (zeros).
        return_final_state: also return the state after the last token.
    Returns:
        y: (B, L, H, P) in x's dtype; with ``return_final_state`` also the
        final state (B, H, P, N), float64 for float64 x, else float32.
    """
    f64 = torch.float64
    batch, _, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    xd, Ad = x.to(f64), A.to(f64)
    delta = dt.to(f64) + (0 if dt_bias is None else dt_bias.to(f64))  # (B, L, H)
    if dt_softplus:
        delta = F.softplus(delta)
    Bh = repeat(B.to(f64), "b l g n -> b l (g r) n", r=H // G)  # (B, L, H, N)
    Ch = repeat(C.to(f64), "b l g n -> b l (g r) n", r=H // G)  # (B, L, H, N)
    if initial_state is None:
        h = torch.zeros(batch, H, P, N, dtype=f64, device=x.device)
    else:
        h = initial_state.to(f64)
    ys = []
    # unbind(1) rather than [:, t]: autograd then stays linear in L.
    for d_t, x_t, B_t, C_t in zip(delta.unbind(1), xd.unbind(1), Bh.unbind(1), Ch.unbind(1)):
        decay = torch.exp(d_t * Ad)  # Ā_t: (B, H)
        inp = torch.einsum("bh,bhp,bhn->bhpn", d_t, x_t, B_t)  # Δ_t x_t B_t^T
        h = decay[:, :, None, None] * h + inp  # (B, H, P, N)
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C_t))  # h_t C_t: (B, H, P)
    y = torch.stack(ys, dim=1) if ys else xd.new_zeros(batch, 0, H, P)  # (B, L, H, P)
    if D is not None:
        Dd = D.to(f64)
        y = y + xd * (Dd[:, None] if Dd.dim() == 1 else Dd)
    if z is not None:
        y = y * F.silu(z.to(f64))
    y = y.to(x.dtype)
    if not return_final_state:
        return y
    return y, h.to(f64 if x.dtype == f64 else torch.float32)
