"""Helpers of the fused CPU decode blocks' tests (tests/ops/decode): counting a layer module's calls of its fused
kernel, and an LM's one-token steps."""

import torch


def count_calls(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` (a fused step's kernel: (params, residual, ...)) by a wrapper that records each
    call's residual dtype."""
    calls = []
    kernel = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(a[1].dtype) or kernel(*a, **k))
    return calls


def steps(lm, ids: torch.Tensor, dtype: torch.dtype):
    """The LM's logits for ``ids`` fed one token at a time from a zero state (no autograd), and the last state."""
    state, out = lm.init_state(1, dtype=dtype), []
    with torch.no_grad():
        for t in range(ids.shape[0]):
            logits, state = lm.step(ids[t : t + 1], state)
            out.append(logits)
    return torch.cat(out), state
