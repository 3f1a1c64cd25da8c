"""Decoding through a CUDA graph (``ssmkit.generation.graphs``): which models may, the arguments, and on a GPU
the same tokens and states as the eager steps."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch

from model_helpers import SSM_TINY_PRESETS, one_thread, random_ids, tiny_lm  # noqa: F401
from numerics import TOL, assert_close
from ssmkit.generation import GraphedStep, decode_one, generate, graph_unsupported_reason, prefill, stream

generate_module = importlib.import_module("ssmkit.generation.generate")  # (the package's `generate` is the function)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.mark.parametrize("name, layer", [("transformer-tiny", "Attention"), ("hyena-tiny", "Hyena")])
def test_layers_that_read_on_the_host_are_named(name, layer):
    reason = graph_unsupported_reason(tiny_lm(name))
    assert reason is not None and layer in reason and "backbone.layers." in reason


def test_models_without_ssmkit_mixers_are_refused():
    reason = graph_unsupported_reason(torch.nn.Linear(4, 4))
    assert reason is not None and "no ssmkit mixer" in reason


def test_moe_is_named():
    reason = graph_unsupported_reason(tiny_lm("hybrid-tiny"))  # (its first MoE comes before its attention)
    assert reason is not None and "MoE" in reason


@pytest.mark.parametrize("name", SSM_TINY_PRESETS)
def test_graphable_models_off_the_gpu_need_cuda(name, gen):
    model = tiny_lm(name)
    assert "CUDA" in graph_unsupported_reason(model)
    with pytest.raises(ValueError, match="`cuda_graph` is True, but CUDA graphs need a model on a CUDA device"):
        generate(model, random_ids(gen, 5).tolist(), max_new_tokens=4, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph"):
        next(stream(model, random_ids(gen, 5).tolist(), max_new_tokens=4, cuda_graph=True))


def test_cuda_graph_argument_checked(gen):
    with pytest.raises(TypeError, match=r"argument `cuda_graph` must be None, True or False, got 'yes'"):
        generate(tiny_lm("mamba-tiny"), [1, 2, 3], max_new_tokens=2, cuda_graph="yes")


def test_auto_decodes_eagerly_where_it_cannot_graph(gen, monkeypatch):
    model = tiny_lm("mamba-tiny")
    prompt = random_ids(gen, 6).tolist()
    monkeypatch.setattr(generate_module, "GRAPH_MIN_TOKENS", 1)
    eager = generate(model, prompt, max_new_tokens=20, cuda_graph=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (CPU: None means eager, without trying a capture that would warn)
        assert generate(model, prompt, max_new_tokens=20) == eager


# -- on the GPU -------------------------------------------------------------------------------


def _gpu_lm(name: str, dtype=torch.float32):
    return tiny_lm(name).to(device="cuda", dtype=dtype)


@cuda
@pytest.mark.parametrize("name", SSM_TINY_PRESETS + ["mamba-tiny-mlp"])
def test_graphed_tokens_equal_eager(name, gen):
    model = _gpu_lm(name) if name != "mamba-tiny-mlp" else tiny_lm("mamba-tiny", mlp="gated").cuda()
    prompts = [random_ids(gen, n).tolist() for n in (7, 3)]
    eager = generate(model, prompts, max_new_tokens=24, pad_id=258, cuda_graph=False)
    graphed = generate(model, prompts, max_new_tokens=24, pad_id=258, cuda_graph=True)
    assert graphed == eager
    g1, g2 = (torch.Generator(device="cuda").manual_seed(5) for _ in range(2))
    sampled = [generate(model, prompts[0], max_new_tokens=24, temperature=1.0, top_k=40, generator=g, cuda_graph=c)
               for g, c in ((g1, False), (g2, True))]  # fmt: skip
    assert sampled[0] == sampled[1]


@cuda
@pytest.mark.parametrize("name", ["mamba-tiny", "mamba2-tiny", "s4d-tiny"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_graphed_state_and_logits_follow_eager_steps(name, dtype, gen):
    model = _gpu_lm(name, dtype)
    ids = random_ids(gen, 2, 9).cuda()
    logits, state = prefill(model, ids)
    tokens = [random_ids(gen, 2).cuda() for _ in range(6)]
    step = GraphedStep.capture(model, tokens[0], state)
    for k, token in enumerate(tokens):
        want, state = decode_one(model, token, state)
        got = step(token)
        assert_close(got, want, TOL[dtype], f"logits after step {k}")
        for i, (s, e) in enumerate(zip(step.state, state)):
            for (field, t), (_, te) in zip(s.tensors(), e.tensors()):
                assert_close(t, te, TOL[dtype], f"step {k}, layer {i} `{field}`")


@cuda
def test_graph_required_where_the_model_cannot(gen):
    model = _gpu_lm("transformer-tiny")
    with pytest.raises(ValueError, match="`cuda_graph` is True, but layer `backbone.layers.0.mixer` \\(Attention\\)"):
        generate(model, [1, 2, 3], max_new_tokens=20, cuda_graph=True)
    assert len(generate(model, [1, 2, 3], max_new_tokens=20)) == 23  # (None: eager)


@cuda
@pytest.mark.parametrize("name", ["mamba-tiny", "s4d-tiny"])
def test_capture_reused_until_the_weights_change(name, gen):
    graphs = importlib.import_module("ssmkit.generation.graphs")
    model = _gpu_lm(name)
    prompt = random_ids(gen, 5).tolist()
    first = generate(model, prompt, max_new_tokens=20, cuda_graph=True)
    step = graphs._GRAPHS[model][1]
    assert generate(model, prompt, max_new_tokens=20, cuda_graph=True) == first
    assert graphs._GRAPHS[model][1] is step  # (same batch, same weights: the same graph, from a fresh state)
    with torch.no_grad():
        for p in model.parameters():  # (in place, as an optimizer step: same storage, new version)
            p.mul_(1.5)
    changed = generate(model, prompt, max_new_tokens=20, cuda_graph=True)
    assert graphs._GRAPHS[model][1] is not step
    assert changed == generate(model, prompt, max_new_tokens=20, cuda_graph=False)
    graphs.release_graphs(model)
    assert model not in graphs._GRAPHS


def _pdl_on_this_gpu() -> bool:
    from ssmkit.ops._pdl import pdl_enabled

    return torch.cuda.is_available() and pdl_enabled(torch.device("cuda"))


@pytest.mark.skipif(not _pdl_on_this_gpu(), reason="PDL needs a GPU of compute capability 9.0+ and Triton >= 3.4")
@pytest.mark.parametrize("name", ["mamba-tiny", "mamba2-tiny"])
@torch.no_grad()
def test_pdl_changes_no_logit(name, gen, monkeypatch):
    """Batch-1 bfloat16 decoding (the matrix-vector, norm, conv and scan step kernels, chained with programmatic
    dependent launch) through a CUDA graph and eagerly: the logits and states with PDL on equal those with it off
    bit for bit (the kernels' arithmetic is the same; only when they may start differs)."""
    model = _gpu_lm(name, torch.bfloat16)
    ids = random_ids(gen, 1, 9).cuda()
    tokens = [random_ids(gen, 1).cuda() for _ in range(12)]
    runs = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("SSMKIT_PDL", flag)
        _, state = prefill(model, ids)
        step = GraphedStep.capture(model, tokens[0], state)
        graphed = torch.stack([step(t).clone() for t in tokens])
        _, state = prefill(model, ids)
        eager = []
        for t in tokens:
            logits, state = decode_one(model, t, state)
            eager.append(logits)
        runs[flag] = (graphed, torch.stack(eager), [t.clone() for s in step.state for _, t in s.tensors()])
    for a, b, what in zip(runs["1"], runs["0"], ("graphed logits", "eager logits", "graph's state")):
        if isinstance(a, list):
            assert all(torch.equal(x, y) for x, y in zip(a, b)), what
        else:
            assert torch.equal(a, b), what
