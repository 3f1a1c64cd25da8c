"""MLP, GatedMLP (SwiGLU) and MoE: formulas, routing, the load-balancing loss, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model_helpers import one_thread  # noqa: F401  (autouse fixture)
from numerics import TOL, assert_close, randn
from ssmkit.layers.mlp import MLP, GatedMLP, MoE


def test_mlp_formula_and_shapes(gen):
    mlp = MLP(60, 100)
    x = randn(3, 7, 60, gen=gen)
    ref = F.linear(F.gelu(F.linear(x.double(), mlp.fc1.weight.double()), approximate="tanh"), mlp.fc2.weight.double())
    assert_close(mlp(x), ref, TOL[torch.float32], "MLP")
    assert MLP(60).d_intermediate == 240


def test_gated_mlp_is_swiglu(gen):
    mlp = GatedMLP(60, 90)
    assert mlp.fc1.weight.shape == (180, 60) and mlp.fc2.weight.shape == (60, 90)
    x = randn(2, 5, 60, gen=gen)
    y, g = F.linear(x.double(), mlp.fc1.weight.double()).chunk(2, dim=-1)
    ref = F.linear(y * F.silu(g), mlp.fc2.weight.double())
    assert_close(mlp(x), ref, TOL[torch.float32], "GatedMLP")
    assert GatedMLP(60).d_intermediate % 64 == 0 and GatedMLP(60).d_intermediate >= 160


def _dense_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Every token through every expert, combined with its top-k weights (the slow spec)."""
    tokens = x.reshape(-1, x.shape[-1]).double()
    probs = torch.softmax(F.linear(tokens, moe.router.weight.double()), -1)
    w, idx = probs.topk(moe.top_k, -1)
    w = w / w.sum(-1, keepdim=True)
    outs = torch.stack([F.linear(
        (lambda y, g: y * F.silu(g))(*F.linear(tokens, e.fc1.weight.double()).chunk(2, -1)), e.fc2.weight.double())
        for e in moe.experts], 1)  # (T, E, D)
    gathered = outs.gather(1, idx[..., None].expand(-1, -1, outs.shape[-1]))  # (T, k, D)
    return (gathered * w[..., None]).sum(1).reshape(x.shape)


def test_moe_routes_each_token_to_its_top_k_experts(gen):
    moe = MoE(60, 48, n_experts=5, top_k=2)
    x = randn(3, 21, 60, gen=gen)
    seen = {e: 0 for e in range(5)}
    hooks = [ex.register_forward_hook(lambda m, inp, out, e=e: seen.__setitem__(e, seen[e] + inp[0].shape[0]))
             for e, ex in enumerate(moe.experts)]
    y = moe(x)
    for h in hooks:
        h.remove()
    assert_close(y, _dense_moe(moe, x), TOL[torch.float32], "MoE vs dense top-k")
    _, _, experts = moe.route(x.reshape(-1, 60))
    want = torch.bincount(experts.reshape(-1), minlength=5)
    # Each expert ran on exactly the tokens routed to it: no dense all-experts compute.
    assert [seen[e] for e in range(5)] == want.tolist()
    assert sum(seen.values()) == 3 * 21 * 2
    assert torch.equal(moe.tokens_per_expert, want)


def test_moe_aux_loss_finite_differentiable_and_balanced_value(gen):
    moe = MoE(60, 32, n_experts=4, top_k=2)
    x = randn(2, 17, 60, gen=gen, requires_grad=True)
    moe(x)
    loss = moe.aux_loss
    assert loss.dim() == 0 and torch.isfinite(loss)
    probs, _, experts = moe.route(x.detach().reshape(-1, 60))
    frac = torch.bincount(experts.reshape(-1), minlength=4).double() / experts.numel()  # f_i
    assert loss.item() == pytest.approx(4 * (frac * probs.double().mean(0)).sum().item(), rel=1e-5)
    loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.norm() > 0
    # A uniform router (all probabilities 1/E) gives exactly 1, whatever the tie-breaking.
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(x)
    assert abs(moe.aux_loss.item() - 1.0) < 1e-6


def test_moe_aux_loss_ignores_padded_tokens(gen):
    moe = MoE(60, 32, n_experts=4, top_k=1)
    x = randn(2, 9, 60, gen=gen)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :4] = False
    moe(x, mask)
    loss, counts = moe.aux_loss.item(), moe.tokens_per_expert.clone()
    x2 = x.clone()
    x2[0, :4] = randn(4, 60, gen=gen, scale=5.0)
    y2 = moe(x2, mask)
    assert moe.aux_loss.item() == pytest.approx(loss, rel=1e-6)
    assert torch.equal(moe.tokens_per_expert, counts) and counts.sum() == 14
    assert_close(y2[1], moe(x, mask)[1], TOL[torch.float32], "per-token: other rows unchanged")


def test_mlp_errors():
    with pytest.raises(ValueError, match="`top_k`=3 must be <= `n_experts`=2"):
        MoE(8, 8, n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="`d_intermediate` must be >= 1"):
        GatedMLP(8, 0)
    with pytest.raises(TypeError, match="`d_model` must be an int"):
        MLP(8.0)
    with pytest.raises(ValueError, match="expected last dimension D=8"):
        MoE(8, 8, n_experts=2, top_k=1)(torch.ones(2, 3, 7))
