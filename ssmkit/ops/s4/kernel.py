"""The SSM convolution kernel K_l = C Abar^l Bbar, l = 0..L-1, channels last: (L, D).

With h_k = Abar h_{k-1} + Bbar u_k and y_k = C h_k, the output from a zero state is the
causal convolution y = K * u (S4 paper, eq. 4-5). Three ways to compute K:

  ``vandermonde_kernel`` (S4D): diagonal Abar, K_l = sum_n C_n Bbar_n Abar_n^l, a Vandermonde
      product; powers in two levels (see ``_powers``), O(D M L) work, O(D M sqrt L) memory.
  ``cauchy_kernel`` / ``dplr_kernel`` (S4, bilinear): A = Lambda - P Q*. The truncated
      generating function K^(z) = sum_{l<L} K_l z^l = Ctilde (I - Abar z)^{-1} Bbar with
      Ctilde = C (I - Abar^L), at the roots of unity z_f = exp(-2 pi i f / L). For bilinear,
      (I - Abar z)^{-1} Bbar = 2/(1+z) (g(z) I - A)^{-1} B with g(z) = (2/Delta)(1-z)/(1+z);
      the Woodbury identity reduces (g - Lambda + P Q*)^{-1} to the diagonal resolvent
      R = (g - Lambda)^{-1}, i.e. to Cauchy sums sum_i a_i b_i / (g - lambda_i). Written with
      d_i(z) = (2/Delta)(1-z) - lambda_i (1+z) and s_ab = sum_i a_i b_i / d_i, this is
          K^(z) = 2 [ s_CB - (1+z) s_CP (I + (1+z) s_QP)^{-1} s_QB ]
      (no pole at z = -1). An inverse real FFT gives K. Sums run over the full conjugate-pair
      set (lambda, conj lambda), stored as one half. O(D M L) work.
      S4 learns Ctilde directly; ssmkit keeps C (so the layer is one system at every L and its
      state is exact) and forms Ctilde = C (I - Abar^L) from a matrix power, O(D N^3 log L).
      Numerics: near a pole (g(z_f) close to some lambda_i, e.g. Re lambda ~ 0 as in LegT/FouT)
      the Woodbury correction cancels a large resolvent term; in complex64 that loses up to
      ~4 digits, so callers wanting float32 accuracy evaluate it in complex128 (as S4 does).
  ``dense_kernel``: any dense Abar (S4 with ZOH), Krylov blocks by doubling, O(D N^2 L).
  ``kernel_reference``: the plain loop h <- Abar h, K_l = C h (the spec; use in float64).

Complex diagonal modes stand for conjugate pairs: their kernel is 2 Re(sum ...).
Shapes: D channels, M complex (or real) modes, N real state, r the low rank.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from ..._checks import check_positive_int, check_shape
from ._powers import chunking, dense_krylov, diag_powers, matpow_apply, re_im
from .cauchy import cauchy_sums
from .discretize import discretize_dense, real_form


def vandermonde_kernel(log_abar: torch.Tensor, W: torch.Tensor, L: int, *, conj_pairs: bool) -> torch.Tensor:
    """K[l, d] = sum_n W[d, n] Abar[d, n]^l, doubled real part when ``conj_pairs``.

    Args:
        log_abar: (D, M) complex, log of the diagonal Abar (``diag_log_abar``).
        W: (D, M) = C * Bbar (real or complex).
        L: kernel length.
    Returns:
        K: (L, D) real.
    """
    fn = "vandermonde_kernel"
    sizes: dict[str, int] = {}
    check_shape(fn, "log_abar", log_abar, ("D", "M"), sizes)
    check_shape(fn, "W", W, ("D", "M"), sizes)
    check_positive_int(fn, "L", L)
    T, Cn = chunking(L)
    small, big = diag_powers(log_abar, T, Cn)  # (D, M, T), (D, M, Cn)
    G = W.to(small.dtype)[..., None] * big  # (D, M, Cn)
    K = torch.einsum("dnc,dnj->dcj", re_im(G, 1, conj=True), re_im(small, 1))  # (D, Cn, T): Re(G small)
    K = rearrange(K, "d c j -> (c j) d")[:L]  # (L, D)
    return 2 * K if conj_pairs else K


def cauchy_kernel(
    Lambda: torch.Tensor,
    P: torch.Tensor,
    Q: torch.Tensor,
    B: torch.Tensor,
    C_tilde: torch.Tensor,
    dt: torch.Tensor,
    L: int,
) -> torch.Tensor:
    """The S4 kernel of the bilinear DPLR system, given Ctilde = C (I - Abar^L).

    Args:
        Lambda, B, C_tilde: (D, M) complex;  P, Q: (D, r, M) complex;  dt: (D,) real.
    Returns:
        K: (L, D) real.
    """
    fn = "cauchy_kernel"
    sizes: dict[str, int] = {}
    for name, t in (("Lambda", Lambda), ("B", B), ("C_tilde", C_tilde)):
        check_shape(fn, name, t, ("D", "M"), sizes)
    check_shape(fn, "P", P, ("D", "r", "M"), sizes)
    check_shape(fn, "Q", Q, ("D", "r", "M"), sizes)
    check_shape(fn, "dt", dt, ("D",), sizes)
    check_positive_int(fn, "L", L)
    D, r = P.shape[0], P.shape[1]
    cdtype = Lambda.dtype
    angle = -2 * math.pi * torch.arange(L // 2 + 1, dtype=torch.float64, device=Lambda.device) / L
    z = torch.polar(torch.ones_like(angle), angle).to(cdtype)  # (F,) roots of unity
    lam = torch.cat([Lambda, Lambda.conj()], dim=-1)  # (D, 2M) full conjugate-pair set
    # Numerators of the four Cauchy sums, stacked: C B | C P_r | conj(Q_r) B | conj(Q_r) P_s.
    Qc = Q.conj()
    num = torch.cat(
        [
            (C_tilde * B)[:, None],  # (D, 1, M)
            C_tilde[:, None] * P,  # (D, r, M)
            Qc * B[:, None],  # (D, r, M)
            rearrange(Qc[:, :, None] * P[:, None], "d r s m -> d (r s) m"),  # (D, r*r, M)
        ],
        dim=1,
    )
    num = torch.cat([num, num.conj()], dim=-1)  # (D, K, 2M)
    s = cauchy_sums(num, lam, 2 / dt.to(cdtype), z)  # (D, K, F), chunked over F
    s_cb, s_cp, s_qb, s_qp = torch.split(s, [1, r, r, r * r], dim=1)
    w = 1 + z  # (F,)
    if r == 1:
        corr = s_cp[:, 0] * s_qb[:, 0] / (1 + w * s_qp[:, 0])  # (D, F)
    else:
        s_qp = rearrange(s_qp, "d (r s) f -> d f r s", r=r)  # (D, F, r, r)
        eye = torch.eye(r, dtype=cdtype, device=Lambda.device)
        rhs = rearrange(s_qb, "d r f -> d f r 1")  # (D, F, r, 1)
        sol = torch.linalg.solve(eye + w[:, None, None] * s_qp, rhs)[..., 0]  # (D, F, r)
        corr = torch.einsum("drf,dfr->df", s_cp, sol)  # (D, F)
    K_hat = 2 * (s_cb[:, 0] - w * corr)  # (D, F)
    return torch.fft.irfft(K_hat, n=L, dim=-1).T  # (L, D)


def dplr_kernel(
    Lambda: torch.Tensor,
    P: torch.Tensor,
    Q: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    L: int,
    Abar: torch.Tensor | None = None,
) -> torch.Tensor:
    """S4 kernel (bilinear) of A = Lambda - P Q* with output matrix C (not Ctilde).

    Forms Ctilde = C (I - Abar^L) in the real form (``real_form``), then ``cauchy_kernel``.
    ``Abar`` (D, N, N), the bilinear real-form Abar, may be passed when already computed.
    Returns:
        K: (L, D) real.
    """
    A_r, B_r, C_r = real_form(Lambda, B, C, P, Q)
    if Abar is None:
        Abar, _ = discretize_dense(A_r, B_r, dt.to(A_r.dtype), "bilinear")
    C_pow = matpow_apply(Abar.transpose(1, 2), C_r[..., None], L)[..., 0]  # (D, N): C Abar^L
    M = Lambda.shape[-1]
    c_t = C_r - C_pow  # (D, N) real form of Ctilde: 2 [Re, -Im]
    C_tilde = torch.complex(c_t[:, :M], -c_t[:, M:]) / 2  # (D, M)
    return cauchy_kernel(Lambda, P, Q, B, C_tilde, dt, L)


def dense_kernel(Abar: torch.Tensor, Bbar: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """K_l = C Abar^l Bbar for a dense Abar, by Krylov doubling in two levels.

    Args:
        Abar: (D, N, N);  Bbar, C: (D, N);  L: kernel length.
    Returns:
        K: (L, D).
    """
    T, Cn = chunking(L)
    cols, AT = dense_krylov(Abar, Bbar[..., None], T)  # (D, N, 1, T): Abar^j Bbar;  Abar^T
    rows, _ = dense_krylov(AT.transpose(1, 2), C[..., None], Cn)  # (D, N, 1, Cn): (C Abar^(cT))^T
    K = torch.einsum("dnc,dnj->dcj", rows[:, :, 0], cols[:, :, 0])  # (D, Cn, T)
    return rearrange(K, "d c j -> (c j) d")[:L]  # (L, D)


def kernel_reference(Abar: torch.Tensor, Bbar: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """The spec: h <- Abar h from h = Bbar, K_l = C h; a loop over l (use float64).

    Args:
        Abar: (D, N, N) dense, or (D, M) diagonal (real, or complex conjugate pairs);
        Bbar, C: (D, N) or (D, M).
    Returns:
        K: (L, D) real.
    """
    h = Bbar
    out = []
    for _ in range(L):
        k = (C * h).sum(-1)  # (D,)
        out.append(2 * k.real if h.is_complex() else k)
        h = (Abar @ h[..., None])[..., 0] if Abar.dim() == 3 else Abar * h
    return torch.stack(out)  # (L, D)
