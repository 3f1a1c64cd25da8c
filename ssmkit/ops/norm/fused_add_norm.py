"""The decode step's residual add and RMSNorm as one Triton kernel (``add_rms_norm_triton.py``): when it runs.

``add_rms_norm_applies`` is checked by the caller (``models/backbone._add_norm``), which otherwise adds and
normalises as before (``_add``, ``RMSNorm``, a cast).
"""

from __future__ import annotations

from .._triton import no_grad_kernel_runs


def add_rms_norm_applies(residual, y, weight) -> bool:
    """Whether the decode step's fused residual add and RMSNorm (``add_rms_norm_triton.py``) can run: 2-D
    residual and y (or None) with unit stride along D on one CUDA device, D <= 16384, weight (D,)
    there, no gradient to track, plain tensors (not traced) and Triton available."""
    if residual.dim() != 2 or not residual.is_cuda or residual.stride(-1) != 1 or residual.shape[1] > 16384:
        return False
    if y is not None and (y.shape != residual.shape or y.device != residual.device or y.stride(-1) != 1):
        return False
    if weight.shape != residual.shape[1:] or weight.device != residual.device or weight.stride(-1) != 1:
        return False
    return no_grad_kernel_runs(residual.device, residual, y, weight)


def add_rms_norm(residual, y, weight, eps: float, out_dtype):
    """(residual + y, rms_norm(residual + y) * weight in ``out_dtype``) in one Triton kernel, for a caller that
    has checked :func:`add_rms_norm_applies` (y None: the residual as it is, and its norm)."""
    from .add_rms_norm_triton import add_rms_norm as launch  # (imports Triton: only once it runs)

    return launch(residual, y, weight, eps, out_dtype)
