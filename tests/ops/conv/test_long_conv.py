"""long_conv: the direct-sum reference and the FFT path against a Toeplitz matrix written out."""

from __future__ import annotations

import pytest
import torch

from numerics import TOL, assert_close, randn
from ssmkit.ops.backends import BackendUnavailableError
from ssmkit.ops.conv.long_conv import LONG_CONV_BACKENDS, long_conv


def _toeplitz(u, k, k_reverse):
    """y = T u with T[t, s] = k[t - s] (s <= t) or k_reverse[s - t - 1] (s > t), float64."""
    L, D = u.shape[1], u.shape[2]
    T = torch.zeros(L, L, D, dtype=torch.float64)
    for t in range(L):
        for s in range(L):
            if s <= t and t - s < k.shape[0]:
                T[t, s] = k[t - s]
            elif s > t and k_reverse is not None and s - t - 1 < k_reverse.shape[0]:
                T[t, s] = k_reverse[s - t - 1]
    return torch.einsum("tsd,bsd->btd", T, u.double())


@pytest.mark.parametrize("Lk", [63, 20, 90])
@pytest.mark.parametrize("two_sided", [False, True])
def test_backends_match_toeplitz(gen, Lk, two_sided):
    u = randn(2, 63, 12, gen=gen, dtype=torch.float64)
    k = randn(Lk, 12, gen=gen, dtype=torch.float64)
    kr = randn(Lk - 3, 12, gen=gen, dtype=torch.float64) if two_sided else None
    want = _toeplitz(u, k, kr)
    for backend in ("reference", "torch"):
        assert_close(long_conv(u, k, kr, backend=backend), want, TOL[torch.float64], backend)


def test_float32_and_gradients(gen):
    u = randn(2, 63, 12, gen=gen, requires_grad=True)
    k = randn(63, 12, gen=gen, requires_grad=True)
    kr = randn(40, 12, gen=gen, requires_grad=True)
    ref_in = [t.detach().double().requires_grad_(True) for t in (u, k, kr)]
    out = long_conv(u, k, kr, backend="torch")
    ref = long_conv(*ref_in, backend="reference")
    assert out.dtype == torch.float32
    assert_close(out, ref, TOL[torch.float32])
    g = randn(*ref.shape, gen=gen, dtype=torch.float64)
    (out * g.float()).sum().backward()
    (ref * g).sum().backward()
    for name, a, b in zip(("u", "k", "k_reverse"), (u, k, kr), ref_in):
        assert_close(a.grad, b.grad, TOL[torch.float32], f"grad of {name}")


def test_bad_inputs(gen):
    u, k = randn(2, 10, 4, gen=gen), randn(10, 4, gen=gen)
    with pytest.raises(ValueError, match=r"`k` expected shape \(Lk, D=4\)"):
        long_conv(u, k[:, :3])
    with pytest.raises(ValueError, match=r"`u` expected shape \(B, L, D\)"):
        long_conv(u[0], k)
    with pytest.raises(TypeError, match="`k` must have dtype"):
        long_conv(u, k.long())
    with pytest.raises(BackendUnavailableError, match="not implemented"):
        long_conv(u, k, backend="triton")
    assert LONG_CONV_BACKENDS.resolve("auto", torch.device("cpu")) == "torch"


def test_fft_conv_empty_sequence_and_k_reverse_dtype(gen):
    from ssmkit.ops.conv import fft_conv

    u, k = randn(2, 0, 5, gen=gen), randn(7, 5, gen=gen)
    assert fft_conv(u, k).shape == (2, 0, 5)
    with pytest.raises(TypeError, match=r"fft_conv: argument `k_reverse` must have dtype in .*got int64"):
        fft_conv(randn(2, 9, 5, gen=gen), k, torch.ones(7, 5, dtype=torch.int64))
