"""The fused CPU decode step of a Mamba block (``ssmkit.ops.decode.mamba_block``): an LM's steps against the same weights
in float64, its states against the unfused step's, purity, when it runs, and its portable build."""

import pytest
import torch

from decode_helpers import (assert_portable_build_matches, assert_states_match_unfused, assert_steps_match_float64,
                            count_calls)
import ssmkit.layers.mamba as mamba_layer
import ssmkit.ops.decode.mamba_block as mamba_block
from ssmkit.models import LM, ModelConfig
from ssmkit.models.mixer_configs import MambaConfig

if not mamba_block.mamba_block_available():
    pytest.skip(f"the fused step cannot be built here: {mamba_block.LIBRARY.cached()[1]}", allow_module_level=True)

VOCAB = 97


def model(gen, dtype, backend="auto", residual_in_fp32=True, **mamba):
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    config = ModelConfig(layers="MMM", d_model=48, vocab_size=VOCAB, backend=backend,
                         residual_in_fp32=residual_in_fp32, mamba=MambaConfig(**mamba))  # fmt: skip
    lm = LM(config).to(dtype).eval()
    with torch.no_grad():  # (D and the conv weights away from their plain init)
        for layer in lm.backbone.layers:
            layer.mixer.D.normal_(generator=gen)
            layer.mixer.A_log.add_(0.3 * torch.randn(layer.mixer.A_log.shape, generator=gen))
    return lm


@pytest.fixture
def fused_calls(monkeypatch):
    return count_calls(monkeypatch, mamba_layer, "mamba_block_step_cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("residual_in_fp32, mamba", [
    (True, {}), (False, {}), (True, dict(bias=True, conv_bias=False, d_conv=2)), (False, dict(d_state=7, d_conv=3)),
])  # fmt: skip
def test_steps_match_float64(gen, fused_calls, dtype, residual_in_fp32, mamba):
    """Eight tokens through an LM of three Mamba blocks, every block fused, against the same weights in float64
    (the PyTorch step): logits within the dtype's tolerance, with and without a float32 residual, biases in the
    projections, no conv bias, conv widths 2-4, an odd state size."""
    assert_steps_match_float64(model, gen, fused_calls, dtype, residual_in_fp32=residual_in_fp32, **mamba)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_states_match_the_unfused_step_and_stay_untouched(gen, fused_calls, dtype):
    """The fused blocks' states after five tokens equal the unfused step's (backend "torch", same dtype) within
    the dtype's tolerance, and the state passed in is not modified."""
    assert_states_match_unfused(model, gen, fused_calls, dtype)


def test_when_it_runs(gen, fused_calls):
    """Only without autograd, at one row, on the CPU under backend "auto" / "c", without a StateNorm and with
    plain projections; every other step takes the usual path."""
    lm = model(gen, torch.float32)
    ids = torch.randint(VOCAB, (1,), generator=gen)
    lm.step(ids, lm.init_state(1))  # autograd on
    assert fused_calls == []
    with torch.no_grad():
        lm.step(ids.repeat(2), lm.init_state(2))  # two rows
        assert fused_calls == []
        model(gen, torch.float32, backend="torch").step(ids, lm.init_state(1))
        model(gen, torch.float32, state_norm=True).step(ids, lm.init_state(1))
        assert fused_calls == []
        handle = lm.backbone.layers[1].mixer.in_proj.register_forward_hook(lambda *a: None)
        lm.step(ids, lm.init_state(1))
        assert len(fused_calls) == 2  # the hooked block's projections run as modules
        handle.remove()
        model(gen, torch.float32, backend="c").step(ids, lm.init_state(1))
        assert len(fused_calls) == 5


def test_portable_build(gen, tmp_path, monkeypatch):
    """The flag set without OpenMP (and the portable C loops, no AVX-512) gives the float64 logits too."""
    assert_portable_build_matches(model, mamba_block.LIBRARY, gen, tmp_path, monkeypatch)
