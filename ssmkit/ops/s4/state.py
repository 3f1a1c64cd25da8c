"""States of a discretised LTI SSM in convolution mode: the final state and an initial state's output.

With h_t = Abar h_{t-1} + Bbar u_t, y_t = C h_t, t = 0..L-1, starting from h_{-1} = h0:
  final state   h_{L-1} = Abar^L h0 + sum_{s<L} Abar^(L-1-s) Bbar u_s      (``*_final_state``)
  h0's output   y_t    += C Abar^(t+1) h0                                  (``*_state_output``)
so that a sequence can be continued: forward(x[:k]) then forward(x[k:], state) = forward(x).
Both are sums over powers of Abar, taken in two levels (see ``_powers``): O(B L D N) work for
a diagonal Abar (a Vandermonde-weighted sum), O(B L D N^2) for a dense one, and never a
(D, N, L) table of powers.

Diagonal (S4D): log_abar: (D, M) complex; Bbar, C: (D, M); states (B, D, M), complex when
``conj_pairs`` (the modes stand for conjugate pairs, y = 2 Re(C h)), real otherwise.
Dense (S4): Abar: (D, N, N); Bbar, C: (D, N); states (B, D, N) real.
Inputs u: (B, L, D).
"""

from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange

from ._powers import chunking, dense_krylov, diag_powers, matpow_apply, re_im


def _reversed_chunks(u: torch.Tensor, T: int, Cn: int, dtype: torch.dtype) -> torch.Tensor:
    """u reversed in time, zero-padded to Cn*T, split: (B, Cn, T, D); [.., c, j, :] = u[L-1-(cT+j)]."""
    L = u.shape[1]
    u_rev = torch.nn.functional.pad(u.flip(1).to(dtype), (0, 0, 0, Cn * T - L))  # (B, Cn*T, D)
    return rearrange(u_rev, "b (c j) d -> b c j d", j=T)


def diag_final_state(
    u: torch.Tensor,
    log_abar: torch.Tensor,
    Bbar: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
    *,
    conj_pairs: bool,
) -> torch.Tensor:
    """h_{L-1} for a diagonal Abar = exp(log_abar). Returns (B, D, M)."""
    L = u.shape[1]
    T, Cn = chunking(L)
    small, big = diag_powers(log_abar, T, Cn)  # (D, M, T), (D, M, Cn)
    u_c = _reversed_chunks(u, T, Cn, small.real.dtype)  # (B, Cn, T, D) real
    s = torch.einsum("bcjd,dnj->bcdn", u_c, re_im(small, 1))  # (B, Cn, D, 2M): real u times [Re, Im]
    M = small.shape[1]
    s = torch.complex(s[..., :M], s[..., M:])  # (B, Cn, D, M)
    h = torch.einsum("bcdn,dnc->bdn", s, big) * Bbar.to(small.dtype)  # (B, D, M)
    if h0 is not None:
        h = h + torch.exp(L * log_abar) * h0.to(small.dtype)
    return h if conj_pairs else h.real


def diag_state_output(
    h0: torch.Tensor, log_abar: torch.Tensor, C: torch.Tensor, L: int, *, conj_pairs: bool
) -> torch.Tensor:
    """y[b, t, d] = sum_n C[d, n] Abar[d, n]^(t+1) h0[b, d, n] (2 Re for pairs). Returns (B, L, D)."""
    T, Cn = chunking(L)
    small, big = diag_powers(log_abar, T, Cn)  # (D, M, T), (D, M, Cn)
    g = (C.to(small.dtype) * torch.exp(log_abar) * h0.to(small.dtype))[..., None] * big  # (B, D, M, Cn)
    y = torch.einsum("bdnc,dnj->bcjd", re_im(g, 2, conj=True), re_im(small, 1))  # (B, Cn, T, D): Re(g small)
    y = rearrange(y, "b c j d -> b (c j) d")[:, :L]  # (B, L, D)
    return 2 * y if conj_pairs else y


def dense_final_state(
    u: torch.Tensor, Abar: torch.Tensor, Bbar: torch.Tensor, h0: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """h_{L-1} for a dense Abar. Returns (B, D, N)."""
    L = u.shape[1]
    T, Cn = chunking(L)
    n_chunks = 1
    while n_chunks < Cn:  # a power of two, for the pairwise reduction below
        n_chunks *= 2
    cols, P = dense_krylov(Abar, Bbar[..., None], T)  # (D, N, 1, T): Abar^j Bbar;  P = Abar^T
    u_c = _reversed_chunks(u, T, n_chunks, Abar.dtype)  # (B, n_chunks, T, D)
    s = torch.einsum("bcjd,dnj->bcdn", u_c, cols[:, :, 0])  # (B, n_chunks, D, N)
    # h = sum_c Abar^(cT) s_c, reduced pairwise: s_2i + Abar^T s_(2i+1), then with Abar^(2T), ...
    while s.shape[1] > 1:
        s = s[:, 0::2] + torch.einsum("dnm,bcdm->bcdn", P, s[:, 1::2])  # (B, n/2, D, N)
        P = P @ P
    h = s[:, 0]  # (B, D, N)
    if h0 is not None:
        h = h + rearrange(matpow_apply(Abar, rearrange(h0, "b d n -> d n b"), L), "d n b -> b d n")
    return h


def dense_state_output(h0: torch.Tensor, Abar: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """y[b, t, d] = C[d] Abar[d]^(t+1) h0[b, d] for a dense Abar. Returns (B, L, D)."""
    T, Cn = chunking(L)
    h1 = torch.einsum("dnm,bdm->dnb", Abar, h0)  # (D, N, B): Abar h0
    cols, P = dense_krylov(Abar, h1, T)  # (D, N, B, T): Abar^(j+1) h0;  P = Abar^T
    rows, _ = dense_krylov(P.transpose(1, 2), C[..., None], Cn)  # (D, N, 1, Cn): (C Abar^(cT))^T
    y = torch.einsum("dnc,dnbj->bcjd", rows[:, :, 0], cols)  # (B, Cn, T, D)
    return rearrange(y, "b c j d -> b (c j) d")[:, :L]  # (B, L, D)
