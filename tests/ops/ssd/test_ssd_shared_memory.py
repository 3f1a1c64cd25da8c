"""SSD Triton plans fit the shared memory of the GPU they are made for.

A kernel that asks for more shared memory per program than the GPU has does not start. The plans were
tuned on the H200 (227 KiB); an A100 has 163 KiB, an RTX 4090 (like every GPU of compute capability
8.6 / 8.9) 99 KiB, a V100 96 KiB and a T4 (like the RTX 20xx, compute capability 7.5) 64 KiB; a B200 has
227 KiB (with its own factors: its products stage more), an RTX 5090 99 KiB. These tests make plans as each of
those GPUs would (its SM count, compute capability
and shared memory patched in; no GPU needed) and check them against ``shared_estimate``. That the estimate
bounds what Triton's compiler really allocates is checked offline by
``tests/ops/test_kernels_compile.py::test_ssd_kernels_fit_shared_memory``; that the smaller tiles and chunks
compute the same function, by ``test_ssd_triton.py::test_plans_fitted_to_small_shared_memory``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from ssmkit.ops.ssd import triton_launch  # noqa: E402
from ssmkit.ops.ssd.triton_launch import make_plan, shared_estimate  # noqa: E402
from triton_helpers import OnTheGPU  # noqa: E402

GPUS = {  # name: (compute capability major, SMs, shared memory per block)
    "h200": (9, 132, 232448),
    "a100": (8, 108, 166912),
    "rtx4090": (8, 128, 101376),
    "v100": (7, 80, 98304),
    "t4": (7, 40, 65536),
    "b200": (10, 148, 232448),
    "rtx5090": (12, 170, 101376),
}


@pytest.fixture
def gpu(monkeypatch):
    """``gpu(name)`` makes the plans of the tests that follow those of that GPU; returns its limit."""

    def use(name: str) -> int:
        major, sms, shared = GPUS[name]
        monkeypatch.setattr(triton_launch, "device_major", lambda device: major)
        monkeypatch.setattr(triton_launch, "sm_count", lambda device: sms)
        monkeypatch.setattr(triton_launch, "shared_memory", lambda device: shared)
        return shared

    return use


def _need(plan, x, name: str) -> int:
    return max(shared_estimate(plan, x.element_size(), GPUS[name][0]).values())


@pytest.mark.parametrize("name", list(GPUS))
def test_plans_fit_every_gpu(gpu, name):
    """Every plan's estimate within the GPU's shared memory: 16-bit and fp32, head dims 32-128, state sizes
    16-256, chunk sizes 64 and 256, batches that walk and that run chunk-parallel, packed sequences. On a T4,
    state 256 does not fit even in the smallest tiles: the plan says so."""
    limit = gpu(name)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for P in (32, 64, 128):
            for N in (16, 64, 128, 256):
                for shape, n_seqs in (((2, 4096, 8, P), None), ((8, 4096, 32, P), None), ((1, 8192, 24, P), 3)):
                    for chunk in (64, 256):
                        x = OnTheGPU(*shape, dtype=dtype)
                        if name == "t4" and N == 256:
                            with pytest.raises(ValueError, match=r"N=256 .*64 KiB.*backend='torch'"):
                                make_plan(x, N, chunk, n_seqs)
                            continue
                        plan = make_plan(x, N, chunk, n_seqs)
                        assert _need(plan, x, name) <= limit, (name, dtype, P, N, shape, chunk, plan)


@pytest.mark.parametrize("name", ["h200", "a100", "rtx4090"])
def test_plans_that_fit_are_left_as_they_are(gpu, name):
    """Where the plan tuned on the H200 fits, nothing shrinks: Mamba-2's shapes (head dim 64, state 64 or
    128) on every GPU, in 16-bit and fp32; state 256 on the H200 and the A100 as well."""
    gpu(name)
    states = (64, 128, 256) if name != "rtx4090" else (64, 128)
    for dtype in (torch.bfloat16, torch.float32):
        for N in states:
            x = OnTheGPU(8, 4096, 32, 64, dtype=dtype)
            assert make_plan(x, N, 64, None) == make_plan(x, N, 64, None, fit=False), (name, dtype, N)


def test_smaller_tiles_then_chunks_where_shared_memory_is_short(gpu):
    """On a 99 KiB GPU, state 256: 16-bit halves the backward's P tile (its chunk is already 32); fp32,
    whose backward's (Q, N) tiles dominate, halves the chunk."""
    limit = gpu("rtx4090")
    bf16, fp32 = OnTheGPU(2, 4096, 8, 64), OnTheGPU(2, 4096, 8, 64, dtype=torch.float32)
    tuned, fitted = make_plan(bf16, 256, 64, None, fit=False), make_plan(bf16, 256, 64, None)
    assert _need(tuned, bf16, "rtx4090") > limit >= _need(fitted, bf16, "rtx4090")
    assert (fitted.Q, fitted.block_p, fitted.block_p_bwd) == (tuned.Q, tuned.block_p, tuned.block_p_bwd // 2)
    tuned, fitted = make_plan(fp32, 256, 64, None, fit=False), make_plan(fp32, 256, 64, None)
    assert _need(tuned, fp32, "rtx4090") > limit >= _need(fitted, fp32, "rtx4090")
    assert (fitted.Q, fitted.block_p_bwd) == (tuned.Q // 2, tuned.block_p_bwd)
    assert fitted.n_chunks == 2 * tuned.n_chunks


def test_pre_ampere_plans(gpu):
    """Before Ampere Triton multiplies tiles on the FMA units from whole staged operands, which takes more
    shared memory than the H200's tiles have: Mamba-2's shapes on a T4 halve the backward's P tile and, for
    state 128, the chunk; on a V100 state 128 halves the backward's P tile (16-bit) or the chunk (fp32).
    These plans ran under ``benchmarks/gpu_emulate.py`` (kernels compiled for sm_75 / sm_70) within the limit
    and matched the float32 torch backend."""
    expected = {  # (gpu, 16-bit or fp32, N) -> (chunk, P tile, backward P tile), head dim 64
        ("t4", torch.float16, 64): (32, 64, 32), ("t4", torch.float16, 128): (16, 64, 32),
        ("t4", torch.float32, 64): (32, 64, 32), ("t4", torch.float32, 128): (16, 64, 32),
        ("v100", torch.float16, 128): (32, 64, 32), ("v100", torch.float16, 256): (16, 32, 16),
        ("v100", torch.float32, 128): (32, 64, 32),
    }  # fmt: skip
    for (name, dtype, N), tiles in expected.items():
        gpu(name)
        for d in (dtype, torch.bfloat16) if dtype == torch.float16 else (dtype,):
            plan = make_plan(OnTheGPU(4, 4096, 32, 64, dtype=d), N, 64, None)
            assert (plan.Q, plan.block_p, plan.block_p_bwd) == tiles, (name, d, N, plan)


def test_too_large_a_state_says_so(gpu):
    """Where even chunks and tiles of 16 would not fit, the plan raises, naming the sizes and the way out."""
    gpu("rtx4090")
    with pytest.raises(ValueError, match=r"N=1024 \(state size\).*99 KiB.*backend='torch'"):
        make_plan(OnTheGPU(2, 4096, 8, 64), 1024, 64, None)


def test_limits_off_the_gpu():
    """Off the GPU (the interpreter, meta tensors) and without CUDA nothing limits the plan."""
    from ssmkit.ops._triton import device_major, shared_memory

    assert shared_memory(torch.device("cpu")) >= 1 << 40 and device_major(torch.device("cpu")) == 0
    if not torch.cuda.is_available():
        assert shared_memory(torch.device("cuda")) >= 1 << 40
    else:
        assert 48 * 1024 <= shared_memory(torch.device("cuda")) < 1 << 20
