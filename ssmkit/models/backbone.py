"""Backbone: any layer pattern as a stack of pre-norm residual blocks.

Block i (Xiong et al. 2020, pre-LN; as in Mamba and GPT-NeoX):

    r = r + mixer(norm(r))          # sequence mixing (Mamba, SSD, S4, Hyena, attention)
    r = r + mlp(norm2(r))           # channel mixing, when the config has one

``r`` is the residual stream, kept in float32 when ``residual_in_fp32``
(whatever the compute dtype of the layers); the final ``norm_f`` returns the
compute dtype. States follow the mixers' ``(out, state)`` convention: a list
with one state per layer (None for a bidirectional layer, which has none).

Padding: ``mask`` (B, L) bool, True = real token, reaches every mixer; the
mixer outputs at padded positions are zeroed, so padded positions never
reach another position through any later layer (even a NaN that a fully
masked attention row could produce).
"""

from __future__ import annotations

import importlib
import math
from typing import Optional

import torch
from torch import nn

from .._checks import check_float
from ..layers.base import Mixer, MixerState
from ..layers.mlp import MLP, GatedMLP, MoE
from ..layers.norm import RMSNorm
from ..ops.norm import add_rms_norm, add_rms_norm_applies
from .config import ModelConfig
from .mixer_configs import MixerConfig

States = list[Optional[MixerState]]


def build_mixer(cfg: MixerConfig, d_model: int, backend: str, bidirectional: bool = False) -> Mixer:
    """The layer a mixer config describes, at width ``d_model``."""
    module, cls_name = cfg.layer.split(":")
    layer_cls = getattr(importlib.import_module(f"..layers.{module}", __package__), cls_name)
    kwargs = cfg.layer_kwargs()
    if bidirectional:  # S4, S4D, Hyena: add the anti-causal kernel; attention: drop the causal mask
        kwargs["bidirectional"] = True
    return layer_cls(d_model, backend=cfg.backend or backend, **kwargs)


def build_mlp(config: ModelConfig, layer: int) -> Optional[nn.Module]:
    """Channel-mixing sublayer of block ``layer`` (None for "none")."""
    kind = config.mlp_kind(layer)
    if kind == "mlp":
        return MLP(config.d_model, config.d_intermediate)
    if kind == "gated":
        return GatedMLP(config.d_model, config.d_intermediate)
    if kind == "moe":
        return MoE(config.d_model, config.d_intermediate, n_experts=config.n_experts, top_k=config.top_k)
    return None


