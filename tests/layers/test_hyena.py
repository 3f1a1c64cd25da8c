"""Hyena mixer: the DESIGN.md invariants, decoding state, padding, filter decay, bidirectional, errors."""

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
from ssmkit.layers.hyena import Hyena, HyenaState
from ssmkit.layers.hyena_filter import HyenaFilter
from ssmkit.ops.backends import BackendUnavailableError

D, L, MAX_LEN = 60, 63, 80
CONFIGS = {
    "order2": dict(order=2, filter_order=16, emb_dim=9, max_len=MAX_LEN),
    "order3_k4": dict(order=3, filter_order=8, emb_dim=5, short_filter_order=4, max_len=MAX_LEN, w=3.0),
}


def _layer(name: str, **extra) -> Hyena:
    return Hyena(D, **{**CONFIGS[name], **extra})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_matches_reference(gen, name):
    check_backend_matches_reference(_layer(name), randn(2, L, D, gen=gen), "torch")


def test_torch_matches_reference_bfloat16(gen):
    check_backend_matches_reference(_layer("order2"), randn(2, L, D, gen=gen), "torch", dtype=torch.bfloat16)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_step_matches_forward(gen, name):
    n = L if name == "order2" else 41  # token-by-token loops are the slow tests: one full-length config
    check_step_matches_forward(_layer(name), randn(2, n, D, gen=gen))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("k", [1, 29])
def test_split_matches_whole(gen, name, k):
    check_split_matches_whole(_layer(name), randn(2, L, D, gen=gen), k)


def test_split_matches_whole_reference_backend(gen):
    check_split_matches_whole(_layer("order2", backend="reference").double(), randn(2, 30, D, gen=gen,
                              dtype=torch.float64), 13, tol=TOL[torch.float64])


def test_causal_and_batch_independent(gen):
    layer, x = _layer("order2"), randn(3, L, D, gen=gen)
    check_causal(layer, x, 40, gen)
    check_batch_independent(layer, x, gen)


@torch.no_grad()
def test_left_padding_equals_unpadded(gen):
    layer = _layer("order3_k4")
    pads, n = [6, 0, 2], 30
    x = randn(3, n, D, gen=gen)
    x_pad = randn(3, n + max(pads), D, gen=gen)  # padding content is random: it must not matter
    mask = torch.zeros(3, n + max(pads), dtype=torch.bool)
    for b, p in enumerate(pads):
        x_pad[b, p : p + n] = x[b]
        mask[b, p : p + n] = True  # left padding p, right padding max(pads) - p
    y_pad, s_pad = layer(x_pad, mask=mask)
    for b, p in enumerate(pads):
        y_ref, s_ref = layer(x[b : b + 1])
        assert_close(y_pad[b : b + 1, p : p + n], y_ref, TOL[torch.float32], f"sample {b} output")
        if p == max(pads):  # no right padding: the state equals the unpadded one
            for field, t in s_ref.tensors():
                got = getattr(s_pad, field)[b : b + 1]
                assert torch.equal(got, t) if not t.is_floating_point() else torch.allclose(got, t, atol=1e-5), field
        assert int(s_pad.pos[b]) == n


@torch.no_grad()
def test_padded_prefill_then_decode(gen):
    """Left-padded prompts of different lengths, then token-by-token decoding, match each prompt alone."""
    layer = _layer("order2")
    lens, Lp = [20, 13], 20
    x = randn(2, Lp, D, gen=gen)
    mask = torch.stack([torch.arange(Lp) >= Lp - n for n in lens])
    _, s = layer(x, mask=mask)
    nxt = randn(2, 5, D, gen=gen)
    ys = []
    for t in range(5):
        y_t, s = layer.step(nxt[:, t], s)
        ys.append(y_t)
    for b, n in enumerate(lens):
        y_ref, _ = layer(torch.cat([x[b : b + 1, Lp - n :], nxt[b : b + 1]], 1))
        assert_close(torch.stack(ys, 1)[b : b + 1], y_ref[:, n:], TOL[torch.float32], f"sample {b}")


@torch.no_grad()
def test_step_state_is_fixed_size_and_filter_computed_once(gen, monkeypatch):
    layer = _layer("order2")
    calls = []
    original = HyenaFilter.forward
    monkeypatch.setattr(HyenaFilter, "forward", lambda self: calls.append(1) or original(self))
    s = layer.init_state(2)
    size = s.nbytes()
    assert s.history.shape == (2, MAX_LEN, 2, D), "history: max_len x order x D per sample"
    for _ in range(6):
        _, s = layer.step(randn(2, D, gen=gen), s)
    assert len(calls) == 1, f"the filter was evaluated {len(calls)} times for 6 steps"
    assert s.nbytes() == size and s.kernel is not None and int(s.pos[0]) == 6


