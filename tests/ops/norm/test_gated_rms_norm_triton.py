"""Gated RMSNorm, backend "triton" (fused forward and backward kernels) against the float64 reference.

Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set
by ``conftest.py`` before any kernel module is imported) on small shapes. The interpreter
truncates float32 -> bfloat16 (the GPU rounds to nearest), so bfloat16 errors
here are about twice those on the GPU; still far inside the tolerance.
"""

from __future__ import annotations

import pytest
import torch

from numerics import TOL, assert_close, randn
from triton_helpers import DEVICE, assert_compiles_like_eager, requires_triton  # first: skips this file without triton
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.norm import GatedRMSNorm, RMSNorm
from ssmkit.ops.backends import BackendUnavailableError
from ssmkit.ops.norm import gated_rms_norm
from ssmkit.ops.norm import gated_rms_norm_triton as norm_triton

pytestmark = requires_triton


def run(backend, y, weight, z, group_size, norm_before_gate, seed, to64=False, eps=1e-5):
    """Output and gradients (y, weight, z) of a random projection of the output; inputs copied as leaves."""
    leaves = [None if t is None else (t.detach().cpu().double() if to64 else t.detach().clone()).requires_grad_(True)
              for t in (y, weight, z)]  # fmt: skip
    out = gated_rms_norm(leaves[0], leaves[1], leaves[2], eps, group_size, norm_before_gate, backend=backend)
    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * proj.to(out.device)).sum(), [t for t in leaves if t is not None])
    return out, dict(zip([n for n, t in zip(("y", "weight", "z"), leaves) if t is not None], grads))


def check_against_reference(y, w, z, group_size, norm_before_gate, gen, tol):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    out, g = run("triton", y, w, z, group_size, norm_before_gate, seed)
    out_r, g_r = run("reference", y, w, z, group_size, norm_before_gate, seed, to64=True)
    assert out.dtype == y.dtype and out.shape == y.shape
    assert_close(out.cpu(), out_r, tol, "output")
    assert set(g) == set(g_r)
    for name, a in g.items():
        assert a.dtype == {"y": y, "weight": w, "z": z}[name].dtype
        assert_close(a.cpu(), g_r[name], tol, f"gradient of `{name}`")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("D,group_size,gated,w32", [(60, 20, True, True), (60, None, True, True), (48, 12, False, True),
                                                    (24, 24, True, False)])  # fmt: skip
def test_matches_reference(gen, dtype, norm_before_gate, D, group_size, gated, w32):
    """Odd sizes: 75 rows, D not a power of two, several groups; weight float32 (as a layer under autocast
    keeps it) or in the input dtype (a layer cast with .to(dtype))."""
    y = randn(3, 25, D, gen=gen, dtype=dtype).to(DEVICE)
    z = randn(3, 25, D, gen=gen, dtype=dtype).to(DEVICE) if gated else None
    w = (randn(D, gen=gen).abs() + 0.5).to(DEVICE, torch.float32 if w32 else dtype)
    check_against_reference(y, w, z, group_size, norm_before_gate, gen, TOL[dtype])


def small_tiles(monkeypatch, chunked: bool, ahead: bool = False) -> None:
    """Tiles of 64 elements; with ``chunked``, groups wider than 8 channels are walked in chunks of 8;
    ``ahead``: the backward loads each tile while it sums the one before."""
    t = norm_triton.Tiling(tile=64, per_thread=1, max_block=8 if chunked else 64, chunk=8, ahead=ahead)
    monkeypatch.setattr(norm_triton, "FWD_TILING", t)
    monkeypatch.setattr(norm_triton, "BWD_TILING", t)


