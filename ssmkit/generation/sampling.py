"""Choosing the next token from logits: small pure functions (gpt-fast style).

All take ``logits`` (B, V) and return new logits or ids (B,) int64; nothing is
modified in place. Filters set excluded entries to -inf.

- :func:`greedy`: argmax.
- :func:`apply_repetition_penalty`: CTRL (Keskar et al. 2019): a logit of an
  already seen token is divided by ``penalty`` when positive, multiplied
  when negative (penalty > 1 discourages repeats).
- :func:`top_k_filter`: keep the k largest logits (exactly k, ties broken by index).
- :func:`top_p_filter`: nucleus (Holtzman et al. 2020): keep the smallest set of
  most likely tokens whose probability mass reaches ``p``.
- :func:`sample`: temperature, then top-k, then top-p, then a draw from the
  softmax with an optional seeded ``torch.Generator``; temperature 0 is greedy.
"""

from __future__ import annotations

from typing import Optional

import torch


def _check_logits(fn: str, logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{fn}: argument `logits` must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"{fn}: argument `logits` expected a float tensor of shape (B, V), "
                         f"got {tuple(logits.shape)} {logits.dtype}")


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """logits: (B, V) -> ids (B,) int64, the most likely token of each row."""
    _check_logits("greedy", logits)
    return logits.argmax(-1)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits: (B, V), seen: (B, V) bool (tokens already in the sequence) -> (B, V)."""
    fn = "apply_repetition_penalty"
    _check_logits(fn, logits)
    if not penalty > 0:
        raise ValueError(f"{fn}: argument `penalty` must be > 0, got {penalty}")
    if seen.shape != logits.shape or seen.dtype != torch.bool:
        raise ValueError(f"{fn}: argument `seen` expected a bool tensor of shape {tuple(logits.shape)}, "
                         f"got {tuple(seen.shape)} {seen.dtype}")
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of each row of logits (B, V), -inf elsewhere."""
    fn = "top_k_filter"
    _check_logits(fn, logits)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{fn}: argument `k` must be an int >= 1, got {k!r}")
    if k >= logits.shape[-1]:
        return logits
    idx = logits.topk(k, dim=-1).indices  # (B, k)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep, per row of logits (B, V), the most likely tokens until their mass reaches p; -inf elsewhere."""
    fn = "top_p_filter"
    _check_logits(fn, logits)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"{fn}: argument `p` must be in (0, 1], got {p}")
    if p == 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= p  # the first token is always kept (mass_before = 0 < p)
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """logits: (B, V) -> ids (B,) int64. temperature 0 means greedy (top_k / top_p then change nothing)."""
    fn = "sample"
    _check_logits(fn, logits)
    if not temperature >= 0:
        raise ValueError(f"{fn}: argument `temperature` must be >= 0, got {temperature}")
    if temperature == 0:
        return greedy(logits)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator)[:, 0].to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
