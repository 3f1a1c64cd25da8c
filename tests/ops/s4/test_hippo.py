"""HiPPO matrices, their NPLR form, and the S4D initialisations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from numerics import TOL, rel_err
from ssmkit.ops.s4 import HIPPO_MEASURES, hippo, low_rank, nplr, real_form, s4d_init


def crel(out: torch.Tensor, ref: torch.Tensor) -> float:
    """rel_err of complex tensors (real and imaginary parts both count)."""
    return rel_err(torch.view_as_real(out.to(torch.complex128)), torch.view_as_real(ref.to(torch.complex128)))


def test_legs_entries_closed_form():
    A, B = hippo("legs", 4)
    s = math.sqrt
    expected = torch.tensor(
        [[-1, 0, 0, 0], [-s(3), -2, 0, 0], [-s(5), -s(15), -3, 0], [-s(7), -s(21), -s(35), -4]], dtype=torch.float64
    )
    assert torch.allclose(A, expected, rtol=1e-15, atol=0)
    assert torch.allclose(B, torch.tensor([1, s(3), s(5), s(7)], dtype=torch.float64), rtol=1e-15, atol=0)
    N = 63
    A, B = hippo("legs", N)
    for n in range(N):
        assert B[n] == pytest.approx(s(2 * n + 1), rel=1e-15)
        for k in range(N):
            want = -s(2 * n + 1) * s(2 * k + 1) if n > k else (-(n + 1) if n == k else 0.0)
            assert A[n, k].item() == pytest.approx(want, rel=1e-15, abs=0)


def _projection_and_derivative(measure: str, N: int, t: float, rng: np.random.Generator):
    """Coefficients c(t) of a random test function on the measure's window, and dc/dt, by
    Gauss-Legendre quadrature (exact for the polynomials used; spectral for FouT)."""
    s, w = np.polynomial.legendre.leggauss(80)
    s, w = (s + 1) / 2, w / 2  # nodes and weights on [0, 1]
    if measure == "fout":
        J = N // 2 - 1  # frequencies the truncated basis holds with both cos and sin
        a, b, a0 = rng.standard_normal(J), rng.standard_normal(J), rng.standard_normal()
        j = np.arange(1, J + 1)
        phase = lambda x: 2 * np.pi * j * x[..., None]
        f = lambda x: a0 + (a * np.cos(phase(x)) + b * np.sin(phase(x))).sum(-1)
        df = lambda x: (2 * np.pi * j * (-a * np.sin(phase(x)) + b * np.cos(phase(x)))).sum(-1)
        basis = np.zeros((N, s.size))
        basis[0] = 1
        for n in range(1, N):
            freq = (n + 1) // 2
            basis[n] = math.sqrt(2) * (np.cos if n % 2 else np.sin)(2 * np.pi * freq * s)
    else:
        coef = rng.standard_normal(N)  # degree N-1 polynomial
        f = lambda x: np.polynomial.polynomial.polyval(x, coef)
        df = lambda x: np.polynomial.polynomial.polyval(x, np.polynomial.polynomial.polyder(coef))
        basis = np.polynomial.legendre.legvander(2 * s - 1, N - 1).T * np.sqrt(2 * np.arange(N) + 1)[:, None]
    if measure == "legs":  # uniform on [0, t]: c(t) = int_0^1 f(t s) psi(s) ds
        return basis @ (w * f(t * s)), basis @ (w * s * df(t * s)), f(np.array(t))
    x = t - 1 + s  # the window [t-1, t]
    return basis @ (w * f(x)), basis @ (w * df(x)), f(np.array(t))


@pytest.mark.parametrize("measure", HIPPO_MEASURES)
def test_hippo_ode_is_exact_on_its_function_class(measure, gen):
    """d/dt c = A c + B f(t) (LegS: (A c + B f(t)) / t) for the basis projections c(t)."""
    N, t = 14, 0.75
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
    c, dc, ft = _projection_and_derivative(measure, N, t, rng)
    A, B = (m.numpy() for m in hippo(measure, N))
    rhs = A @ c + B * ft
    if measure == "legs":
        rhs = rhs / t
    assert rel_err(torch.from_numpy(rhs), torch.from_numpy(dc)) < TOL[torch.float64]


@pytest.mark.parametrize("measure", HIPPO_MEASURES)
@pytest.mark.parametrize("N", [14, 64])
def test_nplr_reconstructs_hippo(measure, N):
    A, B = hippo(measure, N)
    d = nplr(measure, N)
    assert d.Lambda.shape == (N // 2,) and d.V.shape == (N, N // 2) and d.B.shape == (N // 2,)
    V = torch.cat([d.V, d.V.conj()], dim=1)  # (N, N) full basis
    assert crel(V.conj().T @ V, torch.eye(N, dtype=V.dtype)) < TOL[torch.float64]
    Lam = torch.cat([d.Lambda, d.Lambda.conj()])
    P = V @ torch.cat([d.P, d.P.conj()], dim=1).T  # (N, r) back in the HiPPO basis
    A_rec = V @ torch.diag(Lam) @ V.conj().T - P @ P.conj().T  # V Lambda V* - P Q*, Q = P
    assert crel(A_rec, A) < TOL[torch.float64]
    assert crel(V @ torch.cat([d.B, d.B.conj()]), B) < TOL[torch.float64]
    assert crel(P, low_rank(measure, N).T) < TOL[torch.float64]
    # The normal part is c I + skew: one real part for all eigenvalues.
    assert torch.allclose(d.Lambda.real, d.Lambda.real[0].expand(N // 2), atol=1e-12)


@pytest.mark.parametrize("measure", HIPPO_MEASURES)
def test_real_form_is_hippo_in_the_eigenbasis(measure):
    """The layers' real system [Re x, Im x], x = V* h, is HiPPO's (A, B) after a change of basis."""
    N = 14
    A, B = hippo(measure, N)
    d = nplr(measure, N)
    A_r, B_r, _ = real_form(d.Lambda[None], d.B[None], d.B[None], d.P[None], d.P[None])
    T = torch.cat([d.V.conj().T.real, d.V.conj().T.imag])  # (N, N): h -> [Re V* h, Im V* h]
    assert rel_err(A_r[0] @ T, T @ A) < TOL[torch.float64]
    assert rel_err(B_r[0], T @ B) < TOL[torch.float64]


def test_s4d_inits():
    N = 14
    n = torch.arange(N // 2, dtype=torch.float64)
    lam, b = s4d_init("lin", N)
    assert torch.allclose(lam, torch.complex(-0.5 * torch.ones_like(n), math.pi * n)) and torch.all(b == 1)
    lam, _ = s4d_init("inv", N)
    assert torch.allclose(lam.imag, N / math.pi * (N / (2 * n + 1) - 1)) and torch.all(lam.real == -0.5)
    lam, b = s4d_init("legs", N)
    d = nplr("legs", N)
    assert torch.equal(lam, d.Lambda) and torch.equal(b, d.B)
    assert torch.allclose(lam.real, torch.full_like(lam.real, -0.5))
    lam, b = s4d_init("real", 15)
    assert torch.equal(lam, -torch.arange(1, 16, dtype=torch.float64)) and b.shape == (15,)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`N`.*must be even.*N=15"):
        nplr("legs", 15)
    with pytest.raises(ValueError, match="`N`.*must be even"):
        s4d_init("inv", 15)
    with pytest.raises(ValueError, match="`measure` must be one of .*'legs'.*got 'lagt'"):
        hippo("lagt", 8)
    with pytest.raises(ValueError, match="`init` must be one of"):
        s4d_init("legt", 8)
    with pytest.raises(TypeError, match="`N` must be an int"):
        hippo("legs", 8.0)
