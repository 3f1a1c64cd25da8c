"""One decoding step of attention against a preallocated KV cache.

The new token's key and value have already been written into the cache; the
query attends to every cache slot marked valid. Causality and the sliding
window are properties of what the cache holds (only past tokens; a ring
buffer of ``window`` slots holds exactly the window), so no positions are
needed here. The cost is O(S * H * Dh) for a cache of S slots, whatever the
number of valid ones (static shapes, friendly to graph capture).
"""

from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange

from ..._checks import check_float, check_same_device, check_shape


def attention_step(
    q_t: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    key_mask: torch.Tensor,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Attention of one query per sample over a KV cache.

    Args:
        q_t: (B, H, Dh) the new token's queries (rotary already applied).
        k_cache, v_cache: (B, S, Hkv, Dh), H divisible by Hkv.
        key_mask: (B, S) bool, True for slots holding a token the query may see.
        scale: score scale, default 1 / sqrt(Dh).
    Returns:
        (B, H, Dh) in q_t's dtype; computed in float32 at least. A query with no
        valid slot gets zero.
    """
    fn = "attention_step"
    sizes: dict[str, int] = {}
    check_shape(fn, "q_t", q_t, ("B", "H", "Dh"), sizes)
    check_shape(fn, "k_cache", k_cache, ("B", "S", "Hkv", "Dh"), sizes)
    check_shape(fn, "v_cache", v_cache, ("B", "S", "Hkv", "Dh"), sizes)
    check_shape(fn, "key_mask", key_mask, ("B", "S"), sizes)
    for name, t in (("q_t", q_t), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_float(fn, name, t)
    if key_mask.dtype != torch.bool:
        raise TypeError(f"{fn}: argument `key_mask` must have dtype bool, got {key_mask.dtype}")
    if sizes["H"] % sizes["Hkv"]:
        raise ValueError(f"{fn}: the {sizes['H']} query heads must be divisible by the {sizes['Hkv']} key/value heads")
    check_same_device(fn, {"q_t": q_t, "k_cache": k_cache, "v_cache": v_cache, "key_mask": key_mask})
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    work = torch.float64 if q_t.dtype == torch.float64 else torch.float32
    q = rearrange(q_t.to(work), "b (g r) d -> b g r d", g=sizes["Hkv"])  # (B, Hkv, r, Dh)
    scores = torch.einsum("bgrd,bsgd->bgrs", q, k_cache.to(work)) * scale  # (B, Hkv, r, S)
    has_key = key_mask.any(-1)  # (B,)
    visible = key_mask | ~has_key[:, None]  # (B, S)
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, Hkv, r, S)
    out = torch.einsum("bgrs,bsgd->bgrd", probs, v_cache.to(work)) * has_key[:, None, None, None]
    return rearrange(out, "b g r d -> b (g r) d").to(q_t.dtype)  # (B, H, Dh)
