"""Attention mixer: the DESIGN.md invariants, the KV cache, padding, bidirectional mode, errors."""

from __future__ import annotations

import pytest
import torch

from mixer_invariants import (
    check_backend_matches_reference,
    check_batch_independent,
    check_causal,
    check_split_matches_whole,
    check_step_matches_forward,
)
from numerics import TOL, assert_close, randn
from ssmkit.layers.attention import Attention, AttentionState
from ssmkit.ops.backends import BackendUnavailableError

D, L = 60, 63
CONFIGS = {
    "gqa": dict(n_heads=6, n_kv_heads=2, max_seq_len=80),
    "window": dict(n_heads=6, n_kv_heads=2, window=16, max_seq_len=80),
    "partial_rope_bias": dict(n_heads=4, head_dim=12, rope_fraction=0.5, qkv_bias=True, out_bias=True, max_seq_len=70),
}


def _layer(name: str, **extra) -> Attention:
    return Attention(D, **{**CONFIGS[name], **extra})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_matches_reference(gen, name):
    check_backend_matches_reference(_layer(name), randn(2, L, D, gen=gen), "torch")


def test_torch_matches_reference_bfloat16(gen):
    check_backend_matches_reference(_layer("gqa"), randn(2, L, D, gen=gen), "torch", dtype=torch.bfloat16)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_step_matches_forward(gen, name):
    n = L if name == "gqa" else 41  # token-by-token loops are the slow tests: one full-length config
    check_step_matches_forward(_layer(name), randn(2, n, D, gen=gen))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("k", [1, 29])
def test_split_matches_whole(gen, name, k):
    check_split_matches_whole(_layer(name), randn(2, L, D, gen=gen), k)


@pytest.mark.parametrize("name", ["gqa", "window"])
def test_causal_and_batch_independent(gen, name):
    layer, x = _layer(name), randn(3, L, D, gen=gen)
    check_causal(layer, x, 40, gen)
    check_batch_independent(layer, x, gen)


def test_window_limits_the_receptive_field(gen):
    """With window W, the output at t ignores inputs before t - W + 1 (and sees t - W + 1)."""
    layer, x = _layer("window"), randn(1, 40, D, gen=gen)
    with torch.no_grad():
        y, _ = layer(x)
        x2 = x.clone()
        x2[:, :10] = randn(1, 10, D, gen=gen)
        y2, _ = layer(x2)
    assert torch.allclose(y[:, 25:], y2[:, 25:], atol=1e-6), "tokens beyond the window leaked"
    assert not torch.allclose(y[:, 24], y2[:, 24], atol=1e-4), "token t - W + 1 must be seen"


