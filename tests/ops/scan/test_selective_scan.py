"""Selective scan backends ("torch", "c") and the step against the float64 reference.

Forward, final state and the gradient of every input, on fresh random inputs
with odd shapes (L=63, D=60, N=7), grouped and ungrouped B/C, with and without
D, z, delta_bias, softplus and an initial state, in float32, bfloat16, float16
and float64.
"""

from __future__ import annotations

import pytest
import torch

from numerics import TOL, assert_close, randn
from ssmkit.ops.scan import SCAN_BACKENDS, selective_scan, selective_scan_reference, selective_scan_step
from ssmkit.ops.scan.chunked import selective_scan_chunked

FAST = ["torch", "c"]
PARAMS = ("A", "D", "delta_bias")  # kept in float32 (float64 for float64 runs), as layers keep them


def make_inputs(gen, *, batch=2, L=63, dim=60, N=7, G=None, dtype=torch.float32, D=True, z=True,
                bias=True, softplus=True, h0=True) -> dict:
    """Fresh random scan inputs; activations in ``dtype``, A/D/delta_bias in float32 (or float64)."""
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    bc = (batch, L, N) if G is None else (batch, L, G, N)
    if softplus:
        delta = randn(batch, L, dim, gen=gen, dtype=dtype, scale=0.7)
    else:  # positive step sizes, so that exp(delta A) < 1 without a softplus
        delta = (torch.rand(batch, L, dim, generator=gen, dtype=torch.float64) * 0.5 + 0.05).to(dtype)
    x = dict(
        u=randn(batch, L, dim, gen=gen, dtype=dtype),
        delta=delta,
        A=-(randn(dim, N, gen=gen, dtype=torch.float64, scale=0.5).exp()).to(pdtype),
        B=randn(*bc, gen=gen, dtype=dtype),
        C=randn(*bc, gen=gen, dtype=dtype),
        D=randn(dim, gen=gen, dtype=pdtype) if D else None,
        z=randn(batch, L, dim, gen=gen, dtype=dtype) if z else None,
        delta_bias=randn(dim, gen=gen, dtype=pdtype, scale=0.3) if bias else None,
        initial_state=randn(batch, dim, N, gen=gen, dtype=pdtype) if h0 else None,
    )
    return dict(x, delta_softplus=softplus)


def run(fn, inputs: dict, gy: torch.Tensor, gh: torch.Tensor, cast=None, **kw):
    """Outputs and gradients of loss = <y, gy> + <final_state, gh>, inputs optionally cast."""
    leaves = {}
    args = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().to(cast) if cast is not None else v.detach().clone()
            leaves[k] = v.requires_grad_(True)
            args[k] = v
        else:
            args[k] = v
    y, h = fn(**args, return_final_state=True, **kw)
    loss = 0
    if gy is not None:
        loss = loss + (y.double() * gy.double()).sum()
    if gh is not None:
        loss = loss + (h.double() * gh.double()).sum()
    loss.backward()
    return y, h, {k: v.grad for k, v in leaves.items()}


def check_against_reference(inputs, backend, gen, tol, use_gy=True, use_gh=True, **kw):
    u = inputs["u"]
    batch, L, dim = u.shape
    N = inputs["A"].shape[1]
    gy = randn(batch, L, dim, gen=gen, dtype=u.dtype).double() if use_gy else None
    gh = randn(batch, dim, N, gen=gen) if use_gh else None
    fn = selective_scan_chunked if kw else selective_scan
    extra = kw if kw else dict(backend=backend)
    y, h, grads = run(fn, inputs, gy, gh, **extra)
    y_ref, h_ref, grads_ref = run(selective_scan_reference, inputs, gy, gh, cast=torch.float64)
    assert y.dtype == u.dtype, f"y has dtype {y.dtype}, expected u's {u.dtype}"
    assert h.dtype == (torch.float64 if u.dtype == torch.float64 else torch.float32)
    assert_close(y, y_ref, tol, f"{backend}: output")
    assert_close(h, h_ref, tol, f"{backend}: final state")
    for name, g_ref in grads_ref.items():
        if g_ref is None or not g_ref.any():  # the input does not reach the loss
            assert grads[name] is None or not grads[name].any(), f"{backend}: grad of `{name}` should be zero"
            continue
        assert grads[name] is not None, f"{backend}: no gradient for `{name}`"
        assert grads[name].dtype == inputs[name].dtype, f"{backend}: grad of `{name}` has dtype {grads[name].dtype}"
        assert_close(grads[name], g_ref, tol, f"{backend}: grad of `{name}`")


CONFIGS = {
    "plain": dict(D=False, z=False, bias=False, softplus=False, h0=False),
    "full": dict(),
    "grouped": dict(G=3),
    "D-only-no-softplus": dict(z=False, bias=False, softplus=False),
    "z-bias-softplus-no-D": dict(D=False, h0=False),
}


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_float32_matches_reference(backend, config, gen):
    check_against_reference(make_inputs(gen, **CONFIGS[config]), backend, gen, TOL[torch.float32])


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("G", [None, 3])
def test_other_dtypes_match_reference(backend, dtype, G, gen):
    check_against_reference(make_inputs(gen, G=G, dtype=dtype), backend, gen, TOL[dtype])


@pytest.mark.parametrize("backend", FAST)
def test_gradient_through_final_state_only(backend, gen):
    """Only the final state enters the loss: y gets no gradient at all."""
    check_against_reference(make_inputs(gen, G=4), backend, gen, TOL[torch.float32], use_gy=False)


