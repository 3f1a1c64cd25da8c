"""Sequence classifier: embedding, backbone, mask-aware pooling, linear head.

    h = embedding(input_ids)                # (B, L, D)   (or given inputs_embeds)
    h, _ = backbone(h, mask=mask)           # (B, L, D)
    p = pool(h, mask)                       # (B, D): mean over real tokens, or the last real token
    logits = head(p)                        # (B, n_classes)

For non-causal tasks (Long Range Arena, DNA, ...) build the config with
``bidirectional=True``: S4/S4D/Hyena layers get their anti-causal kernel and
attention drops its causal mask. Padding may be on either side; pooling
only looks at positions where ``mask`` is True.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._checks import check_choice, check_positive_int
from .backbone import Backbone, check_mask
from .config import ModelConfig
from .lm import check_ids, init_lm_weights


def masked_mean(h: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of h (B, L, D) over positions where mask (B, L) is True -> (B, D)."""
    if mask is None:
        return h.mean(1)
    count = mask.sum(1, keepdim=True).clamp(min=1).to(h.dtype)  # (B, 1)
    return h.masked_fill(~mask[..., None], 0.0).sum(1) / count  # (B, D)


def last_real(h: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """h (B, L, D) at the last position where mask (B, L) is True -> (B, D)."""
    if mask is None:
        return h[:, -1]
    L = mask.shape[1]
    idx = (L - 1) - mask.flip(1).to(torch.int64).argmax(1)  # (B,) last True index
    return h[torch.arange(h.shape[0], device=h.device), idx]


class SequenceClassifier(nn.Module):
    """``forward(input_ids (B, L), mask=None) -> logits (B, n_classes)``.

    Args:
        config: the backbone's config (``vocab_size`` sizes the embedding).
        n_classes: number of classes.
        pooling: "mean" (over real tokens) or "last" (the last real token).
    """

    def __init__(self, config: ModelConfig, n_classes: int, pooling: str = "mean") -> None:
        super().__init__()
        fn = "SequenceClassifier"
        if not isinstance(config, ModelConfig):
            raise TypeError(f"{fn}: argument `config` must be a ModelConfig, got {type(config).__name__}")
        check_positive_int(fn, "n_classes", n_classes)
        check_choice(fn, "pooling", pooling, ("mean", "last"))
        self.config, self.n_classes, self.pooling = config, n_classes, pooling
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.backbone = Backbone(config)
        self.head = nn.Linear(config.d_model, n_classes)
        init_lm_weights(self.embedding, config.init_std)

    def forward(self, input_ids: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids: (B, L) int (or inputs_embeds: (B, L, D)), mask: (B, L) bool -> logits (B, n_classes)."""
        fn = "SequenceClassifier.forward"
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(f"{fn}: give exactly one of `input_ids` (B, L) or `inputs_embeds` (B, L, D)")
        if input_ids is not None:
            check_ids(fn, "input_ids", input_ids, 2, self.config.vocab_size)
            h = self.embedding(input_ids)  # (B, L, D)
        else:
            h = inputs_embeds
        check_mask(fn, mask, tuple(h.shape[:2]), h.device)
        if mask is not None and not bool(mask.any(1).all()):
            raise ValueError(f"{fn}: argument `mask` has a row with no real token (all False)")
        h, _ = self.backbone(h, mask=mask)  # (B, L, D)
        pooled = masked_mean(h, mask) if self.pooling == "mean" else last_real(h, mask)  # (B, D)
        return self.head(pooled)
