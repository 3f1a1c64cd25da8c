"""Selective scan, the portable PyTorch path (any device, autograd).

Same recurrence as ``reference.py`` (h_t = Ā_t h_{t-1} + Δ_t B_t u_t,
y_t = C_t · h_t + D u_t), computed without a Python loop over all L steps and
without any (B, L, D, N) tensor:

1. split the sequence into ``nc`` chunks of ``T`` ≈ sqrt(L) steps (the tail is
   padded with Δ = 0, so Ā = 1 and Δ B u = 0: padding carries the state
   through unchanged);
2. local scans of all chunks at once from a zero state: T Python steps over
   (B, nc, D, N) tensors, keeping only each chunk's last state ``h_loc``;
3. boundary states: ``nc`` sequential steps S_c = P_c S_{c-1} + h_loc[c], where
   P_c = exp(A Σ_{t in chunk c} Δ_t) is the chunk's total decay;
4. the local scans again, all chunks at once, now started from their true
   states S_{c-1}, reading out y as they go.

About 2T + nc ≈ 3 sqrt(L) Python steps, each over (B, L/T, D, N) -- sizes that
stay in cache on CPU. The price is computing Ā twice. Math in float32
(float64 stays float64). Channels are kept as (G, R) = (groups, channels per
group), D = G R, so that grouped B/C broadcast without copies.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from einops import rearrange

from .reference import state_dtype


def default_chunk_size(L: int) -> int:
    """T ≈ sqrt(L): the local loops (2 T steps) and the boundary loop (L / T) stay O(sqrt L)."""
    return max(1, math.isqrt(max(L - 1, 0)) + 1)


def selective_scan_chunked(
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
    chunk_size: Optional[int] = None,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Chunked selective scan; same arguments and results as the reference.

    Args:
        u, delta, z: (B, L, D).  A: (D, N).  B, C: (B, L, N) or (B, L, G, N).
        D, delta_bias: (D,).  initial_state: (B, D, N).
        chunk_size: T, default ≈ sqrt(L).
    Returns:
        y: (B, L, D) in u's dtype [, final state (B, D, N) float32/float64].
    """
    work = state_dtype(u)
    batch, L, dim = u.shape
    G = B.shape[2] if B.dim() == 4 else 1
    T = chunk_size or default_chunk_size(L)
    nc = -(-L // T)
    pad = nc * T - L

    dt = delta.to(work)
    if delta_bias is not None:
        dt = dt + delta_bias.to(work)
    if delta_softplus:
        dt = F.softplus(dt)
    du = dt * u.to(work)  # (B, L, D)
    Bg = B.to(work).reshape(batch, L, G, -1)  # (B, L, G, N)
    Cg = C.to(work).reshape(batch, L, G, -1)  # (B, L, G, N)
    if pad:  # Δ = 0 on the padding: Ā = 1, Δ B u = 0
        dt, du = F.pad(dt, (0, 0, 0, pad)), F.pad(du, (0, 0, 0, pad))  # (B, nc*T, D)
        Bg, Cg = F.pad(Bg, (0, 0, 0, 0, 0, pad)), F.pad(Cg, (0, 0, 0, 0, 0, pad))  # (B, nc*T, G, N)
    dt = rearrange(dt, "b (c t) (g r) -> b c t g r", t=T, g=G)  # (B, nc, T, G, R)
    du = rearrange(du, "b (c t) (g r) -> b c t g r", t=T, g=G)  # (B, nc, T, G, R)
    Bg = rearrange(Bg, "b (c t) g n -> b c t g n 1", t=T)  # (B, nc, T, G, N, 1)
    Cg = rearrange(Cg, "b (c t) g n -> b c t g n 1", t=T)  # (B, nc, T, G, N, 1)
    Ag = rearrange(A.to(work), "(g r) n -> g n r", g=G)  # (G, N, R)

    # unbind (not x[:, :, i]): autograd then gathers the per-step gradients once.
    dts, dus, Bs, Cs = dt.unbind(2), du.unbind(2), Bg.unbind(2), Cg.unbind(2)

    # States are (B, nc, G, N, R): channels innermost, so every op runs over
    # contiguous channels (N innermost would make broadcasting slow on CPU).
    def step(h: torch.Tensor, i: int) -> torch.Tensor:
        """h: (B, nc, G, N, R) -> the state after step i of every chunk."""
        return torch.exp(dts[i][:, :, :, None] * Ag) * h + dus[i][:, :, :, None] * Bs[i]

    # 2. local scans from zero: only the last state of each chunk is kept.
    h = dus[0][:, :, :, None] * Bs[0]  # (B, nc, G, N, R)
    for i in range(1, T):
        h = step(h, i)
    h_loc = h

    # 3. true states at the chunk boundaries, sequentially.
    decay = torch.exp(dt.sum(2)[:, :, :, None] * Ag)  # (B, nc, G, N, R)
    if initial_state is None:
        s = h_loc.new_zeros(h_loc[:, 0].shape)  # (B, G, N, R)
    else:
        s = rearrange(initial_state.to(work), "b (g r) n -> b g n r", g=G)  # (B, G, N, R)
    starts = []
    for decay_c, h_loc_c in zip(decay.unbind(1), h_loc.unbind(1)):
        starts.append(s)
        s = decay_c * s + h_loc_c
    h = torch.stack(starts, dim=1)  # (B, nc, G, N, R)

    # 4. the local scans again from the true starting states, reading out y.
    ys = []
    for i in range(T):
        h = step(h, i)
        ys.append((h * Cs[i]).sum(-2))  # (B, nc, G, R)
    y = rearrange(torch.stack(ys, dim=2), "b c t g r -> b (c t) (g r)")[:, :L]  # (B, L, D)
    u_w = u.to(work)
    if D is not None:
        y = y + D.to(work) * u_w
    if z is not None:
        y = y * F.silu(z.to(work))
    y = y.to(u.dtype)
    if return_final_state:
        return y, rearrange(s, "b g n r -> b (g r) n")  # (B, D, N)
    return y
