"""SSD chunked algorithm in PyTorch: the state space duality, block by block.

Notation as in ``reference.py`` (Δ = `delta`, log Ā_t = Δ_t A = `a`); see
``docs/ssd.md`` for the derivation. The sequence is cut into chunks of Q =
`chunk_size` tokens; inside chunk c, with `acum`_i = Σ_{k<=i} a_k (chunk-local):

1. intra-chunk ("attention-like", quadratic in Q):
       Y_diag[i] = Σ_{j<=i} (C_i · B_j) exp(acum_i - acum_j) Δ_j x_j
   The decay mask exp(acum_i - acum_j) is the exp of differences of cumulative
   sums with -inf above the diagonal, so no exp of a large positive number is
   ever formed.
2. chunk states (what chunk c adds to the state at its end):
       S_c = Σ_j exp(acum_{Q-1} - acum_j) Δ_j x_j B_j^T                    (P, N)
3. inter-chunk state passing (a recurrence over chunks, not tokens):
       h_c = exp(acum_{Q-1}) h_{c-1} + S_c,   h_{-1} = initial state
4. output from the carried state:
       Y_off[i] = exp(acum_i) h_{c-1} C_i
   y = Y_diag + Y_off + D x, then gated by silu(z).

The work runs in float32 (float64 for float64 `x`); everything is einsum and
batched matmul, differentiable by autograd, on any device. A sequence whose
length is not a multiple of Q is padded with Δ = 0 (decay 1, no input), which
leaves the final state unchanged, and the padded outputs are sliced off.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _segment_decay(acum: torch.Tensor) -> torch.Tensor:
    """exp(acum_i - acum_j) for j <= i, 0 above the diagonal.

    Args:
        acum: (..., Q) cumulative log decays.
    Returns:
        (..., Q, Q) lower-triangular decay matrix.
    """
    Q = acum.shape[-1]
    diff = acum[..., :, None] - acum[..., None, :]  # (..., Q, Q)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=acum.device).tril()
    return torch.exp(diff.masked_fill(~causal, float("-inf")))


def _pass_states(
    states: torch.Tensor, chunk_decay: torch.Tensor, initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry the state across chunks: h_c = chunk_decay_c * h_{c-1} + S_c.

    A loop over chunks (L / Q steps, each a (B, H, P, N) multiply-add): exact,
    linear in the number of chunks, and free of long cumulative sums.

    Args:
        states: (B, Nc, H, P, N) per-chunk states S_c.
        chunk_decay: (B, Nc, H) total decay of each chunk, exp(Σ a).
        initial_state: (B, H, P, N) state entering chunk 0.
    Returns:
        (prev, final): prev (B, Nc, H, P, N) the state entering each chunk,
        final (B, H, P, N) the state after the last chunk.
    """
    h = initial_state
    prev = []
    # unbind, not states[:, c]: indexing would make autograd build a full-size
    # zero gradient per chunk (quadratic in the number of chunks).
    for S_c, decay_c in zip(states.unbind(1), chunk_decay.unbind(1)):
        prev.append(h)
        h = decay_c[:, :, None, None] * h + S_c  # (B, H, P, N)
    return torch.stack(prev, dim=1), h  # (B, Nc, H, P, N), (B, H, P, N)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    chunk_size: int = 64,
    initial_state: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD forward by the chunked algorithm (inputs assumed validated).

    Args:
        x: (B, L, H, P);  dt: (B, L, H);  A: (H,);  B, C: (B, L, G, N);
        D: (H,) or (H, P) or None;  z: (B, L, H, P) or None;  dt_bias: (H,) or None;
        chunk_size: Q, any positive int (clipped to L);
        initial_state: (B, H, P, N) or None (zeros).
    Returns:
        y: (B, L, H, P) in x's dtype, and the final state (B, H, P, N) in
        float32 (float64 for float64 x).
    """
    wd = _work_dtype(x)
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    Q = max(1, min(chunk_size, L))
    pad = (-L) % Q

    delta = dt.to(wd) + (0 if dt_bias is None else dt_bias.to(wd))  # (B, L, H)
    if dt_softplus:
        delta = F.softplus(delta)
    xw = x.to(wd)
    # Pad after the softplus: Δ = 0 means decay 1 and no input.
    xdt = F.pad(xw * delta[..., None], (0, 0, 0, 0, 0, pad))  # (B, Lp, H, P)
    a = F.pad(delta * A.to(wd), (0, 0, 0, pad))  # log Ā: (B, Lp, H)
    Bw = F.pad(B.to(wd), (0, 0, 0, 0, 0, pad))  # (B, Lp, G, N)
    Cw = F.pad(C.to(wd), (0, 0, 0, 0, 0, pad))  # (B, Lp, G, N)

    xdt = rearrange(xdt, "b (c q) (g r) p -> b c g r q p", q=Q, g=G)  # (B, Nc, G, R, Q, P)
    a = rearrange(a, "b (c q) h -> b c h q", q=Q)  # (B, Nc, H, Q)
    Bw = rearrange(Bw, "b (c q) g n -> b c g q n", q=Q)  # (B, Nc, G, Q, N)
    Cw = rearrange(Cw, "b (c q) g n -> b c g q n", q=Q)  # (B, Nc, G, Q, N)
    acum = torch.cumsum(a, dim=-1)  # (B, Nc, H, Q)
    acum_g = rearrange(acum, "b c (g r) q -> b c g r q", g=G)  # (B, Nc, G, R, Q)

    # 1. intra-chunk: (C B^T ∘ decay mask) @ (Δ x), heads of a group share C B^T.
    CB = Cw @ Bw.transpose(-1, -2)  # (B, Nc, G, Q, Q)
    scores = CB[:, :, :, None] * _segment_decay(acum_g)  # (B, Nc, G, R, Q, Q)
    y = scores @ xdt  # (B, Nc, G, R, Q, P)

    # 2. chunk states: S_c = (decay-to-end * Δ x)^T @ B, per group.
    to_end = torch.exp(acum_g[..., -1:] - acum_g)  # (B, Nc, G, R, Q)
    xs = rearrange(xdt * to_end[..., None], "b c g r q p -> b c g (r p) q")
    states = rearrange(xs @ Bw, "b c g (r p) n -> b c (g r) p n", p=P)  # (B, Nc, H, P, N)

    # 3. inter-chunk recurrence.
    if initial_state is None:
        h0 = torch.zeros(batch, H, P, N, dtype=wd, device=x.device)
    else:
        h0 = initial_state.to(wd)
    prev, final = _pass_states(states, torch.exp(acum[..., -1]), h0)

    # 4. carried state read out by C, decayed to each position.
    prev_g = rearrange(prev, "b c (g r) p n -> b c g n (r p)", g=G)  # (B, Nc, G, N, R*P)
    y_off = rearrange(Cw @ prev_g, "b c g q (r p) -> b c g r q p", p=P)  # (B, Nc, G, R, Q, P)
    y = y + y_off * torch.exp(acum_g)[..., None]
    y = rearrange(y, "b c g r q p -> b (c q) (g r) p")[:, :L]  # (B, L, H, P)

    if D is not None:
        Dw = D.to(wd)
        y = y + xw * (Dw[:, None] if Dw.dim() == 1 else Dw)
    if z is not None:
        y = y * F.silu(z.to(wd))
    return y.to(x.dtype), final