@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("chunked,ahead", [(False, False), (False, True), (True, False)])
def test_many_programs_and_partial_tiles(gen, monkeypatch, norm_before_gate, gated, chunked, ahead):
    """Tiny tiles: the forward has many row blocks, the backward several programs that each walk several
    tiles (the last one partial) and write partial weight-gradient sums, with or without loading each
    tile ahead. Chunked: groups of 20 channels in chunks of 8 (the last one partial), as the kernels walk
    groups wider than one tile."""
    small_tiles(monkeypatch, chunked, ahead)
    y = randn(75, 60, gen=gen).to(DEVICE)
    z = randn(75, 60, gen=gen).to(DEVICE) if gated else None
    w = randn(60, gen=gen).to(DEVICE)
    check_against_reference(y, w, z, 20, norm_before_gate, gen, TOL[torch.float32])


@pytest.mark.parametrize("D,group_size", [(1000, 200), (1024, 512)])
def test_narrow_group_tiling(gen, monkeypatch, D, group_size):
    """Groups of 256 to 2048 channels: the backward takes ``BWD_TILING_NARROW`` (4 warps, several rows per
    tile; here 8 or 16, the last tile partial), z a slice of a wider projection; against float64."""
    plans = []
    plan = norm_triton._plan
    monkeypatch.setattr(norm_triton, "_plan", lambda g, t: plans.append(t) or plan(g, t))
    y = randn(41, D, gen=gen).to(DEVICE)
    z = randn(41, D + 76, gen=gen).to(DEVICE)[:, 50 : D + 50]
    w = (randn(D, gen=gen).abs() + 0.5).to(DEVICE)
    check_against_reference(y, w, z, group_size, False, gen, TOL[torch.float32])
    assert plans == [norm_triton.FWD_TILING, norm_triton.BWD_TILING_NARROW]


def test_wide_group_tiling(gen, monkeypatch):
    """Groups of 2049 to 4096 channels: the backward takes ``BWD_TILING_WIDE`` (each program loads a tile
    while it sums the one before; here 41 rows, the last tile partial), z a slice of a wider projection;
    against float64."""
    plans = []
    plan = norm_triton._plan
    monkeypatch.setattr(norm_triton, "_plan", lambda g, t: plans.append(t) or plan(g, t))
    y = randn(41, 3000, gen=gen).to(DEVICE)
    z = randn(41, 3100, gen=gen).to(DEVICE)[:, 60:3060]
    w = (randn(3000, gen=gen).abs() + 0.5).to(DEVICE)
    check_against_reference(y, w, z, 3000, False, gen, TOL[torch.float32])
    assert plans == [norm_triton.FWD_TILING, norm_triton.BWD_TILING_WIDE]
    assert norm_triton.BWD_TILING_WIDE.ahead


def test_strided_inputs_and_leading_shapes(gen):
    """z a slice of a wider projection (row stride != D, no copy), y with channel stride 2 (copied),
    a 1-D input and a 4-D one; the gradient from out.sum() arrives expanded (stride 0)."""
    wide = randn(2, 9, 100, gen=gen).to(DEVICE)
    y = randn(2, 9, 80, gen=gen).to(DEVICE)[..., ::2]  # (2, 9, 40), channel stride 2
    z = wide[..., 30:70]  # (2, 9, 40), row stride 100
    w = randn(40, gen=gen).to(DEVICE)
    check_against_reference(y, w, z, 8, False, gen, TOL[torch.float32])
    for shape in [(40,), (2, 3, 1, 40)]:
        check_against_reference(randn(*shape, gen=gen).to(DEVICE), w, randn(*shape, gen=gen).to(DEVICE), 40, True,
                                gen, TOL[torch.float32])  # fmt: skip
    yl, zl, wl = (t.detach().clone().requires_grad_(True) for t in (y, z, w))
    gated_rms_norm(yl, wl, zl, group_size=8, backend="triton").sum().backward()
    ref = [t.detach().cpu().double().requires_grad_(True) for t in (y, z, w)]
    gated_rms_norm(ref[0], ref[2], ref[1], group_size=8, backend="reference").sum().backward()
    for name, a, r in zip(("y", "z", "weight"), (yl, zl, wl), ref):
        assert_close(a.grad.cpu(), r.grad, TOL[torch.float32], f"gradient of `{name}` from out.sum()")


