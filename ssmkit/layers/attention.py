"""Multi-head attention: grouped-query heads, rotary positions, a preallocated KV cache.

Symbols (Vaswani et al., 2017; GQA: Ainslie et al., 2023; RoPE: Su et al., 2021):
``q_proj``/``k_proj``/``v_proj`` give Q (B, L, H, Dh) and K, V (B, L, Hkv, Dh);
RoPE rotates the first ``rot_dim = rope_fraction * Dh`` channels of Q and K by
their positions; O = softmax(Q K^T / sqrt(Dh) + mask) V; ``o_proj`` maps
(B, L, H*Dh) back to (B, L, D).

State (:class:`AttentionState`) is the KV cache, allocated once with S slots
(S = ``max_seq_len``, or ``window`` for a sliding window, where the cache is a
ring buffer: token at position p lives in slot p % window). **The cache is
reused and mutated in place**: ``forward(x, state)`` and ``step(x_t, state)``
write the new keys/values into ``state`` and return that same object (copy it
with ``state.map(torch.clone)`` to keep a snapshot). ``forward(x)`` without a
state returns a freshly filled cache. Keys are cached after rotation.

Padding (``mask``, True = real token): positions count real tokens only (a
left-padded prompt gets the same positions as the unpadded one), padded keys
are never attended to and never written to the cache, so the outputs at real
positions and the final state equal those of the unpadded sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from einops import rearrange
from torch import nn

from .._checks import check_choice, check_divisible, check_positive_int
from ..ops.attention import ATTENTION_BACKENDS, apply_rope, attention, attention_step, rope_cos_sin
from ..ops.backends import BACKEND_NAMES
from .base import Mixer, MixerState


@dataclasses.dataclass
class AttentionState(MixerState):
    """The KV cache (preallocated, mutated in place by forward and step)."""

    k: torch.Tensor  # (B, S, Hkv, Dh) rotated keys
    v: torch.Tensor  # (B, S, Hkv, Dh) values
    pos: torch.Tensor  # (B,) int64: real tokens written so far (the next token's position)
    valid: torch.Tensor  # (B, S) bool: slot holds a token


class Attention(Mixer):
    """Causal (or bidirectional) multi-head attention; x: (B, L, D) -> (B, L, D).

    Args:
        d_model: D.
        n_heads: H query heads.
        n_kv_heads: Hkv key/value heads (grouped-query attention); None = H. Must divide H.
        head_dim: Dh; None = D / H (then H must divide D).
        rope_base: RoPE base.
        rope_fraction: fraction of each head's channels that are rotated (partial RoPE), in [0, 1].
        window: sliding window W (each token sees itself and the W-1 before it), or None.
        max_seq_len: cache slots S when ``window`` is None: the most tokens a state can hold.
            With a window the cache is a ring of W slots and sequences may be any length.
        qkv_bias, out_bias: biases of the input / output projections.
        bidirectional: no causal mask (encoders, classifiers); no state, no ``step``.
        backend: "auto", "reference" or "torch" (see ``ssmkit.ops.attention``).
    """

    state_type = AttentionState

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int,
        n_kv_heads: Optional[int] = None,
        head_dim: Optional[int] = None,
        rope_base: float = 10000.0,
        rope_fraction: float = 1.0,
        window: Optional[int] = None,
        max_seq_len: int = 2048,
        qkv_bias: bool = False,
        out_bias: bool = False,
        bidirectional: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        fn = "Attention"
        check_positive_int(fn, "d_model", d_model)
        check_positive_int(fn, "n_heads", n_heads)
        n_kv_heads = n_heads if n_kv_heads is None else check_positive_int(fn, "n_kv_heads", n_kv_heads)
        check_divisible(fn, "n_heads", n_heads, "n_kv_heads", n_kv_heads)
        if head_dim is None:
            check_divisible(fn, "d_model", d_model, "n_heads", n_heads)
            head_dim = d_model // n_heads
        check_positive_int(fn, "head_dim", head_dim)
        check_positive_int(fn, "max_seq_len", max_seq_len)
        if window is not None:
            check_positive_int(fn, "window", window)
        if not 0.0 <= rope_fraction <= 1.0:
            raise ValueError(f"{fn}: argument `rope_fraction` must be in [0, 1], got {rope_fraction}")
        if not rope_base > 0:
            raise ValueError(f"{fn}: argument `rope_base` must be > 0, got {rope_base}")
        check_choice(fn, "backend", backend, BACKEND_NAMES)
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.rope_base, self.rot_dim = float(rope_base), 2 * int(head_dim * rope_fraction / 2)
        self.window, self.max_seq_len = window, max_seq_len
        self.cache_len = window if window is not None else max_seq_len  # S
        self.causal, self.backend = not bidirectional, backend
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=out_bias)

    def op_backends(self, device: torch.device | str | None = None) -> dict[str, str]:
        """The implementation each op runs under ``self.backend`` on ``device`` (default: the parameters').

        ``step`` always runs ``attention_step`` (an einsum over the cache).
        """
        device = torch.device(device) if device is not None else self.q_proj.weight.device
        return {"attention": ATTENTION_BACKENDS.resolve(self.backend, device), "attention_step": "torch"}

    # -- pieces ----------------------------------------------------------------------------------

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, L, D) -> q (B, L, H, Dh), k, v (B, L, Hkv, Dh)."""
        q = rearrange(self.q_proj(x), "b l (h d) -> b l h d", d=self.head_dim)  # (B, L, H, Dh)
        k = rearrange(self.k_proj(x), "b l (h d) -> b l h d", d=self.head_dim)  # (B, L, Hkv, Dh)
        v = rearrange(self.v_proj(x), "b l (h d) -> b l h d", d=self.head_dim)  # (B, L, Hkv, Dh)
        return q, k, v

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x (B, L, h, Dh) by positions (B, L)."""
        if self.rot_dim == 0:
            return x
        table_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        cos, sin = rope_cos_sin(positions, self.rot_dim, self.rope_base, dtype=table_dtype)  # (B, L, R/2)
        return apply_rope(x, cos, sin)

    def _slot_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """Position of the token each cache slot holds, given ``pos`` (B,) tokens written: (B, S)."""
        slots = torch.arange(self.cache_len, device=pos.device)  # (S,)
        if self.window is None:
            return slots.expand(pos.shape[0], -1)  # (B, S)
        # ring buffer: slot s holds the latest p < pos with p % W == s
        laps = torch.div(pos[:, None] - 1 - slots, self.cache_len, rounding_mode="floor")  # (B, S)
        return slots + laps * self.cache_len  # (B, S)

    def _check_room(self, pos: torch.Tensor, n_new: torch.Tensor | int, where: str) -> None:
        if self.window is not None:
            return  # a ring buffer never runs out
        total = pos + n_new
        if bool((total > self.cache_len).any()):
            raise ValueError(
                f"Attention.{where}: the KV cache holds max_seq_len={self.cache_len} tokens, but this call would "
                f"bring a sample to {int(total.max())} tokens (prompt + generated); build the layer with a larger "
                f"`max_seq_len` or use a sliding `window`"
            )

    # -- Mixer interface -------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> AttentionState:
        """An empty cache: k, v (B, S, Hkv, Dh) zeros, pos (B,) zeros, valid (B, S) False."""
        if not self.causal:
            raise ValueError("Attention: a bidirectional layer has no state (it sees the whole sequence at once)")
        p = self.q_proj.weight
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        shape = (batch_size, self.cache_len, self.n_kv_heads, self.head_dim)
        return AttentionState(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            pos=torch.zeros(batch_size, device=device, dtype=torch.int64),
            valid=torch.zeros(batch_size, self.cache_len, device=device, dtype=torch.bool),
        )

    def forward(
        self, x: torch.Tensor, state: Optional[AttentionState] = None, mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[AttentionState]]:
        """x: (B, L, D), state: cache or None, mask: (B, L) bool or None -> y (B, L, D), cache.

        ``state`` is mutated in place and returned; a bidirectional layer returns None.
        """
        self._check_input(x)
        self._check_mask(mask, x)
        B, L, _ = x.shape
        if not self.causal and state is not None:
            raise ValueError("Attention.forward: a bidirectional layer takes no `state`")
        self._check_state(state, B)
        q, k, v = self._qkv(x)
        pos0 = torch.zeros(B, device=x.device, dtype=torch.int64) if state is None else state.pos
        if mask is None:
            positions = pos0[:, None] + torch.arange(L, device=x.device)  # (B, L)
            n_new: torch.Tensor | int = L
        else:
            positions = pos0[:, None] + mask.cumsum(1) - 1  # (B, L): real tokens are numbered 0, 1, ...
            n_new = mask.sum(1)  # (B,)
        if self.causal:
            self._check_room(pos0, n_new, "forward")
        q, k = self._rope(q, positions), self._rope(k, positions)
        if state is None and mask is None:  # the training path: plain (windowed) causal attention
            o = attention(q, k, v, causal=self.causal, window=self.window, backend=self.backend)
        elif state is None:
            o = attention(q, k, v, causal=self.causal, window=self.window, key_mask=mask, q_pos=positions,
                          k_pos=positions, backend=self.backend)
        else:  # attend to the cached tokens and the new ones
            k_all = torch.cat([state.k.to(k.dtype), k], 1)  # (B, S + L, Hkv, Dh)
            v_all = torch.cat([state.v.to(v.dtype), v], 1)  # (B, S + L, Hkv, Dh)
            new_valid = torch.ones_like(positions, dtype=torch.bool) if mask is None else mask
            o = attention(q, k_all, v_all, causal=True, window=self.window,
                          key_mask=torch.cat([state.valid, new_valid], 1),
                          q_pos=positions, k_pos=torch.cat([self._slot_positions(pos0), positions], 1),
                          backend=self.backend)
        y = self.o_proj(rearrange(o, "b l h d -> b l (h d)"))  # (B, L, D)
        if not self.causal:
            return y, None
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        self._write(state, k, v, positions, mask, pos0 + n_new)
        return y, state

    def _write(self, state: AttentionState, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               mask: Optional[torch.Tensor], pos1: torch.Tensor) -> None:
        """Write the real tokens' k, v (B, L, Hkv, Dh) at their positions (B, L) into the cache, in place."""
        keep = torch.ones_like(positions, dtype=torch.bool) if mask is None else mask.clone()  # (B, L)
        if self.window is not None:  # only the last W tokens survive in the ring
            keep &= positions >= pos1[:, None] - self.cache_len
        bi, ti = keep.nonzero(as_tuple=True)  # (n,), (n,): one distinct slot each
        slot = positions[bi, ti] % self.cache_len  # (n,)
        state.k[bi, slot] = k[bi, ti].to(state.k.dtype)
        state.v[bi, slot] = v[bi, ti].to(state.v.dtype)
        state.valid[bi, slot] = True
        state.pos.copy_(pos1)

    def step(self, x_t: torch.Tensor, state: Optional[AttentionState]) -> tuple[torch.Tensor, AttentionState]:
        """One token: x_t (B, D) -> y_t (B, D); writes k, v into the cache in place and returns it.

        Cost O(S * H * Dh) for the S cache slots written so far (the longest row's; others' empty
        slots are masked): one host read of the position per step.
        """
        if not self.causal:
            raise ValueError("Attention.step: a bidirectional layer cannot decode token by token")
        self._check_input(x_t, ndim=2, name="x_t")
        B = x_t.shape[0]
        state = self.init_state(B, device=x_t.device, dtype=x_t.dtype) if state is None else state
        self._check_state(state, B)
        self._check_room(state.pos, 1, "step")
        ATTENTION_BACKENDS.resolve(self.backend, x_t.device)  # an unavailable backend raises here too
        q, k, v = self._qkv(x_t[:, None])  # (B, 1, H, Dh), (B, 1, Hkv, Dh) x2
        q, k = self._rope(q, state.pos[:, None]), self._rope(k, state.pos[:, None])
        b, slot = torch.arange(B, device=x_t.device), state.pos % self.cache_len  # (B,), (B,)
        state.k[b, slot] = k[:, 0].to(state.k.dtype)
        state.v[b, slot] = v[:, 0].to(state.v.dtype)
        state.valid[b, slot] = True
        state.pos += 1
        used = min(self.cache_len, int(state.pos.max()))  # slots past every row's position are all empty
        o = attention_step(q[:, 0], state.k[:, :used], state.v[:, :used], state.valid[:, :used])  # (B, H, Dh)
        return self.o_proj(rearrange(o, "b h d -> b (h d)")), state  # (B, D)
