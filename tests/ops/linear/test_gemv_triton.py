"""The decode step's matrix-vector kernel (``ssmkit.ops.linear``) against the float64 product.

On a machine without CUDA the kernel runs in Triton's interpreter on small shapes; on the GPU the same
tests run, and the layers' decode steps go through it (tests/layers, tests/generation).
"""

import pytest
import torch
import torch.nn.functional as F

from numerics import TOL, assert_close, randn
from triton_helpers import DEVICE, requires_triton  # first: skips this file without triton
from ssmkit.ops.linear import GEMV_MAX_ROWS, GEMV_MAX_WEIGHTS, gemv, gemv_applies, linear
from ssmkit.ops.linear import gemv_triton
from ssmkit.ops.linear.gemv_triton import gemv_tiles

pytestmark = requires_triton


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M, N, K, bias", [(1, 80, 96, True), (1, 37, 768, False), (3, 50, 70, True),
                                           (4, 33, 1024, False), (1, 5, 48, True), (2, 130, 200, True),
                                           (1, 21, 2600, True), (2, 9, 3072, False)])
@pytest.mark.parametrize("programs", [0, 64])
def test_matches_float64(gen, dtype, M, N, K, bias, programs, monkeypatch):
    """out = x W^T + b for a few rows, odd N and K (a masked last tile along K, rows past N; 1-4 tiles loaded
    ahead of x, and 6 tiles: two more in the loop), with and without a bias (kept in float32 as the layers keep
    Δ's), against the float64 product: within the dtype's tolerance, in x's dtype, and as F.linear in float32
    rounded once. ``programs``: the SMs the tiles are spread over (64: narrower tiles, down to one row of up to
    2048 columns)."""
    monkeypatch.setattr(gemv_triton, "sm_count", lambda device: programs)
    x = randn(M, K, gen=gen, dtype=dtype).to(DEVICE)
    w = randn(N, K, gen=gen, dtype=dtype, scale=K**-0.5).to(DEVICE)
    b = randn(N, gen=gen).to(DEVICE) if bias else None
    out = gemv(x, w, b)
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert out.dtype == dtype and out.shape == (M, N)
    assert_close(out.cpu(), ref.cpu(), TOL[dtype])
    once = F.linear(x.float(), w.float(), None if b is None else b.float()).to(dtype)
    assert_close(out.cpu(), once.double().cpu(), 2 ** -7 if dtype == torch.bfloat16 else 2 ** -10, "against one rounding")


def test_strided_rows(gen):
    """x as a view whose rows are not contiguous with each other (a chunk of a projection's output) and a
    slice of a weight: the strides are taken as given."""
    big = randn(3, 2 * 96, gen=gen, dtype=torch.bfloat16).to(DEVICE)
    x = big[:, 96:]  # row stride 192
    w = randn(40, 96, gen=gen, dtype=torch.bfloat16).to(DEVICE)
    assert_close(gemv(x, w).cpu(), (x.double() @ w.double().t()).cpu(), TOL[torch.bfloat16])


def test_tiles_rule():
    """Tiles of 2048 weights, as wide along K as divides it (at most 512); odd K: the power of two covering it."""
    assert gemv_tiles(1536) == (4, 512) and gemv_tiles(768) == (8, 256) and gemv_tiles(4096) == (4, 512)
    assert gemv_tiles(128) == (16, 128) and gemv_tiles(48) == (32, 64) and gemv_tiles(7) == (128, 16)
    assert gemv_tiles(1000) == (4, 512)


def test_narrow_weights_spread_over_the_sms():
    """Fewer programs than SMs: rows per program halve (the tile widening along K while K reaches) until there are
    enough or one row is left; wide weights keep their tiles."""
    assert gemv_tiles(1536, 80, 132) == (1, 2048)  # mamba-130m x_proj: 20 programs -> 80
    assert gemv_tiles(4096, 160, 132) == (1, 2048)  # mamba-1.4b x_proj: 40 -> 160
    assert gemv_tiles(48, 1536, 132) == (8, 64)  # mamba-130m dt_proj: 48 -> 192, K covered by 64
    assert gemv_tiles(768, 3072, 132) == (8, 256) and gemv_tiles(4096, 2048, 132) == (4, 512)
    assert gemv_tiles(1536, 80, 0) == gemv_tiles(1536) == (4, 512)


def test_when_the_kernel_runs(gen):
    """``linear`` takes the kernel only for up to GEMV_MAX_ROWS 16-bit rows on CUDA without autograd and a
    weight under GEMV_MAX_WEIGHTS elements; every other call is F.linear's, equal bit for bit."""
    w = randn(24, 32, gen=gen, dtype=torch.bfloat16)
    x = randn(GEMV_MAX_ROWS, 32, gen=gen, dtype=torch.bfloat16)
    assert not gemv_applies(x, w)  # CPU (where one row takes the C kernel: tests/ops/linear/test_gemv_cpu.py)
    two = randn(GEMV_MAX_ROWS + 1, 32, gen=gen, dtype=torch.bfloat16)
    assert torch.equal(linear(two, w), F.linear(two, w))
    if torch.cuda.is_available():
        xc, wc = x.cuda(), w.cuda()
        assert gemv_applies(xc, wc)
        assert not gemv_applies(randn(GEMV_MAX_ROWS + 1, 32, gen=gen, dtype=torch.bfloat16).cuda(), wc)
        assert not gemv_applies(xc.float(), wc.float())  # float32: cuBLAS
        assert not gemv_applies(xc.requires_grad_(True), wc)  # a gradient to track
        assert not gemv_applies(xc.detach()[:, ::2], wc[:, ::2])  # no unit stride along K
        big = torch.empty(GEMV_MAX_WEIGHTS // 32, 32, device="cuda", dtype=torch.bfloat16)
        assert not gemv_applies(xc.detach(), big) and gemv_applies(xc.detach(), big[1:])
        assert_close(linear(xc.detach(), wc).cpu(), (x.double() @ w.double().t()), TOL[torch.bfloat16])
