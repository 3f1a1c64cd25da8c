"""Decoding through a CUDA graph: one replay per token instead of one launch per kernel.

At small batches a decode step is hundreds of tiny kernels (every layer's norms, projections,
conv and state updates). Issued one by one from Python, the host's launch time sets the pace,
not the GPU. A CUDA graph records the step's kernels once and replays them with one launch:

    step = graphed_step(model, token, state)   # token (B,) int64, state from prefill
    logits = step(token)                       # (B, V); the state advances inside the graph

The state lives in the graph's own buffers (``step.state``), copied from the given one; each
replay writes the new state over them. ``logits`` is the graph's output buffer, valid until the
next call. Only models whose every layer says its ``step`` runs on tensors alone
(``graph_step``: no value read on the host, a state of tensors) are captured;
:func:`graph_unsupported_reason` says why another model is not.

:func:`graphed_step` keeps the last capture of each model (until :func:`release_graphs`) and
reuses it for the same batch and state shapes while every parameter and buffer is the same
tensor at the same version: an optimizer step, ``load_state_dict``, a move or a cast makes a
new capture (the graph reads the weights where they were, and S4 / S4D cache their discretised
system by the parameters' versions).
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch

from ..layers.base import Mixer, MixerState
from ..layers.mlp import MoE

# Eager steps run before the capture, on a side stream, so that every kernel is compiled and every
# library handle created outside the graph (as torch.cuda.graphs' docs ask).
WARMUP_STEPS = 2


def graph_unsupported_reason(model) -> Optional[str]:
    """None when ``model.step`` can be captured in a CUDA graph, else why not. Capturable is declared, not
    guessed: the model's sequence mixers are ssmkit's, each with ``graph_step``, and it has no MoE layer."""
    mixers = 0
    for name, module in model.named_modules():
        if isinstance(module, Mixer):
            mixers += 1
            if not getattr(module, "graph_step", False):
                return f"layer `{name}` ({type(module).__name__}) reads values on the host in its step"
        if isinstance(module, MoE):
            return f"layer `{name}` (MoE) routes tokens by values read on the host"
    if not mixers:
        return "the model has no ssmkit mixer layers, so nothing says its step can be captured"
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cuda":
        return f"CUDA graphs need a model on a CUDA device, got {'no parameters' if param is None else param.device}"
    return None


def _leaves(state: list) -> list[torch.Tensor]:
    """Every state tensor of a model's per-layer states, in order."""
    out = []
    for s in state:
        if s is None:
            continue
        if not isinstance(s, MixerState):
            raise TypeError(f"GraphedStep: states must be MixerState objects or None, got {type(s).__name__}")
        out.extend(t for _, t in s.tensors())
    return out


def _copy_all(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """dst[i] <- src[i] (in as few kernels as torch has: one multi-tensor copy where dtypes match)."""
    same = [(d, s) for d, s in zip(dst, src) if d is not s]
    if not same:
        return
    foreach = getattr(torch, "_foreach_copy_", None)
    if foreach is not None and all(d.dtype == s.dtype for d, s in same):
        foreach([d for d, _ in same], [s for _, s in same])
    else:
        for d, s in same:
            d.copy_(s)


class GraphedStep:
    """``model.step`` for one batch size, captured in a CUDA graph (see the module docstring)."""

    def __init__(self, graph: torch.cuda.CUDAGraph, token: torch.Tensor, logits: torch.Tensor, state: list) -> None:
        self._graph, self._token, self._logits, self.state = graph, token, logits, state

    @classmethod
    def capture(cls, model, token: torch.Tensor, state: list) -> "GraphedStep":
        """Capture ``model.step(token, state)`` (token (B,) int64 on the model's device); ``state`` is copied
        into the graph's buffers, not changed. Raises ValueError where :func:`graph_unsupported_reason` says so."""
        reason = graph_unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"GraphedStep.capture: {reason}")
        with torch.cuda.device(token.device):  # (the capture stream is the current device's)
            static_token = token.detach().clone()
            static_state = [None if s is None else s.map(torch.clone) for s in state]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # (the steps are functional: static_state is read, not written)
                for _ in range(WARMUP_STEPS):
                    model.step(static_token, static_state)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits, new_state = model.step(static_token, static_state)
                _copy_all(_leaves(static_state), _leaves(new_state))
        return cls(graph, static_token, logits, static_state)

    def reset(self, state: list) -> None:
        """Start from ``state`` (states of the captured shapes): copied into the graph's buffers."""
        _copy_all(_leaves(self.state), _leaves(state))

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """One step: token (B,) -> logits (B, V), the graph's buffer (overwritten by the next call)."""
        self._token.copy_(token)
        self._graph.replay()
        return self._logits


# model -> (key, GraphedStep): the last capture of each model, dropped with the model.
_GRAPHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _key(model, token: torch.Tensor, state: list) -> tuple:
    """What a capture depends on: the batch, the states' shapes and dtypes, and every parameter and buffer's
    storage and version."""
    tensors = [*model.parameters(), *model.buffers()]
    return (tuple(token.shape), token.device, tuple((t.shape, t.dtype) for t in _leaves(state)),
            tuple((t.data_ptr(), t._version) for t in tensors))  # fmt: skip


def graphed_step(model, token: torch.Tensor, state: list) -> GraphedStep:
    """The captured step of ``model`` for this batch, starting from ``state``: the last capture where it still
    applies (see the module docstring), else a new one (which replaces it)."""
    key = _key(model, token, state)
    cached = _GRAPHS.get(model)
    if cached is not None and cached[0] == key:
        cached[1].reset(state)
        return cached[1]
    release_graphs(model)  # (the old graph's memory goes before the new capture takes its own)
    step = GraphedStep.capture(model, token, state)
    _GRAPHS[model] = (key, step)
    return step


def release_graphs(model) -> None:
    """Free the CUDA graph (and its memory) :func:`graphed_step` keeps for ``model``, if any."""
    _GRAPHS.pop(model, None)
