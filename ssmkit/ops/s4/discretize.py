"""Discretisation of x'(t) = A x(t) + B u(t) with step Delta into h_k = Abar h_{k-1} + Bbar u_k.

Symbols (S4 / S4D papers): Delta = ``dt`` (one step per channel), Abar = ``Abar``, Bbar = ``Bbar``.
  ZOH (zero-order hold):  Abar = exp(Delta A),  Bbar = A^{-1} (exp(Delta A) - I) B
  bilinear (Tustin):      Abar = (I - Delta/2 A)^{-1} (I + Delta/2 A),  Bbar = (I - Delta/2 A)^{-1} Delta B
For a diagonal A both are elementwise closed forms (``discretize_diag``); for a dense A
they are a matrix exponential (of the block matrix [[Delta A, Delta B], [0, 0]], which also
gives Bbar without inverting A) or a linear solve (``discretize_dense``). ``diag_log_abar``
gives log Abar, from which the powers Abar^l = exp(l log Abar) are taken (for ZOH it is
exactly Delta A, which keeps long powers accurate).

``real_form`` turns a conjugate-pair system with N/2 complex modes (diagonal Lambda, or
DPLR Lambda - P Q*) into the equivalent real system of size N, in the coordinates
[Re x, Im x] of the complex half state x: this is what the dense paths and the reference use.

Shapes (channels D, complex modes M, real state N):
  diag:  A, B: (D, M) real or complex;  dt: (D,)
  dense: A: (D, N, N);  B: (D, N);  dt: (D,)
All functions are differentiable.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..._checks import check_choice, check_shape

METHODS = ("zoh", "bilinear")


def discretize_diag(
    A: torch.Tensor, B: torch.Tensor, dt: torch.Tensor, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form discretisation of a diagonal system.

    Args:
        A, B: (D, M) real or complex; Re A < 0 (A = 0 is allowed only for bilinear).
        dt: (D,) positive steps.
    Returns:
        Abar, Bbar: (D, M), A's dtype (promoted with B).
    """
    fn = "discretize_diag"
    check_choice(fn, "method", method, METHODS)
    sizes: dict[str, int] = {}
    check_shape(fn, "A", A, ("D", "M"), sizes)
    check_shape(fn, "B", B, ("D", "M"), sizes)
    check_shape(fn, "dt", dt, ("D",), sizes)
    dtA = dt[:, None] * A  # (D, M)
    if method == "zoh":
        return torch.exp(dtA), torch.expm1(dtA) / A * B
    denom = 1 - dtA / 2
    return (1 + dtA / 2) / denom, dt[:, None] * B / denom


def diag_log_abar(A: torch.Tensor, dt: torch.Tensor, method: str) -> torch.Tensor:
    """log Abar for a diagonal A: (D, M) complex (a real A gives a complex log when Abar < 0).

    Only integer powers exp(l log Abar) are used, so the branch of the log does not matter.
    """
    check_choice("diag_log_abar", "method", method, METHODS)
    dtA = dt[:, None] * A  # (D, M)
    if not dtA.is_complex():
        dtA = torch.complex(dtA, torch.zeros_like(dtA))
    if method == "zoh":
        return dtA
    return torch.log1p(dtA / 2) - torch.log1p(-dtA / 2)


def discretize_dense(
    A: torch.Tensor, B: torch.Tensor, dt: torch.Tensor, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discretisation of a dense system, one per channel.

    Args:
        A: (D, N, N);  B: (D, N);  dt: (D,).
    Returns:
        Abar: (D, N, N), Bbar: (D, N).
    """
    fn = "discretize_dense"
    check_choice(fn, "method", method, METHODS)
    sizes: dict[str, int] = {}
    check_shape(fn, "B", B, ("D", "N"), sizes)
    check_shape(fn, "A", A, ("D", "N", "N"), sizes)
    check_shape(fn, "dt", dt, ("D",), sizes)
    D, N = B.shape
    dt_ = dt.to(A.dtype)[:, None, None]  # (D, 1, 1)
    if method == "zoh":
        top = torch.cat([dt_ * A, dt_ * B[:, :, None]], dim=2)  # (D, N, N+1): [dt A, dt B]
        block = torch.cat([top, torch.zeros_like(top[:, :1])], dim=1)  # (D, N+1, N+1): [[dt A, dt B], [0, 0]]
        E = torch.linalg.matrix_exp(block)
        return E[:, :N, :N], E[:, :N, N]
    eye = torch.eye(N, dtype=A.dtype, device=A.device)
    M = eye - dt_ / 2 * A  # (D, N, N)
    Abar = torch.linalg.solve(M, eye + dt_ / 2 * A)
    Bbar = torch.linalg.solve(M, (dt_[:, :, 0] * B)[:, :, None])[:, :, 0]  # (D, N)
    return Abar, Bbar


def real_form(
    Lambda: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    P: Optional[torch.Tensor] = None,
    Q: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The real system equivalent to a conjugate-pair (diagonal or DPLR) system.

    Complex half state x (M modes) stands for the real state [Re x, Im x] (N = 2M):
        x' = Lambda x - sum_r P_r 2 Re(Q_r^H x) + B u,   y = 2 Re(C x).
    (2 Re(Q_r^H x) is Q_r^* applied to the full state [x, conj x].)
    A real Lambda (real modes, no pairs, N = M) gives diag(Lambda), B, C unchanged.

    Args:
        Lambda, B, C: (D, M);  P, Q: (D, r, M) complex or None.
    Returns:
        A: (D, N, N), B: (D, N), C: (D, N) real, with y = C h, h' = A h + B u.
    """
    if not Lambda.is_complex():
        if P is not None:
            raise ValueError("real_form: a low-rank term P needs complex (conjugate-pair) modes")
        return torch.diag_embed(Lambda), B, C
    lr, li = Lambda.real, Lambda.imag
    dr, di = torch.diag_embed(lr), torch.diag_embed(li)  # (D, M, M)
    A = torch.cat([torch.cat([dr, -di], -1), torch.cat([di, dr], -1)], dim=-2)  # (D, N, N): [[Re, -Im], [Im, Re]]
    if P is not None:
        Q = P if Q is None else Q
        p = torch.cat([P.real, P.imag], dim=-1)  # (D, r, N)
        q = torch.cat([Q.real, Q.imag], dim=-1)  # (D, r, N)
        A = A - 2 * torch.einsum("drn,drm->dnm", p, q)
    B_r = torch.cat([B.real, B.imag], dim=-1)  # (D, N)
    C_r = 2 * torch.cat([C.real, -C.imag], dim=-1)  # (D, N)
    return A, B_r, C_r
