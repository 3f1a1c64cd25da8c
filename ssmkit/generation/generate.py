"""Autoregressive generation as small pure functions (gpt-fast style).

    logits, state = prefill(model, ids, mask)      # one parallel forward over the prompt
    loop:  token = sample(logits, ...)             # sampling.py
           logits, state = decode_one(model, token, state)

``model`` is anything with the LM interface (``forward(ids, state, mask,
num_last_tokens=...)``, ``step(ids, state)``, ``init_state(B)``,
``vocab_size``, ``length_limits()``), e.g. :class:`ssmkit.LM`.

Batched prompts of different lengths are left-padded with ``pad_id`` and run
with a ``mask`` (True = real token): the mixers give padded positions no
influence on the state, so every row continues exactly as if it had been run
alone. Memory: the per-layer states are replaced each step (fixed-size for
SSM layers; attention writes into its preallocated KV cache); apart from
them only the output ids (and, with a repetition penalty, a (B, V) "seen"
mask) are kept. A sequence that cannot fit a layer's cache is refused
before any work.

On CUDA, models whose layers allow it (Mamba, Mamba-2, S4, S4D, dense MLPs)
decode through a CUDA graph (``graphs.py``): the step's kernels are recorded
once and replayed with one launch per token. ``cuda_graph`` None (the default)
does so from ``GRAPH_MIN_TOKENS`` new tokens on; True asks for it (an error
where the model cannot be graphed), False never.
"""

from __future__ import annotations

import warnings
from typing import Iterator, Optional, Sequence, Union

import torch

from .graphs import GraphedStep, graph_unsupported_reason, graphed_step
from .sampling import apply_repetition_penalty, sample

Prompt = Union[torch.Tensor, Sequence[int], Sequence[Sequence[int]]]

# With cuda_graph None, decoding goes through a CUDA graph from this many new tokens on: the capture costs
# a few eager steps (its warm-up) and the recording, which fewer tokens would not earn back.
GRAPH_MIN_TOKENS = 16


def _param(model) -> torch.Tensor:
    return next(model.parameters())


def prefill(model, ids: torch.Tensor, mask: Optional[torch.Tensor] = None, state=None):
    """One forward over the prompt. ids: (B, L), mask: (B, L) bool, left-padded (or None).

    Returns logits at the last position (B, V) and the state after the prompt.
    With ``state`` None the forward starts from zero states and returns them
    filled (attention's cache preallocated at its full size), without
    attending over empty cache slots.
    """
    if mask is not None:
        _check_left_padded(mask)
    logits, state = model(ids, state, mask, num_last_tokens=1)  # (B, 1, V)
    return logits[:, -1], state


def decode_one(model, token: torch.Tensor, state):
    """One token per row. token: (B,) int -> (logits (B, V), state)."""
    return model.step(token, state)


def _check_left_padded(mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"prefill: argument `mask` expected a (B, L) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    if not bool(mask[:, -1].all()) or bool((mask[:, 1:].int() < mask[:, :-1].int()).any()):
        raise ValueError("prefill: argument `mask` must be left-padded (False... then True..., the last position "
                         "real in every row)")


def _prepare(prompt_ids: Prompt, pad_id: int, device: torch.device, vocab_size: int):
    """-> (ids (B, L) int64, mask (B, L) bool or None, lengths, kind) with kind "flat", "lists" or "tensor"."""
    fn = "generate"
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dtype.is_floating_point or prompt_ids.dtype == torch.bool:
            raise TypeError(f"{fn}: argument `prompt_ids` must hold integer token ids, got dtype {prompt_ids.dtype}")
        kind = "flat" if prompt_ids.dim() == 1 else "tensor"
        ids = prompt_ids.reshape(1, -1) if kind == "flat" else prompt_ids
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"{fn}: argument `prompt_ids` expected shape (L,) or (B, L) with L >= 1, "
                             f"got {tuple(prompt_ids.shape)}")
        rows = None
        ids = ids.to(device=device, dtype=torch.int64)
    elif isinstance(prompt_ids, (list, tuple)) and prompt_ids and all(isinstance(t, int) for t in prompt_ids):
        kind, rows = "flat", [list(prompt_ids)]
    elif isinstance(prompt_ids, (list, tuple)) and prompt_ids and all(isinstance(r, (list, tuple)) for r in prompt_ids):
        kind, rows = "lists", [list(r) for r in prompt_ids]
        for i, r in enumerate(rows):
            if not r or not all(isinstance(t, int) for t in r):
                raise ValueError(f"{fn}: prompt {i} must be a non-empty list of int token ids, got {r!r}")
    else:
        raise TypeError(f"{fn}: argument `prompt_ids` must be a list of ids, a list of lists of ids, or an int "
                        f"tensor (L,) / (B, L); got {type(prompt_ids).__name__} {prompt_ids!r:.60}")
    mask = None
    if rows is not None:
        L = max(len(r) for r in rows)
        ids = torch.tensor([[pad_id] * (L - len(r)) + r for r in rows], dtype=torch.int64, device=device)  # (B, L)
        if any(len(r) < L for r in rows):
            lengths = torch.tensor([len(r) for r in rows], device=device)
            mask = torch.arange(L, device=device)[None, :] >= (L - lengths)[:, None]  # (B, L)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{fn}: prompt ids must be in [0, {vocab_size}), got ids in [{lo}, {hi}]")
    return ids, mask, kind


