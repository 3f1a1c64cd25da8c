"""Projections of the decode step: ``linear(x, weight, bias)``, F.linear's contract.

Batch-1 decoding multiplies one row by each weight, and reading the weights is the whole cost:

* on CUDA, one 16-bit row with a weight of up to 32 MiB goes through a Triton matrix-vector kernel
  (``gemv_triton.py``), where cuBLAS's GEMM tiles took 1.1-2.2x as long on the H200
  (``benchmarks/gemv_gpu.py``);
* on the CPU, one float32 or bfloat16 row goes through a C kernel (``gemv_cpu.c``), which streamed the
  weights of mamba-130m's projections 1.8-3.4x and its LM head 1.6-4.1x faster than F.linear on a 2-core
  x86 machine (``benchmarks/gemv_cpu.py``; F.linear reads them at ~14-19 GB/s at one row).

Everything else is ``F.linear``. The kernels have no backward: a call that autograd would have to
differentiate takes ``F.linear``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._triton import no_grad_eager_call, no_grad_kernel_runs
from .gemv_c import TYPE_CODES, cpu_gemv_available, gemv_cpu

# Rows of x that take the kernel (more rows: F.linear; at 4 rows cuBLAS was as fast or faster on the H200 for
# half of the shapes), and the weights it takes: below 2^24 elements (32 MiB in 16-bit), where it was 1.1-2.2x
# faster than cuBLAS; at 2^24 (mamba-1.4b's in_proj) and above (an LM head) cuBLAS streams them 6-19% faster.
GEMV_MAX_ROWS = 1
GEMV_MAX_WEIGHTS = 2**24


def gemv_applies(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
    """Whether ``linear`` runs the Triton kernel: x (M <= GEMV_MAX_ROWS, K) and weight (N, K) (fewer than
    GEMV_MAX_WEIGHTS elements) on one CUDA device in the same 16-bit dtype, unit stride along K, no gradient to
    track, plain tensors (not traced)."""
    if x.dim() != 2 or x.shape[0] > GEMV_MAX_ROWS or weight.dim() != 2 or not x.is_cuda:
        return False
    if weight.numel() >= GEMV_MAX_WEIGHTS:
        return False
    if x.dtype not in (torch.float16, torch.bfloat16) or weight.dtype != x.dtype or weight.device != x.device:
        return False
    if x.stride(-1) != 1 or weight.stride(-1) != 1 or x.shape[1] != weight.shape[1] or x.shape[1] == 0:
        return False
    return no_grad_kernel_runs(x.device, x, weight, bias)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The Triton kernel itself, for a caller that has checked ``gemv_applies`` (or runs Triton's interpreter)."""
    from .gemv_triton import gemv as launch  # (imports Triton: only once it runs)

    return launch(x, weight, bias)


def cpu_gemv_applies(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
    """Whether ``linear`` runs the C kernel: x (1, K) and weight (N, K) on the CPU in the same dtype, float32 or
    bfloat16, unit stride along K, a contiguous bias of that dtype or none, no gradient to track, x a plain
    tensor (not traced), and a C compiler here."""
    if x.dim() != 2 or x.shape[0] != 1 or weight.dim() != 2 or x.device.type != "cpu" or weight.device.type != "cpu":
        return False
    if x.dtype not in TYPE_CODES or weight.dtype != x.dtype or x.shape[1] != weight.shape[1] or weight.numel() == 0:
        return False
    if x.stride(-1) != 1 or weight.stride(-1) != 1:
        return False
    if bias is not None and (bias.dtype != weight.dtype or bias.device.type != "cpu" or bias.dim() != 1
                             or bias.shape[0] != weight.shape[0] or bias.stride(0) != 1):  # fmt: skip
        return False
    return no_grad_eager_call(x, weight, bias) and cpu_gemv_available()  # (weights may be nn.Parameters)


def row_kernel(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], backend: str):
    """The matrix-vector kernel (``gemv`` or ``gemv_cpu``) that ``F.linear(x, weight, bias)`` takes under a
    layer's ``backend``, or None for F.linear: the Triton kernel under "auto" / "triton", the C kernel under
    "auto" / "c"."""
    if backend in ("auto", "triton") and gemv_applies(x, weight, bias):
        return gemv
    if backend in ("auto", "c") and cpu_gemv_applies(x, weight, bias):
        return gemv_cpu
    return None


def project(proj: nn.Module, x: torch.Tensor, backend: str, bias: bool = True) -> torch.Tensor:
    """``proj(x)`` (``bias=False``: without proj's bias). Where ``proj`` is a plain nn.Linear without hooks,
    one row takes ``row_kernel``'s kernel for ``backend``."""
    b = proj.bias if bias else None
    if type(proj) is nn.Linear and not (proj._forward_hooks or proj._forward_pre_hooks):
        kernel = row_kernel(x, proj.weight, b, backend)
        if kernel is not None:
            return kernel(x, proj.weight, b)
    return proj(x) if bias else F.linear(x, proj.weight)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; one row through the Triton kernel on CUDA (``gemv_applies``) or the C
    kernel on the CPU (``cpu_gemv_applies``)."""
    kernel = row_kernel(x, weight, bias, "auto")
    return F.linear(x, weight, bias) if kernel is None else kernel(x, weight, bias)


__all__ = ["linear", "project", "row_kernel", "gemv", "gemv_applies", "gemv_cpu", "cpu_gemv_applies", "GEMV_MAX_ROWS",
           "GEMV_MAX_WEIGHTS"]
