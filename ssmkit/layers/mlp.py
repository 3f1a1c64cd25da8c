"""Channel-mixing sublayers: MLP, gated MLP (SwiGLU) and a mixture of experts.

These act on each token independently (no mixing along the sequence), so a
padded position never influences another one. Shapes: ``(..., D)`` in and out.

- :class:`MLP`: ``fc2(gelu(fc1(x)))`` (GPT-2 / Transformer).
- :class:`GatedMLP`: SwiGLU (Shazeer, 2020): ``fc1`` produces the value ``y``
  and the gate ``g`` side by side, ``fc2(y * silu(g))``.
- :class:`MoE`: top-k routing over ``n_experts`` gated MLPs (Switch
  Transformer, Mixtral, Jamba). Router probabilities ``p = softmax(W_r x)``;
  each token goes to its ``top_k`` experts, weighted by their probabilities
  renormalised over the chosen k. The load-balancing loss (Switch, eq. 4)
  ``aux_loss = n_experts * sum_i f_i * P_i`` -- ``f_i`` the fraction of routed
  (token, slot) pairs sent to expert i, ``P_i`` the mean router probability of
  expert i -- is stored on the module after each forward; it equals 1 for a
  perfectly balanced router and is differentiable through ``P_i``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


class MLP(nn.Module):
    """``fc2(gelu(fc1(x)))``; x: (..., D) -> (..., D). Default width 4 * D."""

    def __init__(self, d_model: int, d_intermediate: Optional[int] = None, *, bias: bool = False) -> None:
        super().__init__()
        check_positive_int("MLP", "d_model", d_model)
        d_intermediate = 4 * d_model if d_intermediate is None else check_positive_int("MLP", "d_intermediate", d_intermediate)
        self.d_model, self.d_intermediate = d_model, d_intermediate
        self.fc1 = nn.Linear(d_model, d_intermediate, bias=bias)
        self.fc2 = nn.Linear(d_intermediate, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D)."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class GatedMLP(nn.Module):
    """SwiGLU: ``fc2(y * silu(g))`` with ``(y, g) = fc1(x)``; x: (..., D) -> (..., D).

    Default width ``8/3 * D`` rounded up to ``multiple_of`` (same parameter
    count as a 4 * D MLP).
    """

    def __init__(
        self, d_model: int, d_intermediate: Optional[int] = None, *, multiple_of: int = 64, bias: bool = False
    ) -> None:
        super().__init__()
        check_positive_int("GatedMLP", "d_model", d_model)
        if d_intermediate is None:
            d_intermediate = _round_up(8 * d_model // 3, multiple_of)
        check_positive_int("GatedMLP", "d_intermediate", d_intermediate)
        self.d_model, self.d_intermediate = d_model, d_intermediate
        self.fc1 = nn.Linear(d_model, 2 * d_intermediate, bias=bias)
        self.fc2 = nn.Linear(d_intermediate, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D)."""
        y, gate = self.fc1(x).chunk(2, dim=-1)  # (..., F) each
        return self.fc2(y * F.silu(gate))


class MoE(nn.Module):
    """Top-k mixture of SwiGLU experts; x: (..., D) -> (..., D).

    Dispatch is index-based: each expert runs only on the tokens routed to it
    (no dense all-experts compute, no capacity limit). After each forward,
    ``self.aux_loss`` holds the load-balancing loss (a 0-dim float32 tensor,
    differentiable) and ``self.tokens_per_expert`` the (n_experts,) counts of
    routed (token, slot) pairs. Padded tokens (``mask`` False) are still
    computed but excluded from the loss and the counts.
    """

    def __init__(
        self,
        d_model: int,
        d_intermediate: Optional[int] = None,
        *,
        n_experts: int = 8,
        top_k: int = 2,
        multiple_of: int = 64,
    ) -> None:
        super().__init__()
        check_positive_int("MoE", "n_experts", n_experts)
        check_positive_int("MoE", "top_k", top_k)
        if top_k > n_experts:
            raise ValueError(f"MoE: `top_k`={top_k} must be <= `n_experts`={n_experts}")
        self.d_model, self.n_experts, self.top_k = d_model, n_experts, top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(
            GatedMLP(d_model, d_intermediate, multiple_of=multiple_of) for _ in range(n_experts)
        )
        self.aux_loss: Optional[torch.Tensor] = None
        self.tokens_per_expert: Optional[torch.Tensor] = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router decisions for tokens x: (T, D).

        Returns probs (T, E) float32, weights (T, k) float32 (renormalised over
        the chosen experts) and experts (T, k) int64.
        """
        probs = torch.softmax(self.router(x).float(), dim=-1)  # (T, E)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (T, k)
        weights = weights / weights.sum(-1, keepdim=True)
        return probs, weights, experts

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (..., D), mask: (...) bool or None -> (..., D)."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"MoE.forward: argument `x` expected last dimension D={self.d_model}, got {tuple(x.shape)}")
        shape = x.shape
        tokens = x.reshape(-1, self.d_model)  # (T, D)
        probs, weights, experts = self.route(tokens)
        T, k = experts.shape
        # Sort the T*k (token, slot) pairs by expert: each expert gets one contiguous run.
        flat_experts = experts.reshape(-1)  # (T*k,)
        order = flat_experts.argsort(stable=True)  # (T*k,)
        token_of = torch.div(order, k, rounding_mode="floor")  # (T*k,) int64
        counts = torch.bincount(flat_experts, minlength=self.n_experts)  # (E,)
        out = torch.zeros_like(tokens)  # (T, D)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            idx = token_of[start : start + n]  # (n,)
            w = weights.reshape(-1)[order[start : start + n]]  # (n,)
            out.index_add_(0, idx, (self.experts[e](tokens[idx]).float() * w[:, None]).to(out.dtype))
            start += n
        self._store_aux(probs, experts, None if mask is None else mask.reshape(-1))
        return out.reshape(shape)  # (..., D)

    def _store_aux(self, probs: torch.Tensor, experts: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        """Switch load-balancing loss over the real tokens: E * sum_i f_i * P_i."""
        if mask is not None:
            probs, experts = probs[mask], experts[mask]  # (T', E), (T', k)
        n_routed = max(experts.numel(), 1)
        counts = torch.bincount(experts.reshape(-1), minlength=self.n_experts)  # (E,)
        frac = counts.float() / n_routed  # f_i, (E,)
        mean_prob = probs.mean(0) if probs.shape[0] > 0 else probs.sum(0)  # P_i, (E,)
        self.tokens_per_expert = counts
        self.aux_loss = self.n_experts * (frac * mean_prob).sum()
