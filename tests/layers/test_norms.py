"""RMSNorm, GatedRMSNorm, StateNorm against hand-written formulas; float32 statistics under bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numerics import TOL, assert_close, randn

from ssmkit.layers.norm import GatedRMSNorm, RMSNorm, StateNorm

D = 60


def _formula(x: torch.Tensor, w: torch.Tensor, eps: float, group: int | None = None) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * w in float64, mean over each group of `group` channels."""
    x, w = x.double(), w.double()
    g = group or x.shape[-1]
    xs = x.reshape(*x.shape[:-1], -1, g)  # (..., D/g, g)
    out = xs / torch.sqrt(xs.pow(2).mean(-1, keepdim=True) + eps)
    return out.reshape(x.shape) * w


def _random_weight(module, gen):
    with torch.no_grad():
        module.weight.copy_(randn(module.weight.shape[0], gen=gen).abs() + 0.5)
    return module


@pytest.mark.parametrize("cls", [RMSNorm, StateNorm])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rms_formula(gen, cls, dtype):
    norm = _random_weight(cls(D, eps=1e-3), gen).to(dtype)
    x = randn(2, 63, D, gen=gen, dtype=dtype, scale=0.1)  # small scale: eps matters
    out = norm(x)
    assert out.dtype == dtype
    assert_close(out, _formula(x, norm.weight, 1e-3), TOL[dtype])
    assert [n for n, _ in norm.named_parameters()] == ["weight"]


@pytest.mark.parametrize("cls", [RMSNorm, StateNorm, GatedRMSNorm])
def test_float32_statistics_under_bf16(gen, cls):
    """bf16 in, bf16 out, but computed in float32: the output is the exact formula rounded once."""
    norm = _random_weight(cls(1000), gen)  # float32 weight, as a layer keeps it under autocast
    x = randn(16, 1000, gen=gen, dtype=torch.bfloat16, scale=3.0) + 0.5
    out = norm(x)
    assert out.dtype == torch.bfloat16
    ref = _formula(x, norm.weight, norm.eps).to(torch.bfloat16)
    # A bf16 computation (rounded squares, rsqrt, products) misses ~40% of these; float32 stats hit all
    assert (out == ref).float().mean() >= 0.99


@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("group_size", [None, 20])
def test_gated_formula(gen, norm_before_gate, group_size):
    norm = _random_weight(GatedRMSNorm(D, eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate), gen)
    y = randn(2, 63, D, gen=gen)
    z = randn(2, 63, D, gen=gen)
    out = norm(y, z)
    gate = F.silu(z.double())
    if norm_before_gate:
        expect = _formula(y, norm.weight, 1e-5, group_size) * gate
    else:
        expect = _formula(y.double() * gate, norm.weight, 1e-5, group_size)
    assert_close(out, expect, TOL[torch.float32])
    assert_close(norm(y), _formula(y, norm.weight, 1e-5, group_size), TOL[torch.float32], "no gate")


def test_groups_are_normalised_separately(gen):
    """Scaling one group of channels by c leaves the other group's output unchanged, and its own
    output is the unscaled group's under eps / c^2 (c v / sqrt(c^2 m + eps) = v / sqrt(m + eps / c^2))."""
    norm = GatedRMSNorm(D, group_size=30)
    y, z = randn(3, D, gen=gen), randn(3, D, gen=gen)
    y2 = y.clone()
    y2[:, :30] *= 7.0
    a, b = norm(y, z), norm(y2, z)
    assert torch.allclose(a[:, 30:], b[:, 30:], rtol=0, atol=0)
    assert_close(b[:, :30], GatedRMSNorm(D, eps=norm.eps / 49.0, group_size=30)(y, z)[:, :30], TOL[torch.float32])
    assert not torch.allclose(GatedRMSNorm(D)(y2, z)[:, 30:], GatedRMSNorm(D)(y, z)[:, 30:])


def test_state_norm_scale_invariant(gen):
    """StateNorm's output does not depend on the scan output's overall scale (its purpose)."""
    norm = _random_weight(StateNorm(D), gen)
    y = randn(2, 63, D, gen=gen)
    # equal up to eps / (2 mean(y^2)) ~ 1e-5 for these scales
    assert_close(norm(y * 37.0), norm(y), TOL[torch.float32])
    assert_close(norm(y * 0.5), norm(y), TOL[torch.float32])


def test_bad_inputs(gen):
    with pytest.raises(ValueError, match=r"GatedRMSNorm: `d`=60 must be divisible by `group_size`=16"):
        GatedRMSNorm(D, group_size=16)
    with pytest.raises(ValueError, match=r"RMSNorm: argument `d` must be >= 1, got 0"):
        RMSNorm(0)
    with pytest.raises(ValueError, match=r"RMSNorm.forward: argument `x` expected shape \(\.\.\., 60\), got \(2, 59\)"):
        RMSNorm(D)(randn(2, 59, gen=gen))
    with pytest.raises(ValueError, match=r"StateNorm.forward: argument `y` expected shape \(\.\.\., 60\)"):
        StateNorm(D)(randn(2, 61, gen=gen))
    with pytest.raises(ValueError, match=r"argument `z` expected shape \(2, 60\) \(that of `y`\), got \(2, 1, 60\)"):
        GatedRMSNorm(D)(randn(2, D, gen=gen), randn(2, 1, D, gen=gen))
    with pytest.raises(TypeError, match=r"argument `x` must have dtype in .*got int64"):
        RMSNorm(D)(torch.ones(2, D, dtype=torch.long))
