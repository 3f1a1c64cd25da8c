"""The fused CPU decode step of a Mamba-2 block (``ssmkit.ops.decode.mamba2_block``): an LM's steps against the
same weights in float64, its states against the unfused step's, purity, the heads' threads, when it runs, and
its portable build."""

import pytest
import torch

from decode_helpers import (assert_portable_build_matches, assert_states_match_unfused, assert_steps_match_float64,
                            count_calls, steps)
import ssmkit.layers.mamba2 as mamba2_layer
import ssmkit.ops.decode.mamba2_block as mamba2_block
from ssmkit.models import LM, ModelConfig
from ssmkit.models.mixer_configs import Mamba2Config

if not mamba2_block.mamba2_block_available():
    pytest.skip(f"the fused step cannot be built here: {mamba2_block.LIBRARY.cached()[1]}", allow_module_level=True)

VOCAB = 97
SMALL = dict(headdim=16, d_state=16)  # d_model 48: d_inner 96, 6 heads


def model(gen, dtype, backend="auto", residual_in_fp32=True, **mamba2):
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    config = ModelConfig(layers="mmm", d_model=48, vocab_size=VOCAB, backend=backend,
                         residual_in_fp32=residual_in_fp32, mamba2=Mamba2Config(**{**SMALL, **mamba2}))  # fmt: skip
    lm = LM(config).to(dtype).eval()
    with torch.no_grad():  # (D, A, Δ's bias and the norms away from their plain init)
        for layer in lm.backbone.layers:
            mixer = layer.mixer
            mixer.D.normal_(generator=gen)
            mixer.A_log.add_(0.3 * torch.randn(mixer.A_log.shape, generator=gen))
            mixer.dt_bias.add_(torch.randn(mixer.dt_bias.shape, generator=gen))
            for w in (layer.norm.weight, None if mixer.norm is None else mixer.norm.weight):
                if w is not None:
                    w.add_(0.5 * torch.randn(w.shape, generator=gen).to(w.dtype))
    return lm


@pytest.fixture
def fused_calls(monkeypatch):
    return count_calls(monkeypatch, mamba2_layer, "mamba2_block_step_cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("residual_in_fp32, mamba2", [
    (True, {}),
    (False, dict(d_state=7, ngroups=2, d_conv=3)),
    (True, dict(headdim=32, rmsnorm=False, bias=True, conv_bias=False, d_conv=2)),
    (False, dict(ngroups=3, norm_before_gate=True, dt_limit=(0.01, 0.05))),
    (True, dict(ngroups=2, norm_before_gate=False, dt_limit=(0.0, 0.02), bias=True)),
])  # fmt: skip
def test_steps_match_float64(gen, fused_calls, dtype, residual_in_fp32, mamba2):
    """Eight tokens through an LM of three Mamba-2 blocks, every block fused, against the same weights in float64
    (the PyTorch step): logits within the dtype's tolerance, with and without a float32 residual; the gated
    RMSNorm per group of heads, before the gate or after it, and the plain silu(z) gate; 1-3 groups of B and C,
    an odd state size, conv widths 2-4, biases in the projections, no conv bias, Δ clamped."""
    assert_steps_match_float64(model, gen, fused_calls, dtype, residual_in_fp32=residual_in_fp32, **mamba2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_states_match_the_unfused_step_and_stay_untouched(gen, fused_calls, dtype):
    """The fused blocks' states after five tokens equal the unfused step's (backend "torch", same dtype) within
    the dtype's tolerance, and the state passed in is not modified."""
    assert_states_match_unfused(model, gen, fused_calls, dtype, ngroups=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threads_give_the_same_bits(gen, fused_calls, dtype):
    """The heads (and the projections' rows) split over two threads give the logits and states of one thread,
    bit for bit: each head and row is computed whole by one thread."""
    lm = model(gen, dtype, ngroups=3)
    ids = torch.randint(VOCAB, (4,), generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, s_one = steps(lm, ids, dtype)
        torch.set_num_threads(2)
        two, s_two = steps(lm, ids, dtype)
    finally:
        torch.set_num_threads(threads)
    assert len(fused_calls) == 2 * 4 * 3
    assert torch.equal(one, two)
    assert all(torch.equal(a.ssm, b.ssm) and torch.equal(a.conv, b.conv) for a, b in zip(s_one, s_two))


def test_when_it_runs(gen, fused_calls):
    """Only without autograd, at one row, on the CPU under backend "auto" / "c", with plain projections and norms;
    every other step takes the usual path."""
    lm = model(gen, torch.float32)
    ids = torch.randint(VOCAB, (1,), generator=gen)
    lm.step(ids, lm.init_state(1))  # autograd on
    assert fused_calls == []
    with torch.no_grad():
        lm.step(ids.repeat(2), lm.init_state(2))  # two rows
        model(gen, torch.float32, backend="torch").step(ids, lm.init_state(1))
        assert fused_calls == []
        handles = [lm.backbone.layers[1].mixer.in_proj.register_forward_hook(lambda *a: None),
                   lm.backbone.layers[2].mixer.norm.register_forward_pre_hook(lambda *a: None)]  # fmt: skip
        lm.step(ids, lm.init_state(1))
        assert len(fused_calls) == 1  # the hooked blocks' modules run as modules
        for h in handles:
            h.remove()
        model(gen, torch.float32, backend="c").step(ids, lm.init_state(1))
        assert len(fused_calls) == 4


def test_a_state_of_another_shape_raises(gen, fused_calls):
    """The C code trusts its buffers' sizes: a block given a state from a differently configured layer raises
    ValueError, as the unfused step does, rather than reading it (the backbone checks the states too)."""
    block = model(gen, torch.float32).backbone.layers[0]
    other = model(gen, torch.float32, d_state=8).backbone.layers[0].mixer
    residual = torch.randn(1, 48, generator=gen)
    with torch.no_grad(), pytest.raises(ValueError, match="expected shape"):
        block.step(residual, other.init_state(1))
    assert fused_calls == []
    with torch.no_grad():
        block.step(residual, block.mixer.init_state(1))
    assert len(fused_calls) == 1


def test_portable_build(gen, tmp_path, monkeypatch):
    """The flag set without OpenMP (and the portable C loops, no AVX-512) gives the float64 logits too."""
    assert_portable_build_matches(model, mamba2_block.LIBRARY, gen, tmp_path, monkeypatch, ngroups=2)
