"""LM over every tiny preset: step == forward, split == whole, padding, fixed-size state, errors.

The big presets are built on the meta device (no memory) and checked by
their parameter counts, which follow from the public checkpoints' shapes.
"""

from __future__ import annotations

import copy

import pytest
import torch

from model_helpers import SSM_TINY_PRESETS, TINY_PRESETS, one_thread, random_ids, tiny_lm  # noqa: F401
from numerics import TOL, assert_close
from ssmkit.layers.mlp import MoE
from ssmkit.models.backbone import Backbone
from ssmkit.models.config import ModelConfig
from ssmkit.models.classifier import SequenceClassifier
from ssmkit.models.lm import LM

TOL32 = TOL[torch.float32]


def states_close(a, b, what, rows=None):
    """Per-layer states equal (floats within TOL32); ``rows`` selects batch rows of ``a``."""
    assert len(a) == len(b)
    for i, (sa, sb) in enumerate(zip(a, b)):
        assert type(sa) is type(sb), f"{what}: layer {i} state types differ"
        for (name, ta), (_, tb) in zip(sa.tensors(), sb.tensors()):
            ta = ta if rows is None else ta[rows]
            if ta.is_floating_point():
                if tb.abs().max() == 0:
                    assert ta.abs().max() == 0, f"{what}: layer {i} `{name}` should be zero"
                else:
                    assert_close(ta, tb, TOL32, f"{what}: layer {i} `{name}`")
            else:
                assert torch.equal(ta, tb), f"{what}: layer {i} `{name}` differs"


@pytest.mark.parametrize("name", TINY_PRESETS)
@torch.no_grad()
def test_step_matches_forward(name, gen):
    model = tiny_lm(name)
    ids = random_ids(gen, 2, 37)
    logits, state = model(ids)
    assert logits.shape == (2, 37, 259) and logits.dtype == torch.float32
    step_state = model.init_state(2)
    outs = []
    for t in range(ids.shape[1]):
        out, step_state = model.step(ids[:, t], step_state)
        outs.append(out)
    assert_close(torch.stack(outs, 1), logits, TOL32, f"{name}: teacher-forced step vs forward logits")
    states_close(step_state, state, f"{name}: step vs forward state")


@pytest.mark.parametrize("name", TINY_PRESETS)
@torch.no_grad()
def test_float32_model_matches_float64_reference(name, gen):
    """The assembled model on its default backends equals a float64 copy on every layer's reference backend."""
    model = tiny_lm(name)
    ref = copy.deepcopy(model).double()
    for layer in ref.backbone.layers:
        layer.mixer.backend = "reference"
    ids = random_ids(gen, 2, 21)
    logits, state = model(ids)
    ref_logits, ref_state = ref(ids)
    assert ref_logits.dtype == torch.float64
    assert_close(logits, ref_logits, TOL32, f"{name}: float32 vs float64 reference logits")
    states_close(state, ref_state, f"{name}: float32 vs float64 reference state")


@pytest.mark.parametrize("name", TINY_PRESETS)
@torch.no_grad()
def test_split_forward_matches_whole(name, gen):
    model = tiny_lm(name)
    ids = random_ids(gen, 2, 45)
    logits, state = model(ids)
    first, s1 = model(ids[:, :19])
    second, s2 = model(ids[:, 19:], s1)
    assert_close(torch.cat([first, second], 1), logits, TOL32, f"{name}: split vs whole logits")
    states_close(s2, state, f"{name}: split vs whole state")


