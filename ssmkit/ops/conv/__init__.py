"""Convolutions along the sequence: causal depthwise conv1d (+ step) and FFT long convolution."""

from .causal_conv1d import CONV1D_BACKENDS, CONV1D_STEP_BACKENDS, causal_conv1d, causal_conv1d_step
from .fft import fft_conv

__all__ = ["CONV1D_BACKENDS", "CONV1D_STEP_BACKENDS", "causal_conv1d", "causal_conv1d_step", "fft_conv"]
