"""Causal conv1d, backend "triton" (forward, backward, one-token update) against the float64 loop.

Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set
by ``conftest.py`` before any kernel module is imported) on small shapes.
"""

from __future__ import annotations

import pytest
import torch

from numerics import TOL, assert_close, randn
from triton_helpers import DEVICE, assert_compiles_like_eager, requires_triton  # first: skips this file without triton
from ssmkit.ops.backends import BackendUnavailableError
import ssmkit.ops.conv.causal_conv1d_triton  # noqa: F401  (registers the ssmkit:: custom ops that opcheck names)
from ssmkit.ops.conv.causal_conv1d import CONV1D_BACKENDS, CONV1D_STEP_BACKENDS, causal_conv1d, causal_conv1d_step

pytestmark = requires_triton


def leaf(t):
    return None if t is None else t.to(DEVICE).requires_grad_(True)


def grads_of(outs, inputs, gen):
    """Gradients of a random projection of ``outs`` (weights from ``gen``) w.r.t. the non-None inputs."""
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
               for o in outs if o.numel())  # fmt: skip
    return torch.autograd.grad(loss, [t for t in inputs if t is not None])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K, L, state, bias, act", [(4, 37, True, True, "silu"), (3, 70, False, True, None),
                                                    (4, 2, True, False, "silu"), (2, 9, True, True, None)])  # fmt: skip
@pytest.mark.parametrize("D", [20, 64])  # (64: whole channel blocks, so the backward's inside tiles run unmasked)
def test_forward_backward_match_reference(gen, dtype, K, L, state, bias, act, D):
    x = leaf(randn(2, L, D, gen=gen, dtype=dtype))
    w, b = leaf(randn(D, K, gen=gen)), leaf(randn(D, gen=gen) if bias else None)
    s = leaf(randn(2, K - 1, D, gen=gen, dtype=dtype) if state else None)
    y, f = causal_conv1d(x, w, b, s, act, return_final_state=True, backend="triton")
    to64 = [None if t is None else t.detach().cpu().double().requires_grad_(True) for t in (x, w, b, s)]
    y_r, f_r = causal_conv1d(*to64, act, return_final_state=True, backend="reference")
    seed = int(torch.randint(2**31, (1,), generator=gen))
    g = grads_of((y, f), (x, w, b, s), torch.Generator().manual_seed(seed))
    g_r = grads_of((y_r, f_r), to64, torch.Generator().manual_seed(seed))
    tol = TOL[dtype]
    assert y.dtype == dtype and f.dtype == dtype and f.shape == (2, K - 1, D)
    assert_close(y.cpu(), y_r, tol, "output")
    assert_close(f.cpu(), f_r, tol, "final state")
    for name, a, r in zip([n for n, t in zip("x weight bias state".split(), (x, w, b, s)) if t is not None], g, g_r):
        assert_close(a.cpu(), r, tol, f"gradient of `{name}`")


@pytest.mark.parametrize("const_strides, unmasked", [(True, False), (False, True), (True, True)])
def test_forward_switches(gen, monkeypatch, const_strides, unmasked):
    """The forward kernel with its row strides as constants and / or unmasked inside tiles (off by default:
    slower on the H200), x a strided view, against the float64 loop."""
    import ssmkit.ops.conv.causal_conv1d_triton as conv_triton

    monkeypatch.setattr(conv_triton, "FWD_CONST_STRIDES", const_strides)
    monkeypatch.setattr(conv_triton, "FWD_UNMASKED_INSIDE", unmasked)
    x = randn(2, 45, 80, gen=gen).to(DEVICE)[..., 8:72]  # a strided view, D = 64: whole channel blocks
    w, b, s = randn(64, 4, gen=gen).to(DEVICE), randn(64, gen=gen).to(DEVICE), randn(2, 3, 64, gen=gen).to(DEVICE)
    y, _ = causal_conv1d(x, w, b, s, "silu", return_final_state=True, backend="triton")
    y_r, _ = causal_conv1d(*(t.cpu().double() for t in (x, w, b, s)), "silu", return_final_state=True,
                           backend="reference")  # fmt: skip
    assert_close(y.cpu(), y_r, TOL[torch.float32], "output")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("L, state", [(45, True), (32, False)])
