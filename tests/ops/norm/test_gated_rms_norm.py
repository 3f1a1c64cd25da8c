"""gated_rms_norm: the float64 reference against the formula, the torch backend against the reference, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numerics import TOL, assert_close, randn

from ssmkit.ops.backends import BackendUnavailableError, resolved_backend
from ssmkit.ops.norm import GATED_RMSNORM_BACKENDS, gated_rms_norm

D = 60


def outputs_and_grads(backend, y, weight, z, group_size, norm_before_gate, seed, to64=False, eps=1e-5):
    """The op's output and the gradients of a random projection of it w.r.t. y, weight (and z)."""
    leaves = [None if t is None else (t.detach().double() if to64 else t.detach().clone()).requires_grad_(True)
              for t in (y, weight, z)]  # fmt: skip
    out = gated_rms_norm(leaves[0], leaves[1], leaves[2], eps, group_size, norm_before_gate, backend=backend)
    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * proj).sum(), [t for t in leaves if t is not None])
    return out, dict(zip([n for n, t in zip(("y", "weight", "z"), leaves) if t is not None], grads))


def test_reference_is_the_formula(gen):
    """Independent check of the spec: group-by-group formula written with reshapes."""
    y, z = randn(4, 7, D, gen=gen, dtype=torch.float64), randn(4, 7, D, gen=gen, dtype=torch.float64)
    w = randn(D, gen=gen, dtype=torch.float64)
    gate = z * torch.sigmoid(z)
    for nbg in (False, True):
        x = y if nbg else y * gate
        xs = x.reshape(4, 7, 3, 20)
        expect = (xs / torch.sqrt(xs.pow(2).mean(-1, keepdim=True) + 1e-3)).reshape(4, 7, D) * w
        expect = expect * gate if nbg else expect
        assert_close(gated_rms_norm(y, w, z, 1e-3, 20, nbg, backend="reference"), expect, TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("group_size,gated", [(20, True), (None, True), (12, False)])
def test_torch_matches_reference(gen, dtype, norm_before_gate, group_size, gated):
    y = randn(3, 21, D, gen=gen, dtype=dtype)
    z = randn(3, 21, D, gen=gen, dtype=dtype) if gated else None
    w = (randn(D, gen=gen).abs() + 0.5).to(torch.float64 if dtype == torch.float64 else torch.float32)  # as a layer keeps it
    seed = int(torch.randint(2**31, (1,), generator=gen))
    out, g = outputs_and_grads("torch", y, w, z, group_size, norm_before_gate, seed)
    out_r, g_r = outputs_and_grads("reference", y, w, z, group_size, norm_before_gate, seed, to64=True)
    assert out.dtype == dtype and out.shape == y.shape
    assert_close(out, out_r, TOL[dtype], "output")
    for name in g_r:
        assert g[name].dtype == {"weight": w.dtype}.get(name, dtype)
        assert_close(g[name], g_r[name], TOL[dtype], f"gradient of `{name}`")


def test_leading_shapes_and_eps(gen):
    """Any leading shape (none, one, three dims); eps matters for small inputs."""
    w = randn(D, gen=gen)
    for shape in [(D,), (5, D), (2, 3, 4, D)]:
        y, z = randn(*shape, gen=gen, scale=0.01), randn(*shape, gen=gen)
        for eps in (1e-5, 1e-2):
            out = gated_rms_norm(y, w, z, eps, 15, backend="torch")
            assert out.shape == shape
            assert_close(out, gated_rms_norm(y.double(), w, z.double(), eps, 15, backend="reference"), TOL[torch.float32])
    y = randn(5, D, gen=gen, scale=0.01)
    rel = (gated_rms_norm(y, w, eps=1e-2) - gated_rms_norm(y, w, eps=1e-6)).norm() / gated_rms_norm(y, w).norm()
    assert rel > 0.1, "eps is not added to the mean square"


def test_auto_and_table():
    assert resolved_backend(GATED_RMSNORM_BACKENDS, "cpu") == "torch"
    assert GATED_RMSNORM_BACKENDS.auto_order["cuda"] == ("triton", "torch")
    assert set(GATED_RMSNORM_BACKENDS.impls) == {"reference", "torch", "triton"}


def test_same_math_as_silu_gate(gen):
    """norm_before_gate=True equals the plain RMSNorm times silu(z)."""
    y, z, w = randn(2, 9, D, gen=gen), randn(2, 9, D, gen=gen), randn(D, gen=gen)
    gated = gated_rms_norm(y, w, z, norm_before_gate=True, backend="torch")
    assert_close(gated, gated_rms_norm(y, w, backend="torch") * F.silu(z), TOL[torch.float32])


def test_bad_inputs(gen):
    y, z, w = randn(2, 5, D, gen=gen), randn(2, 5, D, gen=gen), randn(D, gen=gen)
    fn = "gated_rms_norm"
    with pytest.raises(ValueError, match=rf"{fn}: argument `z` expected shape \(2, 5, 60\) \(that of `y`\), got \(2, 5, 59\)"):
        gated_rms_norm(y, w, z[..., :59])
    with pytest.raises(ValueError, match=rf"{fn}: argument `weight` expected shape \(D=60\), got \(59,\)"):
        gated_rms_norm(y, w[:59], z)
    with pytest.raises(ValueError, match=rf"{fn}: `D \(y.shape\[-1\]\)`=60 must be divisible by `group_size`=16"):
        gated_rms_norm(y, w, z, group_size=16)
    with pytest.raises(ValueError, match=rf"{fn}: argument `group_size` must be >= 1, got 0"):
        gated_rms_norm(y, w, z, group_size=0)
    with pytest.raises(TypeError, match=rf"{fn}: argument `y` must have dtype in \(.*\), got int64"):
        gated_rms_norm(y.long(), w)
    with pytest.raises(TypeError, match=rf"{fn}: argument `z` must have dtype in \(.*\), got int32"):
        gated_rms_norm(y, w, z.int())
    with pytest.raises(TypeError, match=rf"{fn}: argument `weight` must have dtype in \(.*\), got int64"):
        gated_rms_norm(y, w.long())
    with pytest.raises(TypeError, match=rf"{fn}: argument `z` must be a torch.Tensor or None, got list"):
        gated_rms_norm(y, w, [1.0])
    with pytest.raises(ValueError, match=rf"{fn}: argument `y` expected shape \(\.\.\., D\), got \(\)"):
        gated_rms_norm(y[0, 0, 0], w)
    with pytest.raises(ValueError, match=rf"{fn}: argument `eps` must be a number >= 0, got -1.0"):
        gated_rms_norm(y, w, eps=-1.0)
    with pytest.raises(TypeError, match=rf"{fn}: argument `norm_before_gate` must be a bool, got str"):
        gated_rms_norm(y, w, z, norm_before_gate="yes")
    with pytest.raises(ValueError, match=rf"{fn}: argument `weight` is on meta, expected the device of `y` \(cpu\)"):
        gated_rms_norm(y, w.to("meta"))
    with pytest.raises(ValueError, match=rf"{fn}: argument `backend` must be one of"):
        gated_rms_norm(y, w, backend="cuda")
    with pytest.raises(BackendUnavailableError, match=rf"{fn}: backend 'c' is not implemented"):
        gated_rms_norm(y, w, backend="c")
