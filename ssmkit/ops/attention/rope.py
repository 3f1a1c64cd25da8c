"""Rotary position embedding (RoPE; Su et al., "RoFormer", 2021).

Channel pairs of a head are rotated by an angle proportional to the token's
position, so that the score q_m . k_n depends on the positions only through
m - n. With ``R = rot_dim`` rotated channels (R = Dh for full RoPE, less for
partial RoPE; the other Dh - R channels pass through unchanged) and the
half-split pairing of GPT-NeoX / Llama (channel a pairs with a + R/2):

    theta_a = base ** (-2a / R),            a = 0 .. R/2 - 1
    x'_a       = x_a cos(m theta_a) - x_{a+R/2} sin(m theta_a)
    x'_{a+R/2} = x_{a+R/2} cos(m theta_a) + x_a sin(m theta_a)

Angles are computed in float64 from int64 positions (a position of a million
times theta_0 = 1 would lose ~0.06 rad in float32), then cos/sin are rounded to
float32 (float64 for float64 models). Layout (B, L, H, Dh), sequence-major.
"""

from __future__ import annotations

from typing import Union

import torch


def rope_positions(batch: int, length: int, offset: Union[int, torch.Tensor] = 0, device=None) -> torch.Tensor:
    """Positions ``offset + arange(length)`` per sample: (B, L) int64.

    ``offset`` is an int or a (B,) int tensor (tokens already in each sample's cache).
    """
    ar = torch.arange(length, device=device, dtype=torch.int64)  # (L,)
    if isinstance(offset, torch.Tensor):
        return offset.to(torch.int64).reshape(-1, 1) + ar  # (B, L)
    return (ar + offset).expand(batch, length)  # (B, L)


def rope_cos_sin(
    positions: torch.Tensor, rot_dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for integer ``positions``.

    Args:
        positions: (...) int tensor, e.g. (L,) or (B, L).
        rot_dim: R, the number of rotated channels (even).
        base: the RoPE base.
        dtype: of the tables (float32; float64 for a float64 model).
    Returns:
        cos, sin: (..., R/2) in ``dtype``.
    """
    if rot_dim % 2:
        raise ValueError(f"rope_cos_sin: argument `rot_dim` must be even, got {rot_dim}")
    inv_freq = base ** (-torch.arange(0, rot_dim, 2, dtype=torch.float64, device=positions.device) / rot_dim)  # (R/2,)
    angles = positions.to(torch.float64)[..., None] * inv_freq  # (..., R/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first R channels of every head of ``x``.

    Args:
        x: (B, L, H, Dh).
        cos, sin: (B, L, R/2) or (L, R/2) from :func:`rope_cos_sin`, R <= Dh.
    Returns:
        (B, L, H, Dh) in x's dtype (rotation computed in float32 at least).
    """
    half = cos.shape[-1]
    R = 2 * half
    if x.dim() != 4 or R > x.shape[-1] or cos.shape[-2] != x.shape[1]:
        raise ValueError(
            f"apply_rope: expected x (B, L, H, Dh) with L={cos.shape[-2]} and Dh >= {R}, got {tuple(x.shape)}"
        )
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    c = cos.to(work).unsqueeze(-2)  # (B or 1, L, 1, R/2)
    s = sin.to(work).unsqueeze(-2)  # (B or 1, L, 1, R/2)
    x1, x2 = x[..., :half].to(work), x[..., half:R].to(work)  # (B, L, H, R/2) each
    rotated = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)  # (B, L, H, R)
    return torch.cat([rotated, x[..., R:]], dim=-1) if R < x.shape[-1] else rotated  # (B, L, H, Dh)
