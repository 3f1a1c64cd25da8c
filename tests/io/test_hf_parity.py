"""Parity with transformers: MambaForCausalLM / Mamba2ForCausalLM <-> ssmkit, both directions.

Small random-weight transformers models (odd widths, state sizes 8/16/64, conv
kernels 3/4, with and without biases, one to four Mamba-2 groups), re-randomised so
that no weight sits at a degenerate init, are saved by transformers, loaded by
ssmkit, and compared: float32 logits (relative error <= 1e-5) and 32 greedy
tokens (identical). Then ssmkit exports the model and transformers loads it:
same checks. Mamba-2 with several groups needs transformers >= 5.23 as the
reference (``skip_without_grouped_norm``).
"""

from __future__ import annotations

import json

import pytest
import torch
from checkpoint_helpers import (  # noqa: F401
    hf_greedy, hf_logits, import_transformers, one_thread, rerandomize_, skip_without_grouped_norm, ssmkit_greedy,
    ssmkit_logits)
from numerics import rel_err

from ssmkit.io import detect_format, export_hf, load_pretrained
from ssmkit.models.config import ModelConfig
from ssmkit.models.lm import LM

transformers = import_transformers()

PARITY_TOL = 1e-5  # float32 logits, relative error, ssmkit vs transformers
STEPS = 32  # greedy tokens compared
V = 97  # odd vocabulary

MAMBA_CONFIGS = {
    "d37-n8-k3-bias-noconvbias-eps1e-6": dict(hidden_size=37, state_size=8, conv_kernel=3, use_bias=True,
                                              use_conv_bias=False, layer_norm_epsilon=1e-6, num_hidden_layers=2),
    "d50-n16-k4-rank5-untied-fp32res-off": dict(hidden_size=50, state_size=16, conv_kernel=4, time_step_rank=5,
                                                tie_word_embeddings=False, residual_in_fp32=False,
                                                num_hidden_layers=2),
    "d24-n64-k4-expand3-3layers": dict(hidden_size=24, state_size=64, conv_kernel=4, expand=3, use_bias=True,
                                       num_hidden_layers=3),
}
MAMBA2_CONFIGS = {
    "d36-h9-g3-n16-k4-chunk8-eps1e-6": dict(hidden_size=36, head_dim=8, num_heads=9, n_groups=3, state_size=16,
                                            conv_kernel=4, chunk_size=8, layer_norm_epsilon=1e-6,
                                            num_hidden_layers=2),
    "d30-h10-g2-n8-k3-bias-noconvbias-tied": dict(hidden_size=30, head_dim=6, num_heads=10, n_groups=2,
                                                  state_size=8, conv_kernel=3, chunk_size=16, use_bias=True,
                                                  use_conv_bias=False, tie_word_embeddings=True, num_hidden_layers=2),
    "d32-h4-g1-n16-chunk16": dict(hidden_size=32, head_dim=16, num_heads=4, n_groups=1, state_size=16,
                                  chunk_size=16, num_hidden_layers=2),  # one group, as the public checkpoints
    "d40-h8-g4-n64-chunk32-dtlimit": dict(hidden_size=40, head_dim=10, num_heads=8, n_groups=4, state_size=64,
                                          chunk_size=32, time_step_limit=(0.01, 0.08), num_hidden_layers=2),
}


def _hf_model(kind: str, kwargs: dict, gen: torch.Generator):
    if kind == "mamba":
        model = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=V, **kwargs))
    else:
        model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(vocab_size=V, **kwargs))
    return rerandomize_(model.eval(), gen)


def _check_pair(hf_model, model: LM, gen: torch.Generator, greedy: bool = True) -> None:
    ids = torch.randint(0, V, (2, 29), generator=gen)
    ref, out = hf_logits(hf_model, ids), ssmkit_logits(model, ids)
    assert ref.std() > 1.0, "degenerate logits: the comparison would prove little"
    err = rel_err(out, ref)
    assert err <= PARITY_TOL, f"logits: relative error {err:.2e} > {PARITY_TOL:.0e}"
    if greedy:
        prompt = ids[:, :11]
        hf_tokens, tokens = hf_greedy(hf_model, prompt, STEPS), ssmkit_greedy(model, prompt, STEPS)
        assert torch.equal(tokens, hf_tokens), f"greedy tokens differ:\n{tokens[:, 11:]}\n{hf_tokens[:, 11:]}"