def _check_capacity(model, prompt_len: int, max_new_tokens: int) -> None:
    limits = model.length_limits() if hasattr(model, "length_limits") else []
    for _, desc, limit in limits:
        if prompt_len + max_new_tokens > limit:
            raise ValueError(f"generate: prompt {prompt_len} + {max_new_tokens} new tokens exceed {desc} {limit}")


def _check_args(model, max_new_tokens, temperature, top_k, top_p, repetition_penalty, pad_id, stop_tokens,
                cuda_graph=None) -> None:
    fn = "generate"
    if cuda_graph is not None and not isinstance(cuda_graph, bool):
        raise TypeError(f"{fn}: argument `cuda_graph` must be None, True or False, got {cuda_graph!r}")
    if cuda_graph:
        reason = graph_unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"{fn}: argument `cuda_graph` is True, but {reason} (pass None or False)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"{fn}: argument `max_new_tokens` must be an int >= 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"{fn}: argument `temperature` must be >= 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"{fn}: argument `top_k` must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"{fn}: argument `top_p` must be None or in (0, 1], got {top_p}")
    if not repetition_penalty > 0:
        raise ValueError(f"{fn}: argument `repetition_penalty` must be > 0, got {repetition_penalty}")
    for name, t in [("pad_id", pad_id)] + [("stop_tokens", s) for s in stop_tokens]:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < model.vocab_size:
            raise ValueError(f"{fn}: argument `{name}` must hold ids in [0, {model.vocab_size}), got {t!r}")


def _capture(model, token: torch.Tensor, state, required: bool) -> Optional[GraphedStep]:
    """``model.step`` captured in a CUDA graph, or None (with a warning) where the capture failed and the
    caller did not insist (``cuda_graph`` None): decoding then goes on eagerly from the same state."""
    try:
        return graphed_step(model, token, state)
    except Exception as e:  # noqa: BLE001  (any failure of the capture: the eager step still works)
        if required:
            raise
        warnings.warn(f"generate: decoding without a CUDA graph, its capture failed ({type(e).__name__}: {e})",
                      RuntimeWarning, stacklevel=4)  # fmt: skip
        return None


