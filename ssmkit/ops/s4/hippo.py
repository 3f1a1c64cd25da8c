"""HiPPO transition matrices, their normal-plus-low-rank form, and S4D initialisations.

Papers and symbols:
  HiPPO (Gu et al. 2020): a memory x(t) of the input history u(s), s <= t, projected onto
  an orthonormal basis, evolves as the linear ODE x'(t) = A x(t) + B u(t).
  ``hippo(measure, N)`` returns (A, B) for
    "legs": scaled Legendre, measure uniform on [0, t]; the exact ODE is x' = (1/t)(A x + B u),
            S4 drops the 1/t to get a time-invariant SSM.
            A_nk = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k), 0 (n < k);  B_n = sqrt(2n+1).
    "legt": translated Legendre, uniform on the window [t-1, t], basis
            psi_n(s) = sqrt(2n+1) P_n(2s-1) with s = x - t + 1 (s = 0 the oldest input).
            A_nk = -sqrt(2n+1) sqrt(2k+1) * (1 if n >= k else (-1)^(n-k));  B_n = sqrt(2n+1).
    "fout": translated Fourier on [t-1, t], basis g = (1, sqrt2 cos 2pi s, sqrt2 sin 2pi s,
            sqrt2 cos 4pi s, ...), with the window's far end u(t-1) replaced by its Fourier
            reconstruction: A = R - 2 g(0) g(0)^T (R the rotations, +-2 pi j), B = 2 g(0).
  S4 (Gu et al. 2022, "Efficiently Modeling Long Sequences with Structured State Spaces"):
  every HiPPO A is normal plus low rank (NPLR):
      A = V Lambda V* - P Q*,   Q = P here,
  with ``low_rank(measure, N)`` giving P (rank 1 for LegS and FouT, 2 for LegT) such that
  A + P P^T = c I + S, S real skew-symmetric, so Lambda = c + i omega (omega real) and V is
  unitary. Eigenvalues come in conjugate pairs (lambda, conj lambda) with eigenvectors
  (v, conj v); ``nplr`` keeps one of each pair (N/2 modes), as S4 does, and returns
  Lambda (N/2,), P~ = V* P, B~ = V* B and V (N, N/2), all complex.
  S4D (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal State Space
  Models"): ``s4d_init`` gives the diagonal A (Lambda) and B of
    "legs": the diagonal part Lambda of the DPLR HiPPO-LegS, B = V* B (N/2 complex modes);
    "inv":  Lambda_n = -1/2 + i (N/pi) (N/(2n+1) - 1), B = 1 (N/2 complex modes);
    "lin":  Lambda_n = -1/2 + i pi n, B = 1 (N/2 complex modes);
    "real": Lambda_n = -(n+1), B = 1 (N real modes).
  Complex modes stand for conjugate pairs: a system with N/2 complex modes is a real system
  of size N.

Everything here is computed once at initialisation, in float64 on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..._checks import check_choice, check_positive_int

HIPPO_MEASURES = ("legs", "legt", "fout")
S4D_INITS = ("legs", "inv", "lin", "real")


def _check_n(fn: str, N: int, even: bool) -> None:
    check_positive_int(fn, "N", N)
    if even and N % 2:
        raise ValueError(
            f"{fn}: argument `N` (the state size) must be even: the N/2 conjugate-pair modes "
            f"stand for a real state of size N; got N={N}"
        )


def hippo(measure: str, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The HiPPO operator of ``measure`` with ``N`` basis functions.

    Returns:
        A: (N, N) float64, B: (N,) float64, for x'(t) = A x(t) + B u(t).
    """
    fn = "hippo"
    check_choice(fn, "measure", measure, HIPPO_MEASURES)
    check_positive_int(fn, "N", N)
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    outer = r[:, None] * r[None, :]  # (N, N): sqrt(2n+1) sqrt(2k+1)
    lower = n[:, None] > n[None, :]  # (N, N): n > k
    if measure == "legs":
        A = torch.where(lower, -outer, torch.zeros_like(outer)) - torch.diag(n + 1)
        return A, r.clone()
    if measure == "legt":
        sign = (-1.0) ** (n[:, None] - n[None, :]).abs()  # (N, N): (-1)^(n-k)
        A = -outer * torch.where(n[:, None] >= n[None, :], torch.ones_like(sign), sign)
        return A, r.clone()
    # fout: index 0 is the constant, 2j-1 the cosine and 2j the sine of frequency j.
    g0 = _fout_g0(N)
    A = -2 * g0[:, None] * g0[None, :]
    for j in range(1, (N + 1) // 2):
        if 2 * j < N:
            A[2 * j - 1, 2 * j] += 2 * math.pi * j
            A[2 * j, 2 * j - 1] -= 2 * math.pi * j
    return A, 2 * g0


def _fout_g0(N: int) -> torch.Tensor:
    """(N,) the Fourier basis at the window's end: 1, sqrt2 for cosines, 0 for sines."""
    g0 = torch.zeros(N, dtype=torch.float64)
    g0[0] = 1.0
    g0[1::2] = math.sqrt(2.0)
    return g0


def low_rank(measure: str, N: int) -> torch.Tensor:
    """P: (r, N) float64 with A + P^T P = c I + (skew-symmetric), i.e. normal."""
    fn = "low_rank"
    check_choice(fn, "measure", measure, HIPPO_MEASURES)
    check_positive_int(fn, "N", N)
    n = torch.arange(N, dtype=torch.float64)
    if measure == "legs":
        return torch.sqrt(n + 0.5)[None, :]  # (1, N): P_n = sqrt(n + 1/2)
    if measure == "legt":
        r = torch.sqrt(2 * n + 1)
        return torch.stack([r, r * (-1.0) ** n]) / math.sqrt(2.0)  # (2, N)
    return math.sqrt(2.0) * _fout_g0(N)[None, :]  # (1, N)


@dataclass
class NPLR:
    """A = V Lambda V* - P Q* (Q = P), conjugate half kept. Complex128 fields.

    Lambda: (M,) eigenvalues of the normal part, M = N/2.
    P: (r, M) low-rank factor in the eigenbasis (V* P).
    B: (M,) input matrix in the eigenbasis (V* B).
    V: (N, M) eigenvectors; the full unitary basis is [V, conj V].
    """

    Lambda: torch.Tensor
    P: torch.Tensor
    B: torch.Tensor
    V: torch.Tensor


def _conj_half_eig(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For real skew-symmetric S (N, N), N even: omega (M,) >= 0 and V (N, M) with
    S = [V, conj V] diag(i omega, -i omega) [V, conj V]*, [V, conj V] unitary."""
    N = S.shape[0]
    omega, U = torch.linalg.eigh(-1j * S.to(torch.complex128))  # -iS is Hermitian
    tol = 1e-9 * max(1.0, omega.abs().max().item())
    pos = omega > tol
    null = omega.abs() <= tol
    V_pos = U[:, pos]  # (N, p): their conjugates are the -omega eigenvectors
    n_null = int(null.sum())
    if n_null % 2:  # cannot happen for N even and S real skew; guard against round-off
        raise RuntimeError(f"nplr: odd null space ({n_null}) of the skew part; N={N}")
    if n_null:
        # The null space is real: take a real orthonormal basis and pair it up as (r1 + i r2)/sqrt2.
        U0 = U[:, null]
        stacked = torch.cat([U0.real, U0.imag], dim=1)  # (N, 2 n_null)
        basis = torch.linalg.svd(stacked, full_matrices=False).U[:, :n_null]  # (N, n_null)
        V_null = (basis[:, 0::2] + 1j * basis[:, 1::2]) / math.sqrt(2.0)
        V_pos = torch.cat([V_pos, V_null.to(V_pos.dtype)], dim=1)
        omega_pos = torch.cat([omega[pos], torch.zeros(n_null // 2, dtype=omega.dtype)])
    else:
        omega_pos = omega[pos]
    if V_pos.shape[1] != N // 2:
        raise RuntimeError(f"nplr: found {V_pos.shape[1]} conjugate pairs, expected {N // 2}")
    return omega_pos, V_pos


def nplr(measure: str, N: int) -> NPLR:
    """The DPLR parameters of HiPPO ``measure`` with state size ``N`` (even)."""
    fn = "nplr"
    check_choice(fn, "measure", measure, HIPPO_MEASURES)
    _check_n(fn, N, even=True)
    A, B = hippo(measure, N)
    P = low_rank(measure, N)  # (r, N)
    AP = A + P.T @ P  # (N, N): c I + skew
    c = torch.diagonal(AP).mean()
    S = AP - c * torch.eye(N, dtype=A.dtype)
    if (S + S.T).abs().max() > 1e-9 * max(1.0, S.abs().max().item()):
        raise RuntimeError(f"nplr: A + P^T P is not c I + skew for measure {measure!r}")
    S = (S - S.T) / 2
    omega, V = _conj_half_eig(S)
    Vh = V.conj().T  # (M, N): V*
    return NPLR(
        Lambda=c + 1j * omega,
        P=(Vh @ P.T.to(V.dtype)).T,  # (r, M)
        B=Vh @ B.to(V.dtype),  # (M,)
        V=V,
    )


def s4d_init(init: str, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal A (Lambda) and B for S4D with state size ``N``.

    Returns:
        Lambda, B: (N/2,) complex128 for "legs", "inv", "lin"; (N,) float64 for "real".
    """
    fn = "s4d_init"
    check_choice(fn, "init", init, S4D_INITS)
    _check_n(fn, N, even=init != "real")
    if init == "real":
        n = torch.arange(N, dtype=torch.float64)
        return -(n + 1), torch.ones(N, dtype=torch.float64)
    if init == "legs":
        d = nplr("legs", N)
        return d.Lambda, d.B
    n = torch.arange(N // 2, dtype=torch.float64)
    if init == "inv":
        imag = (N / math.pi) * (N / (2 * n + 1) - 1)
    else:  # lin
        imag = math.pi * n
    Lambda = torch.complex(torch.full_like(n, -0.5), imag)
    return Lambda, torch.ones_like(Lambda)
