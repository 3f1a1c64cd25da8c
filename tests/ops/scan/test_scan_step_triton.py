"""selective_scan_step, backend "triton" (Mamba decode update) against the float64 PyTorch step.

Without CUDA the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set
by ``conftest.py`` before any kernel module is imported).
"""

from __future__ import annotations

import pytest
import torch

from numerics import assert_close, randn
from triton_helpers import DEVICE, assert_step_matches, requires_triton  # first: skips this file without triton
from ssmkit.ops.backends import BackendUnavailableError
import ssmkit.ops.scan.triton_step as triton_step  # (also registers the ssmkit:: custom op that opcheck names)
from ssmkit.ops._triton import spread_block
from ssmkit.ops.scan import SCAN_STEP_BACKENDS, selective_scan, selective_scan_step

NAMES = ("state", "u", "delta", "A", "B", "C", "D", "z", "delta_bias")
pytestmark = requires_triton


def make(gen, b=3, D=20, N=5, G=None, dtype=torch.float32, full=True):
    bc = (b, N) if G is None else (b, G, N)
    t = dict(state=randn(b, D, N, gen=gen), u=randn(b, D, gen=gen, dtype=dtype), delta=randn(b, D, gen=gen, dtype=dtype),
             A=-torch.exp(randn(D, N, gen=gen, scale=0.5)), B=randn(*bc, gen=gen, dtype=dtype),
             C=randn(*bc, gen=gen, dtype=dtype), D=randn(D, gen=gen) if full else None,
             z=randn(b, D, gen=gen, dtype=dtype) if full else None,
             delta_bias=randn(D, gen=gen, scale=0.5) if full else None)  # fmt: skip
    return {k: (v.to(DEVICE).requires_grad_(True) if v is not None else None) for k, v in t.items()}


def run(inp, softplus, seed, **kw):
    y, s = selective_scan_step(**inp, delta_softplus=softplus, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = (y.double() * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device)).sum()
    loss = loss + (s.double() * torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.device)).sum()
    names = [k for k in NAMES if inp[k] is not None]
    return y, s, dict(zip(names, torch.autograd.grad(loss, [inp[k] for k in names])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("G", [None, 2])
def test_step_matches_reference(gen, dtype, G):
    inp = make(gen, G=G, dtype=dtype)
    seed = int(torch.randint(2**31, (1,), generator=gen))
    ref = {k: (v.detach().cpu().double().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    assert_step_matches(run(inp, True, seed, backend="triton"), run(ref, True, seed, backend="torch"), inp, dtype)


def test_blocks_spread_over_the_sms():
    """A step kernel's block halves (not below its least) while the grid has fewer programs than SMs."""
    assert spread_block(128, 1536, 1, 132, 8) == 8  # mamba-130m's scan step: 12 programs -> 192
    assert spread_block(128, 4096, 1, 132, 8) == 16  # mamba-1.4b's: 32 -> 256
    assert spread_block(128, 4096, 8, 132, 8) == 128  # a batch of 8 fills them already
    assert spread_block(128, 1536, 1, 1, 8) == 128 and spread_block(32, 20, 1, 1000, 32) == 32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_in_spread_blocks(gen, dtype, monkeypatch):
    """With many SMs the block shrinks to 8 channels (20 channels: 3 programs a row, the last one masked)."""
    monkeypatch.setattr(triton_step, "sm_count", lambda device: 1000)
    inp = make(gen, dtype=dtype)
    seed = int(torch.randint(2**31, (1,), generator=gen))
    ref = {k: (v.detach().cpu().double().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    assert_step_matches(run(inp, True, seed, backend="triton"), run(ref, True, seed, backend="torch"), inp, dtype)


def test_step_without_optional_inputs(gen):
    inp = make(gen, b=2, D=7, N=3, full=False)
    seed = int(torch.randint(2**31, (1,), generator=gen))
    y, s, g = run(inp, False, seed, backend="triton")
    ref = {k: (v.detach().cpu().double().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    y_r, s_r, g_r = run(ref, False, seed, backend="torch")
    assert_close(y.cpu(), y_r, 1e-4, "output")
    assert_close(s.cpu(), s_r, 1e-4, "new state")
    for k in g:
        assert_close(g[k].cpu(), g_r[k], 1e-4, f"gradient of `{k}`")


def test_steps_equal_triton_forward(gen):
    """Token by token through the triton step = the triton scan over the sequence."""
    b, L, D, N = 2, 6, 12, 4
    u, dl, z = (randn(b, L, D, gen=gen).to(DEVICE) for _ in range(3))
    A, B, C = -torch.exp(randn(D, N, gen=gen)).to(DEVICE), randn(b, L, N, gen=gen).to(DEVICE), randn(b, L, N, gen=gen).to(DEVICE)
    Dv, bias = randn(D, gen=gen).to(DEVICE), randn(D, gen=gen).to(DEVICE)
    with torch.no_grad():
        y, h = selective_scan(u, dl, A, B, C, Dv, z, bias, True, return_final_state=True, backend="triton")
        s = torch.zeros(b, D, N, device=DEVICE)
        ys = []
        for t in range(L):
            y_t, s = selective_scan_step(s, u[:, t], dl[:, t], A, B[:, t], C[:, t], Dv, z[:, t], bias, True, backend="triton")
            ys.append(y_t)
    assert_close(torch.stack(ys, 1), y, 1e-5, "steps vs forward")
    assert_close(s, h, 1e-5, "final state")


def test_table_and_float64_refused(gen):
    assert "triton" in SCAN_STEP_BACKENDS.impls
    inp = {k: (v.detach() if v is not None else None) for k, v in make(gen, b=1, D=3, N=2).items()}
    inp["u"] = inp["u"].double()
    with pytest.raises(BackendUnavailableError, match="selective_scan_step: backend 'triton' .*got float64"):
        selective_scan_step(**inp, backend="triton")


def test_custom_op_opcheck(gen):
    inp = make(gen, b=2, D=5, N=3, G=None)
    args = tuple(inp[k] for k in NAMES) + (True,)
    torch.library.opcheck(torch.ops.ssmkit.selective_scan_step.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))  # fmt: skip
