"""Normalisation ops: gated RMSNorm (Mamba-2's output norm), which is plain grouped RMSNorm without a gate.

    out = gated_rms_norm(y, weight, z=None, eps=1e-5, group_size=None,
                         norm_before_gate=False, backend="auto")

Backends (``GATED_RMSNORM_BACKENDS``): "reference" (float64, reference.py),
"torch" (PyTorch, gated_rms_norm.py), "triton" (fused GPU kernels,
gated_rms_norm_triton*.py). "auto" is "triton" on CUDA, "torch" elsewhere.
"""

from .gated_rms_norm import GATED_RMSNORM_BACKENDS, gated_rms_norm
from .reference import gated_rms_norm_reference

__all__ = ["gated_rms_norm", "gated_rms_norm_reference", "GATED_RMSNORM_BACKENDS"]


def add_rms_norm_applies(residual, y, weight) -> bool:
    """Whether the decode step's fused residual add and RMSNorm (``add_rms_norm_triton.py``) can run: 2-D
    residual and y (or None) with unit stride along D on one CUDA device, D <= 16384, weight (D,)
    there, no gradient to track, plain tensors (not traced) and Triton available."""
    import torch

    from .._triton import eager_call, triton_unavailable_reason

    if residual.dim() != 2 or not residual.is_cuda or residual.stride(-1) != 1 or residual.shape[1] > 16384:
        return False
    if y is not None and (y.shape != residual.shape or y.device != residual.device or y.stride(-1) != 1):
        return False
    if weight.shape != residual.shape[1:] or weight.device != residual.device or weight.stride(-1) != 1:
        return False
    tensors = (residual, weight) if y is None else (residual, y, weight)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return eager_call(residual) and triton_unavailable_reason(residual.device) is None


def add_rms_norm(residual, y, weight, eps: float, out_dtype):
    """(residual + y, rms_norm(residual + y) * weight in ``out_dtype``) in one Triton kernel, for a caller that
    has checked :func:`add_rms_norm_applies` (y None: the residual as it is, and its norm)."""
    from .add_rms_norm_triton import add_rms_norm as launch  # (imports Triton: only once it runs)

    return launch(residual, y, weight, eps, out_dtype)


__all__ += ["add_rms_norm", "add_rms_norm_applies"]