def test_filter_decays(gen):
    """|h| at late lags is a small fraction of |h| at early lags; the window reaches its target."""
    layer = Hyena(D, order=2, filter_order=32, emb_dim=17, max_len=200, fast_decay_pct=0.3, slow_decay_pct=1.5)
    with torch.no_grad():
        h = layer.filter()  # (2, 200, D)
        window = layer.filter.window()  # (200, D)
    early, late = h[:, :20].pow(2).mean(), h[:, -20:].pow(2).mean()
    assert late < 0.05 * early, f"filter energy late/early = {late / early:.3f}"
    assert (window[1:] <= window[:-1]).all(), "the window must decay monotonically"
    assert abs(float(window[60, -1]) - 1e-2) < 1e-3, "the fastest channel reaches 1e-2 at 30% of max_len"
    flat = Hyena(D, order=2, filter_order=32, emb_dim=17, max_len=200, fast_decay_pct=1e3, slow_decay_pct=1e3)
    assert float(flat.filter.window().min()) > 0.99, "without decay the window is flat"


def test_bidirectional(gen):
    layer = _layer("order2", bidirectional=True)
    x = randn(2, L, D, gen=gen)
    check_backend_matches_reference(layer, x, "torch")
    with torch.no_grad():
        y, state = layer(x)
        assert state is None
        x2 = x.clone()
        x2[:, 50:] = randn(2, L - 50, D, gen=gen)
        assert not torch.allclose(layer(x2)[0][:, :10], y[:, :10]), "a bidirectional layer must see the future"
        mask = torch.ones(2, L + 7, dtype=torch.bool)
        mask[:, :3] = False
        mask[:, -4:] = False
        x_pad = torch.cat([randn(2, 3, D, gen=gen), x, randn(2, 4, D, gen=gen)], 1)
        assert_close(layer(x_pad, mask=mask)[0][:, 3:-4], y, TOL[torch.float32], "padded bidirectional")
    with pytest.raises(ValueError, match="bidirectional layer cannot decode"):
        layer.step(x[:, 0], None)
    with pytest.raises(ValueError, match="bidirectional layer takes no `state`"):
        layer(x, _layer("order2").init_state(2))


def test_bad_inputs_raise_clear_errors(gen):
    with pytest.raises(ValueError, match="`emb_dim` must be odd"):
        Hyena(D, emb_dim=8)
    with pytest.raises(ValueError, match="`order` must be >= 1"):
        Hyena(D, order=0)
    with pytest.raises(ValueError, match="`fast_decay_pct` <= `slow_decay_pct`"):
        Hyena(D, fast_decay_pct=2.0, slow_decay_pct=1.0)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        Hyena(D, backend="cuda")
    layer = _layer("order2")
    x = randn(2, L, D, gen=gen)
    with pytest.raises(BackendUnavailableError, match="not implemented"):
        _layer("order2", backend="triton")(x)
    with pytest.raises(BackendUnavailableError, match="not implemented"):
        _layer("order2", backend="triton").step(x[:, 0], None)
    assert layer.op_backends() == {"causal_conv1d": "torch", "long_conv": "torch"}
    with pytest.raises(ValueError, match="max_len=80"):
        layer(randn(1, 81, D, gen=gen))
    with torch.no_grad():
        _, s = layer(randn(1, 60, D, gen=gen))
        with pytest.raises(ValueError, match="max_len=80.*81 tokens"):
            layer(randn(1, 21, D, gen=gen), s)
        _, s = layer(randn(1, 80, D, gen=gen))
        with pytest.raises(ValueError, match="max_len=80"):
            layer.step(randn(1, D, gen=gen), s)
    with pytest.raises(TypeError, match="`mask` must have dtype bool"):
        layer(x, mask=torch.ones(2, L))
    with pytest.raises(ValueError, match=r"`mask` expected shape \(B, L\)"):
        layer(x, mask=torch.ones(3, L, dtype=torch.bool))
    with pytest.raises(ValueError, match="channels-first"):
        layer(x.transpose(1, 2))
    with pytest.raises(TypeError, match="must be a HyenaState"):
        layer(x, state=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="field `history` expected shape"):
        layer(x, state=_layer("order2", max_len=90).init_state(2))
    assert isinstance(layer.init_state(2, device="meta"), HyenaState)
