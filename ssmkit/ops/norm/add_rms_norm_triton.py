"""The decode step's residual add and RMSNorm as one Triton kernel.

Between two mixers a decode step adds the mixer's output y (16-bit) into the float32 residual stream, then
normalises the new residual for the next block and casts it to the weights' dtype: three kernels
(``_add``, the RMSNorm, the cast) of 1.2-2.8 µs each at batch 1 on the H200. Here one program per row
reads the residual and y, writes the sum back as the new residual and the normalised row in the
output dtype. The arithmetic is the unfused one's: the sum in float32 (widening is exact), the mean
square in float32, one rounding to the output dtype.
"""

import torch
import triton
import triton.language as tl

from .._pdl import chain_launch, release_dependents, wait_inputs
from .._triton import LAUNCH, next_pow2


@triton.jit
def add_rms_norm_kernel(
    r_ptr, y_ptr, w_ptr, r_out_ptr, out_ptr, D, s_r, s_y, s_ro, s_o, eps,
    HAS_Y: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Grid (rows,): r' = r + y (``HAS_Y``; else r' = r, not stored), out = r' / sqrt(mean(r'^2) + eps) * w.
    r, r' float32 (or any float dtype: r' in r_out's), y and w any float dtype, out in its own dtype; D <= BLOCK.
    ``PDL``: w is loaded before waiting for the kernel before (``ssmkit/ops/_pdl.py``)."""
    if PDL:
        release_dependents()
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    m = c < D
    w = tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32)
    if PDL:
        wait_inputs()
    r = tl.load(r_ptr + row * s_r + c, mask=m, other=0.0).to(tl.float32)
    if HAS_Y:
        r += tl.load(y_ptr + row * s_y + c, mask=m, other=0.0).to(tl.float32)
        r = r.to(r_out_ptr.dtype.element_ty)  # (normalised as stored: in the residual's dtype)
        tl.store(r_out_ptr + row * s_ro + c, r, mask=m)
        r = r.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=0) / D + eps)
    tl.store(out_ptr + row * s_o + c, (r * rstd * w).to(out_ptr.dtype.element_ty), mask=m)


def add_rms_norm(residual, y, weight, eps: float, out_dtype):
    """(residual + y, rms_norm(residual + y) * weight in ``out_dtype``) for residual (B, D), y (B, D) or None
    (then the residual is returned as it is), weight (D,), each with unit stride along D (the caller checks
    this, the devices and D <= 16384: one program holds a row)."""
    B, D = residual.shape
    out = torch.empty((B, D), dtype=out_dtype, device=residual.device)
    r_out = torch.empty_like(residual) if y is not None else residual
    if B == 0:
        return r_out, out
    blk = max(16, next_pow2(D))
    add_rms_norm_kernel[(B,)](
        residual, y if y is not None else residual, weight, r_out, out, D, residual.stride(0),
        (y if y is not None else residual).stride(0), r_out.stride(0), out.stride(0), eps,
        HAS_Y=y is not None, BLOCK=blk, num_warps=max(1, min(16, blk // 256)), **chain_launch(residual.device),
        **LAUNCH,
    )  # fmt: skip
    return r_out, out
