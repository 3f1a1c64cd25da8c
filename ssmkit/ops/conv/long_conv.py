"""Long depthwise convolution along the sequence with a backend choice (Hyena's h * z).

    y[b, t, d] = sum_{j>=0} k[j, d] u[b, t-j, d]                       (causal part)
               + sum_{j>=0} k_reverse[j, d] u[b, t+1+j, d]             (anti-causal part, optional)

with taps beyond the kernel's length taken as zero (a kernel shorter than the
sequence is a finite impulse response of that length).

Backends (table ``LONG_CONV_BACKENDS``): ``"reference"`` computes the sums
directly, one lag at a time, in float64 (O(L * Lk * D), the spec);
``"torch"`` is :func:`ssmkit.ops.conv.fft.fft_conv` (O(L log L * D)).
``"auto"`` resolves to ``"torch"``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..._checks import check_float, check_same_device, check_shape
from ..backends import OpBackends, always
from .fft import fft_conv


def _long_conv_reference(u: torch.Tensor, k: torch.Tensor, k_reverse: Optional[torch.Tensor]) -> torch.Tensor:
    """Direct sums in float64, lag by lag. u: (B, L, D), k: (Lk, D), k_reverse: (Lr, D) -> (B, L, D)."""
    L = u.shape[1]
    u64, k64 = u.double(), k.double()
    y = torch.zeros_like(u64)  # (B, L, D)
    for j in range(min(L, k.shape[0])):
        y[:, j:] += k64[j] * u64[:, : L - j]  # lag j: u[t - j] reaches y[t]
    if k_reverse is not None:
        kr64 = k_reverse.double()
        for j in range(min(L - 1, k_reverse.shape[0])):
            y[:, : L - 1 - j] += kr64[j] * u64[:, j + 1 :]  # u[t + 1 + j] reaches y[t]
    return y.to(u.dtype)


LONG_CONV_BACKENDS = OpBackends(
    op="long_conv",
    impls={"reference": _long_conv_reference, "torch": fft_conv},
    available={"reference": always, "torch": always},
)


def long_conv(
    u: torch.Tensor,
    k: torch.Tensor,
    k_reverse: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Causal (plus optional anti-causal) depthwise long convolution.

    Args:
        u: (B, L, D) input.
        k: (Lk, D) causal taps, ``k[0]`` on the current token.
        k_reverse: (Lr, D) anti-causal taps, ``k_reverse[0]`` on the next token, or None.
        backend: "auto", "reference" or "torch" (table ``LONG_CONV_BACKENDS``).
    Returns:
        (B, L, D) in u's dtype.
    """
    fn = "long_conv"
    sizes: dict[str, int] = {}
    check_shape(fn, "u", u, ("B", "L", "D"), sizes)
    check_shape(fn, "k", k, ("Lk", "D"), sizes)
    check_float(fn, "u", u)
    check_float(fn, "k", k)
    if k_reverse is not None:
        check_shape(fn, "k_reverse", k_reverse, ("Lr", "D"), sizes)
        check_float(fn, "k_reverse", k_reverse)
    device = check_same_device(fn, {"u": u, "k": k, "k_reverse": k_reverse})
    return LONG_CONV_BACKENDS.get(backend, device)(u, k, k_reverse)
