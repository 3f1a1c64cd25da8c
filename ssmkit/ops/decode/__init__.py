"""Fused decode steps on the CPU: a whole Mamba block for one token in one C call (``mamba_block_cpu.c``).

At batch 1 the PyTorch step of a Mamba block issues ~40 small tensor ops around its four matrix-vector
products; their per-op cost, not the weights, set the decode rate on a 2-core CPU (``BENCHMARKS.md``). The C
call computes what ``Block.step_pending`` computes for a Mamba mixer without a StateNorm or an MLP: the
residual add, RMSNorm, in_proj, the conv step with silu, x_proj, dt_proj, the scan step with D and the
silu(z) gate, out_proj, rounding each intermediate to the activations' dtype where the PyTorch step does.
It has no backward; ``models.backbone.Block`` takes it only without autograd (``ssmkit.layers.mamba``).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Optional

import torch

from .._c_build import CBuildError, build_and_load, open_library

_HERE = Path(__file__).resolve().parent
SOURCES = ("mamba_block_cpu.c", "../linear/gemv_cpu.c", "../scan/step_cpu.c", "../bf16_cpu.h")
# (compile flags, link flags): -ffast-math for the scan step's vector exp (linked without it, see
# ops/scan/cpu_c_build.py); OpenMP for the projections' threads, then without it where the compiler lacks it
FLAG_SETS = (
    (("-O3", "-ffast-math", "-march=native", "-fopenmp", "-fPIC"), ("-shared", "-fopenmp", "-lm")),
    (("-O3", "-ffast-math", "-march=native", "-fopenmp-simd", "-Wno-unknown-pragmas", "-fPIC"), ("-shared", "-lm")),
)
TYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}
MAX_STATE = 1024  # d_state the scan step's buffers hold


class BlockParams(ctypes.Structure):
    """Mirror of ``mb_params`` in mamba_block_cpu.c (pointers, int64 sizes, eps)."""

    _fields_ = [
        (name, ctypes.c_void_p)
        for name in ("res_in", "pend", "res_out", "out", "norm_w", "w_in", "b_in", "conv_w", "conv_b", "conv_in",
                     "conv_out", "w_x", "w_dt", "dt_b", "A", "Dv", "ssm_in", "ssm_out", "w_out", "b_out")  # fmt: skip
    ] + [
        (name, ctypes.c_int64)
        for name in ("d_model", "d_inner", "d_state", "dt_rank", "d_conv", "res_type", "act_type", "nthreads")
    ] + [("eps", ctypes.c_double)]


def load_library(path: Path) -> ctypes.CDLL:
    """Load a built kernel, check its parameter struct and declare its entry point."""
    lib = open_library(path, "mb_params_size", ctypes.sizeof(BlockParams), "the size of mb_params")
    lib.mamba_block_step.argtypes = [ctypes.POINTER(BlockParams)]
    lib.mamba_block_step.restype = ctypes.c_int
    return lib


@functools.lru_cache(maxsize=None)
def _cached() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    return build_and_load("mamba_block_cpu", _HERE, SOURCES, FLAG_SETS, load_library)


def mamba_block_available() -> bool:
    """Whether the fused step is (or can be) built and loaded here."""
    return _cached()[0] is not None


def mamba_block_step_cpu(
    residual: torch.Tensor, pending: Optional[torch.Tensor], norm_weight: torch.Tensor, eps: float,
    in_w: torch.Tensor, in_b: Optional[torch.Tensor], conv_w: torch.Tensor, conv_b: Optional[torch.Tensor],
    conv_state: torch.Tensor, x_w: torch.Tensor, dt_w: torch.Tensor, dt_b: torch.Tensor, A: torch.Tensor,
    D: torch.Tensor, ssm_state: torch.Tensor, out_w: torch.Tensor, out_b: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """One token of a Mamba block, for a caller that has checked the layout (``layers.mamba``):

    residual (1, d_model) float32 or the activations' dtype; pending (1, d_model) or None; the projections'
    weights (and biases, or None) contiguous in the activations' dtype (float32 or bfloat16); norm_weight,
    conv_w (d_inner, K), conv_b, dt_b, A (d_inner, N), D float32 and contiguous; conv_state (1, K-1, d_inner)
    in the activations' dtype, ssm_state (1, d_inner, N) float32, both contiguous.
    Returns (residual + pending, the block's output (1, d_model), new conv state, new ssm state).
    """
    lib, reason = _cached()
    if lib is None:
        raise CBuildError(reason)
    act = in_w.dtype
    d_model, d_inner, N, K = residual.shape[1], dt_w.shape[0], A.shape[1], conv_w.shape[1]
    res_out = torch.empty_like(residual)
    out = torch.empty(1, d_model, dtype=act)
    conv_out, ssm_out = torch.empty_like(conv_state), torch.empty_like(ssm_state)
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    p = BlockParams(ptr(residual), ptr(pending), ptr(res_out), ptr(out), ptr(norm_weight), ptr(in_w), ptr(in_b),
                    ptr(conv_w), ptr(conv_b), ptr(conv_state), ptr(conv_out), ptr(x_w), ptr(dt_w), ptr(dt_b), ptr(A),
                    ptr(D), ptr(ssm_state), ptr(ssm_out), ptr(out_w), ptr(out_b), d_model, d_inner, N,
                    dt_w.shape[1], K, TYPE_CODES[residual.dtype], TYPE_CODES[act], torch.get_num_threads(),
                    float(eps))  # fmt: skip
    if lib.mamba_block_step(ctypes.byref(p)) != 0:
        raise MemoryError("Mamba block step (C): could not allocate its scratch buffers")
    return res_out, out, conv_out, ssm_out


__all__ = ["mamba_block_step_cpu", "mamba_block_available", "TYPE_CODES", "MAX_STATE"]
