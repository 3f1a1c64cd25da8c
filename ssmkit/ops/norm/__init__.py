"""Normalisation ops: gated RMSNorm (Mamba-2's output norm), which is plain grouped RMSNorm without a gate.

    out = gated_rms_norm(y, weight, z=None, eps=1e-5, group_size=None,
                         norm_before_gate=False, backend="auto")

Backends (``GATED_RMSNORM_BACKENDS``): "reference" (float64, reference.py),
"torch" (PyTorch, gated_rms_norm.py), "triton" (fused GPU kernels,
gated_rms_norm_triton*.py). "auto" is "triton" on CUDA, "torch" elsewhere.

    residual, out = add_rms_norm(residual, y, weight, eps, out_dtype)   (add_rms_norm_applies first)

The decode step's residual add and RMSNorm in one Triton kernel (fused_add_norm.py).
"""

from .fused_add_norm import add_rms_norm, add_rms_norm_applies
from .gated_rms_norm import GATED_RMSNORM_BACKENDS, gated_rms_norm
from .reference import gated_rms_norm_reference

__all__ = ["gated_rms_norm", "gated_rms_norm_reference", "GATED_RMSNORM_BACKENDS", "add_rms_norm",
           "add_rms_norm_applies"]