def _add(residual: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """residual + y in the residual's dtype. Where y's dtype promotes to it (bf16 into a float32 stream), one
    kernel does the widening and the sum (the same values as casting first: widening is exact)."""
    if torch.promote_types(residual.dtype, y.dtype) == residual.dtype:
        return residual + y
    return residual + y.to(residual.dtype)


def _add_norm(residual: torch.Tensor, y: Optional[torch.Tensor], norm: RMSNorm,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(residual + y, norm(residual + y) in ``dtype``) for one decode step, y None: nothing to add. On CUDA
    without autograd one Triton kernel (``ops/norm/add_rms_norm_triton.py``) where ``_add``, the norm and
    the cast took three (batch 1: ~6 µs of a Mamba layer's ~28 on the H200); elsewhere those three."""
    if add_rms_norm_applies(residual, y, norm.weight):
        return add_rms_norm(residual, y, norm.weight, norm.eps, dtype)
    residual = residual if y is None else _add(residual, y)
    return residual, norm(residual).to(dtype)


class Block(nn.Module):
    """``r = r + mixer(norm(r))``, then ``r = r + mlp(norm2(r))``; r: (B, L, D)."""

    def __init__(self, mixer: Mixer, mlp: Optional[nn.Module], d_model: int, norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.norm2 = RMSNorm(d_model, eps=norm_eps) if mlp is not None else None
        self.mlp = mlp
        self.residual_in_fp32 = residual_in_fp32

    def _channel_mix(self, residual: torch.Tensor, dtype: torch.dtype, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if self.mlp is None:
            return residual
        h = self.norm2(residual).to(dtype)
        y = self.mlp(h, mask) if isinstance(self.mlp, MoE) else self.mlp(h)
        return _add(residual, y)

    def forward(self, residual: torch.Tensor, state: Optional[MixerState] = None,
                mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[MixerState]]:
        """residual: (B, L, D), mask: (B, L) bool or None -> (residual (B, L, D), state)."""
        dtype = self.norm.weight.dtype
        y, state = self.mixer(self.norm(residual).to(dtype), state, mask=mask)  # (B, L, D)
        if mask is not None:
            y = y.masked_fill(~mask[..., None], 0.0)
        residual = _add(residual, y)
        return self._channel_mix(residual, dtype, mask), state

    def step(self, residual_t: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        """residual_t: (B, D) -> (residual_t (B, D), state)."""
        residual_t, y, state = self.step_pending(residual_t, None, state)
        return _add(residual_t, y), state

    def step_pending(self, residual_t: torch.Tensor, pending: Optional[torch.Tensor],
                     state: MixerState) -> tuple[torch.Tensor, torch.Tensor, MixerState]:  # fmt: skip
        """``step`` with the last add left to the caller: the residual (B, D) still without ``pending`` (the
        previous block's output, or None) -> (residual, this block's output, state). Each add then runs with
        the norm after it (``_add_norm``: one kernel on CUDA)."""
        fused = getattr(self.mixer, "fused_block_step", None) if self.mlp is None else None
        if fused is not None and type(self.norm) is RMSNorm:  # (the whole block in one C call on the CPU)
            out = fused(residual_t, pending, self.norm, state)
            if out is not None:
                return out
        dtype = self.norm.weight.dtype
        residual_t, h = _add_norm(residual_t, pending, self.norm, dtype)
        y, state = self.mixer.step(h, state)  # (B, D)
        if self.mlp is not None:
            residual_t, h = _add_norm(residual_t, y, self.norm2, dtype)
            y = self.mlp(h, None) if isinstance(self.mlp, MoE) else self.mlp(h)
        return residual_t, y, state


class Backbone(nn.Module):
    """The blocks of ``config.layers`` and a final RMSNorm (no embedding: the LM owns it).

    ``forward(hidden (B, L, D), state=None, mask=None) -> (hidden (B, L, D), states)``;
    ``step(hidden_t (B, D), states) -> (hidden_t (B, D), states)``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"Backbone: argument `config` must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.d_model = config.d_model
        self.layers = nn.ModuleList(
            Block(build_mixer(cfg, config.d_model, config.backend, config.bidirectional), build_mlp(config, i),
                  config.d_model, config.norm_eps, config.residual_in_fp32)
            for i, cfg in enumerate(config.layer_configs())
        )
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps)
        self.causal = all(layer.mixer.causal for layer in self.layers)
        if config.rescale_prenorm_residual:
            self._rescale_residual_projections()

    @torch.no_grad()
    def _rescale_residual_projections(self) -> None:
        """GPT-2 / Mamba init: each projection into the residual stream scaled by 1/sqrt(#residual adds)."""
        per_layer = 1 + int(self.config.mlp != "none")
        scale = 1.0 / math.sqrt(per_layer * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith(("out_proj.weight", "o_proj.weight", "fc2.weight")):
                p.mul_(scale)

    # -- states -----------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> States:
        """Fresh per-layer states (defaults: the parameters' device and dtype)."""
        p = self.norm_f.weight
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        self._require_causal("init_state")
        return [layer.mixer.init_state(batch_size, device=device, dtype=dtype) for layer in self.layers]

    def check_state(self, states: object, batch_size: int, fn: str = "Backbone") -> None:
        """Raise a clear error unless ``states`` fits this model and batch size."""
        if not isinstance(states, (list, tuple)):
            raise TypeError(f"{fn}: argument `state` must be a list of per-layer states (from init_state or a "
                            f"previous forward), got {type(states).__name__}")
        if len(states) != len(self.layers):
            raise ValueError(f"{fn}: argument `state` has {len(states)} layer states, but this model has "
                             f"{len(self.layers)} layers (a state from another model?)")
        for i, (layer, s) in enumerate(zip(self.layers, states)):
            mixer = layer.mixer
            want = mixer.state_type.__name__
            if not isinstance(s, mixer.state_type):
                raise TypeError(f"{fn}: state for layer {i} is a {type(s).__name__}, expected a {want} "
                                f"(layer {i} is {type(mixer).__name__}; a state from another model?)")
            if s.batch_size != batch_size:
                raise ValueError(f"{fn}: state for layer {i} is a {want} for batch {s.batch_size}, expected a "
                                 f"{want} for batch {batch_size}")
            for (name, t), (_, shape) in zip(s.tensors(), mixer.state_shapes(batch_size)):
                if t.shape != shape:
                    raise ValueError(f"{fn}: state for layer {i} ({want}) has `{name}` of shape {tuple(t.shape)}, "
                                     f"expected {tuple(shape)} (a state from a differently configured model?)")

    def length_limits(self) -> list[tuple[int, str, int]]:
        """(layer index, description, longest sequence) for each layer with a length limit."""
        out = []
        for i, layer in enumerate(self.layers):
            m = layer.mixer
            for attr in ("max_seq_len", "max_len"):  # attention's KV cache, Hyena's filter length
                limit = getattr(m, attr, None)
                if isinstance(limit, int) and getattr(m, "window", None) is None:  # a sliding window is a ring
                    out.append((i, f"{type(m).__name__.lower()} layer {i}'s {attr}", limit))
                    break
        return out

    def _require_causal(self, what: str) -> None:
        if not self.causal:
            raise RuntimeError(f"Backbone.{what}: this backbone is bidirectional (config.bidirectional=True); "
                               f"it has no recurrent state or step")

    # -- compute ----------------------------------------------------------------------

    def _check_hidden(self, hidden: torch.Tensor, ndim: int, fn: str) -> None:
        if not isinstance(hidden, torch.Tensor):
            raise TypeError(f"{fn}: argument `hidden` must be a torch.Tensor, got {type(hidden).__name__}")
        want = "(B, L, D)" if ndim == 3 else "(B, D)"
        if hidden.dim() != ndim or hidden.shape[-1] != self.d_model:
            raise ValueError(f"{fn}: argument `hidden` expected shape {want} with D={self.d_model}, "
                             f"got {tuple(hidden.shape)}")
        check_float(fn, "hidden", hidden)

    def _residual(self, hidden: torch.Tensor) -> torch.Tensor:
        """The residual stream: float32 at least when ``residual_in_fp32`` (float64 stays float64)."""
        if self.config.residual_in_fp32:
            return hidden.to(torch.promote_types(hidden.dtype, torch.float32))
        return hidden

    def forward(self, hidden: torch.Tensor, state: Optional[States] = None,
                mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, States]:
        """hidden: (B, L, D), state: list or None, mask: (B, L) bool or None -> (hidden (B, L, D), states)."""
        fn = "Backbone.forward"
        self._check_hidden(hidden, 3, fn)
        check_mask(fn, mask, hidden.shape[:2], hidden.device)
        if state is not None:
            self._require_causal("forward with a state")
            self.check_state(state, hidden.shape[0], fn)
        residual = self._residual(hidden)  # (B, L, D)
        states: States = []
        for i, layer in enumerate(self.layers):
            residual, s = layer(residual, None if state is None else state[i], mask)
            states.append(s)
        return self.norm_f(residual).to(hidden.dtype), states

    def step(self, hidden_t: torch.Tensor, state: States) -> tuple[torch.Tensor, States]:
        """hidden_t: (B, D), state: list -> (hidden_t (B, D), states)."""
        fn = "Backbone.step"
        self._require_causal("step")
        self._check_hidden(hidden_t, 2, fn)
        self.check_state(state, hidden_t.shape[0], fn)
        residual, y = self._residual(hidden_t), None  # (B, D); y: the last block's output, not yet added
        states: States = []
        for layer, s in zip(self.layers, state):
            residual, y, s = layer.step_pending(residual, y, s)
            states.append(s)
        return _add_norm(residual, y, self.norm_f, hidden_t.dtype)[1], states


def check_mask(fn: str, mask: Optional[torch.Tensor], shape: tuple[int, int], device: torch.device) -> None:
    """``mask`` must be None or a (B, L) bool tensor on ``device`` (True = real token)."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{fn}: argument `mask` must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{fn}: argument `mask` must have dtype bool (True = real token), got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{fn}: argument `mask` expected shape (B, L) = {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{fn}: argument `mask` is on {mask.device}, expected {device}")