def test_lane_channels(gen, monkeypatch, dtype, L, state):
    """Both kernels with one, two and four channels per thread (``FWD_LANE_CHANNELS``, ``BWD_LANE_CHANNELS``) on
    long segments (one program per SM, so a segment walks many tiles), x a strided view with whole channel
    blocks, dx written into a view: output and every gradient equal bit for bit across the settings (the same
    float32 sums in the same order) and within tolerance of the float64 loop."""
    import ssmkit.ops.conv.causal_conv1d_triton as conv_triton

    monkeypatch.setattr(conv_triton, "BWD_PROGRAMS_PER_SM", 1)
    monkeypatch.setattr(conv_triton, "FWD_PROGRAMS_PER_SM", 1)
    x = randn(2, L, 144, gen=gen, dtype=dtype).to(DEVICE)[..., 8:136]  # D = 128
    w, b = randn(128, 4, gen=gen).to(DEVICE), randn(128, gen=gen).to(DEVICE)
    s = randn(2, 3, 128, gen=gen, dtype=dtype).to(DEVICE) if state else None
    dy = randn(2, L, 128, gen=gen, dtype=dtype).to(DEVICE)
    runs = []
    for lanes in (1, 2, 4):
        monkeypatch.setattr(conv_triton, "FWD_LANE_CHANNELS", lanes)
        monkeypatch.setattr(conv_triton, "BWD_LANE_CHANNELS", lanes)
        dx = torch.full((2, L, 160), float("nan"), dtype=dtype, device=DEVICE)[..., 16:144]
        y = conv_triton.conv_fwd(x, w, b, s, True)
        out = conv_triton.conv_bwd(dy, x, w, b, s, True, dx_out=dx)
        assert out[0].data_ptr() == dx.data_ptr()
        runs.append([y, *(t for t in out if t.numel())])
    for other in runs[1:]:
        for a, r in zip(other, runs[0]):
            assert torch.equal(a, r)
    to64 = [None if t is None else t.cpu().double().requires_grad_(True) for t in (x, w, b, s)]
    y_r = causal_conv1d(*to64, "silu", backend="reference")
    g_r = torch.autograd.grad(y_r, [t for t in to64 if t is not None], dy.cpu().double())
    for name, a, r in zip(("output", "dx", "dweight", "dbias", "dstate"), runs[0], (y_r, *g_r)):
        assert_close(a.cpu(), r, TOL[dtype], name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("K", [2, 3, 4])
def test_step_matches_reference(gen, dtype, K):
    """The step's output, new state and every gradient against the float64 forward over one token, for windows
    of 2-4 taps (3: a window tile with a padded row)."""
    D = 24
    x_t, st = leaf(randn(3, D, gen=gen, dtype=dtype)), leaf(randn(3, K - 1, D, gen=gen, dtype=dtype))
    w, b = leaf(randn(D, K, gen=gen)), leaf(randn(D, gen=gen))
    st_before = st.detach().clone()
    y, ns = causal_conv1d_step(x_t, st, w, b, "silu", backend="triton")
    to64 = [t.detach().cpu().double().requires_grad_(True) for t in (x_t, st, w, b)]
    y_r, ns_r = causal_conv1d(to64[0][:, None], to64[2], to64[3], to64[1], "silu", True, backend="reference")
    seed = int(torch.randint(2**31, (1,), generator=gen))
    g = grads_of((y, ns), (x_t, st, w, b), torch.Generator().manual_seed(seed))
    g_r = grads_of((y_r[:, 0], ns_r), to64, torch.Generator().manual_seed(seed))
    assert y.dtype == dtype and ns.dtype == dtype
    assert_close(y.cpu(), y_r[:, 0], TOL[dtype], "output")
    assert_close(ns.cpu(), ns_r, TOL[dtype], "new state")
    for name, a, r in zip(("x_t", "state", "weight", "bias"), g, g_r):
        assert_close(a.cpu(), r, TOL[dtype], f"gradient of `{name}`")
    assert torch.equal(st.detach(), st_before), "the step must not modify its state argument"


def test_step_in_spread_blocks(gen, monkeypatch):
    """With many SMs the step's block shrinks from 128 channels to 32 (100 channels: 4 programs, the last masked)."""
    import importlib

    monkeypatch.setattr(importlib.import_module("ssmkit.ops.conv.causal_conv1d_triton"), "sm_count", lambda device: 1000)
    D, K = 100, 4
    x_t, st = randn(2, D, gen=gen).to(DEVICE), randn(2, K - 1, D, gen=gen).to(DEVICE)
    w, b = randn(D, K, gen=gen).to(DEVICE), randn(D, gen=gen).to(DEVICE)
    y, ns = causal_conv1d_step(x_t, st, w, b, "silu", backend="triton")
    to64 = [t.cpu().double() for t in (x_t, st, w, b)]
    y_r, ns_r = causal_conv1d(to64[0][:, None], to64[2], to64[3], to64[1], "silu", True, backend="reference")
    assert_close(y.cpu(), y_r[:, 0], TOL[torch.float32], "output")
    assert_close(ns.cpu(), ns_r, TOL[torch.float32], "new state")


def test_step_by_step_equals_forward(gen):
    """Tokens fed one at a time through the triton step reproduce the triton forward."""
    D, K, L = 16, 4, 7
    x, w, b = randn(2, L, D, gen=gen).to(DEVICE), randn(D, K, gen=gen).to(DEVICE), randn(D, gen=gen).to(DEVICE)
    y, f = causal_conv1d(x, w, b, None, "silu", return_final_state=True, backend="triton")
    state = torch.zeros(2, K - 1, D, device=DEVICE)
    ys = []
    for t in range(L):
        y_t, state = causal_conv1d_step(x[:, t], state, w, b, "silu", backend="triton")
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y, 1e-6, "step by step vs forward")
    assert_close(state, f, 1e-6, "final state")


