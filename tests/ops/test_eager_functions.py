"""Outside torch.compile the Triton ops run through plain autograd.Functions (``EAGER_FUNCTION`` in each op's
module, made by ``ops._triton.eager_function``), never through their custom ops; with the switch off, through the
ops. Both paths run the same functions, so outputs and every gradient agree bit for bit (the SSD's test is in
``tests/ops/ssd/test_ssd_triton.py``; each op's own tests hold the results to the float64 reference)."""

from __future__ import annotations

import pytest
import torch

from numerics import randn
from triton_helpers import DEVICE, requires_triton  # first: skips this file without triton
from ssmkit.ops.conv import causal_conv1d
from ssmkit.ops.norm import gated_rms_norm
from ssmkit.ops.scan import selective_scan

pytestmark = requires_triton


def _scan_case(gen):
    r = lambda *s: randn(*s, gen=gen).to(DEVICE)  # noqa: E731
    args = (r(2, 19, 6), r(2, 19, 6), -r(6, 4).exp(), r(2, 19, 4), r(2, 19, 4), r(6), r(2, 19, 6), r(6))
    return args, lambda *a: selective_scan(*a, delta_softplus=True, return_final_state=True, backend="triton")


def _conv_case(gen):
    r = lambda *s: randn(*s, gen=gen).to(DEVICE)  # noqa: E731
    args = (r(2, 21, 10), r(10, 4), r(10), r(2, 3, 10))
    return args, lambda *a: causal_conv1d(*a, activation="silu", return_final_state=True, backend="triton")


def _norm_case(gen):
    r = lambda *s: randn(*s, gen=gen).to(DEVICE)  # noqa: E731
    args = (r(3, 7, 12), r(12).abs() + 0.5, r(3, 7, 12))
    return args, lambda y, w, z: (gated_rms_norm(y, w, z, group_size=4, backend="triton"),)


CASES = {  # op: (module holding EAGER_FUNCTION and the custom forward op `_fwd_op`, inputs and call)
    "selective_scan": ("ssmkit.ops.scan.triton", _scan_case),
    "causal_conv1d": ("ssmkit.ops.conv.causal_conv1d_triton", _conv_case),
    "gated_rms_norm": ("ssmkit.ops.norm.gated_rms_norm_triton", _norm_case),
}


def _run(call, args, seed):
    """Outputs and the gradients of every input of a random projection of the outputs."""
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    outs = call(*leaves)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum() for o in outs)
    return [o.detach() for o in outs], torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("op", list(CASES))
def test_eager_function_and_custom_ops_agree(gen, monkeypatch, op):
    import importlib

    module = importlib.import_module(CASES[op][0])
    args, call = CASES[op][1](gen)
    seed = int(torch.randint(2**31, (1,), generator=gen))
    with monkeypatch.context() as m:  # the eager path must not touch the op
        m.setattr(module, "EAGER_FUNCTION", True)
        m.setattr(module, "_fwd_op", lambda *a: pytest.fail(f"{op}: the custom op was called outside torch.compile"))
        eager = _run(call, args, seed)
    monkeypatch.setattr(module, "EAGER_FUNCTION", False)
    calls = []
    fwd_op = module._fwd_op
    monkeypatch.setattr(module, "_fwd_op", lambda *a: calls.append(1) or fwd_op(*a))
    ops = _run(call, args, seed)
    assert calls, f"{op}: the custom op was not called with EAGER_FUNCTION off"
    for a, b in zip([*eager[0], *eager[1]], [*ops[0], *ops[1]]):
        assert torch.equal(a, b)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in eager[1])
