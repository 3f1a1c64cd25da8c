"""Softmax attention: float64 reference, SDPA path, rotary embeddings, KV-cache step.

Layout (B, L, H, Dh) throughout (sequence-major, heads before channels);
keys/values may have fewer heads Hkv (grouped-query attention, H % Hkv == 0).

Backends (table ``ATTENTION_BACKENDS``): ``"reference"`` (explicit softmax in
float64, :mod:`.reference`) and ``"torch"`` (``scaled_dot_product_attention``,
:mod:`.sdpa`); ``"auto"`` resolves to ``"torch"``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..._checks import check_float, check_positive_int, check_same_device, check_shape
from ..backends import OpBackends, always
from ._mask import attention_mask
from .reference import attention_reference
from .rope import apply_rope, rope_cos_sin, rope_positions
from .sdpa import attention_sdpa
from .step import attention_step

ATTENTION_BACKENDS = OpBackends(
    op="attention",
    impls={"reference": attention_reference, "torch": attention_sdpa},
    available={"reference": always, "torch": always},
)


def _check_positions(fn: str, name: str, pos: Optional[torch.Tensor], length_dim: str, sizes: dict[str, int]) -> None:
    if pos is None:
        return
    check_shape(fn, name, pos, [("B", length_dim), (length_dim,)], sizes)
    if pos.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{fn}: argument `{name}` must be an int32/int64 tensor of positions, got {pos.dtype}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    window: Optional[int] = None,
    key_mask: Optional[torch.Tensor] = None,
    q_pos: Optional[torch.Tensor] = None,
    k_pos: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Multi-head softmax attention with causal / sliding-window / key-padding masks.

    Query i may see key j when k_pos[j] <= q_pos[i] (causal), q_pos[i] - window
    < k_pos[j] (window; also k_pos[j] < q_pos[i] + window when not causal) and
    key_mask[b, j]. Queries that see no key output zero.

    Args:
        q: (B, Lq, H, Dh); k, v: (B, Lk, Hkv, Dh), H divisible by Hkv.
        causal: mask future keys.
        window: sliding-window length W (a causal query sees itself and W-1 earlier tokens), or None.
        key_mask: (B, Lk) bool, True for real keys, or None.
        q_pos, k_pos: (B, Lq) / (B, Lk) (or unbatched) int positions; default: the
            queries are the last Lq keys, ``k_pos = arange(Lk)``.
        scale: score scale, default 1 / sqrt(Dh).
        backend: "auto", "reference" or "torch" (table ``ATTENTION_BACKENDS``).
    Returns:
        (B, Lq, H, Dh) in q's dtype.
    """
    fn = "attention"
    sizes: dict[str, int] = {}
    check_shape(fn, "q", q, ("B", "Lq", "H", "Dh"), sizes)
    check_shape(fn, "k", k, ("B", "Lk", "Hkv", "Dh"), sizes)
    check_shape(fn, "v", v, ("B", "Lk", "Hkv", "Dh"), sizes)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(fn, name, t)
    if sizes["H"] % sizes["Hkv"]:
        raise ValueError(f"{fn}: the H={sizes['H']} query heads must be divisible by the Hkv={sizes['Hkv']} key/value heads")
    if key_mask is not None:
        check_shape(fn, "key_mask", key_mask, ("B", "Lk"), sizes)
        if key_mask.dtype != torch.bool:
            raise TypeError(f"{fn}: argument `key_mask` must have dtype bool (True = real key), got {key_mask.dtype}")
    _check_positions(fn, "q_pos", q_pos, "Lq", sizes)
    _check_positions(fn, "k_pos", k_pos, "Lk", sizes)
    if window is not None:
        check_positive_int(fn, "window", window)
    device = check_same_device(fn, {"q": q, "k": k, "v": v, "key_mask": key_mask, "q_pos": q_pos, "k_pos": k_pos})
    impl = ATTENTION_BACKENDS.get(backend, device)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    B, Lq, Lk = q.shape[0], q.shape[1], k.shape[1]
    plain = key_mask is None and q_pos is None and k_pos is None and window is None and (not causal or Lq == Lk)
    if plain:  # no mask to build: SDPA's is_causal path
        return impl(q, k, v, None, causal, scale)
    mask = attention_mask(
        B, Lq, Lk, device, causal=causal, window=window, key_mask=key_mask, q_pos=q_pos, k_pos=k_pos
    )  # (B, Lq, Lk)
    return impl(q, k, v, mask, False, scale)


__all__ = [
    "ATTENTION_BACKENDS",
    "attention",
    "attention_reference",
    "attention_sdpa",
    "attention_step",
    "apply_rope",
    "rope_cos_sin",
    "rope_positions",
]
