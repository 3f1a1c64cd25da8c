"""generate / stream / prefill / decode_one over every tiny preset."""

from __future__ import annotations

import pytest
import torch

from model_helpers import TINY_PRESETS, one_thread, random_ids, tiny_lm  # noqa: F401
from numerics import TOL, assert_close
from ssmkit.generation import apply_repetition_penalty, decode_one, generate, prefill, stream


def _prompts(gen, lengths):
    return [random_ids(gen, n).tolist() for n in lengths]


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_padded_batch_equals_one_by_one(name, gen):
    model = tiny_lm(name)
    prompts = _prompts(gen, [7, 13, 2])
    batched = generate(model, prompts, max_new_tokens=9, pad_id=258)
    alone = [generate(model, p, max_new_tokens=9) for p in prompts]
    assert batched == alone
    assert [len(r) for r in batched] == [16, 22, 11]
    assert all(r[: len(p)] == p for r, p in zip(batched, prompts))


@pytest.mark.parametrize("name", ["hybrid-tiny", "hyena-tiny"])
@torch.no_grad()
def test_padding_does_not_leak_into_the_state(name, gen):
    model = tiny_lm(name)
    short, long = random_ids(gen, 6), random_ids(gen, 15)
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[0, :9] = False
    states = []
    for _ in range(2):  # two different random paddings
        ids = torch.stack([torch.cat([random_ids(gen, 9), short]), long])
        logits, state = prefill(model, ids, mask)
        states.append((logits, state))
    alone_logits, alone_state = prefill(model, short[None])
    for logits, state in states:
        assert_close(logits[0], alone_logits[0], TOL[torch.float32], "last logits of the padded row")
        for i, (s, a) in enumerate(zip(state, alone_state)):
            for (field, t), (_, ta) in zip(s.tensors(), a.tensors()):
                if t.is_floating_point():
                    if ta.abs().max() > 0:
                        assert_close(t[:1], ta, TOL[torch.float32], f"layer {i} `{field}`")
                    else:
                        assert t[:1].abs().max() == 0, f"layer {i} `{field}`"
                else:
                    assert torch.equal(t[:1], ta), f"layer {i} `{field}`"


def test_tensor_prompts_and_stream_agree_with_generate(gen):
    model = tiny_lm("hybrid-tiny")
    ids = random_ids(gen, 2, 5)
    out = generate(model, ids, max_new_tokens=6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], ids)
    assert out.tolist() == generate(model, ids.tolist(), max_new_tokens=6)
    steps = list(stream(model, ids, max_new_tokens=6))
    assert len(steps) == 6 and torch.equal(torch.stack(steps, 1), out[:, 5:])
    single = list(stream(model, ids[0].tolist(), max_new_tokens=6))
    assert all(isinstance(t, int) for t in single) and single == out[0, 5:].tolist()
    assert generate(model, ids[0], max_new_tokens=6) == out[0].tolist()


def test_stop_tokens_end_each_row(gen):
    model = tiny_lm("mamba2-tiny")
    prompts = _prompts(gen, [4, 9])
    free = generate(model, prompts, max_new_tokens=8)
    stop = free[0][4 + 2]  # row 0's third new token
    stopped = generate(model, prompts, max_new_tokens=8, stop_tokens=[stop])
    for p, f, s in zip(prompts, free, stopped):
        new = f[len(p):]
        cut = new.index(stop) + 1 if stop in new else len(new)
        assert s == p + new[:cut]
    assert len(stopped[0]) <= 4 + 3
    tensor = generate(model, torch.tensor(prompts[0])[None], max_new_tokens=8, stop_tokens=[stop], pad_id=258)
    assert tensor.shape[1] == len(stopped[0])  # everything stopped: no further steps
    assert list(stream(model, prompts[0], max_new_tokens=8, stop_tokens=[stop])) == stopped[0][4:]


