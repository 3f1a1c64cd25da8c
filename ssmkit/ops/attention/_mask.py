"""Which keys each query may see: the boolean attention mask shared by the backends.

Positions are absolute token indices. Query i (at position ``q_pos[i]``) may
see key j (at ``k_pos[j]``) when all of these hold:

- causal:     k_pos[j] <= q_pos[i]
- window W:   q_pos[i] - W < k_pos[j]   (and k_pos[j] < q_pos[i] + W when not causal),
              i.e. a causal query sees itself and the W-1 tokens before it;
- key_mask:   key_mask[b, j] is True (a real token, not padding or an empty cache slot).

Defaults: ``k_pos = arange(Lk)`` and ``q_pos = arange(Lq) + (Lk - Lq)``, the
KV-cache convention (the queries are the last Lq of the keys).
"""

from __future__ import annotations

from typing import Optional

import torch


def default_positions(Lq: int, Lk: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_pos (1, Lq), k_pos (1, Lk)) int64: queries are the last Lq keys."""
    k_pos = torch.arange(Lk, device=device, dtype=torch.int64)[None]  # (1, Lk)
    q_pos = torch.arange(Lq, device=device, dtype=torch.int64)[None] + (Lk - Lq)  # (1, Lq)
    return q_pos, k_pos


def attention_mask(
    batch: int,
    Lq: int,
    Lk: int,
    device: torch.device,
    *,
    causal: bool,
    window: Optional[int],
    key_mask: Optional[torch.Tensor],
    q_pos: Optional[torch.Tensor],
    k_pos: Optional[torch.Tensor],
) -> torch.Tensor:
    """The (B, Lq, Lk) bool mask, True where query i may attend to key j.

    Args:
        q_pos: (B, Lq) or (Lq,) int positions, or None for the default.
        k_pos: (B, Lk) or (Lk,) int positions, or None for the default.
        key_mask: (B, Lk) bool, or None (all keys valid).
    """
    dq, dk = default_positions(Lq, Lk, device)
    qp = dq if q_pos is None else q_pos.reshape(-1, Lq)  # (B or 1, Lq)
    kp = dk if k_pos is None else k_pos.reshape(-1, Lk)  # (B or 1, Lk)
    diff = qp[:, :, None] - kp[:, None, :]  # (B or 1, Lq, Lk): how far the key lies in the past
    allowed = torch.ones_like(diff, dtype=torch.bool)
    if causal:
        allowed &= diff >= 0
    if window is not None:
        allowed &= diff < window
        if not causal:
            allowed &= diff > -window
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, :]
    return allowed.expand(batch, Lq, Lk)  # (B, Lq, Lk)


def guard_empty_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Let queries that see no key attend to every key, and say which they were.

    A softmax over an empty set is undefined (NaN, which would poison the
    gradients too); such queries (padding before the first real token) get an
    output of zero instead: callers multiply their output by ``has_key``.

    Returns:
        mask: (B, Lq, Lk) with empty rows filled; has_key: (B, Lq) bool.
    """
    has_key = mask.any(-1)  # (B, Lq)
    return mask | ~has_key[..., None], has_key
