"""Mamba2 on the Triton kernels: the layer's fused path between its projections (``ops/ssd/triton_layer.py``)
against the same layer run op by op (the same kernels), and against the float64 reference layer."""

from __future__ import annotations

import pytest
import torch
from numerics import TOL, assert_close, rel_err
from triton_helpers import DEVICE, requires_triton

from ssmkit.layers.mamba2 import Mamba2

pytestmark = requires_triton

# Odd sizes: 4 heads of 12 channels in 2 groups, chunk 16 over L = 37 (a partial last chunk).
CASES = {
    "groups": dict(d_state=16, headdim=12, ngroups=2, chunk_size=16),
    "no-conv-bias-normfirst": dict(d_state=8, headdim=24, chunk_size=16, conv_bias=False, norm_before_gate=True),
}


def _layer(case: str, dtype: torch.dtype) -> Mamba2:
    torch.manual_seed(0)
    layer = Mamba2(24, backend="triton", **CASES[case]).to(device=DEVICE, dtype=dtype)
    with torch.no_grad():  # non-trivial norm and D (they start at ones)
        layer.norm.weight.copy_(1 + 0.5 * torch.randn_like(layer.norm.weight))
        layer.D.copy_(torch.randn_like(layer.D))
    return layer


def _run(layer: Mamba2, x: torch.Tensor, fused: bool, monkeypatch, state_grad: bool = False):
    """y, the final states and the gradients of x and every parameter, with the fused path on or off."""
    calls = []
    real = Mamba2._fused_inner
    monkeypatch.setattr(Mamba2, "_fused_inner", lambda self, t: calls.append(1) or (fused and real(self, t)))
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y, state = layer(x)
    g = torch.Generator(device="cpu").manual_seed(1)
    loss = (y.double() * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device)).sum()
    if state_grad:  # the final SSM state reaches the loss too (its gradient enters the SSD backward)
        loss = loss + (state.ssm.double() * torch.randn(state.ssm.shape, generator=g, dtype=torch.float64).to(y.device)).sum()
    loss.backward()
    assert calls, "the layer never asked for the fused path"
    grads = {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}
    return y.detach(), state, grads


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("state_grad", [False, True])
def test_fused_equals_op_by_op(case, state_grad, monkeypatch):
    """Same kernels, so the same numbers: output, both final states and every gradient (float32)."""
    layer = _layer(case, torch.float32)
    assert layer._fused_inner(torch.empty(1, 2, layer.in_proj.out_features, device=DEVICE))
    x = torch.randn(2, 37, 24, device=DEVICE)
    y, state, grads = _run(layer, x, True, monkeypatch, state_grad)
    y_ops, state_ops, grads_ops = _run(layer, x, False, monkeypatch, state_grad)
    assert rel_err(y, y_ops) <= 1e-6
    assert rel_err(state.ssm, state_ops.ssm) <= 1e-6
    assert torch.equal(state.conv, state_ops.conv)
    for name, g in grads_ops.items():
        assert grads[name] is not None, name
        assert rel_err(grads[name], g) <= 1e-5, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_matches_reference(dtype, monkeypatch):
    """The fused path against the same weights run by the float64 reference layer."""
    layer = _layer("groups", dtype)
    ref = Mamba2(24, backend="reference", **CASES["groups"]).to(device=DEVICE, dtype=torch.float64)
    ref.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    x = torch.randn(2, 37, 24, device=DEVICE)
    y, state, grads = _run(layer, x.to(dtype), True, monkeypatch)
    ref.zero_grad(set_to_none=True)
    xr = x.double().requires_grad_(True)
    yr, state_r = ref(xr)
    g = torch.Generator(device="cpu").manual_seed(1)
    (yr * torch.randn(yr.shape, generator=g, dtype=torch.float64).to(yr.device)).sum().backward()
    tol = TOL[dtype]
    assert_close(y, yr, tol, "y")
    assert_close(state.ssm, state_r.ssm, tol, "ssm state")
    assert_close(grads["x"], xr.grad, tol, "dx")
    for name, p in ref.named_parameters():
        assert_close(grads[name], p.grad, tol, f"d{name}")


def test_fused_inference_forward(monkeypatch):
    """Without a gradient to come (bf16), the fused path plans the SSD's forward as the op would (walking:
    ``triton_launch.forward_span``), and its output and final state match the path with a gradient."""
    from ssmkit.ops.ssd import triton_layer

    spans = []
    real = triton_layer._fwd_impl
    monkeypatch.setattr(triton_layer, "_fwd_impl", lambda *a: spans.append(a[14]) or real(*a))
    layer = _layer("groups", torch.bfloat16)
    x = torch.randn(2, 37, 24, device=DEVICE).to(torch.bfloat16)
    with torch.no_grad():
        y, state = layer(x)
    y_grad, state_grad, _ = _run(layer, x, True, monkeypatch)
    assert spans == [0, -1]
    assert_close(y, y_grad, TOL[torch.bfloat16], "y")
    assert_close(state.ssm, state_grad.ssm, TOL[torch.bfloat16], "ssm state")


def test_fused_path_conditions():
    """Taken only where it computes the same function: not with the plain gate, a Δ clamp, or an empty sequence."""
    probe = torch.empty(1, 3, 0, device=DEVICE)
    for kw in (dict(rmsnorm=False), dict(dt_limit=(0.0, 0.05))):
        layer = Mamba2(24, d_state=8, headdim=12, backend="triton", **kw).to(DEVICE)
        assert not layer._fused_inner(probe.new_empty(1, 3, layer.in_proj.out_features))
    layer = Mamba2(24, d_state=8, headdim=12, backend="triton").to(DEVICE)
    assert layer._fused_inner(probe.new_empty(1, 3, layer.in_proj.out_features))
    assert not layer._fused_inner(probe.new_empty(1, 0, layer.in_proj.out_features))
    assert not Mamba2(24, d_state=8, headdim=12, backend="torch")._fused_inner(torch.empty(1, 3, 112))


def test_short_sequence_conv_state(monkeypatch):
    """L < d_conv - 1: the conv state is zeros followed by the inputs, as op by op."""
    layer = _layer("groups", torch.float32)
    x = torch.randn(2, 2, 24, device=DEVICE)
    _, state, _ = _run(layer, x, True, monkeypatch)
    _, state_ops, _ = _run(layer, x, False, monkeypatch)
    assert torch.equal(state.conv, state_ops.conv)
    assert state.conv[:, 0].abs().sum() == 0 and state.conv[:, 1:].abs().sum() > 0
