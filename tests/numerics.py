"""Error measure and per-dtype tolerances used by every comparison test."""

from __future__ import annotations

import torch

# Relative error ||out - ref|| / ||ref|| allowed for a fast path against the
# float64 reference, per input dtype. float32 arithmetic lands far below 1e-4;
# bfloat16 has an 8-bit mantissa (~4e-3 per rounding).
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, computed in float64; NaN anywhere gives inf."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    if out64.shape != ref64.shape:
        raise AssertionError(f"shape mismatch: {tuple(out64.shape)} vs {tuple(ref64.shape)}")
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item()
    assert denom > 0, "reference is all zeros: the comparison would prove nothing"
    return (out64 - ref64).norm().item() / denom


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "output") -> None:
    err = rel_err(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > tolerance {tol:.1e}"


def randn(*shape, gen: torch.Generator, dtype=torch.float32, scale: float = 1.0, requires_grad=False) -> torch.Tensor:
    """Fresh standard-normal tensor from ``gen`` (CPU), cast to ``dtype``."""
    x = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    return x.requires_grad_(requires_grad)


def projection_weights(shape, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """Random float64 weights for a test's loss sum(out * w), every one a bfloat16 value.

    ``out.double()``'s backward rounds the loss's gradient to ``out``'s dtype. With these weights a
    16-bit output receives them exactly, as the float64 reference's output does, so both differentiate
    the same loss. With unrounded weights they did not, and a gradient that sums with cancellation
    (the SSD's ∂A) missed its reference by up to 11-17% on about one draw in 150-1350: a difference in
    what the two received, not in how they computed."""
    w = torch.randn(shape, generator=gen, dtype=torch.float64, device=gen.device)  # (on the generator's device)
    return w.to(torch.bfloat16).double().to(device)
