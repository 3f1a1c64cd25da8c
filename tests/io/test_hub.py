"""Hub ids: fetched with huggingface_hub (faked here: no network in tests), clear errors when that fails."""

from __future__ import annotations

import sys
import types

import pytest
from checkpoint_helpers import one_thread  # noqa: F401

from ssmkit.io import CheckpointError, load_pretrained, resolve_checkpoint, save_pretrained
from ssmkit.models.config import ModelConfig
from ssmkit.models.lm import LM


def _fake_hub(monkeypatch, local_dir, files: list[str]) -> list[dict]:
    """A stand-in huggingface_hub whose downloads return ``local_dir``; returns the recorded calls."""
    calls: list[dict] = []
    fake = types.ModuleType("huggingface_hub")
    fake.list_repo_files = lambda repo_id, revision=None: files

    def snapshot_download(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        return str(local_dir)

    fake.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    return calls


@pytest.mark.parametrize("files,weights", [
    (["config.json", "model.safetensors", "pytorch_model.bin"], "*.safetensors"),
    (["config.json", "pytorch_model.bin"], "*.bin"),
])
def test_hub_id_downloads_one_weight_layout(files, weights, tmp_path, monkeypatch):
    model = LM(ModelConfig.preset("mamba-tiny", d_model=16))
    save_pretrained(model, tmp_path / "snapshot")
    calls = _fake_hub(monkeypatch, tmp_path / "snapshot", files)
    loaded = load_pretrained("some-owner/some-model", revision="v1")
    assert loaded.config.to_dict() == model.config.to_dict()
    (call,) = calls
    assert call["repo_id"] == "some-owner/some-model" and call["revision"] == "v1"
    patterns = call["allow_patterns"]
    assert weights in patterns and "*.json" in patterns
    assert ("*.bin" in patterns) == (weights == "*.bin")  # never both layouts


def test_local_directory_wins_over_a_hub_id(tmp_path, monkeypatch):
    save_pretrained(LM(ModelConfig.preset("mamba-tiny", d_model=16)), tmp_path / "owner" / "name")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # would fail if it were used
    assert resolve_checkpoint("owner/name").samefile(tmp_path / "owner" / "name")


def test_hub_id_that_cannot_be_fetched(tmp_path):
    pytest.importorskip("huggingface_hub")
    with pytest.raises(CheckpointError, match="not a local directory, and fetching it from the Hugging Face Hub "
                                              "failed.*local directory"):
        resolve_checkpoint("ssmkit-no-such-owner/no-such-model", local_files_only=True, cache_dir=str(tmp_path))


def test_network_failure_is_a_clear_error(tmp_path, monkeypatch):
    fake = types.ModuleType("huggingface_hub")

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    fake.list_repo_files = fake.snapshot_download = offline
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    with pytest.raises(CheckpointError, match="fetching it from the Hugging Face Hub failed \\(ConnectionError: "
                                              "Failed to resolve"):
        load_pretrained("state-spaces/mamba-130m")


def test_hub_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(CheckpointError, match=r"needs huggingface_hub \(pip install huggingface_hub\)"):
        load_pretrained("state-spaces/mamba-130m-no-such-dir")


def test_a_path_that_is_no_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist .*not a Hub id"):
        resolve_checkpoint(str(tmp_path / "a" / "b" / "c"))
