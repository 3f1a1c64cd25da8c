"""ssd_step, backend "triton" (Mamba-2 decode update) against the float64 PyTorch step.

Without CUDA the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set
by ``conftest.py`` before any kernel module is imported).
"""

from __future__ import annotations

import pytest
import torch

from numerics import assert_close, randn
from triton_helpers import DEVICE, assert_step_matches, requires_triton  # first: skips this file without triton
from ssmkit.ops.backends import BackendUnavailableError
import ssmkit.ops.ssd.triton_step  # noqa: F401  (registers the ssmkit:: custom op that opcheck names)
from ssmkit.ops.ssd import SSD_STEP_BACKENDS, ssd_step

NAMES = ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias")
pytestmark = requires_triton


def make(gen, b=2, H=6, P=5, N=7, G=3, dtype=torch.float32, D_shape=("H",), full=True):
    sizes = {"H": H, "P": P}
    t = dict(state=randn(b, H, P, N, gen=gen), x=randn(b, H, P, gen=gen, dtype=dtype),
             dt=randn(b, H, gen=gen, dtype=dtype), A=-torch.exp(randn(H, gen=gen)), B=randn(b, G, N, gen=gen, dtype=dtype),
             C=randn(b, G, N, gen=gen, dtype=dtype), D=randn(*(sizes[s] for s in D_shape), gen=gen) if full else None,
             z=randn(b, H, P, gen=gen, dtype=dtype) if full else None,
             dt_bias=randn(H, gen=gen, scale=0.5) if full else None)  # fmt: skip
    return {k: (v.to(DEVICE).requires_grad_(True) if v is not None else None) for k, v in t.items()}


def run(inp, softplus, seed, **kw):
    y, s = ssd_step(**inp, dt_softplus=softplus, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = (y.double() * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device)).sum()
    loss = loss + (s.double() * torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.device)).sum()
    names = [k for k in NAMES if inp[k] is not None]
    return y, s, dict(zip(names, torch.autograd.grad(loss, [inp[k] for k in names])))


@pytest.mark.parametrize("dtype, D_shape", [(torch.float32, ("H",)), (torch.float32, ("H", "P")),
                                            (torch.bfloat16, ("H",)), (torch.float16, ("H", "P"))])  # fmt: skip
def test_step_matches_reference(gen, dtype, D_shape):
    inp = make(gen, dtype=dtype, D_shape=D_shape)
    seed = int(torch.randint(2**31, (1,), generator=gen))
    ref = {k: (v.detach().cpu().double().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    assert_step_matches(run(inp, True, seed, backend="triton"), run(ref, True, seed, backend="torch"), inp, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_in_spread_blocks(gen, dtype, monkeypatch):
    """With many SMs the block of P rows shrinks from 64 to 8 (P = 37: 5 programs a head, the last one masked)."""
    import importlib

    monkeypatch.setattr(importlib.import_module("ssmkit.ops.ssd.triton_step"), "sm_count", lambda device: 1000)
    inp = make(gen, P=37, dtype=dtype, D_shape=("H", "P"))
    seed = int(torch.randint(2**31, (1,), generator=gen))
    ref = {k: (v.detach().cpu().double().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    assert_step_matches(run(inp, True, seed, backend="triton"), run(ref, True, seed, backend="torch"), inp, dtype)


def test_step_without_optional_inputs(gen):
    inp = make(gen, b=3, H=4, P=3, N=4, G=1, full=False)
    inp["dt"] = torch.rand(3, 4, generator=gen).to(DEVICE).requires_grad_(True)
    seed = int(torch.randint(2**31, (1,), generator=gen))
    y, s, g = run(inp, False, seed, backend="triton")
    ref = {k: (v.detach().cpu().double().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    y_r, s_r, g_r = run(ref, False, seed, backend="torch")
    assert_close(y.cpu(), y_r, 1e-4, "output")
    assert_close(s.cpu(), s_r, 1e-4, "new state")
    for k in g:
        assert_close(g[k].cpu(), g_r[k], 1e-4, f"gradient of `{k}`")


def test_table_and_float64_refused(gen):
    assert "triton" in SSD_STEP_BACKENDS.impls
    inp = {k: (v.detach() if v is not None else None) for k, v in make(gen, b=1, H=2, P=2, N=2, G=1).items()}
    inp["x"] = inp["x"].double()
    with pytest.raises(BackendUnavailableError, match="ssd_step: backend 'triton' .*got float64"):
        ssd_step(**inp, backend="triton")


def test_custom_op_opcheck(gen):
    inp = make(gen, b=2, H=4, P=3, N=5, G=2)
    args = tuple(inp[k] for k in NAMES) + (True,)
    torch.library.opcheck(torch.ops.ssmkit.ssd_step.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))  # fmt: skip
