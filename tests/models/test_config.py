"""ModelConfig: presets, patterns, JSON round trip, and clear errors for bad configs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ssmkit.models.config import (
    AttentionConfig,
    Mamba2Config,
    MambaConfig,
    ModelConfig,
    S4DConfig,
)

ALL_PRESETS = ModelConfig.presets()


def test_preset_names():
    for name in ["mamba-130m", "mamba2-130m", "s4d-lra", "hyena-small", "transformer-small", "hybrid-small",
                 "mamba-tiny", "mamba2-tiny", "s4-tiny", "s4d-tiny", "hyena-tiny", "transformer-tiny", "hybrid-tiny"]:
        assert name in ALL_PRESETS


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_json_round_trip(name):
    config = ModelConfig.preset(name)
    text = json.dumps(config.to_dict())
    again = ModelConfig.from_dict(json.loads(text))
    assert again == config
    assert json.dumps(again.to_dict()) == text


def test_round_trip_of_a_list_of_mixer_configs():
    config = ModelConfig(layers=[MambaConfig(d_state=4), AttentionConfig(n_heads=2, window=16),
                                 Mamba2Config(headdim=8, d_state=8, dt_limit=(0.001, 1.0))],
                         d_model=32, vocab_size=100, mlp="moe", n_experts=4, moe_every=2)
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.pattern == "MAm"
    assert isinstance(again.layers[2].dt_limit, tuple)
    assert [config.mlp_kind(i) for i in range(3)] == ["gated", "moe", "gated"]


def test_big_preset_shapes():
    c = ModelConfig.preset("mamba-130m")
    assert (c.d_model, c.n_layers, c.pattern, c.mamba.d_state, c.mlp, c.tie_embeddings) == (768, 24, "M" * 24, 16,
                                                                                           "none", True)
    assert (c.vocab_size, c.padded_vocab_size) == (50277, 50280)
    c = ModelConfig.preset("mamba2-130m")
    assert (c.pattern, c.mamba2.d_state, c.mamba2.headdim, c.mamba2.ngroups, c.mamba2.chunk_size) == ("m" * 24, 128,
                                                                                                        64, 1, 256)
    assert c.padded_vocab_size == 50288
    c = ModelConfig.preset("hybrid-small")
    assert "A" in c.pattern and "M" in c.pattern and c.mlp == "moe" and c.moe_every == 2
    assert ModelConfig.preset("s4d-lra").bidirectional
    for name in ALL_PRESETS:
        if name.endswith("-tiny"):
            c = ModelConfig.preset(name)
            assert c.d_model <= 64 and 2 <= c.n_layers <= 4 and c.vocab_size == 259, name


def test_layer_configs_are_copies_of_the_letter_defaults():
    config = ModelConfig(layers="MDM", d_model=32, vocab_size=10, mamba=MambaConfig(d_state=5))
    layers = config.layer_configs()
    assert [type(c).__name__ for c in layers] == ["MambaConfig", "S4DConfig", "MambaConfig"]
    assert layers[0].d_state == 5 and layers[0] is not layers[2] and layers[0] is not config.mamba


def test_preset_overrides():
    c = ModelConfig.preset("mamba-tiny", d_model=32, layers="MMM")
    assert c.d_model == 32 and c.n_layers == 3


def test_unknown_letter_names_letter_index_and_legend():
    with pytest.raises(ValueError, match=r"unknown letter 'X' at index 3; legend: M=Mamba, m=Mamba2, S=S4, D=S4D, "
                                         r"H=Hyena, A=attention"):
        ModelConfig(layers="MMMXA", d_model=64, vocab_size=10)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'mamba-7b'; known presets: \[.*'mamba-130m'.*\]"):
        ModelConfig.preset("mamba-7b")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(layers="AA", attention=AttentionConfig(n_heads=5)), ValueError,
     r"layer 0 \(attention\): attention `n_heads`=5 must divide d_model=64"),
    (dict(layers="A", attention=AttentionConfig(n_heads=8, n_kv_heads=3)), ValueError,
     r"`n_kv_heads`=3 must divide `n_heads`=8"),
    (dict(layers="m", mamba2=Mamba2Config(headdim=48)), ValueError,
     r"layer 0 \(mamba2\): Mamba2 d_inner = expand \* d_model = 128 must be divisible by `headdim`=48"),
    (dict(layers="m", mamba2=Mamba2Config(headdim=16, ngroups=3)), ValueError,
     r"nheads = 8 must be divisible by `ngroups`=3"),
    (dict(layers=[MambaConfig(), "A"]), TypeError, r"`layers\[1\]` must be a mixer config .* got str"),
    (dict(layers=[]), ValueError, r"`layers` is an empty list"),
    (dict(layers=""), ValueError, r"`layers` pattern is empty"),
    (dict(layers=3), TypeError, r"`layers` must be a pattern string or a list of mixer configs, got int"),
    (dict(layers="M", mlp="swiglu"), ValueError, r"`mlp` must be one of \['none', 'mlp', 'gated', 'moe'\]"),
    (dict(layers="M", mlp="moe", n_experts=2, top_k=3), ValueError, r"`top_k`=3 must be <= `n_experts`=2"),
    (dict(layers="M", d_intermediate=0), ValueError, r"`d_intermediate` must be None or an int >= 1"),
    (dict(layers="M", mamba=MambaConfig(d_state=0)), ValueError, r"layer 0 \(mamba\): `d_state` must be an int"),
    (dict(layers="MD", bidirectional=True), ValueError, r"layer 0 \(mamba\): bidirectional=True, but Mamba has no "
                                                        r"bidirectional mode"),
    (dict(layers="M", backend="cuda"), ValueError, r"`backend` must be one of"),
    (dict(layers="D", s4d=MambaConfig()), TypeError, r"`s4d` must be a S4DConfig, got MambaConfig"),
    (dict(layers="M", vocab_size=0), ValueError, r"`vocab_size` must be an int >= 1, got 0"),
])
def test_bad_configs_raise_clear_errors(kwargs, error, match):
    base = dict(d_model=64, vocab_size=10)
    with pytest.raises(error, match=match):
        ModelConfig(**{**base, **kwargs})


def test_from_dict_errors():
    d = ModelConfig.preset("mamba-tiny").to_dict()
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['n_layer'\]"):
        ModelConfig.from_dict({**d, "n_layer": 3})
    with pytest.raises(ValueError, match=r"layers\[0\]: unknown mixer type 'rwkv'"):
        ModelConfig.from_dict({**d, "layers": [{"type": "rwkv"}]})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['d_sate'\] for MambaConfig"):
        ModelConfig.from_dict({**d, "mamba": {"d_sate": 3}})
    good = dataclasses.replace(ModelConfig.preset("mamba-tiny"), layers=[S4DConfig(d_state=4)])
    assert ModelConfig.from_dict(good.to_dict()).layers == [S4DConfig(d_state=4)]
