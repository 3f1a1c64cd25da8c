"""SSD: the chunked "torch" backend and the decode step against the float64 loop."""

from __future__ import annotations

import math

import pytest
import torch

from numerics import TOL, assert_close, projection_weights, randn
from ssmkit.ops._triton import triton_unavailable_reason
from ssmkit.ops.backends import BackendUnavailableError, resolved_backend
from ssmkit.ops.ssd import SSD_BACKENDS, ssd, ssd_reference, ssd_step

GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


def make_inputs(gen, *, b=2, L=63, H=6, P=5, N=7, G=2, dtype=torch.float32, D_shape="H",
                softplus=True, strong_decay=False, grad=False) -> dict:
    """Fresh random SSD inputs: activations in `dtype`, parameters A, D, dt_bias in float32
    (float64 when `dtype` is float64)."""
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    if strong_decay:  # dt * |A| from ~5e-3 to ~160 per step across heads
        dt = (5 + 15 * torch.rand(b, L, H, generator=gen, dtype=torch.float64)).to(dtype)
        A = -torch.exp(torch.linspace(math.log(1e-3), math.log(8.0), H, dtype=torch.float64)).to(pdt)
        dt_bias = (0.1 * torch.rand(H, generator=gen, dtype=torch.float64)).to(pdt)
    elif softplus:
        dt = randn(b, L, H, gen=gen, dtype=dtype)
        A = -torch.exp(randn(H, gen=gen, dtype=torch.float64)).to(pdt)
        dt_bias = randn(H, gen=gen, dtype=pdt, scale=0.5) - 1
    else:
        dt = torch.exp(randn(b, L, H, gen=gen, dtype=torch.float64, scale=0.5) - 1).to(dtype)
        A = -torch.exp(randn(H, gen=gen, dtype=torch.float64)).to(pdt)
        dt_bias = (0.1 * torch.rand(H, generator=gen, dtype=torch.float64)).to(pdt)
    inp = dict(
        x=randn(b, L, H, P, gen=gen, dtype=dtype), dt=dt, A=A,
        B=randn(b, L, G, N, gen=gen, dtype=dtype), C=randn(b, L, G, N, gen=gen, dtype=dtype),
        D=randn(*((H,) if D_shape == "H" else (H, P)), gen=gen, dtype=pdt),
        z=randn(b, L, H, P, gen=gen, dtype=dtype), dt_bias=dt_bias,
        initial_state=randn(b, H, P, N, gen=gen, dtype=dtype),
    )  # fmt: skip
    if grad:
        for t in inp.values():
            t.requires_grad_(True)
    return inp


def seed_from(gen: torch.Generator) -> int:
    return int(torch.randint(2**62, (1,), generator=gen))


def as_f64(inp: dict) -> dict:
    """float64 leaf copies of the same values (requires_grad preserved)."""
    return {k: v.detach().double().requires_grad_(v.requires_grad) for k, v in inp.items()}


