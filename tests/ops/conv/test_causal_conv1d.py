"""causal_conv1d: torch backend vs the float64 reference, step, state continuation, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numerics import TOL, assert_close, randn

from ssmkit.ops.backends import BackendUnavailableError, resolved_backend
from ssmkit.ops.conv import CONV1D_BACKENDS, causal_conv1d, causal_conv1d_step

B, L, D = 2, 63, 60


def _inputs(gen, K, dtype=torch.float32, with_bias=True, with_state=True):
    x = randn(B, L, D, gen=gen, dtype=dtype)
    w = randn(D, K, gen=gen, dtype=dtype, scale=0.5)
    b = randn(D, gen=gen, dtype=dtype) if with_bias else None
    s0 = randn(B, K - 1, D, gen=gen, dtype=dtype) if with_state else None
    return x, w, b, s0


def test_auto_resolves_to_torch_on_cpu():
    assert resolved_backend(CONV1D_BACKENDS, "cpu") == "torch"


@pytest.mark.parametrize("K", [4, 2])
def test_reference_matches_nn_conv1d_orientation(gen, K):
    """The spec equals a Conv1d(D, D, K, groups=D, padding=K-1) cut to L outputs (checkpoint layout)."""
    x, w, b, _ = _inputs(gen, K, torch.float64, with_state=False)
    y = causal_conv1d(x, w, b, backend="reference")
    expect = F.conv1d(x.transpose(1, 2), w[:, None], b, padding=K - 1, groups=D)[..., :L].transpose(1, 2)
    assert_close(y, expect, TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("K,with_bias,with_state", [(4, True, True), (4, False, False), (3, True, False), (1, True, True)])
def test_torch_matches_reference(gen, dtype, activation, K, with_bias, with_state):
    x, w, b, s0 = _inputs(gen, K, dtype, with_bias, with_state)
    args_ref = [t.detach().double().requires_grad_(True) if t is not None else None for t in (x, w, b, s0)]
    args = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b, s0)]
    y_ref, s_ref = causal_conv1d(*args_ref, activation=activation, return_final_state=True, backend="reference")
    y, s = causal_conv1d(*args, activation=activation, return_final_state=True, backend="torch")
    assert y.dtype == dtype and s.dtype == dtype
    assert s.shape == (B, K - 1, D)
    tol = TOL[dtype]
    assert_close(y, y_ref, tol, "output")
    if K > 1:
        assert_close(s, s_ref, 0.0, "final state")  # the last K-1 inputs, exactly
        assert torch.equal(s, x[:, L - (K - 1) :]), "final state is not the last K-1 inputs"
    g = randn(B, L, D, gen=gen, dtype=torch.float64)
    (y_ref * g).sum().backward()
    (y * g.to(dtype)).sum().backward()
    for name, a, r in zip(("x", "weight", "bias", "initial_state"), args, args_ref):
        if a is not None and a.numel() > 0:
            assert_close(a.grad, r.grad, tol, f"grad of {name}")


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_final_state_of_short_sequence(gen, backend):
    """L < K-1: the state is the tail of [initial_state, x]."""
    K = 5
    x, w, b, s0 = _inputs(gen, K)
    x = x[:, :2]
    _, s = causal_conv1d(x, w, b, s0, return_final_state=True, backend=backend)
    assert torch.equal(s, torch.cat([s0, x], 1)[:, -(K - 1) :])
    y, s_empty = causal_conv1d(x[:, :0], w, b, s0, return_final_state=True, backend=backend)
    assert y.shape == (B, 0, D) and torch.equal(s_empty, s0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_matches_full(gen, dtype):
    x, w, b, s0 = _inputs(gen, 4, dtype)
    y_full, s_full = causal_conv1d(x, w, b, s0, activation="silu", return_final_state=True, backend="torch")
    state, ys = s0, []
    for t in range(L):
        y_t, new_state = causal_conv1d_step(x[:, t], state, w, b, activation="silu")
        assert new_state is not state
        state = new_state
        ys.append(y_t)
    # step and full both accumulate in float32 and round once: equal up to float32 summation order
    assert_close(torch.stack(ys, 1), y_full, TOL[dtype], "output")
    assert torch.equal(state, s_full)


def test_step_leaves_state_untouched(gen):
    x, w, b, s0 = _inputs(gen, 4)
    before = s0.clone()
    causal_conv1d_step(x[:, 0], s0, w, b)
    assert torch.equal(s0, before)


@pytest.mark.parametrize("k", [1, 2, 31, 62])
def test_continuation_from_final_state(gen, k):
    """conv(x[:, :k]) then conv(x[:, k:], initial_state=its final state) == conv(x)."""
    x, w, b, s0 = _inputs(gen, 4)
    y_full, s_full = causal_conv1d(x, w, b, s0, activation="silu", return_final_state=True, backend="torch")
    y1, s1 = causal_conv1d(x[:, :k], w, b, s0, activation="silu", return_final_state=True, backend="torch")
    y2, s2 = causal_conv1d(x[:, k:], w, b, s1, activation="silu", return_final_state=True, backend="torch")
    assert_close(torch.cat([y1, y2], 1), y_full, TOL[torch.float32])
    assert torch.equal(s2, s_full)


def test_initial_state_changes_only_first_outputs(gen):
    x, w, b, s0 = _inputs(gen, 4)
    y0 = causal_conv1d(x, w, b, None, backend="torch")
    y1 = causal_conv1d(x, w, b, s0, backend="torch")
    assert not torch.allclose(y0[:, :3], y1[:, :3])
    assert torch.equal(y0[:, 3:], y1[:, 3:])


def test_bad_inputs(gen):
    x, w, b, s0 = _inputs(gen, 4)
    with pytest.raises(ValueError, match=r"argument `x` expected shape \(B, L, D=60\), got \(2, 60, 63\).*channels-first"):
        causal_conv1d(x.transpose(1, 2), w)
    with pytest.raises(ValueError, match=r"`weight` expected shape \(D, K\).*weight\[:, 0\]"):
        causal_conv1d(x, w[:, None])
    with pytest.raises(ValueError, match=r"argument `weight` expected shape \(D=60, K\), got \(59, 4\)"):
        causal_conv1d(x, w[:59])
    with pytest.raises(ValueError, match=r"argument `bias` expected shape \(D=60\), got \(10,\)"):
        causal_conv1d(x, w, b[:10])
    with pytest.raises(ValueError, match=r"argument `initial_state` expected shape \(B=2, K-1=3, D=60\), got \(2, 4, 60\)"):
        causal_conv1d(x, w, b, torch.cat([s0, s0[:, :1]], 1))
    with pytest.raises(ValueError, match=r"argument `activation` must be one of \[None, 'silu'\], got 'relu'"):
        causal_conv1d(x, w, activation="relu")
    with pytest.raises(TypeError, match=r"argument `x` must have dtype in .*got int64"):
        causal_conv1d(x.long(), w)
    with pytest.raises(ValueError, match=r"argument `backend` must be one of"):
        causal_conv1d(x, w, backend="cuda")
    with pytest.raises(BackendUnavailableError, match=r"backend 'c' is not implemented"):
        causal_conv1d(x, w, backend="c")
    with pytest.raises(ValueError, match=r"causal_conv1d_step: argument `state` expected shape \(B=2, K-1=3, D=60\)"):
        causal_conv1d_step(x[:, 0], s0[:, :2], w)
    with pytest.raises(ValueError, match=r"causal_conv1d_step: argument `x_t` expected shape \(B, D\)"):
        causal_conv1d_step(x[:, :2], s0, w)
