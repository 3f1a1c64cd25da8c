"""The ssmkit checkpoint format: exact round trips, tied weights stored once, sharding, atomic writes."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from checkpoint_helpers import one_thread, rerandomize_  # noqa: F401
from safetensors import safe_open

import ssmkit.io.checkpoint as checkpoint_mod
import ssmkit.io.files as files_mod
from ssmkit.io import CheckpointError, detect_format, load_pretrained, save_pretrained
from ssmkit.io.files import parse_size
from ssmkit.models.config import ModelConfig
from ssmkit.models.lm import LM


def _model(gen: torch.Generator, preset: str = "mamba-tiny", **overrides) -> LM:
    return rerandomize_(LM(ModelConfig.preset(preset, **overrides)).eval(), gen)


def _assert_same_model(a: LM, b: LM, gen: torch.Generator) -> None:
    assert a.config.to_dict() == b.config.to_dict()
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"weight {k} changed"
    ids = torch.randint(0, a.vocab_size, (2, 13), generator=gen)
    with torch.no_grad():
        assert torch.equal(a(ids)[0], b(ids)[0])


def _keys(directory) -> list[str]:
    keys = []
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            keys += list(sf.keys())
    return keys


@pytest.mark.parametrize("preset,overrides", [
    ("mamba-tiny", {"d_model": 37}), ("mamba2-tiny", {"d_model": 40}), ("hybrid-tiny", {"tie_embeddings": False}),
])
def test_round_trip_is_exact(preset, overrides, gen, tmp_path):
    model = _model(gen, preset, **overrides)
    out = save_pretrained(model, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert detect_format(out) == "ssmkit"
    loaded = load_pretrained(out)
    assert not loaded.training
    _assert_same_model(model, loaded, gen)


def test_tied_weights_are_stored_once_and_tied_after_loading(gen, tmp_path):
    model = _model(gen)
    assert model.lm_head.weight is model.embedding.weight
    model.save_pretrained(tmp_path / "ckpt")
    keys = _keys(tmp_path / "ckpt")
    assert "embedding.weight" in keys and "lm_head.weight" not in keys
    loaded = LM.from_pretrained(tmp_path / "ckpt")
    assert loaded.lm_head.weight is loaded.embedding.weight
    _assert_same_model(model, loaded, gen)


def test_sharded_checkpoint_has_a_weight_map_index(gen, tmp_path):
    model = _model(gen, "mamba2-tiny")
    limit = 40_000
    save_pretrained(model, tmp_path / "ckpt", max_shard_size="40KB")
    shards = sorted((tmp_path / "ckpt").glob("model-*.safetensors"))
    assert len(shards) >= 3 and not (tmp_path / "ckpt" / "model.safetensors").exists()
    assert [s.name for s in shards] == [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                                        for i in range(len(shards))]
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    tensors = dict(model.state_dict())
    del tensors["lm_head.weight"]  # tied
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    for shard in shards:
        with safe_open(str(shard), "pt") as sf:
            names = list(sf.keys())
            assert all(index["weight_map"][k] == shard.name for k in names)
            size = sum(sf.get_tensor(k).numel() * sf.get_tensor(k).element_size() for k in names)
        assert size <= limit or len(names) == 1, f"{shard.name} holds {size} bytes"
    _assert_same_model(model, load_pretrained(tmp_path / "ckpt"), gen)


def test_bfloat16_round_trip_keeps_fp32_numerics_parameters(gen, tmp_path):
    model = _model(gen, "mamba2-tiny").to(torch.bfloat16)
    save_pretrained(model, tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as sf:
        assert sf.get_tensor("backbone.layers.0.mixer.A_log").dtype == torch.float32
        assert sf.get_tensor("embedding.weight").dtype == torch.bfloat16
    loaded = load_pretrained(tmp_path / "ckpt", dtype="auto")
    assert loaded.embedding.weight.dtype == torch.bfloat16
    _assert_same_model(model, loaded, gen)
    as_fp32 = load_pretrained(tmp_path / "ckpt")  # default float32
    assert as_fp32.embedding.weight.dtype == torch.float32
    assert torch.equal(as_fp32.embedding.weight, model.embedding.weight.float())


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MiB") == 500 * 2**20
    assert parse_size("10kb") == 10_000 and parse_size(123) == 123 and parse_size("1.5GB") == 1_500_000_000
    with pytest.raises(TypeError, match="max_shard_size.*'2GB'"):
        parse_size("lots")
    with pytest.raises(ValueError, match="at least 1 byte"):
        parse_size(0)


# -- atomic writes -----------------------------------------------------------------------------------


def _fail_on_second_shard(monkeypatch):
    import safetensors.torch

    real, calls = safetensors.torch.save_file, []

    def flaky(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky)
    return calls


def _leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_failed_save_leaves_nothing(gen, tmp_path, monkeypatch):
    calls = _fail_on_second_shard(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(_model(gen), tmp_path / "ckpt", max_shard_size="20KB")
    assert len(calls) == 2  # it did fail mid-save, after one shard was written
    assert not (tmp_path / "ckpt").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_failed_save_keeps_the_previous_checkpoint(exchange, gen, tmp_path, monkeypatch):
    if not exchange:
        monkeypatch.setattr(files_mod, "_exchange", lambda a, b: False)
    old, new = _model(gen), _model(gen)
    save_pretrained(old, tmp_path / "ckpt")
    _fail_on_second_shard(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(new, tmp_path / "ckpt", max_shard_size="20KB")
    _assert_same_model(old, load_pretrained(tmp_path / "ckpt"), gen)
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    swaps, real_exchange = [], files_mod._exchange

    def spy(a, b):
        swaps.append(exchange and real_exchange(a, b))
        return swaps[-1]

    monkeypatch.setattr(files_mod, "_exchange", spy)
    save_pretrained(new, tmp_path / "ckpt")  # and a successful replace installs the new one
    if exchange and sys.platform == "linux":
        assert swaps == [True], "renameat2(RENAME_EXCHANGE) did not run"
    _assert_same_model(new, load_pretrained(tmp_path / "ckpt"), gen)
    assert _leftovers(tmp_path) == []


def test_crash_before_config_leaves_a_directory_that_does_not_load(gen, tmp_path, monkeypatch):
    """A hard crash (no cleanup) after the weights but before config.json: the temp dir must not load."""
    monkeypatch.setattr(files_mod, "_remove_tmp", lambda path: None)  # the process "dies": nothing cleans up

    def crash(path, data):
        raise KeyboardInterrupt("power cut (simulated)")

    monkeypatch.setattr(checkpoint_mod, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(_model(gen), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    (leftover,) = [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.tmp-")]
    assert (leftover / "model.safetensors").exists()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(leftover)


def test_replacing_keeps_other_files_and_drops_stale_shards(gen, tmp_path):
    model = _model(gen)
    save_pretrained(model, tmp_path / "ckpt", max_shard_size="20KB")
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
    (tmp_path / "ckpt" / "notes").mkdir()
    save_pretrained(model, tmp_path / "ckpt")  # unsharded now
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["config.json", "model.safetensors", "notes", "tokenizer.json"]
    _assert_same_model(model, load_pretrained(tmp_path / "ckpt"), gen)


def test_save_rejects_bad_arguments(gen, tmp_path):
    with pytest.raises(TypeError, match="`model` must be an ssmkit LM, got Linear"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="exists and is not a directory"):
        save_pretrained(_model(gen), tmp_path / "file")
    with pytest.raises(TypeError, match="max_shard_size"):
        save_pretrained(_model(gen), tmp_path / "y", max_shard_size="big")
    assert not (tmp_path / "y").exists()
