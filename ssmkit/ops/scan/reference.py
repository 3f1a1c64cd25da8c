"""Selective scan (Mamba-1, Gu & Dao 2023, Algorithm 2): the reference loop.

This file is the spec every fast backend is tested against. It runs one step
per token, in float64, through autograd. Names and the paper's symbols:

    u      x      input sequence                      (B, L, D)
    delta  Δ      step size before bias / softplus    (B, L, D)
    A      A      diagonal state matrix per channel   (D, N)
    B, C   B, C   input-dependent projections         (B, L, N) or (B, L, G, N)
    D      D      skip connection                     (D,)
    z      z      gate branch, y <- y * silu(z)       (B, L, D)
    dt     Δ      delta + delta_bias, softplus'ed if asked
    dA     Ā      exp(Δ A)  (zero-order hold)
    dBu    B̄ x    Δ B x     (Euler for B, as in Mamba)
    h      h      state                                (B, D, N)

    h_t = Ā_t * h_{t-1} + Δ_t B_t u_t ;  y_t = C_t · h_t + D u_t

Grouped B/C: channel d reads group d // (D // G).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from einops import repeat


def expand_groups_step(x: torch.Tensor, dim: int) -> torch.Tensor:
    """One token's B or C, (B, N) or (B, G, N) -> (B, D, N) (a broadcast view when ungrouped)."""
    if x.dim() == 2:
        return x[:, None, :].expand(-1, dim, -1)  # (B, D, N)
    return repeat(x, "b g n -> b (g r) n", r=dim // x.shape[1])  # (B, D, N)


def state_dtype(u: torch.Tensor) -> torch.dtype:
    """dtype of the returned final state: float64 for float64 inputs, else float32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The selective scan as a loop over time, in float64 (the spec).

    Args:
        u, delta: (B, L, D).  A: (D, N).  B, C: (B, L, N) or (B, L, G, N).
        D, delta_bias: (D,) or None.  z: (B, L, D) or None.
        initial_state: (B, D, N) or None (zeros).
    Returns:
        y: (B, L, D) in u's dtype; with ``return_final_state`` also the final
        state (B, D, N) in float32 (float64 for float64 ``u``).
    """
    f64 = torch.float64
    dim = u.shape[2]
    dt = delta.to(f64)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f64)
    if delta_softplus:
        dt = F.softplus(dt)
    A64 = A.to(f64)
    u64 = u.to(f64)
    if initial_state is None:
        h = u64.new_zeros(u.shape[0], dim, A.shape[1])  # (B, D, N)
    else:
        h = initial_state.to(f64)
    ys = []
    # unbind (not x[:, t]) so that autograd gathers the per-step gradients once.
    steps = zip(dt.unbind(1), u64.unbind(1), B.to(f64).unbind(1), C.to(f64).unbind(1))
    for dt_t, u_t, B_t, C_t in steps:
        dA = torch.exp(dt_t[:, :, None] * A64)  # (B, D, N)
        dBu = (dt_t * u_t)[:, :, None] * expand_groups_step(B_t, dim)  # (B, D, N)
        h = dA * h + dBu
        ys.append((h * expand_groups_step(C_t, dim)).sum(-1))  # (B, D)
    y = torch.stack(ys, dim=1) if ys else u64.new_zeros(u.shape)  # (B, L, D)
    if D is not None:
        y = y + D.to(f64) * u64
    if z is not None:
        y = y * F.silu(z.to(f64))
    y = y.to(u.dtype)
    if return_final_state:
        return y, h.to(state_dtype(u))
    return y
