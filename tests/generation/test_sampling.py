"""Sampling functions do what they say: greedy, top-k, top-p, temperature, seeds, repetition penalty."""

from __future__ import annotations

import pytest
import torch

from model_helpers import one_thread  # noqa: F401  (autouse fixture)
from numerics import randn
from ssmkit.generation.sampling import apply_repetition_penalty, greedy, sample, top_k_filter, top_p_filter


def test_greedy_and_temperature_zero(gen):
    logits = randn(5, 37, gen=gen)
    assert torch.equal(greedy(logits), logits.argmax(-1))
    assert torch.equal(sample(logits, temperature=0.0, top_k=3, top_p=0.5), logits.argmax(-1))


def test_top_k_never_samples_outside_the_k(gen):
    logits = randn(1, 61, gen=gen, scale=0.3).expand(3000, -1)  # flat-ish: all of the k get drawn
    draws = sample(logits, temperature=1.0, top_k=7, generator=gen)
    allowed = set(logits[0].topk(7).indices.tolist())
    assert set(draws.tolist()) == allowed
    filtered = top_k_filter(randn(4, 61, gen=gen), 7)
    assert (torch.isfinite(filtered).sum(-1) == 7).all()


def test_top_k_keeps_exactly_k_with_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).sum() == 2


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    kept = lambda p: set(torch.isfinite(top_p_filter(logits, p))[0].nonzero()[:, 0].tolist())  # noqa: E731
    assert kept(0.5) == {1}
    assert kept(0.7) == {1, 3}
    assert kept(0.8) == {1, 3}  # 0.5 + 0.3 reaches 0.8
    assert kept(0.81) == {1, 3, 2}
    assert kept(1.0) == {0, 1, 2, 3}


def test_top_p_mass_on_random_logits(gen):
    logits = randn(6, 101, gen=gen, scale=2.0)
    p = 0.9
    probs = logits.softmax(-1)
    keep = torch.isfinite(top_p_filter(logits, p))
    for b in range(6):
        kept = probs[b][keep[b]]
        assert kept.sum() >= p - 1e-6
        assert kept.sum() - kept.min() < p  # minimal: dropping the least likely kept token falls short
        assert probs[b][~keep[b]].max() <= kept.min()  # the kept ones are the most likely
    draws = sample(logits.repeat(200, 1), top_p=p, generator=gen).reshape(200, 6)
    assert keep.gather(1, draws.T).all()


def test_temperature_matches_softmax_distribution(gen):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    n = 20000
    draws = sample(logits.expand(n, -1), temperature=2.0, generator=gen)
    freq = torch.bincount(draws, minlength=4).double() / n
    want = (logits[0].double() / 2.0).softmax(-1)
    assert (freq - want).abs().max() < 0.02, (freq, want)


def test_seeded_generator_reproducible():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(3))
    a = sample(logits, top_k=20, top_p=0.95, generator=torch.Generator().manual_seed(7))
    b = sample(logits, top_k=20, top_p=0.95, generator=torch.Generator().manual_seed(7))
    draws = [sample(logits, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    assert torch.equal(a, b)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_repetition_penalty_formula(gen):
    logits = randn(2, 11, gen=gen)
    seen = torch.zeros(2, 11, dtype=torch.bool)
    seen[0, [1, 4]] = True
    seen[1, 7] = True
    out = apply_repetition_penalty(logits, seen, 1.5)
    want = logits.clone()
    for b, t in [(0, 1), (0, 4), (1, 7)]:
        v = logits[b, t]
        want[b, t] = v / 1.5 if v > 0 else v * 1.5
    assert torch.equal(out, want)
    assert (out[seen] < logits[seen]).all()  # a seen token always becomes less likely
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_sampling_errors():
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"`temperature` must be >= 0, got -1"):
        sample(logits, temperature=-1)
    with pytest.raises(ValueError, match=r"`k` must be an int >= 1, got 0"):
        top_k_filter(logits, 0)
    with pytest.raises(ValueError, match=r"`p` must be in \(0, 1\], got 1.5"):
        top_p_filter(logits, 1.5)
    with pytest.raises(ValueError, match=r"`penalty` must be > 0, got 0"):
        apply_repetition_penalty(logits, torch.zeros(2, 5, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match=r"`seen` expected a bool tensor of shape \(2, 5\)"):
        apply_repetition_penalty(logits, torch.zeros(2, 4, dtype=torch.bool), 1.2)
    with pytest.raises(ValueError, match=r"`logits` expected a float tensor of shape \(B, V\)"):
        greedy(torch.zeros(5))
