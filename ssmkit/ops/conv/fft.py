"""Long convolution by FFT: y = k * u along the sequence, per channel.

Used by S4/S4D (convolution mode, kernel length = sequence length) and Hyena
(implicit long filters). O(L log L) instead of O(L^2). The transforms run in
float32 at least (float64 inputs stay float64); the inputs are zero-padded to
2L so that the circular convolution equals the linear one.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..._checks import check_float, check_same_device, check_shape


def fft_conv(
    u: torch.Tensor,
    k: torch.Tensor,
    k_reverse: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Causal depthwise long convolution, optionally plus an anti-causal one.

    y[b, t, d] = sum_{s<=t} k[t-s, d] u[b, s, d]
               + sum_{s>t}  k_reverse[s-t-1, d] u[b, s, d]   (when k_reverse given)

    Args:
        u: (B, L, D) input.
        k: (Lk, D) causal kernel; positions beyond Lk are zero, Lk may exceed L.
        k_reverse: (Lr, D) anti-causal kernel for bidirectional layers, or None.
    Returns:
        y: (B, L, D) in u's dtype.
    """
    fn = "fft_conv"
    sizes: dict[str, int] = {}
    check_shape(fn, "u", u, ("B", "L", "D"), sizes)
    check_shape(fn, "k", k, ("Lk", "D"), sizes)
    check_float(fn, "u", u)
    check_float(fn, "k", k)
    if k_reverse is not None:
        check_float(fn, "k_reverse", k_reverse)
    check_same_device(fn, {"u": u, "k": k, "k_reverse": k_reverse})
    L = u.shape[1]
    if L == 0:
        return u.clone()  # (B, 0, D): nothing to convolve
    dtypes = (u.dtype, k.dtype) + ((k_reverse.dtype,) if k_reverse is not None else ())
    work = torch.float64 if torch.float64 in dtypes else torch.float32
    k = k[:L].to(work)
    if k_reverse is not None:
        check_shape(fn, "k_reverse", k_reverse, ("Lr", "D"), sizes)
        # The anti-causal part is a causal convolution of the time-reversed input,
        # shifted by one so that the current position is counted once (by k).
        kr = torch.zeros(L, k.shape[1], dtype=work, device=k.device)
        n = min(L - 1, k_reverse.shape[0])
        kr[1 : 1 + n] = k_reverse[:n].to(work)
    n_fft = 2 * L
    u_f = torch.fft.rfft(u.to(work), n=n_fft, dim=1)  # (B, L+1, D) complex
    y = torch.fft.irfft(u_f * torch.fft.rfft(k, n=n_fft, dim=0), n=n_fft, dim=1)[:, :L]  # (B, L, D)
    if k_reverse is not None:
        u_rev_f = torch.fft.rfft(u.to(work).flip(1), n=n_fft, dim=1)
        y = y + torch.fft.irfft(u_rev_f * torch.fft.rfft(kr, n=n_fft, dim=0), n=n_fft, dim=1)[:, :L].flip(1)
    return y.to(u.dtype)