def run_with_grads(fn, inp: dict, seed: int, **kw):
    """y, final state and the gradient of a random projection of both (weights drawn
    from `seed`, ``projection_weights``) w.r.t. every input that requires grad."""
    y, s = fn(**inp, return_final_state=True, **kw)
    proj = torch.Generator().manual_seed(seed)
    wy = projection_weights(y.shape, proj)
    ws = projection_weights(s.shape, proj)
    loss = (y.double() * wy).sum() + (s.double() * ws).sum()
    names = [k for k, v in inp.items() if v.requires_grad]
    grads = torch.autograd.grad(loss, [inp[k] for k in names])
    return y, s, dict(zip(names, grads))


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 64, 100])
@pytest.mark.parametrize("G, D_shape, softplus", [(2, "H", True), (3, "HP", False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_matches_reference(gen, dtype, G, D_shape, softplus, chunk_size):
    inp = make_inputs(gen, G=G, dtype=dtype, D_shape=D_shape, softplus=softplus, grad=True)
    seed = seed_from(gen)
    y, s, g = run_with_grads(ssd, inp, seed, dt_softplus=softplus, chunk_size=chunk_size, backend="torch")
    y_r, s_r, g_r = run_with_grads(ssd_reference, as_f64(inp), seed, dt_softplus=softplus)
    assert y.dtype == dtype and s.dtype == torch.float32
    tol = TOL[dtype]
    assert_close(y, y_r, tol, "y")
    assert_close(s, s_r, tol, "final state")
    assert set(g) == set(GRAD_NAMES)
    for name in GRAD_NAMES:
        assert g[name].dtype == inp[name].dtype
        assert_close(g[name], g_r[name], tol, f"grad {name}")


@pytest.mark.parametrize("L, chunk_size", [(63, 1), (63, 16), (64, 16), (63, 63), (5, 64)])
@pytest.mark.parametrize("G", [1, 3, 6])
def test_float64_exact(gen, G, L, chunk_size):
    """In float64 the chunked algorithm equals the loop to rounding: any algebra slip shows."""
    inp = make_inputs(gen, G=G, L=L, dtype=torch.float64, D_shape="HP")
    y, s = ssd(**inp, dt_softplus=True, chunk_size=chunk_size, return_final_state=True, backend="torch")
    y_r, s_r = ssd_reference(**inp, dt_softplus=True, return_final_state=True)
    assert s.dtype == torch.float64
    assert_close(y, y_r, TOL[torch.float64], "y")
    assert_close(s, s_r, TOL[torch.float64], "final state")


def test_optional_inputs_absent(gen):
    """No D, z, dt_bias, initial state: a plain SSM from a zero state."""
    full = make_inputs(gen, G=3, grad=True)
    inp = {k: full[k] for k in ("x", "dt", "A", "B", "C")}
    seed = seed_from(gen)
    y, s, g = run_with_grads(ssd, inp, seed, dt_softplus=True, chunk_size=16)
    y_r, s_r, g_r = run_with_grads(ssd_reference, as_f64(inp), seed, dt_softplus=True)
    tol = TOL[torch.float32]
    assert_close(y, y_r, tol, "y")
    assert_close(s, s_r, tol, "final state")
    for name in inp:
        assert_close(g[name], g_r[name], tol, f"grad {name}")


def test_independent_of_chunk_size(gen):
    inp = make_inputs(gen, G=2)
    y1, s1 = ssd(**inp, dt_softplus=True, chunk_size=1, return_final_state=True)
    for cs in (5, 16, 32, 64, 1000):
        y, s = ssd(**inp, dt_softplus=True, chunk_size=cs, return_final_state=True)
        assert_close(y, y1, TOL[torch.float32], f"y, chunk {cs} vs 1")
        assert_close(s, s1, TOL[torch.float32], f"final state, chunk {cs} vs 1")


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_strong_decay_at_chunk_boundaries(gen, chunk_size):
    """dt*|A| up to ~160 per step: a chunk's cumulative log decay reaches ~-1e4, so any
    exp of a positive cumulative sum (a ratio of decays) would overflow to inf/NaN."""
    inp = make_inputs(gen, G=3, strong_decay=True, grad=True)
    seed = seed_from(gen)
    y, s, g = run_with_grads(ssd, inp, seed, chunk_size=chunk_size)
    y_r, s_r, g_r = run_with_grads(ssd_reference, as_f64(inp), seed)
    tol = TOL[torch.float32]
    for name, out, ref in [("y", y, y_r), ("final state", s, s_r)] + [(f"grad {k}", g[k], g_r[k]) for k in g]:
        assert torch.isfinite(out).all(), f"{name} is not finite"
        assert_close(out, ref, tol, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_matches_full(gen, dtype):
    inp = make_inputs(gen, G=2, L=40, dtype=dtype, D_shape="HP")
    y_full, s_full = ssd(**inp, dt_softplus=True, chunk_size=16, return_final_state=True)
    state = inp["initial_state"].to(torch.float64 if dtype == torch.float64 else torch.float32)
    ys = []
    for t in range(inp["x"].shape[1]):
        tok = {k: inp[k][:, t] for k in ("x", "dt", "B", "C", "z")}
        y_t, state = ssd_step(state, **tok, A=inp["A"], D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=True)
        ys.append(y_t)
    assert ys[0].dtype == dtype and state.dtype == s_full.dtype
    assert_close(torch.stack(ys, 1), y_full, TOL[dtype], "step vs full: y")
    assert_close(state, s_full, TOL[dtype], "step vs full: state")


def test_step_is_pure(gen):
    inp = make_inputs(gen, G=3, L=1)
    state = inp["initial_state"].float()
    before = state.clone()
    tok = {k: inp[k][:, 0] for k in ("x", "dt", "B", "C", "z")}
    y, new = ssd_step(state, **tok, A=inp["A"], D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=True)
    assert torch.equal(state, before), "ssd_step modified its input state"
    assert not torch.equal(new, before)
    y_r, s_r = ssd_reference(**inp, dt_softplus=True, return_final_state=True)
    assert_close(y, y_r[:, 0], TOL[torch.float32], "step y")
    assert_close(new, s_r, TOL[torch.float32], "step state")


@pytest.mark.parametrize("k", [20, 32])
def test_split_sequence_carries_state(gen, k):
    inp = make_inputs(gen, G=2)
    y, s = ssd(**inp, dt_softplus=True, chunk_size=16, return_final_state=True)
    seq = ("x", "dt", "B", "C", "z")
    first = {n: (inp[n][:, :k] if n in seq else inp[n]) for n in inp}
    y1, s1 = ssd(**first, dt_softplus=True, chunk_size=16, return_final_state=True)
    second = {n: (inp[n][:, k:] if n in seq else inp[n]) for n in inp} | {"initial_state": s1}
    y2, s2 = ssd(**second, dt_softplus=True, chunk_size=16, return_final_state=True)
    assert_close(torch.cat([y1, y2], 1), y, TOL[torch.float32], "split vs whole: y")
    assert_close(s2, s, TOL[torch.float32], "split vs whole: state")


def test_backends_and_auto(gen):
    assert resolved_backend(SSD_BACKENDS, "cpu") == "torch"
    inp = make_inputs(gen, G=2, L=9, dtype=torch.float64)
    y_ref = ssd(**inp, dt_softplus=True, backend="reference")
    assert_close(y_ref, ssd_reference(**inp, dt_softplus=True), 0.0, "backend='reference'")
    assert_close(ssd(**inp, dt_softplus=True), y_ref, TOL[torch.float64], "backend='auto'")
    with pytest.raises(BackendUnavailableError, match="backend 'c' is not implemented"):
        ssd(**inp, backend="c")
    if triton_unavailable_reason(torch.device("cpu")) is not None:  # runs on CPU only under TRITON_INTERPRET=1
        with pytest.raises(BackendUnavailableError, match="backend 'triton' cannot run on cpu"):
            ssd(**inp, backend="triton")


def test_empty_sequence(gen):
    inp = make_inputs(gen, G=2, L=0)
    y, s = ssd(**inp, return_final_state=True)
    assert y.shape == inp["x"].shape and s.dtype == torch.float32
    assert torch.equal(s, inp["initial_state"])
