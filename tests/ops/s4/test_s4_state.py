"""Convolution-mode state helpers against the step-by-step recurrence."""

from __future__ import annotations

import math

import pytest
import torch

from numerics import TOL, assert_close, randn
from ssmkit.ops.conv import fft_conv
from ssmkit.ops.s4 import (
    METHODS,
    dense_final_state,
    dense_kernel,
    dense_state_output,
    diag_final_state,
    diag_log_abar,
    diag_state_output,
    discretize_dense,
    discretize_diag,
    real_form,
    recurrence_reference,
    vandermonde_kernel,
)

Bsz, D, M = 3, 5, 7
F64 = torch.float64


def as_real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t.resolve_conj()) if t.is_complex() else t


def diag_system(gen, complex_modes):
    re = -(0.05 + 0.95 * torch.rand(D, M, generator=gen, dtype=F64))
    dt = torch.exp(torch.rand(D, generator=gen, dtype=F64) * math.log(500) + math.log(1e-3))
    if not complex_modes:
        return re * 20, randn(D, M, gen=gen, dtype=F64), randn(D, M, gen=gen, dtype=F64), dt
    cr = lambda: torch.complex(randn(D, M, gen=gen, dtype=F64), randn(D, M, gen=gen, dtype=F64))
    return torch.complex(re, 3 * randn(D, M, gen=gen, dtype=F64)), cr(), cr(), dt


def test_recurrence_reference_scalar_case():
    """One real mode, one channel: h_t = a h_{t-1} + b u_t, y_t = c h_t, written out."""
    a, b, c, h0 = 0.8, 1.5, -2.0, 0.7
    u = torch.tensor([[[1.0], [-2.0], [0.5]]], dtype=F64)
    y, h = recurrence_reference(u, torch.tensor([[a]], dtype=F64), torch.tensor([[b]], dtype=F64),
                                torch.tensor([[c]], dtype=F64), torch.tensor([[[h0]]], dtype=F64))
    hs, hh = [], h0
    for ut in (1.0, -2.0, 0.5):
        hh = a * hh + b * ut
        hs.append(hh)
    assert torch.allclose(y[0, :, 0], c * torch.tensor(hs, dtype=F64), rtol=1e-15)
    assert h.item() == pytest.approx(hs[-1], rel=1e-15)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("complex_modes", [True, False])
@pytest.mark.parametrize("L", [63, 1, 16])
def test_diag_states_match_recurrence(method, complex_modes, L, gen):
    A, B, C, dt = diag_system(gen, complex_modes)
    Abar, Bbar = discretize_diag(A, B, dt, method)
    log_abar = diag_log_abar(A, dt, method)
    u = randn(Bsz, L, D, gen=gen, dtype=F64)
    h0 = randn(Bsz, D, M, gen=gen, dtype=F64)
    if complex_modes:
        h0 = torch.complex(h0, randn(Bsz, D, M, gen=gen, dtype=F64))
    y_ref, h_ref = recurrence_reference(u, Abar, Bbar, C, h0)
    pairs = complex_modes
    h = diag_final_state(u, log_abar, Bbar, h0, conj_pairs=pairs)
    assert h.shape == (Bsz, D, M) and h.is_complex() == complex_modes
    assert_close(as_real(h), as_real(h_ref), TOL[F64], "final state")
    y = fft_conv(u, vandermonde_kernel(log_abar, C * Bbar, L, conj_pairs=pairs))
    y = y + diag_state_output(h0, log_abar, C, L, conj_pairs=pairs)
    assert_close(y, y_ref, TOL[F64], "output with an initial state")
    # Zero initial state: the helper with h0=None is the Vandermonde-weighted sum alone.
    _, h_zero = recurrence_reference(u, Abar, Bbar, C)
    h = diag_final_state(u, log_abar, Bbar, conj_pairs=pairs)
    assert_close(as_real(h), as_real(h_zero), TOL[F64], "final state, h0=0")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("L", [63, 1, 40])
def test_dense_states_match_recurrence(method, L, gen):
    A, B, C, dt = diag_system(gen, True)
    P = torch.complex(randn(D, 1, M, gen=gen, dtype=F64), randn(D, 1, M, gen=gen, dtype=F64)) * 0.5
    A_r, B_r, C_r = real_form(A, B, C, P, P)
    Abar, Bbar = discretize_dense(A_r, B_r, dt, method)
    u = randn(Bsz, L, D, gen=gen, dtype=F64)
    h0 = randn(Bsz, D, 2 * M, gen=gen, dtype=F64)
    y_ref, h_ref = recurrence_reference(u, Abar, Bbar, C_r, h0)
    assert_close(dense_final_state(u, Abar, Bbar, h0), h_ref, TOL[F64], "final state")
    y = fft_conv(u, dense_kernel(Abar, Bbar, C_r, L)) + dense_state_output(h0, Abar, C_r, L)
    assert_close(y, y_ref, TOL[F64], "output with an initial state")
    # float32 stays within float32 tolerance of the float64 recurrence.
    h32 = dense_final_state(u.float(), Abar.float(), Bbar.float(), h0.float())
    assert h32.dtype == torch.float32
    assert_close(h32, h_ref, TOL[torch.float32], "final state (float32)")