@pytest.mark.parametrize("backend", FAST)
def test_long_sequence_chunk_boundaries(backend, gen):
    """L=1000: not a multiple of the C kernel's checkpoint interval (64) nor of the chunk size (32)."""
    inputs = make_inputs(gen, batch=1, L=1000, dim=20, N=5, G=2)
    check_against_reference(inputs, backend, gen, TOL[torch.float32])


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 63, 100])
def test_torch_path_any_chunk_size(chunk_size, gen):
    check_against_reference(make_inputs(gen, L=41), "torch", gen, TOL[torch.float32], chunk_size=chunk_size)


@pytest.mark.parametrize("backend", FAST)
@torch.no_grad()
def test_split_with_carried_state_equals_whole(backend, gen):
    x = make_inputs(gen, G=3)
    y, h = selective_scan(**x, return_final_state=True, backend=backend)
    k = 25
    first = {k_: (v[:, :k] if isinstance(v, torch.Tensor) and v.dim() >= 3 and k_ != "initial_state" else v)
             for k_, v in x.items()}
    rest = {k_: (v[:, k:] if isinstance(v, torch.Tensor) and v.dim() >= 3 and k_ != "initial_state" else v)
            for k_, v in x.items()}
    y1, h1 = selective_scan(**first, return_final_state=True, backend=backend)
    y2, h2 = selective_scan(**dict(rest, initial_state=h1), return_final_state=True, backend=backend)
    assert_close(torch.cat([y1, y2], 1), y, TOL[torch.float32], "split vs whole: output")
    assert_close(h2, h, TOL[torch.float32], "split vs whole: final state")


@pytest.mark.parametrize("G", [None, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_step_token_by_token_equals_scan(G, dtype, gen):
    x = make_inputs(gen, L=17, G=G, dtype=dtype)
    y_ref, h_ref = selective_scan_reference(
        **{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in x.items()}, return_final_state=True
    )
    state = x["initial_state"].clone()
    ys = []
    for t in range(x["u"].shape[1]):
        before = state.clone()
        y_t, new = selective_scan_step(
            state, x["u"][:, t], x["delta"][:, t], x["A"], x["B"][:, t], x["C"][:, t], D=x["D"],
            z=x["z"][:, t], delta_bias=x["delta_bias"], delta_softplus=True,
        )
        assert torch.equal(state, before), "step modified its input state in place"
        assert y_t.dtype == dtype and new.dtype == torch.float32 and new.shape == state.shape
        ys.append(y_t)
        state = new
    assert_close(torch.stack(ys, 1), y_ref, TOL[dtype], "step vs scan: output")
    assert_close(state, h_ref, TOL[torch.float32], "step vs scan: final state")


@torch.no_grad()
def test_c_result_independent_of_thread_count_and_layout(gen):
    """Non-contiguous inputs are accepted; 1 or 3 threads give the same result."""
    x = make_inputs(gen, G=3)
    x_nc = dict(x, u=x["u"].transpose(1, 2).contiguous().transpose(1, 2))  # same values, (B, D, L) memory
    x_nc["z"] = torch.cat([x["z"], x["z"]], dim=2)[:, :, : x["z"].shape[2]]  # a strided view
    assert not x_nc["u"].is_contiguous() and not x_nc["z"].is_contiguous()
    torch.set_num_threads(1)
    y1 = selective_scan(**x, backend="c")
    torch.set_num_threads(3)
    y3 = selective_scan(**x_nc, backend="c")
    assert torch.equal(y1, y3)


def test_c_gradients_independent_of_thread_count(gen):
    x = make_inputs(gen, G=3)
    gy = randn(*x["u"].shape, gen=gen)
    results = []
    for threads in (1, 3):
        torch.set_num_threads(threads)
        results.append(run(lambda **kw: selective_scan(**kw, backend="c"), x, gy, None)[2])
    for name, g1 in results[0].items():
        assert_close(results[1][name], g1, 1e-6, f"grad of `{name}`, 3 threads vs 1")


def test_empty_sequence_passes_state_through(gen):
    x = make_inputs(gen, L=0)
    for backend in ["reference", *FAST]:
        y, h = selective_scan(**x, return_final_state=True, backend=backend)
        assert y.shape == x["u"].shape
        assert torch.equal(h, x["initial_state"])


def test_auto_is_c_on_cpu_when_it_builds():
    from ssmkit.ops.scan.cpu_c_build import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"C kernel unavailable here: {reason}")
    assert SCAN_BACKENDS.resolve("auto", torch.device("cpu")) == "c"


@pytest.mark.parametrize("backend", ["reference", "torch", "c"])
@pytest.mark.parametrize("where", ["u", "delta", "z", "B", "C"])
def test_nan_input_propagates(gen, backend, where):
    """A NaN in an input shows up in the output (a diverging model must not be silently masked)."""
    Bsz, L, D, N = 1, 9, 20, 4
    args = dict(u=torch.randn(Bsz, L, D, generator=gen), delta=torch.randn(Bsz, L, D, generator=gen),
                A=-torch.rand(D, N, generator=gen) - 0.1, B=torch.randn(Bsz, L, N, generator=gen),
                C=torch.randn(Bsz, L, N, generator=gen), z=torch.randn(Bsz, L, D, generator=gen))
    args[where][0, 5, 3] = float("nan")
    y = selective_scan(**args, delta_bias=torch.randn(D, generator=gen), delta_softplus=True, backend=backend)
    assert torch.isnan(y[0, 5, 3]), f"{backend}: NaN in `{where}` did not reach the output"
    assert torch.isfinite(y[0, :5]).all(), f"{backend}: outputs before the NaN must stay finite"
