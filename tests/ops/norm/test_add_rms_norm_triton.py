"""The decode step's fused residual add and RMSNorm (``ssmkit.ops.norm.add_rms_norm``) against float64.

In Triton's interpreter on a machine without CUDA (small shapes); the same tests run on the GPU, where the
models' decode steps take it (tests/models, tests/generation).
"""

import pytest
import torch

from numerics import TOL, assert_close, randn
from triton_helpers import DEVICE, requires_triton  # first: skips this file without triton
from ssmkit.ops.norm import add_rms_norm, add_rms_norm_applies

pytestmark = requires_triton


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("B, D, with_y, w_dtype", [(1, 768, True, torch.float32), (3, 100, True, torch.bfloat16),
                                                  (2, 33, False, torch.float32), (1, 2048, True, torch.bfloat16)])
def test_matches_float64(gen, out_dtype, B, D, with_y, w_dtype):
    """r' = r + y exactly (float32 residual, 16-bit y widened), and rms_norm(r') * w within the output dtype's
    tolerance of the float64 norm, in ``out_dtype``; without y the residual comes back as it is."""
    r = randn(B, D, gen=gen, scale=3.0).to(DEVICE)
    y = randn(B, D, gen=gen, dtype=torch.bfloat16).to(DEVICE) if with_y else None
    w = (1.0 + randn(D, gen=gen, scale=0.1)).to(w_dtype).to(DEVICE)
    r2, out = add_rms_norm(r, y, w, 1e-5, out_dtype)
    want = r if y is None else r + y.float()
    assert r2.dtype == torch.float32 and torch.equal(r2, want)
    if y is None:
        assert r2 is r
    w64, s = w.double(), want.double()
    ref = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5) * w64
    assert out.dtype == out_dtype and out.shape == (B, D)
    assert_close(out.cpu(), ref.cpu(), TOL[out_dtype])


def test_residual_in_its_own_dtype(gen):
    """A bfloat16 residual stream (``residual_in_fp32=False``): the sum is rounded to bfloat16 as stored, and
    that stored residual is what gets normalised (as adding, then normalising, does)."""
    r = randn(2, 96, gen=gen, dtype=torch.bfloat16).to(DEVICE)
    y = randn(2, 96, gen=gen, dtype=torch.bfloat16).to(DEVICE)
    w = torch.ones(96, device=DEVICE)
    r2, out = add_rms_norm(r, y, w, 1e-5, torch.float32)
    assert r2.dtype == torch.bfloat16  # (Triton's interpreter rounds to bfloat16 by truncation: no bit equality)
    assert_close(r2.cpu(), (r.double() + y.double()).cpu(), TOL[torch.bfloat16], "residual")
    s = r2.double()
    assert_close(out.cpu(), (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5)).cpu(), 1e-6)


def test_when_it_applies(gen):
    """Only on CUDA, 2-D rows with unit stride, D <= 16384, and no gradient to track."""
    r, w = randn(1, 64, gen=gen), torch.ones(64)
    assert not add_rms_norm_applies(r, None, w)  # CPU
    if torch.cuda.is_available():
        rc, wc = r.cuda(), w.cuda()
        assert add_rms_norm_applies(rc, None, wc) and add_rms_norm_applies(rc, rc.to(torch.bfloat16), wc)
        assert not add_rms_norm_applies(rc.requires_grad_(True), None, wc)
        assert not add_rms_norm_applies(torch.zeros(1, 20000, device="cuda"), None, torch.ones(20000, device="cuda"))
        assert not add_rms_norm_applies(rc.detach()[:, ::2], None, wc[::2])
