"""Discretisation and SSM kernels against the dense-power reference, on random systems."""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.ops.s4.cauchy as cauchy_mod
from numerics import TOL, assert_close, randn
from ssmkit.ops.s4 import (
    METHODS,
    cauchy_kernel,
    dense_kernel,
    diag_log_abar,
    discretize_dense,
    discretize_diag,
    dplr_kernel,
    kernel_reference,
    real_form,
    vandermonde_kernel,
)

D, M, L = 5, 7, 63  # channels, modes, length: odd on purpose
F64, C128 = torch.float64, torch.complex128


def as_real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t.resolve_conj()) if t.is_complex() else t


def crandn(*shape, gen, scale=1.0):
    return torch.complex(randn(*shape, gen=gen, dtype=F64), randn(*shape, gen=gen, dtype=F64)) * scale / math.sqrt(2)


def random_system(gen, complex_modes=True, rank=0, tied=False):
    """Random stable system: Re Lambda in [-1, -0.05], log-uniform dt in [1e-3, 0.5]. With
    ``tied``, Q = P (A + A* = 2 Re Lambda - 2 P P* < 0); else P, Q are small enough that
    ||P Q*|| < 0.05 <= -Re Lambda (an arbitrary Q can make A unstable)."""
    re = -(0.05 + 0.95 * torch.rand(D, M, generator=gen, dtype=F64))
    if complex_modes:
        Lam = torch.complex(re, 3 * randn(D, M, gen=gen, dtype=F64))
        B, C = crandn(D, M, gen=gen), crandn(D, M, gen=gen)
    else:
        Lam = re * 20  # real modes reaching dt |A| > 2, where bilinear Abar < 0
        B, C = randn(D, M, gen=gen, dtype=F64), randn(D, M, gen=gen, dtype=F64)
    dt = torch.exp(torch.rand(D, generator=gen, dtype=F64) * math.log(500) + math.log(1e-3))
    scale = 0.7 if tied else 0.04 / math.sqrt(max(rank, 1) * M)  # 2 ||P|| ||Q|| < 0.05 (full basis)
    P = crandn(D, rank, M, gen=gen, scale=scale) if rank else None
    Q = (P.clone() if tied else crandn(D, rank, M, gen=gen, scale=scale)) if rank else None
    return Lam, P, Q, B, C, dt


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("complex_modes", [True, False])
def test_discretize_diag_closed_form_matches_dense(method, complex_modes, gen):
    Lam, _, _, B, C, dt = random_system(gen, complex_modes)
    Abar, Bbar = discretize_diag(Lam, B, dt, method)
    log_abar = diag_log_abar(Lam, dt, method)
    A_r, B_r, _ = real_form(Lam, B, C)
    Ad, Bd = discretize_dense(A_r, B_r, dt, method)  # matrix exponential / solve
    Ad_from_diag, Bd_from_diag, _ = real_form(Abar, Bbar, C)
    assert_close(Ad_from_diag, Ad, TOL[F64], "Abar")
    assert_close(Bd_from_diag, Bd, TOL[F64], "Bbar")
    assert_close(as_real(torch.exp(log_abar)), as_real(Abar.to(C128)), TOL[F64], "exp(log Abar)")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("complex_modes", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vandermonde_kernel_matches_dense_powers(method, complex_modes, dtype, gen):
    Lam, _, _, B, C, dt = random_system(gen, complex_modes)
    A_r, B_r, C_r = real_form(Lam, B, C)
    ref = kernel_reference(*discretize_dense(A_r, B_r, dt, method), C_r, L)  # (L, D) float64
    cdtype = torch.complex64 if dtype == torch.float32 else C128
    Lam, B, C = (t.to(cdtype if t.is_complex() else dtype) for t in (Lam, B, C))
    _, Bbar = discretize_diag(Lam, B, dt.to(dtype), method)
    K = vandermonde_kernel(diag_log_abar(Lam, dt.to(dtype), method), C * Bbar, L, conj_pairs=complex_modes)
    assert K.shape == (L, D) and K.dtype == dtype
    assert_close(K, ref, TOL[dtype], f"vandermonde kernel ({method})")


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("length", [L, 64, 1])
@pytest.mark.parametrize("tied", [True, False])
def test_cauchy_kernel_matches_dense_powers(rank, length, tied, gen):
    """The S4 algorithm (bilinear). float64 only: near poles its Woodbury step cancels large
    terms, so complex64 is not accurate to 1e-4 in general (the layer runs it in float64)."""
    Lam, P, Q, B, C, dt = random_system(gen, rank=rank, tied=tied)
    A_r, B_r, C_r = real_form(Lam, B, C, P, Q)
    ref = kernel_reference(*discretize_dense(A_r, B_r, dt, "bilinear"), C_r, length)
    K = dplr_kernel(Lam, P, Q, B, C, dt, length)
    assert K.shape == (length, D)
    assert_close(K, ref, TOL[F64], f"cauchy kernel (rank {rank}, L={length})")


@pytest.mark.parametrize("tied", [True, False])
def test_cauchy_kernel_gradients_match_dense_powers(tied, gen):
    params = [t.requires_grad_(True) for t in random_system(gen, rank=2, tied=tied)]
    Lam, P, Q, B, C, dt = params
    w = randn(L, D, gen=gen, dtype=F64)
    A_r, B_r, C_r = real_form(Lam, B, C, P, Q)
    K_ref = kernel_reference(*discretize_dense(A_r, B_r, dt, "bilinear"), C_r, L)
    ref_grads = torch.autograd.grad((K_ref * w).sum(), params)
    grads = torch.autograd.grad((dplr_kernel(Lam, P, Q, B, C, dt, L) * w).sum(), params)
    for name, g, r in zip(["Lambda", "P", "Q", "B", "C", "dt"], grads, ref_grads):
        assert_close(as_real(g), as_real(r), TOL[F64], f"grad of {name}")


def test_cauchy_kernel_in_frequency_chunks(gen, monkeypatch):
    """With a small chunk budget the sums are chunked (and rebuilt in backward): same values and grads."""
    params = [t.requires_grad_(True) for t in random_system(gen, rank=2, tied=True)]
    K_full = cauchy_kernel(*params, L)
    g_full = torch.autograd.grad(K_full.square().sum(), params)
    monkeypatch.setattr(cauchy_mod, "CAUCHY_CHUNK", 2 * D * M * 5)  # 5 frequencies per chunk
    K_chunk = cauchy_kernel(*params, L)
    g_chunk = torch.autograd.grad(K_chunk.square().sum(), params)
    assert_close(K_chunk, K_full, TOL[F64], "chunked kernel")
    for g, r in zip(g_chunk, g_full):
        assert_close(as_real(g), as_real(r), TOL[F64], "chunked grad")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dense_kernel_matches_dense_powers(method, dtype, gen):
    Lam, P, Q, B, C, dt = random_system(gen, rank=1, tied=True)
    A_r, B_r, C_r = real_form(Lam, B, C, P, Q)
    Abar, Bbar = discretize_dense(A_r, B_r, dt, method)
    ref = kernel_reference(Abar, Bbar, C_r, L)
    for length in (L, 1, 2):
        K = dense_kernel(Abar.to(dtype), Bbar.to(dtype), C_r.to(dtype), length)
        assert_close(K, ref[:length], TOL[dtype], f"dense kernel L={length}")


def test_reference_kernel_scalar_case():
    """One real mode: K_l = c a^l b, written out."""
    a, b, c = torch.tensor([[0.9]], dtype=F64), torch.tensor([[2.0]], dtype=F64), torch.tensor([[-1.5]], dtype=F64)
    K = kernel_reference(a, b, c, 5)
    assert torch.allclose(K[:, 0], -1.5 * 2.0 * 0.9 ** torch.arange(5, dtype=F64), rtol=1e-15)


def test_kernel_bad_inputs(gen):
    Lam, P, Q, B, C, dt = random_system(gen, rank=1)
    with pytest.raises(ValueError, match="vandermonde_kernel: argument `W` expected shape \\(D=5, M=7\\)"):
        vandermonde_kernel(diag_log_abar(Lam, dt, "zoh"), C[:, :3], L, conj_pairs=True)
    with pytest.raises(ValueError, match="cauchy_kernel: argument `P` expected shape"):
        cauchy_kernel(Lam, P[0], Q, B, C, dt, L)
    with pytest.raises(ValueError, match="`L` must be >= 1, got 0"):
        dplr_kernel(Lam, P, Q, B, C, dt, 0)
    with pytest.raises(ValueError, match="`method` must be one of \\['zoh', 'bilinear'\\], got 'euler'"):
        discretize_diag(Lam, B, dt, "euler")
    with pytest.raises(ValueError, match="discretize_dense: argument `A` expected shape"):
        discretize_dense(torch.zeros(D, 4, 3, dtype=F64), torch.zeros(D, 4, dtype=F64), dt, "zoh")