@pytest.mark.parametrize("name", ["gqa", "window"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
@torch.no_grad()
def test_left_padding_equals_unpadded(gen, name, backend):
    """Each sample left-padded by a different amount: same outputs at real positions, same cache."""
    layer = _layer(name, backend=backend)
    pads, n = [5, 0, 11], 40
    x = randn(3, n, D, gen=gen)
    x_pad = randn(3, n + max(pads), D, gen=gen)  # padding content is random: it must not matter
    mask = torch.zeros(3, n + max(pads), dtype=torch.bool)
    for b, p in enumerate(pads):
        off = max(pads) - p  # right-aligned real tokens: `off` pads, then the sequence, then `p` pads
        x_pad[b, off : off + n] = x[b]
        mask[b, off : off + n] = True
    y_pad, s_pad = layer(x_pad, mask=mask)
    for b, p in enumerate(pads):
        y_ref, s_ref = layer(x[b : b + 1])
        off = max(pads) - p
        assert_close(y_pad[b : b + 1, off : off + n], y_ref, TOL[torch.float32], f"sample {b} output")
        for field, t in s_ref.tensors():
            got = getattr(s_pad, field)[b : b + 1]
            assert torch.equal(got, t) if not t.is_floating_point() else torch.allclose(got, t, atol=1e-5), field
    # decoding continues identically after a padded prefill
    x_t = randn(3, D, gen=gen)
    y_t, _ = layer.step(x_t, s_pad)
    for b in range(3):
        _, s_ref = layer(x[b : b + 1])
        y_ref_t, _ = layer.step(x_t[b : b + 1], s_ref)
        assert_close(y_t[b : b + 1], y_ref_t, TOL[torch.float32], f"sample {b} step after padded prefill")


@torch.no_grad()
def test_padding_does_not_leak_with_state(gen):
    """Padded tokens in a later chunk (with a cache) change no real output."""
    layer = _layer("gqa")
    x1, x2 = randn(2, 20, D, gen=gen), randn(2, 15, D, gen=gen)
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[0, :4] = False
    mask[1, 10:] = False
    y_a, _ = layer(x2, layer(x1)[1], mask=mask)
    x2b = x2.clone()
    x2b[~mask] = randn(int((~mask).sum()), D, gen=gen)
    y_b, s_b = layer(x2b, layer(x1)[1], mask=mask)
    assert torch.allclose(y_a[mask], y_b[mask], atol=1e-6)
    assert s_b.pos.tolist() == [20 + 11, 20 + 10]


@torch.no_grad()
def test_cache_is_preallocated_and_mutated_in_place(gen):
    layer = _layer("gqa")
    state = layer.init_state(2)
    assert state.k.shape == (2, 80, 2, 10) and state.valid.shape == (2, 80)
    ptr = state.k.data_ptr()
    _, s1 = layer(randn(2, 7, D, gen=gen), state)
    _, s2 = layer.step(randn(2, D, gen=gen), s1)
    assert s1 is state and s2 is state and state.k.data_ptr() == ptr
    assert state.pos.tolist() == [8, 8] and int(state.valid.sum()) == 16
    ring = _layer("window").init_state(2)
    assert ring.k.shape == (2, 16, 2, 10), "a sliding window needs only `window` slots"


def test_state_is_differentiable(gen):
    """Gradients flow through the cache into the first chunk's inputs (like any mixer state)."""
    layer = _layer("gqa")
    x1 = randn(1, 10, D, gen=gen, requires_grad=True)
    _, s = layer(x1)
    y2, _ = layer(randn(1, 5, D, gen=gen), s)
    y2.sum().backward()
    assert x1.grad is not None and x1.grad.abs().sum() > 0


def test_bidirectional(gen):
    layer = _layer("gqa", bidirectional=True)
    x = randn(2, L, D, gen=gen)
    check_backend_matches_reference(layer, x, "torch")
    with torch.no_grad():
        y, state = layer(x)
        assert state is None
        x2 = x.clone()
        x2[:, 50:] = randn(2, L - 50, D, gen=gen)
        assert not torch.allclose(layer(x2)[0][:, :10], y[:, :10]), "a bidirectional layer must see the future"
        mask = torch.ones(2, L + 4, dtype=torch.bool)
        mask[:, -4:] = False  # right padding
        y_pad, _ = layer(torch.cat([x, randn(2, 4, D, gen=gen)], 1), mask=mask)
        assert_close(y_pad[:, :L], y, TOL[torch.float32], "right-padded bidirectional")
    with pytest.raises(ValueError, match="bidirectional layer cannot decode"):
        layer.step(x[:, 0], None)
    with pytest.raises(ValueError, match="bidirectional layer takes no `state`"):
        layer(x, _layer("gqa").init_state(2))


def test_bad_inputs_raise_clear_errors(gen):
    with pytest.raises(ValueError, match="`d_model`=60 must be divisible by `n_heads`=7"):
        Attention(60, n_heads=7)
    with pytest.raises(ValueError, match="`n_heads`=6 must be divisible by `n_kv_heads`=4"):
        Attention(60, n_heads=6, n_kv_heads=4)
    with pytest.raises(ValueError, match="`rope_fraction` must be in"):
        Attention(60, n_heads=6, rope_fraction=1.5)
    with pytest.raises(ValueError, match="`window` must be >= 1"):
        Attention(60, n_heads=6, window=0)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        Attention(60, n_heads=6, backend="flash")
    layer = _layer("gqa")
    x = randn(2, L, D, gen=gen)
    with pytest.raises(BackendUnavailableError, match="not implemented"):
        _layer("gqa", backend="triton")(x)
    with pytest.raises(BackendUnavailableError, match="not implemented"):
        _layer("gqa", backend="triton").step(x[:, 0], None)
    assert layer.op_backends() == {"attention": "torch", "attention_step": "torch"}
    with pytest.raises(ValueError, match="max_seq_len=80"):
        layer(randn(1, 81, D, gen=gen))
    with torch.no_grad():
        _, s = layer(randn(1, 70, D, gen=gen))
        with pytest.raises(ValueError, match="max_seq_len=80.*81 tokens"):
            layer(randn(1, 11, D, gen=gen), s)
        _, s = layer(randn(1, 80, D, gen=gen))
        with pytest.raises(ValueError, match="max_seq_len=80"):
            layer.step(randn(1, D, gen=gen), s)
    with pytest.raises(TypeError, match="`mask` must have dtype bool"):
        layer(x, mask=torch.ones(2, L))
    with pytest.raises(ValueError, match=r"`mask` expected shape \(B, L\)"):
        layer(x, mask=torch.ones(2, L - 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="channels-first"):
        layer(x.transpose(1, 2))
    with pytest.raises(TypeError, match="must be a AttentionState"):
        layer(x, state=torch.zeros(2, 80))
    with pytest.raises(ValueError, match="field `k` expected shape"):
        layer(x, state=_layer("partial_rope_bias").init_state(2))
    with pytest.raises(ValueError, match="batch size 3"):
        layer(x, state=layer.init_state(3))
    assert isinstance(layer.init_state(2, device="meta"), AttentionState)