@torch.no_grad()
def _decode(model, ids: torch.Tensor, mask: Optional[torch.Tensor], max_new_tokens: int, temperature: float,
            top_k: Optional[int], top_p: Optional[float], repetition_penalty: float, stop_tokens: Sequence[int],
            generator: Optional[torch.Generator], pad_id: int, cuda_graph: Optional[bool] = None,
            ) -> Iterator[torch.Tensor]:  # fmt: skip
    """Yields the new token of every row, (B,) int64, one step at a time (pad_id for finished rows)."""
    B, device = ids.shape[0], ids.device
    if max_new_tokens == 0:
        return
    required = cuda_graph is True
    if cuda_graph is None:  # (auto: where the model allows it and enough tokens earn the capture back)
        cuda_graph = max_new_tokens >= GRAPH_MIN_TOKENS and graph_unsupported_reason(model) is None
    graphed = None
    logits, state = prefill(model, ids, mask)
    seen = None
    if repetition_penalty != 1.0:  # (B, V) bool: fixed size, whatever the number of tokens
        seen = torch.zeros(B, model.vocab_size, dtype=torch.bool, device=device)
        flat = torch.arange(B, device=device)[:, None] * model.vocab_size + ids  # (B, L)
        seen.view(-1).index_fill_(0, flat[mask] if mask is not None else flat.reshape(-1), True)
    stop = torch.tensor(list(stop_tokens), dtype=torch.int64, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    rows = torch.arange(B, device=device)
    for t in range(max_new_tokens):
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        token = sample(logits, temperature, top_k, top_p, generator).masked_fill(finished, pad_id)  # (B,)
        yield token
        if stop.numel():
            finished = finished | torch.isin(token, stop)
            if bool(finished.all()):
                return
        if seen is not None:
            seen[rows, token] = True
        if t + 1 < max_new_tokens:
            if cuda_graph and graphed is None:
                graphed = _capture(model, token, state, required)
                cuda_graph = graphed is not None
            if graphed is not None:
                logits = graphed(token)  # (the graph's buffer; read before the next step overwrites it)
            else:
                logits, state = decode_one(model, token, state)


def stream(model, prompt_ids: Prompt, max_new_tokens: int, temperature: float = 0.0, top_k: Optional[int] = None,
           top_p: Optional[float] = None, repetition_penalty: float = 1.0, stop_tokens: Sequence[int] = (),
           generator: Optional[torch.Generator] = None, pad_id: int = 0,
           cuda_graph: Optional[bool] = None) -> Iterator[Union[int, torch.Tensor]]:
    """Like :func:`generate`, but yields tokens as they are produced.

    A single prompt (a list of ints or a 1-D tensor) yields ints, ending after
    a stop token; a batch yields (B,) int64 tensors, ``pad_id`` for rows that
    have stopped, until every row has stopped or ``max_new_tokens``.
    All argument checks (including the cache capacity) run before the first token.
    """
    stop_tokens = tuple(stop_tokens)
    _check_args(model, max_new_tokens, temperature, top_k, top_p, repetition_penalty, pad_id, stop_tokens, cuda_graph)
    ids, mask, kind = _prepare(prompt_ids, pad_id, _param(model).device, model.vocab_size)
    _check_capacity(model, ids.shape[1], max_new_tokens)
    it = _decode(model, ids, mask, max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop_tokens,
                 generator, pad_id, cuda_graph)
    if kind != "flat":
        return it
    return (int(token[0]) for token in it)


def generate(model, prompt_ids: Prompt, max_new_tokens: int, temperature: float = 0.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, repetition_penalty: float = 1.0, stop_tokens: Sequence[int] = (),
             generator: Optional[torch.Generator] = None, pad_id: int = 0, cuda_graph: Optional[bool] = None):
    """Prompt plus up to ``max_new_tokens`` generated ids.

    Args:
        prompt_ids: one prompt (list of ints or (L,) tensor), prompts of any lengths (list of lists), or a
            (B, L) int tensor of equal-length prompts.
        temperature: 0 = greedy; else sampling from softmax(logits / temperature).
        top_k, top_p: keep the k most likely tokens / the nucleus of mass p before sampling.
        repetition_penalty: CTRL penalty on tokens already in the prompt or output (1 = off).
        stop_tokens: a row stops after emitting one of these (the stop token is kept).
        generator: a seeded torch.Generator for reproducible sampling.
        pad_id: left-padding of shorter prompts and filler after a row stops (tensor output).
        cuda_graph: decode through a CUDA graph (``graphs.py``): None where the model allows it and
            ``max_new_tokens`` >= ``GRAPH_MIN_TOKENS``; True always (an error where it cannot); False never.
    Returns:
        the same kind as ``prompt_ids``: a list of ids, a list of lists (each prompt + its new tokens, cut
        after its stop token), or a (B, L + n) int64 tensor (n <= max_new_tokens; ``pad_id`` after a stop).
    """
    stop_tokens = tuple(stop_tokens)
    _check_args(model, max_new_tokens, temperature, top_k, top_p, repetition_penalty, pad_id, stop_tokens, cuda_graph)
    ids, mask, kind = _prepare(prompt_ids, pad_id, _param(model).device, model.vocab_size)
    _check_capacity(model, ids.shape[1], max_new_tokens)
    out = torch.full((ids.shape[0], max_new_tokens), pad_id, dtype=torch.int64, device=ids.device)  # (B, T)
    n = 0
    for token in _decode(model, ids, mask, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                         stop_tokens, generator, pad_id, cuda_graph):
        out[:, n] = token
        n += 1
    out = out[:, :n]
    if kind == "tensor":
        return torch.cat([ids, out], dim=1)  # (B, L + n)
    stops = set(stop_tokens)
    results = []
    for b in range(ids.shape[0]):
        prompt = ids[b] if mask is None else ids[b][mask[b]]
        new = []
        for t in out[b].tolist():
            new.append(t)
            if t in stops:
                break
        results.append(prompt.tolist() + new)
    return results[0] if kind == "flat" else results
