"""Softmax attention written out in float64: the spec the fast paths are tested against.

    S = scale * Q K^T                (scale = 1 / sqrt(Dh) by default)
    P = softmax(S masked to -inf where a key is not visible)
    O = P V

Grouped-query attention: the H query heads form Hkv groups of H / Hkv
consecutive heads; group g (heads g*r .. g*r + r - 1, r = H / Hkv) reads
key/value head g. Queries that see no key at all output zero.
"""

from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange

from ._mask import guard_empty_rows


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    """Explicit attention in float64.

    Args:
        q: (B, Lq, H, Dh); k, v: (B, Lk, Hkv, Dh), H divisible by Hkv.
        mask: (B, Lq, Lk) bool (True = may attend) or None.
        is_causal: with ``mask=None``, apply the causal mask (Lq == Lk).
        scale: multiplies the scores.
    Returns:
        (B, Lq, H, Dh) in q's dtype.
    """
    Lq, Lk, Hkv = q.shape[1], k.shape[1], k.shape[2]
    q64 = rearrange(q.double(), "b q (g r) d -> b g r q d", g=Hkv)  # (B, Hkv, r, Lq, Dh)
    k64 = rearrange(k.double(), "b k g d -> b g k d")  # (B, Hkv, Lk, Dh)
    v64 = rearrange(v.double(), "b k g d -> b g k d")  # (B, Hkv, Lk, Dh)
    scores = torch.einsum("bgrqd,bgkd->bgrqk", q64, k64) * scale  # (B, Hkv, r, Lq, Lk)
    if mask is None and is_causal:
        mask = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril()[None]  # (1, Lq, Lk)
    has_key = None
    if mask is not None:
        mask, has_key = guard_empty_rows(mask)
        scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, Hkv, r, Lq, Lk)
    out = torch.einsum("bgrqk,bgkd->bgrqd", probs, v64)  # (B, Hkv, r, Lq, Dh)
    if has_key is not None:
        out = out * has_key[:, None, None, :, None]
    return rearrange(out, "b g r q d -> b q (g r) d").to(q.dtype)  # (B, Lq, H, Dh)
