"""The Mixer interface every sequence layer implements.

Mixers follow ``torch.nn.GRU``: a recurrent module takes and returns its state.

    y, state = mixer(x, state=None)     # x: (B, L, D) -> y: (B, L, D)
    y_t, state = mixer.step(x_t, state)  # x_t: (B, D), one token
    state = mixer.init_state(batch_size, device=..., dtype=...)

A state is a dataclass whose tensor fields all have the batch as their first
dimension (see :class:`MixerState`). An SSM mixer's state has a fixed size
whatever the context length; attention's state is its KV cache.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import torch
from torch import nn

from .._checks import check_float, check_same_device


@dataclasses.dataclass
class MixerState:
    """Base of every mixer state: tensor fields are batch-first."""

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for each tensor field."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                yield f.name, value

    @property
    def batch_size(self) -> int:
        return next(self.tensors())[1].shape[0]

    def nbytes(self) -> int:
        """Memory held by the state's tensors, in bytes."""
        return sum(t.numel() * t.element_size() for _, t in self.tensors())

    def map(self, fn) -> "MixerState":
        """A copy with ``fn`` applied to every tensor field (e.g. index a batch)."""
        changes = {name: fn(t) for name, t in self.tensors()}
        return dataclasses.replace(self, **changes)


class Mixer(nn.Module):
    """Base class: checks inputs and states; subclasses do the computing.

    Subclasses set ``self.d_model`` and implement :meth:`forward`,
    :meth:`step` and :meth:`init_state`. ``self.causal`` is False for layers
    built bidirectional (they have no ``step``).
    """

    d_model: int
    causal: bool = True
    state_type: type = MixerState
    # True where ``step`` runs on tensors alone (no value read on the host, every state field a tensor),
    # so that a CUDA graph can record it (``ssmkit.generation.graphs``).
    graph_step: bool = False

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MixerState:  # pragma: no cover
        raise NotImplementedError

    def _cached_for_step(self, name: str, tensors, compute, *extra):
        """``compute()``, kept under ``name`` and reused while no gradient is needed (decoding asks on every
        token) and every tensor in ``tensors`` keeps its storage and version (an in-place update, a move or a
        cast computes it anew); ``extra``: more of the key. With autograd on, computed each time."""
        if torch.is_grad_enabled():
            return compute()
        key = extra + tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        cached = self.__dict__.get(name)
        if cached is None or cached[0] != key:
            cached = self.__dict__[name] = (key, compute())
        return cached[1]

    def step(self, x_t: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:  # pragma: no cover
        raise NotImplementedError

    # -- checks shared by every mixer -------------------------------------------------

    def _check_input(self, x: torch.Tensor, ndim: int = 3, name: str = "x") -> None:
        fn = f"{type(self).__name__}.{'forward' if ndim == 3 else 'step'}"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{fn}: argument `{name}` must be a torch.Tensor, got {type(x).__name__}")
        want = "(B, L, D)" if ndim == 3 else "(B, D)"
        if x.dim() != ndim:
            raise ValueError(f"{fn}: argument `{name}` expected shape {want} with D={self.d_model}, got {tuple(x.shape)}")
        if x.shape[-1] != self.d_model:
            hint = ""
            if ndim == 3 and x.shape[1] == self.d_model:
                hint = " (this looks like channels-first (B, D, L); ssmkit uses (B, L, D))"
            raise ValueError(
                f"{fn}: argument `{name}` expected last dimension D={self.d_model}, got shape {tuple(x.shape)}{hint}"
            )
        check_float(fn, name, x)
        param = next(self.parameters(), None)
        if param is not None:
            check_same_device(fn, {"module parameters": param, name: x})

    def _check_state(self, state: Optional[MixerState], batch_size: int) -> None:
        if state is None:
            return
        fn = f"{type(self).__name__}"
        if not isinstance(state, self.state_type):
            raise TypeError(
                f"{fn}: argument `state` must be a {self.state_type.__name__} (from this mixer's init_state or "
                f"forward), got {type(state).__name__}"
            )
        for (name, t), (_, shape) in zip(state.tensors(), self.state_shapes(batch_size)):
            if t.shape[0] != batch_size:
                raise ValueError(
                    f"{fn}: argument `state` has batch size {t.shape[0]} in `{name}`, but the input has batch size {batch_size}"
                )
            if t.shape != shape:
                raise ValueError(
                    f"{fn}: argument `state` field `{name}` expected shape {tuple(shape)}, got {tuple(t.shape)} "
                    f"(a state from a differently configured mixer?)"
                )

    def state_shapes(self, batch_size: int) -> list[tuple[str, torch.Size]]:
        """(field, shape) of this mixer's state for ``batch_size``; computed once per batch size.

        The state checks run on every decode step; building the meta-device
        reference state each time cost a third of a small model's step.
        """
        cache = self.__dict__.setdefault("_state_shapes_cache", {})
        if batch_size not in cache:
            cache[batch_size] = [(n, t.shape) for n, t in self.init_state(batch_size, device="meta").tensors()]
        return cache[batch_size]

    def _check_mask(self, mask: Optional[torch.Tensor], x: torch.Tensor) -> None:
        """``mask`` must be None or a (B, L) bool tensor (True = real token) on x's device."""
        if mask is None:
            return
        fn = f"{type(self).__name__}.forward"
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{fn}: argument `mask` must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"{fn}: argument `mask` must have dtype bool (True = real token), got {mask.dtype}")
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"{fn}: argument `mask` expected shape (B, L) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        if mask.device != x.device:
            raise ValueError(f"{fn}: argument `mask` is on {mask.device}, expected the device of `x` ({x.device})")
