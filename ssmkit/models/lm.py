"""Causal language model: token embedding, any backbone, (tied) LM head.

    h = embedding(input_ids)            # (B, L, D)
    h, state = backbone(h, state, mask) # (B, L, D), one state per layer
    logits = lm_head(h)[..., :V]        # (B, L, V), V = config.vocab_size

The embedding matrix has ``config.padded_vocab_size`` rows (a multiple of
``pad_vocab_size_multiple``, for fast matmuls and for the public checkpoints'
shapes); logits are returned for the ``vocab_size`` real ids only. With
``tie_embeddings`` the head's weight *is* the embedding matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .backbone import Backbone, States, check_mask
from .config import ModelConfig
from ..layers.mlp import MoE
from ..ops.linear import project


def _tracing(t: torch.Tensor) -> bool:
    """True under torch.compile or CUDA-graph capture, where reading values would break the graph."""
    if torch.compiler.is_compiling():
        return True
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def check_ids(fn: str, name: str, ids: torch.Tensor, ndim: int, vocab_size: int) -> None:
    """``ids`` must be an integer tensor of ``ndim`` dims with values in [0, vocab_size)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{fn}: argument `{name}` must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{fn}: argument `{name}` must have an integer dtype (token ids), got {ids.dtype}")
    if ids.dim() != ndim:
        want = "(B, L)" if ndim == 2 else "(B,)"
        raise ValueError(f"{fn}: argument `{name}` expected shape {want}, got {tuple(ids.shape)}")
    if ids.numel() and ids.device.type != "meta" and not _tracing(ids):
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{fn}: argument `{name}` has ids in [{lo}, {hi}], expected [0, {vocab_size})")


def init_lm_weights(module: nn.Module, std: float) -> None:
    """Embedding ~ N(0, std^2), as in GPT-2 / Mamba; other layers keep their own init."""
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)


class LM(nn.Module):
    """Causal LM over ``config.layers``.

    ``forward(input_ids (B, L), state=None, mask=None) -> (logits (B, L, V), state)``;
    ``step(ids (B,), state) -> (logits (B, V), state)``; ``init_state(batch_size)``.
    After a forward, :meth:`aux_loss` returns the weighted MoE load-balancing
    loss (0 without MoE layers), to add to the training loss.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"LM: argument `config` must be a ModelConfig, got {type(config).__name__}")
        if config.bidirectional:
            raise ValueError("LM: config.bidirectional=True, but a causal LM needs causal layers "
                             "(use SequenceClassifier for non-causal tasks)")
        self.config = config
        self.vocab_size = config.vocab_size
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.backbone = Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        init_lm_weights(self.embedding, config.init_std)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=config.init_std)

    # -- states -----------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> States:
        """Fresh per-layer states (defaults: the parameters' device and dtype)."""
        return self.backbone.init_state(batch_size, device=device, dtype=dtype)

    def length_limits(self) -> list[tuple[int, str, int]]:
        """(layer index, description, longest sequence) for layers with a length limit (KV caches)."""
        return self.backbone.length_limits()

    # -- compute ----------------------------------------------------------------------

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """The head; one row (batch-1 decoding) through a matrix-vector kernel (``ssmkit.ops.linear.project``:
        on the CPU, C 1.6-4.1x faster than F.linear for mamba-130m's head)."""
        return project(self.lm_head, h, self.config.backend)[..., : self.vocab_size]

    def forward(self, input_ids: torch.Tensor, state: Optional[States] = None,
                mask: Optional[torch.Tensor] = None, *, num_last_tokens: int = 0) -> tuple[torch.Tensor, States]:
        """input_ids: (B, L) int, state: list or None, mask: (B, L) bool or None -> (logits (B, L, V), state).

        ``num_last_tokens`` > 0 computes logits for the last positions only, (B, num_last_tokens, V)
        (prefill needs one, and skips a (B, L, V) tensor).
        """
        fn = "LM.forward"
        check_ids(fn, "input_ids", input_ids, 2, self.vocab_size)
        check_mask(fn, mask, tuple(input_ids.shape), input_ids.device)
        if isinstance(num_last_tokens, bool) or not isinstance(num_last_tokens, int) or num_last_tokens < 0:
            raise ValueError(f"{fn}: argument `num_last_tokens` must be an int >= 0, got {num_last_tokens!r}")
        h = self.embedding(input_ids)  # (B, L, D)
        h, state = self.backbone(h, state, mask)
        if num_last_tokens > 0:
            h = h[:, -num_last_tokens:]  # (B, n, D)
        return self._logits(h), state

    def step(self, ids: torch.Tensor, state: States) -> tuple[torch.Tensor, States]:
        """ids: (B,) int, state: list -> (logits (B, V), state)."""
        check_ids("LM.step", "ids", ids, 1, self.vocab_size)
        h, state = self.backbone.step(self.embedding(ids), state)  # (B, D)
        return self._logits(h), state

    def aux_loss(self) -> torch.Tensor:
        """``moe_aux_loss_coef`` * the sum of the MoE layers' load-balancing losses of the last forward."""
        losses = [m.aux_loss for m in self.modules() if isinstance(m, MoE) and m.aux_loss is not None]
        if not losses:
            return torch.zeros((), device=self.embedding.weight.device)
        return self.config.moe_aux_loss_coef * torch.stack(losses).sum()

    # -- checkpoints (ssmkit.io) --------------------------------------------------------

    def save_pretrained(self, path, *, max_shard_size="2GB") -> Path:
        """Write config.json + model.safetensors (sharded above ``max_shard_size``) atomically to ``path``."""
        from ..io import save_pretrained

        return save_pretrained(self, path, max_shard_size=max_shard_size)

    @classmethod
    def from_pretrained(cls, path_or_id, **kwargs) -> "LM":
        """An LM from a directory or Hub id (ssmkit, transformers or mamba_ssm layout).

        Keyword arguments (dtype, device, backend, revision, ...): see ``ssmkit.io.load_pretrained``.
        """
        from ..io import load_pretrained

        return load_pretrained(path_or_id, **kwargs)

    def num_parameters(self) -> int:
        """Number of distinct parameters (a tied head counted once)."""
        return sum(p.numel() for p in self.parameters())
