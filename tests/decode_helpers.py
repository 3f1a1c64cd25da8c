"""Helpers of the fused CPU decode blocks' tests (tests/ops/decode): counting a layer module's calls of its fused
kernel, an LM's one-token steps, and the checks every fused block passes (``model(gen, dtype, backend=...,
**config)`` builds the LM under test)."""

import torch

import ssmkit.ops.decode.block_library as block_library
from numerics import TOL, assert_close
from ssmkit.ops._c_build import build


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


def float64_twin(model, gen, dtype, **config):
    """``model(gen, dtype, **config)`` and an LM with the same weights in float64 on the PyTorch step."""
    lm = model(gen, dtype, **config)
    ref = model(gen, torch.float64, backend="torch", **config)
    ref.load_state_dict({k: v.double() for k, v in lm.state_dict().items()})
    return lm, ref


def assert_steps_match_float64(model, gen, calls, dtype, tokens: int = 8, **config):
    """``tokens`` tokens through ``model(gen, dtype, **config)``, every block fused, against the same weights in
    float64: logits within the dtype's tolerance."""
    lm, ref = float64_twin(model, gen, dtype, **config)
    ids = torch.randint(lm.config.vocab_size, (tokens,), generator=gen)
    got, _ = steps(lm, ids, dtype)
    assert len(calls) == tokens * len(lm.backbone.layers)
    want, _ = steps(ref, ids, torch.float64)
    assert got.dtype == dtype
    assert_close(got, want, TOL[dtype], "logits")


def assert_states_match_unfused(model, gen, calls, dtype, **config):
    """The fused blocks' states after five tokens equal the unfused step's (backend "torch", same dtype) within
    the dtype's tolerance, and the state passed in is not modified."""
    lm = model(gen, dtype, **config)
    plain = model(gen, dtype, backend="torch", **config)
    plain.load_state_dict(lm.state_dict())
    ids = torch.randint(lm.config.vocab_size, (5,), generator=gen)
    _, s_fused = steps(lm, ids, dtype)
    _, s_plain = steps(plain, ids, dtype)
    assert calls
    for a, b in zip(s_fused, s_plain):
        assert a.conv.dtype == b.conv.dtype and a.ssm.dtype == torch.float32
        assert_close(a.conv, b.conv.double(), TOL[dtype], "conv state")
        assert_close(a.ssm, b.ssm.double(), TOL[dtype], "ssm state")
    state = lm.init_state(1, dtype=dtype)
    with torch.no_grad():
        _, state = lm.step(ids[:1], state)
        before = [(s.conv.clone(), s.ssm.clone()) for s in state]
        lm.step(ids[1:2], state)
    assert all(torch.equal(s.conv, c) and torch.equal(s.ssm, h) for s, (c, h) in zip(state, before))


def assert_portable_build_matches(model, library, gen, tmp_path, monkeypatch, **config):
    """``library`` built with the flag set without OpenMP (and the portable C loops, no AVX-512) gives the
    float64 logits too."""
    lm, ref = float64_twin(model, gen, torch.float32, **config)
    ids = torch.randint(lm.config.vocab_size, (4,), generator=gen)
    cflags, lflags = block_library.FLAG_SETS[1]
    path = build(library.stem, block_library.HERE, library.sources, cflags + ("-mno-avx512f",), lflags,
                 cache_dir=tmp_path)  # fmt: skip
    monkeypatch.setattr(library, "cached", lambda: (library.load(path), None))
    got, _ = steps(lm, ids, torch.float32)
    want, _ = steps(ref, ids, torch.float64)
    assert_close(got, want, TOL[torch.float32], "logits")