@pytest.mark.parametrize("chunked", [False, True])
def test_weight_gradient_is_deterministic(gen, monkeypatch, chunked):
    small_tiles(monkeypatch, chunked)
    y, z, w = (randn(*s, gen=gen).to(DEVICE).requires_grad_(True) for s in ((50, 32), (50, 32), (32,)))
    dout = randn(50, 32, gen=gen).to(DEVICE)
    first = torch.autograd.grad(gated_rms_norm(y, w, z, backend="triton"), (y, z, w), dout)
    again = torch.autograd.grad(gated_rms_norm(y, w, z, backend="triton"), (y, z, w), dout)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_empty_input(gen):
    y = torch.zeros(0, 3, 16, device=DEVICE, requires_grad=True)
    w = randn(16, gen=gen).to(DEVICE).requires_grad_(True)
    out = gated_rms_norm(y, w, y, backend="triton")
    assert out.shape == (0, 3, 16)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_layers_use_the_op(gen):
    """GatedRMSNorm / RMSNorm with backend "triton" equal backend "torch"; Mamba-2 passes its backend on."""
    norm = GatedRMSNorm(60, group_size=30).to(DEVICE)
    y, z = randn(4, 60, gen=gen, dtype=torch.bfloat16).to(DEVICE), randn(4, 60, gen=gen, dtype=torch.bfloat16).to(DEVICE)
    assert_close(norm(y, z, backend="triton"), norm(y, z, backend="torch"), TOL[torch.bfloat16])
    assert_close(RMSNorm(60).to(DEVICE)(y, backend="triton"), RMSNorm(60).to(DEVICE)(y, backend="torch"), TOL[torch.bfloat16])
    assert Mamba2(60, headdim=15, backend="triton").op_backends(DEVICE)["gated_rms_norm"] == "triton"


def test_refusals(gen):
    y, w = randn(3, 16, gen=gen, dtype=torch.float64).to(DEVICE), randn(16, gen=gen).to(DEVICE)
    with pytest.raises(BackendUnavailableError, match="gated_rms_norm: backend 'triton' .*got float64"):
        gated_rms_norm(y, w, backend="triton")
    with pytest.raises(TypeError, match=r"gated_rms_norm \(backend 'triton'\): argument `z` must be float32, float16 or "
                                        r"bfloat16, got float64"):  # fmt: skip
        gated_rms_norm(y.float(), w, y, backend="triton")


def test_compiles_fullgraph(gen):
    y, z, w = (randn(*s, gen=gen).to(DEVICE).requires_grad_(True) for s in ((2, 5, 24), (2, 5, 24), (24,)))

    def f(y, z, w):
        return (gated_rms_norm(y, w, z, group_size=8, backend="triton") ** 2).sum()

    assert_compiles_like_eager(f, (y, z, w), 1e-6)


def test_custom_ops_opcheck(gen):
    """Schema, autograd registration and fake (meta) outputs matching the real ones."""
    y, z = randn(7, 24, gen=gen).to(DEVICE).requires_grad_(True), randn(7, 24, gen=gen).to(DEVICE)
    w = randn(24, gen=gen).to(DEVICE)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    fwd = torch.ops.ssmkit.gated_rms_norm_fwd.default
    for zz, nbg in ((z, False), (z, True), (None, False)):
        torch.library.opcheck(fwd, (y, zz, w, 1e-5, 8, nbg), test_utils=utils)
    _, rstd = fwd(y.detach(), z, w, 1e-5, 8, False)
    torch.library.opcheck(torch.ops.ssmkit.gated_rms_norm_bwd.default,
                          (torch.randn_like(y), y.detach(), z, w, rstd, 8, False), test_utils=utils[::2])  # fmt: skip
