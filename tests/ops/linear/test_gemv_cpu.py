"""The decode step's C matrix-vector kernel on the CPU (``ssmkit.ops.linear.gemv_cpu``) against the float64
product, its threads, the portable C path, and when it runs."""

import pytest
import torch
import torch.nn.functional as F

from numerics import TOL, assert_close, randn
from ssmkit.ops._c_build import CBuildError, build
from ssmkit.ops.linear import cpu_gemv_applies, gemv_cpu, linear, row_kernel
import ssmkit.ops.linear.gemv_c as gemv_c

if not gemv_c.cpu_gemv_available():
    pytest.skip(f"the C kernel cannot be built here: {gemv_c._cached()[1]}", allow_module_level=True)

DTYPES = [torch.float32, torch.bfloat16]


def reference(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K, bias", [(80, 96, True), (37, 768, False), (5, 48, True), (130, 200, True),
                                        (1, 7, False), (3, 64, True), (9, 65, False), (300, 1543, True)])
def test_matches_float64(gen, dtype, N, K, bias):
    """out = x W^T + b for one row, odd N and K (masked tails along K below, at and past 64), with and without a
    bias, against the float64 product within the dtype's tolerance, in the weight's dtype, and as F.linear in
    float32 rounded once."""
    x = randn(1, K, gen=gen, dtype=dtype)
    w = randn(N, K, gen=gen, dtype=dtype, scale=K**-0.5)
    b = randn(N, gen=gen, dtype=dtype) if bias else None
    assert cpu_gemv_applies(x, w, b)
    out = gemv_cpu(x, w, b)
    assert out.dtype == dtype and out.shape == (1, N)
    assert_close(out, reference(x, w, b), TOL[dtype])
    once = F.linear(x.float(), w.float(), None if b is None else b.float()).to(dtype)
    assert_close(out, once.double(), 2**-7 if dtype == torch.bfloat16 else 1e-6, "against one rounding")


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_views(gen, dtype):
    """x a row of a wider tensor (a chunk of a projection's output) and W a block of a wider matrix (rows
    further apart than K, a storage offset)."""
    big_x = randn(2, 2 * 96, gen=gen, dtype=dtype)
    x = big_x[1:, 96:]
    big_w = randn(41, 130, gen=gen, dtype=dtype)
    w = big_w[1:, 3:99]
    assert cpu_gemv_applies(x, w)
    assert_close(gemv_cpu(x, w), reference(x, w, None), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_give_the_same_bits(gen, dtype):
    """A product large enough to split its rows across threads gives the same bits on one thread and on
    two: each row is one thread's dot product either way."""
    x = randn(1, 1536, gen=gen, dtype=dtype)
    w = randn(1000, 1536, gen=gen, dtype=dtype, scale=1536**-0.5)
    assert w.numel() >= gemv_c.PARALLEL_MIN_WEIGHTS
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gemv_cpu(x, w)
        torch.set_num_threads(2)
        two = gemv_cpu(x, w)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert_close(two, reference(x, w, None), TOL[dtype])


@pytest.mark.parametrize("extra, what", [((), "OpenMP, AVX-512 where the CPU has it"),
                                         (("-mno-avx512f",), "OpenMP, the portable C loops")])
@pytest.mark.parametrize("flag_set", [0, 1])
def test_each_build(gen, tmp_path, flag_set, extra, what):
    """Each flag set (with OpenMP; for one thread without it) and the portable C path (no AVX-512: what a CPU
    without it compiles) give the float64 product within tolerance, bias and odd K included."""
    cflags, lflags = gemv_c.FLAG_SETS[flag_set]
    try:
        path = build("gemv_cpu", gemv_c._HERE, gemv_c.SOURCES, cflags + extra, lflags, cache_dir=tmp_path)
    except CBuildError as e:
        pytest.skip(f"{what}: cannot build here: {e}")
    lib = gemv_c.load_library(path)
    for dtype in DTYPES:
        x, w = randn(1, 203, gen=gen, dtype=dtype), randn(70, 203, gen=gen, dtype=dtype, scale=203**-0.5)
        b = randn(70, gen=gen, dtype=dtype)
        y = torch.empty(1, 70, dtype=dtype)
        code = gemv_c.TYPE_CODES[dtype]
        assert lib.gemv(w.data_ptr(), w.stride(0), code, x.data_ptr(), code, b.data_ptr(), y.data_ptr(), 70, 203, 2) == 0
        assert_close(y, reference(x, w, b), TOL[dtype], f"{what}, {dtype}")


def test_non_finite_values_propagate(gen):
    """A NaN or an infinity in a row reaches that row's output (bfloat16 rounding keeps NaN a NaN)."""
    for dtype in DTYPES:
        x = randn(1, 100, gen=gen, dtype=dtype)
        w = randn(4, 100, gen=gen, dtype=dtype)
        w[1, 37] = float("nan")
        w[2, 99] = float("inf")
        out = gemv_cpu(x, w)[0]
        assert torch.isnan(out[1]) and torch.isinf(out[2]) and torch.isfinite(out[[0, 3]]).all(), out


def test_when_the_kernel_runs(gen):
    """``linear`` and the layers' ``row_kernel`` take the C kernel only for one float32 / bfloat16 row on the
    CPU, in the weight's dtype, unit stride along K, with no gradient to track; every other call is
    F.linear's, equal bit for bit."""
    w = randn(24, 32, gen=gen, dtype=torch.bfloat16)
    x = randn(1, 32, gen=gen, dtype=torch.bfloat16)
    assert cpu_gemv_applies(x, w) and row_kernel(x, w, None, "auto") is gemv_cpu
    assert row_kernel(x, w, None, "c") is gemv_cpu and row_kernel(x, w, None, "torch") is None
    assert row_kernel(x, w, None, "triton") is None
    two = randn(2, 32, gen=gen, dtype=torch.bfloat16)
    assert not cpu_gemv_applies(two, w) and torch.equal(linear(two, w), F.linear(two, w))
    assert not cpu_gemv_applies(x.half(), w.half())  # float16: F.linear (fast on the CPU already)
    assert not cpu_gemv_applies(x.float(), w)  # mixed dtypes
    assert not cpu_gemv_applies(x[:, ::2], w[:, ::2])  # no unit stride along K
    assert not cpu_gemv_applies(x, w, randn(24, gen=gen))  # a float32 bias with bfloat16 weights
    assert not cpu_gemv_applies(x.requires_grad_(True), w)  # a gradient to track
    with torch.no_grad():
        assert cpu_gemv_applies(x, w)
    x = x.detach()
    assert not cpu_gemv_applies(x.to("meta"), w.to("meta"))
    assert_close(linear(x, w), reference(x, w, None), TOL[torch.bfloat16])


def test_build_reports_a_failing_compiler(tmp_path):
    with pytest.raises(CBuildError, match="compiling gemv_cpu.c failed"):
        gemv_c.build_library(0, compiler=["false"], cache_dir=tmp_path)
    assert not any(tmp_path.iterdir()), "a failed build left files in the cache"


@pytest.mark.parametrize("dtype", DTYPES)
def test_decoding_takes_it(gen, monkeypatch, dtype):
    """Without autograd on the CPU, a Mamba layer's step runs its four projections (weights that are
    nn.Parameters) through the C kernel under backend "auto" and an LM's step its head (its blocks run fused,
    tests/ops/decode); under "torch" none does, and both give the same output within the dtype's tolerance."""
    import ssmkit.ops.linear as linear_ops
    from ssmkit.layers import Mamba
    from ssmkit.models import LM, ModelConfig

    calls = []
    kernel = linear_ops.gemv_cpu
    monkeypatch.setattr(linear_ops, "gemv_cpu", lambda *a: calls.append(a[1].shape) or kernel(*a))
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    x = randn(1, 32, gen=gen, dtype=dtype)
    ids = torch.randint(100, (1,), generator=gen)
    out, weights = {}, None
    for backend in ("auto", "torch"):
        layer = Mamba(32, backend=backend).to(dtype)
        lm = LM(ModelConfig(layers="M", d_model=32, vocab_size=100, backend=backend)).to(dtype).eval()
        if weights is not None:
            layer.load_state_dict(weights[0])
            lm.load_state_dict(weights[1])
        weights = (layer.state_dict(), lm.state_dict())
        with torch.no_grad():
            out[backend] = (layer.step(x, layer.init_state(1, dtype=dtype))[0], lm.step(ids, lm.init_state(1, dtype=dtype))[0])
        if backend == "auto":
            assert len(calls) == 4 + 1 and calls[-1][0] == lm.lm_head.weight.shape[0], calls
            calls.clear()
    assert calls == []
    tol = TOL[dtype] if dtype == torch.bfloat16 else 1e-5
    assert_close(out["auto"][0], out["torch"][0].double(), tol, "layer step")
    assert_close(out["auto"][1], out["torch"][1].double(), tol, "logits")
