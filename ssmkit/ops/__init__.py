"""Functional ops (no nn.Module): one sub-package per op family.

Each op takes ``backend=`` ("auto", "reference", "torch", "c", "triton"); see
:mod:`ssmkit.ops.backends` for how "auto" resolves and how to query it.
"""

from .attention import ATTENTION_BACKENDS, attention, attention_step
from .backends import BackendUnavailableError, resolved_backend
from .conv import CONV1D_BACKENDS, causal_conv1d, causal_conv1d_step, fft_conv
from .norm import GATED_RMSNORM_BACKENDS, gated_rms_norm
from .scan import SCAN_BACKENDS, selective_scan, selective_scan_step
from .ssd import SSD_BACKENDS, ssd, ssd_step

__all__ = [
    "selective_scan", "selective_scan_step", "SCAN_BACKENDS",
    "ssd", "ssd_step", "SSD_BACKENDS",
    "causal_conv1d", "causal_conv1d_step", "fft_conv", "CONV1D_BACKENDS",
    "attention", "attention_step", "ATTENTION_BACKENDS",
    "gated_rms_norm", "GATED_RMSNORM_BACKENDS",
    "BackendUnavailableError", "resolved_backend",
]
