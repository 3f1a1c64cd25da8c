"""Powers Abar^l, l = 0..L-1, in two levels: l = c T + j with T a power of two near sqrt(L).

Abar^(cT + j) = Abar^(cT) Abar^j, so a sum over l of (something at l) * Abar^l becomes a
batched matrix product over (c, j): O(L) work and O(sqrt(L)) powers held, instead of a
(D, M, L) Vandermonde matrix. Diagonal Abar: powers are exp(l log Abar) (elementwise).
Dense Abar: Krylov blocks [v, Abar v, ..., Abar^(T-1) v] by doubling (log T matrix products).
"""

from __future__ import annotations

import torch


def chunking(L: int) -> tuple[int, int]:
    """(T, Cn): T a power of two with T^2 >= L, Cn = ceil(L / T) chunks."""
    T = 1
    while T * T < L:
        T *= 2
    return T, -(-L // T)


def diag_powers(log_abar: torch.Tensor, T: int, Cn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """small[d, n, j] = Abar^j (j < T), big[d, n, c] = Abar^(cT) (c < Cn).

    Args:
        log_abar: (D, M) complex.
    Returns:
        small: (D, M, T), big: (D, M, Cn) complex.
    """
    real = log_abar.real.dtype
    j = torch.arange(T, dtype=real, device=log_abar.device)
    c = torch.arange(Cn, dtype=real, device=log_abar.device) * T
    return torch.exp(log_abar[..., None] * j), torch.exp(log_abar[..., None] * c)


def re_im(x: torch.Tensor, dim: int, conj: bool = False) -> torch.Tensor:
    """[Re x, Im x] (or [Re x, -Im x] with ``conj``) concatenated along ``dim``: real.

    Re(sum_n a_n b_n) = sum over the stacked axis of re_im(a, conj=True) * re_im(b), so a
    complex contraction whose real part is all we need becomes one real matrix product
    (half the work of a complex one, and no complex copy of a real operand)."""
    return torch.cat([x.real, -x.imag if conj else x.imag], dim=dim)


def dense_krylov(Abar: torch.Tensor, V0: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K[d, :, i, j] = Abar^j V0[d, :, i] for j < count, by doubling.

    Args:
        Abar: (D, N, N);  V0: (D, N, k).
    Returns:
        K: (D, N, k, count) and Abar^W where W is the power of two >= count reached.
    """
    K = V0[..., None]  # (D, N, k, 1)
    P = Abar
    while K.shape[-1] < count:
        K = torch.cat([K, torch.einsum("dnm,dmkj->dnkj", P, K)], dim=-1)  # (D, N, k, 2w)
        P = P @ P
    return K[..., :count], P


def matpow_apply(Abar: torch.Tensor, V: torch.Tensor, L: int) -> torch.Tensor:
    """Abar^L V by binary exponentiation. Abar: (D, N, N), V: (D, N, k) -> (D, N, k)."""
    P = Abar
    while L:
        if L & 1:
            V = P @ V
        L >>= 1
        if L:
            P = P @ P
    return V
