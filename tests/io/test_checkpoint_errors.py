"""Bad checkpoints: each failure is a clear error that lists what is wrong, never a half-random model."""

from __future__ import annotations

import json

import pytest
import torch
from checkpoint_helpers import one_thread  # noqa: F401
from safetensors.torch import load_file, save_file

from ssmkit.io import (CheckpointError, CheckpointNotFoundError, convert, export_hf, load_pretrained,
                       resolve_checkpoint, save_pretrained)
from ssmkit.models.config import ModelConfig
from ssmkit.models.lm import LM

EMB = "embedding.weight"
IN_PROJ = "backbone.layers.0.mixer.in_proj.weight"


@pytest.fixture
def ckpt(tmp_path, gen):
    """A valid ssmkit checkpoint of a small untied Mamba LM."""
    model = LM(ModelConfig.preset("mamba-tiny", d_model=24, tie_embeddings=False))
    return save_pretrained(model, tmp_path / "ckpt")


def _edit_weights(ckpt, edit) -> None:
    tensors = load_file(str(ckpt / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(ckpt / "model.safetensors"))


def _edit_config(ckpt, edit) -> None:
    raw = json.loads((ckpt / "config.json").read_text())
    edit(raw)
    (ckpt / "config.json").write_text(json.dumps(raw))


# -- missing files -----------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")
    assert issubclass(CheckpointNotFoundError, FileNotFoundError) and issubclass(CheckpointNotFoundError, ValueError)


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"no config.json in .*found \['model.safetensors'\]"):
        load_pretrained(ckpt)


def test_missing_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"no weights in .*expected model.safetensors"):
        load_pretrained(ckpt)


def test_missing_shard(tmp_path, gen):
    save_pretrained(LM(ModelConfig.preset("mamba-tiny", d_model=24)), tmp_path / "c", max_shard_size="10KB")
    second = sorted((tmp_path / "c").glob("model-*.safetensors"))[1]
    second.unlink()
    with pytest.raises(CheckpointNotFoundError, match=rf"lists shard\(s\) that do not exist: \['{second.name}'\]"):
        load_pretrained(tmp_path / "c")


def test_file_instead_of_directory(ckpt):
    with pytest.raises(CheckpointError, match="is a file; a checkpoint is a directory"):
        load_pretrained(ckpt / "config.json")


# -- corrupt files -----------------------------------------------------------------------------------


def test_truncated_safetensors(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="not a valid safetensors file.*truncated or corrupt"):
        load_pretrained(ckpt)


def test_corrupt_safetensors_header(ckpt, gen):
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = torch.randint(0, 256, (32,), generator=gen, dtype=torch.uint8).numpy().tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors.*not a valid safetensors file"):
        load_pretrained(ckpt)


def test_corrupt_pytorch_bin(ckpt):
    _edit_config(ckpt, lambda raw: raw.clear() or raw.update(d_model=24, n_layer=2, vocab_size=259))
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin.*torch.load\(weights_only=True\)"):
        load_pretrained(ckpt)


def test_config_not_json(ckpt):
    (ckpt / "config.json").write_text("{ d_model: 3")
    with pytest.raises(CheckpointError, match="config.json.*not valid JSON"):
        load_pretrained(ckpt)


# -- config fields -----------------------------------------------------------------------------------


@pytest.mark.parametrize("edit,match", [
    (lambda raw: raw["config"].update(d_modle=3), r"invalid model config.*unknown key\(s\) \['d_modle'\]"),
    (lambda raw: raw["config"]["mamba"].update(speed=3), r"unknown field\(s\) \['speed'\]"),
    (lambda raw: raw.update(comment="x"), r"unknown field\(s\) \['comment'\] in an ssmkit config"),
    (lambda raw: raw.update(format_version=99), "format_version 99 is not one this ssmkit reads"),
    (lambda raw: raw.update(architecture="Classifier"), "architecture 'Classifier' cannot be loaded as an LM"),
    (lambda raw: raw.clear() or raw.update(hidden=3), r"no known layout.*\['hidden'\]"),
])
def test_bad_ssmkit_config(ckpt, edit, match):
    _edit_config(ckpt, edit)
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(ckpt)


