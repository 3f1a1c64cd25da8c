"""The original state-spaces (mamba_ssm) layout: config.json + pytorch_model.bin written by hand.

The weights come from a re-randomised transformers model, renamed to the
mamba_ssm names (``backbone.embedding.weight``, a tied ``lm_head.weight`` saved
too, as ``torch.save(model.state_dict())`` does) with a padded vocabulary; the
loaded ssmkit LM must give transformers' logits on the real ids.
"""

from __future__ import annotations

import json

import pytest
import torch
from checkpoint_helpers import (  # noqa: F401
    hf_logits, import_transformers, one_thread, rerandomize_, skip_without_grouped_norm, ssmkit_logits)
from numerics import rel_err

from ssmkit.io import CheckpointError, detect_format, load_pretrained
from ssmkit.models.config import ModelConfig
from ssmkit.models.lm import LM

V = 100  # real vocabulary; the files hold it padded up to pad_vocab_size_multiple


def _write_mamba_ssm(directory, config: dict, state_dict: dict) -> None:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    torch.save(state_dict, directory / "pytorch_model.bin")


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_mamba_ssm_layout_matches_transformers(layer, gen, tmp_path):
    transformers = import_transformers()
    multiple = 8 if layer == "Mamba1" else 16
    padded = -(-V // multiple) * multiple
    if layer == "Mamba1":
        hf_model = transformers.MambaForCausalLM(transformers.MambaConfig(
            vocab_size=padded, hidden_size=45, state_size=16, conv_kernel=4, num_hidden_layers=2))
        ssm_cfg = {"d_state": 16, "d_conv": 4, "expand": 2}
    else:
        groups = 2
        skip_without_grouped_norm(transformers, groups)
        hf_model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
            vocab_size=padded, hidden_size=44, head_dim=11, num_heads=8, n_groups=groups, state_size=32,
            chunk_size=16, num_hidden_layers=2, tie_word_embeddings=True))
        ssm_cfg = {"layer": "Mamba2", "d_state": 32, "d_conv": 4, "expand": 2, "headdim": 11, "ngroups": groups,
                   "chunk_size": 16}
    rerandomize_(hf_model.eval(), gen)
    config = {"d_model": hf_model.config.hidden_size, "d_intermediate": 0, "n_layer": 2, "vocab_size": V,
              "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
              "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": multiple,
              "tie_embeddings": True}
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf_model.state_dict().items()}
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]  # mamba_ssm saves the tied head too
    _write_mamba_ssm(tmp_path / "orig", config, sd)
    assert detect_format(tmp_path / "orig") == "mamba_ssm"

    model = load_pretrained(tmp_path / "orig")
    assert model.embedding.weight.shape[0] == padded and model.vocab_size == V
    ids = torch.randint(0, V, (2, 37), generator=gen)
    ref = hf_logits(hf_model, ids)[..., :V]
    err = rel_err(ssmkit_logits(model, ids), ref)
    assert err <= 1e-5, f"logits: relative error {err:.2e}"


def test_d_intermediate_becomes_a_gated_mlp(gen, tmp_path):
    """mamba_ssm's GatedMLP (fc1 = [value, gate], width rounded up to 128) maps onto ssmkit's."""
    source = rerandomize_(LM(ModelConfig(layers="MM", d_model=40, vocab_size=V, mlp="gated", d_intermediate=128,
                                         tie_embeddings=False)).eval(), gen)
    sd = {("backbone.embedding.weight" if k == "embedding.weight" else k): v for k, v in source.state_dict().items()}
    assert "backbone.layers.1.mlp.fc1.weight" in sd and "backbone.layers.1.norm2.weight" in sd
    config = {"d_model": 40, "d_intermediate": 100, "n_layer": 2, "vocab_size": V, "ssm_cfg": {"d_state": 16},
              "tie_embeddings": False, "pad_vocab_size_multiple": 8}
    _write_mamba_ssm(tmp_path / "orig", config, sd)
    model = load_pretrained(tmp_path / "orig")
    assert model.config.mlp == "gated" and model.config.d_intermediate == 128
    ids = torch.randint(0, V, (2, 19), generator=gen)
    assert torch.equal(ssmkit_logits(model, ids), ssmkit_logits(source, ids))


@pytest.mark.parametrize("change,match", [
    ({"rms_norm": False}, "rms_norm=false"),
    ({"attn_layer_idx": [1]}, "attention layers"),
    ({"ssm_cfg": {"layer": "Mamba2", "D_has_hdim": True}}, "D_has_hdim"),
    ({"ssm_cfg": {"layer": "Mamba2", "d_ssm": 32}}, "d_ssm=32"),
    ({"ssm_cfg": {"layer": "Mamba3"}}, "ssm_cfg.layer='Mamba3'"),
    ({"ssm_cfg": {"d_state": 16, "warp": 9}}, r"unknown ssm_cfg field\(s\) \['warp'\]"),
    ({"n_layers_extra": 3}, r"unknown field\(s\) \['n_layers_extra'\]"),
    ({"ssm_cfg": {"d_state": 0}}, "invalid mamba_ssm config.*d_state"),
])
def test_unsupported_or_unknown_mamba_ssm_config_is_refused(change, match, tmp_path):
    config = {"d_model": 40, "n_layer": 2, "vocab_size": V, "ssm_cfg": {}, **change}
    _write_mamba_ssm(tmp_path / "orig", config, {})
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(tmp_path / "orig")