@pytest.mark.parametrize("name", TINY_PRESETS)
@torch.no_grad()
def test_left_padding_changes_nothing_at_real_positions(name, gen):
    model = tiny_lm(name)
    lengths = [29, 17, 8]
    L = max(lengths)
    rows = [random_ids(gen, n) for n in lengths]
    ids = random_ids(gen, 3, L)  # random padding tokens: they must not matter
    mask = torch.zeros(3, L, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = r
        mask[b, L - len(r):] = True
    logits, state = model(ids, mask=mask)
    for b, r in enumerate(rows):
        alone, alone_state = model(r[None])
        assert_close(logits[b, L - len(r):], alone[0], TOL32, f"{name}: padded row {b} logits")
        states_close(state, alone_state, f"{name}: padded row {b} state", rows=slice(b, b + 1))


@pytest.mark.parametrize("name", SSM_TINY_PRESETS)
@torch.no_grad()
def test_state_size_does_not_grow_with_context(name, gen):
    model = tiny_lm(name)
    sizes = []
    for L in (100, 10_000):
        _, state = model(random_ids(gen, 1, L), num_last_tokens=1)
        sizes.append(sum(s.nbytes() for s in state))
    assert sizes[0] == sizes[1] > 0
    assert sum(s.nbytes() for s in model.init_state(1)) == sizes[0]


def test_big_presets_parameter_counts():
    """Exact counts from the public checkpoints' shapes (tied embedding counted once)."""
    expected = {
        # 50280*768 embedding + 24 * (in_proj 768*3072 + conv 1536*5 + x_proj 1536*80 + dt_proj 48*1536+1536
        #   + A_log 1536*16 + D 1536 + out_proj 1536*768 + norm 768) + norm_f 768
        "mamba-130m": 129_135_360,
        # 50288*768 + 24 * (in_proj 768*3352 + conv 1792*5 + 3*24 + gated norm 1536 + out_proj 1536*768 + 768) + 768
        "mamba2-130m": 128_989_632,
    }
    for name in ModelConfig.presets():
        config = ModelConfig.preset(name)
        if name.endswith("-tiny") or config.bidirectional:
            continue
        with torch.device("meta"):  # no memory, no init cost
            model = LM(config)
        n = model.num_parameters()
        assert model.lm_head.weight is model.embedding.weight
        assert model.embedding.weight.shape == (config.padded_vocab_size, config.d_model)
        assert n == expected.get(name, n), f"{name}: {n} parameters, expected {expected[name]}"
        assert 100e6 < n < 300e6, f"{name}: {n / 1e6:.1f}M parameters"


def test_s4d_lra_classifier_builds_and_runs(gen):
    config = ModelConfig.preset("s4d-lra")
    model = SequenceClassifier(config, n_classes=10)
    assert all(not layer.mixer.causal for layer in model.backbone.layers)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 5e6
    assert model(random_ids(gen, 2, 33)).shape == (2, 10)


@pytest.mark.parametrize("name", ["mamba-130m", "mamba2-130m"])
def test_big_preset_forward_on_meta(name):
    with torch.device("meta"):
        model = LM(ModelConfig.preset(name))
        logits, state = model(torch.zeros(2, 16, dtype=torch.int64))
    assert logits.shape == (2, 16, 50277) and len(state) == 24


def test_untied_head_and_vocab_padding():
    model = tiny_lm("mamba-tiny", tie_embeddings=False, vocab_size=250, pad_vocab_size_multiple=16)
    assert model.lm_head.weight is not model.embedding.weight
    assert model.embedding.weight.shape[0] == 256
    logits, _ = model(torch.tensor([[1, 2, 249]]))
    assert logits.shape == (1, 3, 250)


def test_residual_stream_stays_float32(gen):
    for fp32, want in ((True, torch.float32), (False, torch.bfloat16)):
        model = tiny_lm("transformer-tiny", residual_in_fp32=fp32).to(torch.bfloat16)
        seen = []
        model.backbone.layers[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
        logits, _ = model(random_ids(gen, 2, 9))
        assert seen == [want] and logits.dtype == torch.bfloat16


def test_moe_aux_loss_of_the_lm(gen):
    model = tiny_lm("hybrid-tiny")
    moes = [layer.mlp for layer in model.backbone.layers if isinstance(layer.mlp, MoE)]
    assert len(moes) == 2  # moe_every=2 over 4 layers: layers 1 and 3
    assert float(model.aux_loss()) == 0.0
    logits, _ = model(random_ids(gen, 2, 13))
    aux = model.aux_loss()
    assert torch.isfinite(aux) and aux > 0
    (logits.square().mean() + aux).backward()
    assert all(m.router.weight.grad.norm() > 0 for m in moes)


def test_bad_states_raise_clear_errors(gen):
    mamba, mamba2 = tiny_lm("mamba-tiny"), tiny_lm("mamba2-tiny")
    ids = random_ids(gen, 4, 5)
    with pytest.raises(ValueError, match=r"state for layer 0 is a MambaState for batch 2, expected a MambaState "
                                         r"for batch 4"):
        mamba(ids, mamba.init_state(2))
    with pytest.raises(TypeError, match=r"state for layer 0 is a Mamba2State, expected a MambaState"):
        mamba(ids, mamba2.init_state(4))
    with pytest.raises(ValueError, match=r"`state` has 3 layer states, but this model has 2 layers"):
        mamba.step(ids[:, 0], mamba.init_state(4) + mamba.init_state(4)[:1])
    other = tiny_lm("mamba-tiny", mamba=ModelConfig.preset("mamba-tiny").mamba.__class__(d_state=4))
    with pytest.raises(ValueError, match=r"state for layer 0 \(MambaState\) has `ssm` of shape \(4, 128, 4\), "
                                         r"expected \(4, 128, 8\)"):
        mamba(ids, other.init_state(4))
    with pytest.raises(TypeError, match=r"`state` must be a list of per-layer states"):
        mamba(ids, mamba.init_state(4)[0])


def test_bad_inputs_raise_clear_errors(gen):
    model = tiny_lm("mamba-tiny")
    with pytest.raises(TypeError, match=r"`input_ids` must have an integer dtype"):
        model(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"`input_ids` has ids in \[0, 300\], expected \[0, 259\)"):
        model(torch.tensor([[0, 300]]))
    with pytest.raises(ValueError, match=r"`input_ids` expected shape \(B, L\)"):
        model(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"`ids` expected shape \(B,\)"):
        model.step(torch.tensor([[1]]), model.init_state(1))
    with pytest.raises(TypeError, match=r"`mask` must have dtype bool"):
        model(torch.tensor([[1, 2]]), mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"`mask` expected shape \(B, L\) = \(1, 2\), got \(1, 3\)"):
        model(torch.tensor([[1, 2]]), mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"a causal LM needs causal layers"):
        LM(ModelConfig.preset("s4d-tiny", bidirectional=True))
    with pytest.raises(TypeError, match=r"`config` must be a ModelConfig, got dict"):
        LM({"layers": "M"})
    bidir = Backbone(ModelConfig.preset("hyena-tiny", bidirectional=True))
    with pytest.raises(RuntimeError, match=r"bidirectional .* no recurrent state or step"):
        bidir.step(torch.ones(1, 64), [])
    with pytest.raises(ValueError, match=r"`hidden` expected shape \(B, L, D\) with D=64, got \(1, 3, 32\)"):
        bidir(torch.ones(1, 3, 32))


@pytest.mark.parametrize("name", ["mamba-130m", "mamba2-130m", "hyena-small", "transformer-small", "hybrid-small"])
@torch.no_grad()
def test_big_preset_step_matches_forward(name, gen):
    """Every causal full-size preset, built for real: teacher-forced step logits equal the forward's."""
    config = ModelConfig.preset(name)
    model = LM(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 6), generator=gen)
    logits, state = model(ids)
    step_state, outs = model.init_state(1), []
    for t in range(ids.shape[1]):
        out, step_state = model.step(ids[:, t], step_state)
        outs.append(out)
    assert_close(torch.stack(outs, 1), logits, TOL32, f"{name}: teacher-forced step vs forward logits")
    states_close(step_state, state, f"{name}: step vs forward state")
