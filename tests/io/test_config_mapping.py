"""Config translation: transformers and mamba_ssm config.json fields <-> ModelConfig (no weights needed)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from ssmkit.io import CheckpointError, read_config
from ssmkit.io.hf_format import config_from_hf, config_to_hf
from ssmkit.models.config import ModelConfig
from ssmkit.models.mixer_configs import Mamba2Config, MambaConfig

# The shape of an early transformers conversion of state-spaces/mamba-130m: it kept mamba_ssm's names too.
EARLY_HF_MAMBA = {
    "architectures": ["MambaForCausalLM"], "bos_token_id": 0, "conv_kernel": 4, "d_inner": 1536, "d_model": 768,
    "eos_token_id": 0, "expand": 2, "fused_add_norm": True, "hidden_act": "silu", "hidden_size": 768,
    "initializer_range": 0.1, "intermediate_size": 1536, "layer_norm_epsilon": 1e-05, "model_type": "mamba",
    "n_layer": 24, "num_hidden_layers": 24, "pad_token_id": 0, "pad_vocab_size_multiple": 8,
    "rescale_prenorm_residual": False, "residual_in_fp32": True, "rms_norm": True, "ssm_cfg": {}, "state_size": 16,
    "time_step_floor": 0.0001, "time_step_init_scheme": "random", "time_step_max": 0.1, "time_step_min": 0.001,
    "time_step_rank": 48, "time_step_scale": 1.0, "torch_dtype": "float32", "transformers_version": "4.39.0.dev0",
    "use_bias": False, "use_cache": True, "use_conv_bias": True, "vocab_size": 50280,
}


def test_early_transformers_mamba_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(EARLY_HF_MAMBA))
    fmt, config = read_config(tmp_path)
    assert fmt == "hf"
    assert (config.pattern, config.d_model, config.vocab_size, config.padded_vocab_size) == ("M" * 24, 768, 50280,
                                                                                           50280)
    assert config.mamba == MambaConfig(d_state=16, d_conv=4, expand=2, dt_rank=48)
    assert config.tie_embeddings and config.residual_in_fp32 and config.norm_eps == 1e-5


def test_mamba_ssm_130m_configs(tmp_path):
    """The config.json files of state-spaces/mamba-130m and mamba2-130m, field for field."""
    (tmp_path / "config.json").write_text(json.dumps({
        "d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": True,
        "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8}))
    assert read_config(tmp_path) == ("mamba_ssm", ModelConfig.preset("mamba-130m"))
    (tmp_path / "config.json").write_text(json.dumps({
        "d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 16, "tie_embeddings": True}))
    assert read_config(tmp_path) == ("mamba_ssm", ModelConfig.preset("mamba2-130m"))
    assert ModelConfig.preset("mamba2-130m").padded_vocab_size == 50288


def test_transformers_mamba2_config_with_encoded_infinity(tmp_path):
    raw = {"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 3, "vocab_size": 120, "head_dim": 16,
           "num_heads": 8, "n_groups": 2, "state_size": 32, "chunk_size": 64, "layer_norm_epsilon": 1e-6,
           "time_step_limit": [0.0, {"__float__": "Infinity"}], "tie_word_embeddings": False}  # as transformers 5
    (tmp_path / "config.json").write_text(json.dumps(raw))
    fmt, config = read_config(tmp_path)
    assert config.mamba2.dt_limit == (0.0, math.inf) and config.mamba2.norm_eps == 1e-6
    assert (config.mamba2.headdim, config.mamba2.ngroups, config.mamba2.d_state) == (16, 2, 32)
    assert not config.tie_embeddings and config.norm_eps == 1e-6


@pytest.mark.parametrize("config", [
    ModelConfig(layers="MMM", d_model=40, vocab_size=77, pad_vocab_size_multiple=1, norm_eps=1e-6,
                rescale_prenorm_residual=False, mamba=MambaConfig(d_state=8, d_conv=3, dt_rank=4, bias=True)),
    ModelConfig(layers="mm", d_model=48, vocab_size=77, pad_vocab_size_multiple=1, tie_embeddings=False,
                rescale_prenorm_residual=False,
                mamba2=Mamba2Config(d_state=16, headdim=12, ngroups=4, chunk_size=32, dt_limit=(0.001, 0.5))),
])
def test_export_config_round_trips(config):
    assert config_from_hf(config_to_hf(config)) == config


def test_conflicting_aliases_are_refused():
    with pytest.raises(CheckpointError, match="n_layer=12 disagrees with num_hidden_layers=24"):
        config_from_hf({**EARLY_HF_MAMBA, "n_layer": 12})
    with pytest.raises(CheckpointError, match="d_inner=100 disagrees with expand \\* hidden_size=1536"):
        config_from_hf({**EARLY_HF_MAMBA, "d_inner": 100})


def test_export_refuses_a_gated_norm_eps_it_cannot_express():
    config = ModelConfig(layers="m", d_model=32, vocab_size=50, mamba2=dataclasses.replace(
        Mamba2Config(headdim=16), norm_eps=1e-3))
    with pytest.raises(CheckpointError, match="one epsilon for every norm"):
        config_to_hf(config)