@pytest.mark.parametrize("kind,name", [("mamba", n) for n in MAMBA_CONFIGS] + [("mamba2", n) for n in MAMBA2_CONFIGS])
def test_transformers_to_ssmkit_and_back(kind, name, gen, tmp_path):
    kwargs = (MAMBA_CONFIGS if kind == "mamba" else MAMBA2_CONFIGS)[name]
    if kind == "mamba2":
        skip_without_grouped_norm(transformers, kwargs["n_groups"])
    # transformers' one-token decode ignores time_step_limit (its full forward applies it): logits only there
    greedy = "time_step_limit" not in kwargs
    hf_model = _hf_model(kind, kwargs, gen)
    shard = "30KB" if name.startswith("d50") else "2GB"  # one sharded transformers checkpoint
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size=shard)
    assert detect_format(tmp_path / "hf") == "hf"

    model = load_pretrained(tmp_path / "hf")
    assert model.config.pattern == ("M" if kind == "mamba" else "m") * kwargs["num_hidden_layers"]
    _check_pair(hf_model, model, gen, greedy)

    export_hf(model, tmp_path / "export")
    cls = transformers.MambaForCausalLM if kind == "mamba" else transformers.Mamba2ForCausalLM
    reloaded = cls.from_pretrained(tmp_path / "export").eval()
    for (k, a), (k2, b) in zip(sorted(hf_model.state_dict().items()), sorted(reloaded.state_dict().items())):
        assert k == k2 and torch.equal(a, b), f"exported weight {k} differs from the original"
    _check_pair(reloaded, model, gen, greedy)


@pytest.mark.parametrize("preset", ["mamba-tiny", "mamba2-tiny"])
def test_ssmkit_model_exports_to_transformers(preset, gen, tmp_path):
    """An ssmkit-built model (padded byte vocabulary, untied head) -> transformers: same logits and tokens."""
    overrides = {"d_model": 48, "tie_embeddings": False, "norm_eps": 1e-6}
    config = ModelConfig.preset(preset, **overrides)
    if preset == "mamba2-tiny":
        config = ModelConfig.preset(preset, **overrides, mamba2=type(config.mamba2)(
            d_state=16, headdim=12, ngroups=2, chunk_size=16, norm_eps=1e-6))
        skip_without_grouped_norm(transformers, config.mamba2.ngroups)
    model = rerandomize_(LM(config).eval(), gen)
    assert model.embedding.weight.shape[0] > config.vocab_size  # padded rows are cut on export
    export_hf(model, tmp_path / "hf")
    raw = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert raw["vocab_size"] == config.vocab_size and raw["tie_word_embeddings"] is False
    cls = transformers.MambaForCausalLM if preset == "mamba-tiny" else transformers.Mamba2ForCausalLM
    hf_model = cls.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, config.vocab_size, (2, 23), generator=gen)
    err = rel_err(ssmkit_logits(model, ids), hf_logits(hf_model, ids))
    assert err <= PARITY_TOL, f"logits: relative error {err:.2e}"
    assert torch.equal(ssmkit_greedy(model, ids[:, :7], STEPS), hf_greedy(hf_model, ids[:, :7], STEPS))


def test_mamba2_gated_norm_eps_follows_transformers(gen, tmp_path):
    """transformers' Mamba-2 uses layer_norm_epsilon in the gated norm too: a differing eps is a real mismatch."""
    kwargs = MAMBA2_CONFIGS["d36-h9-g3-n16-k4-chunk8-eps1e-6"]
    skip_without_grouped_norm(transformers, kwargs["n_groups"])
    hf_model = _hf_model("mamba2", kwargs, gen)
    with torch.no_grad():  # a tiny output scale makes eps matter
        for layer in hf_model.backbone.layers:
            layer.mixer.in_proj.weight.mul_(0.01)
    hf_model.save_pretrained(tmp_path / "hf")
    model = load_pretrained(tmp_path / "hf")
    assert all(layer.mixer.norm.eps == 1e-6 for layer in model.backbone.layers)
    _check_pair(hf_model, model, gen, greedy=False)
    for layer in model.backbone.layers:  # the eps the layer had hard-coded before: the check above must see it
        layer.mixer.norm.eps = 1e-5
    ids = torch.randint(0, V, (2, 29), generator=gen)
    assert rel_err(ssmkit_logits(model, ids), hf_logits(hf_model, ids)) > PARITY_TOL


def test_transformers_layout_in_sharded_pytorch_bin(gen, tmp_path):
    """Older transformers checkpoints: pytorch_model-*.bin shards + pytorch_model.bin.index.json."""
    hf_model = _hf_model("mamba", MAMBA_CONFIGS["d37-n8-k3-bias-noconvbias-eps1e-6"], gen)
    hf_model.save_pretrained(tmp_path / "safe")
    sd = {k: v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}  # tied: stored once
    keys = sorted(sd)
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((tmp_path / "safe" / "config.json").read_text())
    halves = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for fname, names in halves.items():
        torch.save({k: sd[k] for k in names}, d / fname)
    weight_map = {k: f for f, names in halves.items() for k in names}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    a, b = load_pretrained(tmp_path / "safe"), load_pretrained(d)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
