"""Attention through ``torch.nn.functional.scaled_dot_product_attention`` (SDPA).

SDPA picks a fused kernel (flash / memory-efficient on GPU, a fused CPU
kernel otherwise) and takes the grouped-query heads directly
(``enable_gqa=True``; before torch 2.5, which lacks it, the key/value heads are
repeated to H). ssmkit's layout (B, L, H, Dh) is transposed to SDPA's
(B, H, L, Dh) and back. Plain causal attention takes the ``is_causal`` path
(no mask materialised); anything else (positions, window, key padding) passes
the boolean mask. Queries that see no key output zero, as in the reference.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange

from ._mask import guard_empty_rows

# SDPA takes grouped-query heads directly (`enable_gqa`) from torch 2.5; older versions get
# the key/value heads repeated to H (query head h reads kv head h // (H / Hkv), as enable_gqa).
_SDPA_GQA = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)


def _sdpa(qh, kh, vh, gqa: bool, **kwargs) -> torch.Tensor:
    """SDPA on (B, H, L, Dh) queries and (B, Hkv, L, Dh) keys/values; ``gqa``: Hkv < H."""
    if gqa and not _SDPA_GQA:
        r = qh.shape[1] // kh.shape[1]
        kh, vh = kh.repeat_interleave(r, dim=1), vh.repeat_interleave(r, dim=1)
    elif gqa:
        kwargs["enable_gqa"] = True
    return F.scaled_dot_product_attention(qh, kh, vh, **kwargs)


def attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    """SDPA attention; same arguments and result as :func:`attention_reference`.

    Args:
        q: (B, Lq, H, Dh); k, v: (B, Lk, Hkv, Dh).
        mask: (B, Lq, Lk) bool or None; is_causal: used when mask is None.
    Returns:
        (B, Lq, H, Dh) in q's dtype.
    """
    qh = rearrange(q, "b l h d -> b h l d")  # (B, H, Lq, Dh)
    kh = rearrange(k, "b l h d -> b h l d")  # (B, Hkv, Lk, Dh)
    vh = rearrange(v, "b l h d -> b h l d")  # (B, Hkv, Lk, Dh)
    gqa = q.shape[2] != k.shape[2]
    if mask is None:
        out = _sdpa(qh, kh, vh, gqa, is_causal=is_causal, scale=scale)
        return rearrange(out, "b h l d -> b l h d")  # (B, Lq, H, Dh)
    mask, has_key = guard_empty_rows(mask)
    out = _sdpa(qh, kh, vh, gqa, attn_mask=mask[:, None], scale=scale)
    out = rearrange(out, "b h l d -> b l h d")  # (B, Lq, H, Dh)
    return out * has_key[:, :, None, None].to(out.dtype)
