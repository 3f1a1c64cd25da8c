"""ssd_step, backend "c" (the C decode update on the CPU) against the float64 PyTorch step."""

from __future__ import annotations

import pytest
import torch

from numerics import TOL, assert_close, randn
from ssmkit.ops.backends import resolved_backend
from ssmkit.ops.ssd import SSD_STEP_BACKENDS, ssd_step
from ssmkit.ops.ssd import step_c

if step_c.ssd_step_c_unavailable_reason(torch.device("cpu")) is not None:
    pytest.skip(f"the C step cannot be built here: {step_c._cached()[1]}", allow_module_level=True)


def make(gen, b=2, H=6, P=5, N=7, G=2, dtype=torch.float32, D_shape="H", full=True):
    return dict(state=randn(b, H, P, N, gen=gen), x=randn(b, H, P, gen=gen, dtype=dtype),
                dt=randn(b, H, gen=gen, dtype=dtype), A=-torch.exp(randn(H, gen=gen, scale=0.5)),
                B=randn(b, G, N, gen=gen, dtype=dtype), C=randn(b, G, N, gen=gen, dtype=dtype),
                D=(randn(H, gen=gen) if D_shape == "H" else randn(H, P, gen=gen)) if full else None,
                z=randn(b, H, P, gen=gen, dtype=dtype) if full else None,
                dt_bias=randn(H, gen=gen, scale=0.5) if full else None)  # fmt: skip


def reference(inp, softplus):
    return ssd_step(**{k: (v.double() if v is not None else None) for k, v in inp.items()}, dt_softplus=softplus,
                    backend="torch")  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("G, N, D_shape, softplus", [(1, 16, "H", True), (2, 7, "HP", True), (3, 33, "H", False),
                                                     (6, 128, "HP", True)])  # fmt: skip
def test_step_matches_float64(gen, dtype, G, N, D_shape, softplus):
    """y (in x's dtype) and the new float32 state against the float64 step: groups, odd state sizes, D per head
    or per (head, channel)."""
    inp = make(gen, N=N, G=G, dtype=dtype, D_shape=D_shape)
    with torch.no_grad():
        y, s = ssd_step(**inp, dt_softplus=softplus, backend="c")
    y_r, s_r = reference(inp, softplus)
    assert y.dtype == dtype and s.dtype == torch.float32 and s.shape == inp["state"].shape
    assert_close(y, y_r, TOL[dtype], "output")
    assert_close(s, s_r, TOL[dtype], "new state")


def test_views_of_one_projection_and_purity(gen):
    """x and B, C as slices of one row (the layer's split of xBC), no D, z or bias; the state is untouched."""
    b, H, P, N = 2, 4, 8, 5
    row = randn(b, H * P + 2 * N, gen=gen)
    inp = make(gen, b=b, H=H, P=P, N=N, G=1, full=False)
    inp.update(x=row[:, : H * P].view(b, H, P), B=row[:, H * P : H * P + N].view(b, 1, N),
               C=row[:, H * P + N :].view(b, 1, N))  # fmt: skip
    before = inp["state"].clone()
    with torch.no_grad():
        y, s = ssd_step(**inp, dt_softplus=True, backend="c")
    y_r, s_r = reference(inp, True)
    assert torch.equal(inp["state"], before)
    assert_close(y, y_r, 1e-5, "output")
    assert_close(s, s_r, 1e-5, "new state")


def test_autograd_and_other_dtypes_take_the_torch_step(gen):
    """With a gradient to track (or float16 / float64 activations) "c" computes the PyTorch step, so gradients
    flow; "auto" on the CPU resolves to "c" for float32 and bfloat16."""
    assert resolved_backend(SSD_STEP_BACKENDS, "cpu", torch.bfloat16) == "c"
    assert resolved_backend(SSD_STEP_BACKENDS, "cpu", torch.float16) == "torch"
    inp = {k: (v.requires_grad_(True) if v is not None else None) for k, v in make(gen).items()}
    y, s = ssd_step(**inp, dt_softplus=True, backend="c")
    (y.sum() + s.sum()).backward()
    assert all(inp[k].grad is not None for k in ("x", "dt", "A", "B", "C"))
    y_r, _ = reference({k: (v.detach() if v is not None else None) for k, v in inp.items()}, True)
    assert_close(y, y_r, TOL[torch.float32], "output")