def test_tables_and_float64_refused(gen):
    assert "triton" in CONV1D_BACKENDS.impls and "triton" in CONV1D_STEP_BACKENDS.impls
    x, w = randn(1, 5, 4, gen=gen, dtype=torch.float64).to(DEVICE), randn(4, 3, gen=gen).to(DEVICE)
    with pytest.raises(BackendUnavailableError, match="causal_conv1d: backend 'triton' .*got float64"):
        causal_conv1d(x, w, backend="triton")
    with pytest.raises(BackendUnavailableError, match="causal_conv1d_step: backend 'triton' .*got float64"):
        causal_conv1d_step(x[:, 0], x[:, :2], w, backend="triton")


def test_compiles_fullgraph(gen):
    x, w, b = leaf(randn(2, 9, 8, gen=gen)), leaf(randn(8, 4, gen=gen)), leaf(randn(8, gen=gen))

    def f(x, w, b):
        y, s = causal_conv1d(x, w, b, None, "silu", return_final_state=True, backend="triton")
        return y.sum() + s.sum()

    assert_compiles_like_eager(f, (x, w, b), 1e-6)


def test_custom_ops_opcheck(gen):
    """Schema, autograd registration and fake (meta) outputs matching the real ones, strides included."""
    x, w, b, s = leaf(randn(2, 9, 6, gen=gen)), randn(6, 4, gen=gen).to(DEVICE), randn(6, gen=gen).to(DEVICE), randn(2, 3, 6, gen=gen).to(DEVICE)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.ssmkit.causal_conv1d_fwd.default, (x, w, b, s, True), test_utils=utils)
    torch.library.opcheck(torch.ops.ssmkit.causal_conv1d_bwd.default, (torch.randn_like(x), x.detach(), w, b, s, True),
                          test_utils=utils[::2])  # fmt: skip
    torch.library.opcheck(torch.ops.ssmkit.causal_conv1d_step.default, (x[:, 0], s, w, b, True), test_utils=utils)