@pytest.mark.parametrize("change,match", [
    ({"frobnicate": True}, r"unknown field\(s\) \['frobnicate'\] for a transformers mamba2 config"),
    ({"num_heads": 5}, "num_heads=5 \\* head_dim=8 must equal expand \\* hidden_size = 48"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ({"n_groups": 4}, "invalid transformers mamba2 config.*divisible by `ngroups`=4"),
])
def test_bad_transformers_config(tmp_path, change, match):
    (tmp_path / "hf").mkdir()
    raw = {"model_type": "mamba2", "hidden_size": 24, "num_hidden_layers": 2, "vocab_size": 50, "head_dim": 8,
           "num_heads": 6, "n_groups": 2, "state_size": 16, **change}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(tmp_path / "hf")


# -- weights that do not fit -------------------------------------------------------------------------


def test_wrong_shape(ckpt):
    _edit_weights(ckpt, lambda t: t.update({IN_PROJ: t[IN_PROJ][:-1].clone()}))
    with pytest.raises(CheckpointError, match=rf"wrong shapes \(1\): .*{IN_PROJ}: \(95, 24\) in the checkpoint, "
                                              rf"\(96, 24\) in the model"):
        load_pretrained(ckpt)


def test_unused_and_missing_weights_are_all_listed(ckpt):
    def edit(t):
        t["backbone.layers.7.mixer.A_log"] = torch.zeros(3)
        t["extra.bias"] = torch.zeros(3)
        del t["backbone.layers.1.mixer.D"], t["backbone.norm_f.weight"]

    _edit_weights(ckpt, edit)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(ckpt)
    msg = str(info.value)
    assert "missing weights (2): ['backbone.layers.1.mixer.D', 'backbone.norm_f.weight']" in msg
    assert "unused weights (2), not in the model: ['backbone.layers.7.mixer.A_log', 'extra.bias']" in msg


def test_tied_head_that_differs_from_the_embedding(tmp_path, gen):
    model = LM(ModelConfig.preset("mamba-tiny", d_model=24))  # tied
    save_pretrained(model, tmp_path / "c")
    _edit_weights(tmp_path / "c", lambda t: t.update({"lm_head.weight": torch.randn(t[EMB].shape, generator=gen)}))
    with pytest.raises(CheckpointError, match="lm_head.weight differs from the embedding"):
        load_pretrained(tmp_path / "c")


# -- exports, conversions, arguments -------------------------------------------------------------------


def test_resolve_rejects_non_paths():
    with pytest.raises(TypeError, match="`path_or_id` must be a directory path or a Hub id"):
        resolve_checkpoint(3)


def test_export_of_a_model_transformers_cannot_hold(tmp_path):
    with pytest.raises(CheckpointError, match="only pure Mamba .* layers are 'MmMA'"):
        export_hf(LM(ModelConfig.preset("hybrid-tiny")), tmp_path / "x")
    with pytest.raises(CheckpointError, match="state_norm=True has no transformers equivalent"):
        export_hf(LM(ModelConfig.preset("mamba-tiny", mamba=ModelConfig.preset("mamba-tiny").mamba.__class__(
            state_norm=True))), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_convert_rejects_bad_targets(ckpt):
    with pytest.raises(ValueError, match=r"`to` must be one of \['ssmkit', 'hf'\], got 'onnx'"):
        convert(ckpt, ckpt.parent / "out", to="onnx")
    with pytest.raises(CheckpointError, match="destination .* is the source"):
        convert(ckpt, ckpt, to="ssmkit")


def test_load_rejects_bad_dtype(ckpt):
    with pytest.raises(TypeError, match="`dtype` must be a torch.dtype, 'auto' or None"):
        load_pretrained(ckpt, dtype="float16")