def test_seeded_sampling_is_reproducible(gen):
    model = tiny_lm("s4d-tiny")
    prompts = _prompts(gen, [5, 3])
    kw = dict(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95)
    a = generate(model, prompts, generator=torch.Generator().manual_seed(11), **kw)
    b = generate(model, prompts, generator=torch.Generator().manual_seed(11), **kw)
    c = generate(model, prompts, generator=torch.Generator().manual_seed(12), **kw)
    assert a == b and a != c


@torch.no_grad()
def test_repetition_penalty_counts_prompt_and_output(gen):
    model = tiny_lm("mamba-tiny")
    prompt = random_ids(gen, 6).tolist()
    out = generate(model, prompt, max_new_tokens=10, repetition_penalty=4.0)
    seen = torch.zeros(1, model.vocab_size, dtype=torch.bool)
    seen[0, prompt] = True
    logits, state = prefill(model, torch.tensor([prompt]))
    manual = []
    for _ in range(10):
        token = apply_repetition_penalty(logits, seen, 4.0).argmax(-1)
        manual.append(int(token))
        seen[0, token] = True
        logits, state = decode_one(model, token, state)
    assert out == prompt + manual


@torch.no_grad()
def test_decoding_state_has_fixed_size(gen):
    model = tiny_lm("mamba-tiny")
    assert model.length_limits() == []  # a pure SSM has no cache to run out of
    _, state = prefill(model, random_ids(gen, 1, 5))
    size = sum(s.nbytes() for s in state)
    token = torch.tensor([3])
    for _ in range(40):
        logits, state = decode_one(model, token, state)
        token = logits.argmax(-1)
    assert sum(s.nbytes() for s in state) == size


def test_cache_overflow_refused_before_any_work(gen):
    model = tiny_lm("hybrid-tiny")
    calls = []
    model.embedding.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=r"prompt 500 \+ 100 new tokens exceed attention layer 3's max_seq_len 512"):
        generate(model, [random_ids(gen, 500).tolist(), [1, 2]], max_new_tokens=100)
    with pytest.raises(ValueError, match=r"prompt 500 \+ 13 new tokens exceed attention layer 3's max_seq_len 512"):
        stream(model, random_ids(gen, 500).tolist(), max_new_tokens=13)
    hyena = tiny_lm("hyena-tiny")
    with pytest.raises(ValueError, match=r"prompt 510 \+ 3 new tokens exceed hyena layer 0's max_len 512"):
        generate(hyena, random_ids(gen, 510).tolist(), max_new_tokens=3)
    assert calls == []
    assert len(generate(model, random_ids(gen, 500).tolist(), max_new_tokens=12)) == 512  # exactly fits


def test_generate_errors(gen):
    model = tiny_lm("mamba-tiny")
    with pytest.raises(TypeError, match=r"`prompt_ids` must be a list of ids, a list of lists of ids"):
        generate(model, "hello", max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt 1 must be a non-empty list of int token ids"):
        generate(model, [[1, 2], []], max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt ids must be in \[0, 259\), got ids in \[1, 400\]"):
        generate(model, [1, 400], max_new_tokens=3)
    with pytest.raises(TypeError, match=r"must hold integer token ids, got dtype torch.float32"):
        generate(model, torch.ones(1, 3), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"`max_new_tokens` must be an int >= 0, got -1"):
        generate(model, [1], max_new_tokens=-1)
    with pytest.raises(ValueError, match=r"`pad_id` must hold ids in \[0, 259\), got 259"):
        generate(model, [1], max_new_tokens=2, pad_id=259)
    with pytest.raises(ValueError, match=r"`top_p` must be None or in \(0, 1\], got 0"):
        generate(model, [1], max_new_tokens=2, top_p=0)
    with pytest.raises(ValueError, match=r"`mask` must be left-padded"):
        prefill(model, torch.ones(2, 3, dtype=torch.int64), torch.tensor([[True, True, False], [True] * 3]))
    assert generate(model, [5, 6], max_new_tokens=0) == [5, 6]
