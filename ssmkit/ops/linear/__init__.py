"""Projections of the decode step: ``linear(x, weight, bias)``, F.linear's contract.

One row on CUDA in 16-bit (batch-1 decoding) with a weight of up to 32 MiB goes through a Triton
matrix-vector kernel (``gemv_triton.py``), where cuBLAS's GEMM tiles took 1.1-2.2x as long on the H200
(``benchmarks/gemv_gpu.py``); everything else is ``F.linear``.
The kernel has no backward: a call that autograd would have to differentiate takes ``F.linear``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._triton import no_grad_kernel_runs

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


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; one 16-bit row on CUDA through the Triton kernel (``gemv_applies``)."""
    if gemv_applies(x, weight, bias):
        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


__all__ = ["linear", "gemv", "gemv_applies", "GEMV_MAX_ROWS", "GEMV_MAX_WEIGHTS"]
