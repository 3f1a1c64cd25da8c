"""selective_scan_step, backend "c" (the C decode update on the CPU) against the float64 PyTorch step."""

from __future__ import annotations

import pytest
import torch

from numerics import TOL, assert_close, randn
from ssmkit.ops.backends import resolved_backend
from ssmkit.ops.scan import SCAN_STEP_BACKENDS, selective_scan_step
from ssmkit.ops.scan import step_c

if step_c.step_c_unavailable_reason(torch.device("cpu")) is not None:
    pytest.skip(f"the C step cannot be built here: {step_c._cached()[1]}", allow_module_level=True)


def make(gen, b=3, D=20, N=5, G=None, dtype=torch.float32, full=True):
    bc = (b, N) if G is None else (b, G, N)
    return dict(state=randn(b, D, N, gen=gen), u=randn(b, D, gen=gen, dtype=dtype), delta=randn(b, D, gen=gen, dtype=dtype),
                A=-torch.exp(randn(D, N, gen=gen, scale=0.5)), B=randn(*bc, gen=gen, dtype=dtype),
                C=randn(*bc, gen=gen, dtype=dtype), D=randn(D, gen=gen) if full else None,
                z=randn(b, D, gen=gen, dtype=dtype) if full else None,
                delta_bias=randn(D, gen=gen, scale=0.5) if full else None)  # fmt: skip


def reference(inp, softplus):
    ref = {k: (v.double() if v is not None else None) for k, v in inp.items()}
    return selective_scan_step(**ref, delta_softplus=softplus, backend="torch")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("G, N, softplus", [(None, 5, True), (2, 5, True), (None, 16, False), (4, 33, True)])
def test_step_matches_float64(gen, dtype, G, N, softplus):
    """y (in u's dtype) and the new float32 state against the float64 step, groups and odd state sizes."""
    inp = make(gen, N=N, G=G, dtype=dtype)
    with torch.no_grad():
        y, s = selective_scan_step(**inp, delta_softplus=softplus, backend="c")
    y_r, s_r = reference(inp, softplus)
    assert y.dtype == dtype and s.dtype == torch.float32 and s.shape == inp["state"].shape
    assert_close(y, y_r, TOL[dtype], "output")
    assert_close(s, s_r, TOL[dtype], "new state")


def test_step_without_optional_inputs_and_strided_views(gen):
    """No D, z or bias; u and z as the two halves of one projection's rows, B and C slices of another's (the
    layer's views), and the state left untouched."""
    b, D, N = 2, 24, 6
    xz = randn(b, 2 * D, gen=gen)
    dbc = randn(b, 3 + 2 * N, gen=gen)
    inp = make(gen, b=b, D=D, N=N, full=False)
    inp.update(u=xz[:, :D], delta=randn(b, D, gen=gen), B=dbc[:, 3:3 + N], C=dbc[:, 3 + N:])
    before = inp["state"].clone()
    with torch.no_grad():
        y, s = selective_scan_step(**inp, delta_softplus=False, backend="c")
        y_z, _ = selective_scan_step(**{**inp, "z": xz[:, D:]}, delta_softplus=False, backend="c")
    y_r, s_r = reference(inp, False)
    assert torch.equal(inp["state"], before)
    assert_close(y, y_r, 1e-5, "output")
    assert_close(s, s_r, 1e-5, "new state")
    y_zr, _ = reference({**inp, "z": xz[:, D:]}, False)
    assert_close(y_z, y_zr, 1e-5, "gated output")


def test_autograd_and_other_dtypes_take_the_torch_step(gen):
    """With a gradient to track (or float16 / float64 activations) "c" computes the PyTorch step, so
    gradients flow; "auto" on the CPU resolves to "c" for float32 and bfloat16."""
    assert resolved_backend(SCAN_STEP_BACKENDS, "cpu", torch.float32) == "c"
    assert resolved_backend(SCAN_STEP_BACKENDS, "cpu", torch.float16) == "torch"
    inp = {k: (v.requires_grad_(True) if v is not None else None) for k, v in make(gen).items()}
    y, s = selective_scan_step(**inp, delta_softplus=True, backend="c")
    (y.sum() + s.sum()).backward()
    assert all(inp[k].grad is not None for k in ("u", "delta", "A", "B", "C"))
    y_r, s_r = reference({k: (v.detach() if v is not None else None) for k, v in inp.items()}, True)
    assert_close(y, y_r, TOL[torch.float32], "output")
