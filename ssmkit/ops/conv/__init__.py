"""Convolutions along the sequence: causal depthwise conv1d (+ step) and FFT long convolution."""

from .fft import fft_conv

__all__ = ["fft_conv"]
