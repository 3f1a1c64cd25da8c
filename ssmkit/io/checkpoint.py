"""Save and load language models: the ssmkit format, plus the mamba_ssm and transformers layouts.

The ssmkit format (``save_pretrained``)::

    config.json          {"format": "ssmkit", "format_version": 1, "ssmkit_version": ..., "architecture": "LM",
                          "config": ModelConfig.to_dict()}
    model.safetensors    LM.state_dict() under its own names; a tied lm_head is stored once, as
                         ``embedding.weight``. Sharded above ``max_shard_size`` (+ model.safetensors.index.json).

``load_pretrained`` detects the layout from ``config.json`` (:func:`detect_format`):
``"ssmkit"`` (the ``format`` field), ``"hf"`` (transformers: ``model_type``
mamba / mamba2, see :mod:`.hf_format`) or ``"mamba_ssm"`` (the original
state-spaces files: ``d_model`` + ``n_layer``, see :mod:`.mamba_ssm_format`), builds the
LM its config describes and fills every weight. A missing, unused or
misshapen weight is an error listing all of them: a model never loads with
layers left at their random initialisation.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch

from .. import __version__
from ..models.config import ModelConfig
from ..models.lm import LM
from .files import (CONFIG, CheckpointError, CheckpointNotFoundError, atomic_directory, fsync_path, parse_size,
                    read_json, read_weights, short_list, write_json, write_safetensors_sharded)
from .hf_format import config_from_hf, config_to_hf, is_hf_config, keys_from_hf, keys_to_hf
from .hub import resolve_checkpoint
from .mamba_ssm_format import config_from_mamba_ssm, is_mamba_ssm_config, keys_from_mamba_ssm

FORMAT_VERSION = 1
FORMATS = ("ssmkit", "hf", "mamba_ssm")
_SSMKIT_KEYS = {"format", "format_version", "ssmkit_version", "architecture", "config"}
PathLike = Union[str, os.PathLike]


def detect_format(directory: PathLike) -> str:
    """"ssmkit", "hf" or "mamba_ssm": the layout of the checkpoint in ``directory``, from its config.json."""
    return _read_config(Path(directory))[0]


def _read_config(directory: Path) -> tuple[str, dict[str, Any]]:
    path = directory / CONFIG
    if not path.is_file():
        found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        raise CheckpointNotFoundError(f"no {CONFIG} in {str(directory)!r} (found {short_list(found)}); "
                                      f"a checkpoint directory holds config.json and its weights")
    raw = read_json(path, "config")
    if raw.get("format") == "ssmkit":
        return "ssmkit", raw
    if is_hf_config(raw):
        return "hf", raw
    if is_mamba_ssm_config(raw):
        return "mamba_ssm", raw
    raise CheckpointError(f"{str(path)!r} is in no known layout: expected ssmkit's ('format': 'ssmkit'), "
                          f"transformers' ('model_type': 'mamba' or 'mamba2') or mamba_ssm's ('d_model', 'n_layer'); "
                          f"its fields are {short_list(sorted(raw))}")


def read_config(directory: PathLike) -> tuple[str, ModelConfig]:
    """(format, ModelConfig) of the checkpoint in ``directory``."""
    directory = Path(directory)
    fmt, raw = _read_config(directory)
    where = str(directory / CONFIG)
    if fmt == "hf":
        return fmt, config_from_hf(raw, where)
    if fmt == "mamba_ssm":
        return fmt, config_from_mamba_ssm(raw, where)
    unknown = sorted(set(raw) - _SSMKIT_KEYS)
    if unknown:
        raise CheckpointError(f"{where}: unknown field(s) {unknown} in an ssmkit config; "
                              f"known: {sorted(_SSMKIT_KEYS)}")
    version = raw.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{where}: format_version {version!r} is not one this ssmkit reads "
                              f"(1..{FORMAT_VERSION}); it was written by ssmkit {raw.get('ssmkit_version')!r}")
    if raw.get("architecture") != "LM":
        raise CheckpointError(f"{where}: architecture {raw.get('architecture')!r} cannot be loaded as an LM")
    try:
        return fmt, ModelConfig.from_dict(raw.get("config"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: invalid model config: {e}") from None


def _model_tensors(model: LM) -> dict[str, torch.Tensor]:
    """The LM's state dict with a tied lm_head left out (it is ``embedding.weight``)."""
    tensors = dict(model.state_dict())
    if model.lm_head.weight is model.embedding.weight:
        del tensors["lm_head.weight"]
    return tensors


def _check_model(model: Any, fn: str) -> None:
    if not isinstance(model, LM):
        raise TypeError(f"{fn}: argument `model` must be an ssmkit LM, got {type(model).__name__}")


def _copy_files(files: Iterable[PathLike], directory: Path) -> None:
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise CheckpointNotFoundError(f"extra file {str(f)!r} does not exist")
        shutil.copy2(f, directory / f.name)
        fsync_path(directory / f.name)


def save_pretrained(model: LM, path: PathLike, *, max_shard_size: Union[int, str] = "2GB",
                    extra_files: Iterable[PathLike] = ()) -> Path:
    """Write ``model`` to the directory ``path`` in the ssmkit format, atomically (see :mod:`.files`).

    Args:
        max_shard_size: bytes per weight file (int, or "2GB", "500MiB"); above it the weights are sharded.
        extra_files: files copied into the checkpoint (e.g. a tokenizer.json).
    Returns:
        the checkpoint directory.
    """
    _check_model(model, "save_pretrained")
    parse_size(max_shard_size)
    tensors = _model_tensors(model)
    meta = {"format": "ssmkit", "format_version": FORMAT_VERSION, "ssmkit_version": __version__,
            "architecture": "LM", "config": model.config.to_dict()}
    with atomic_directory(path) as tmp:
        _copy_files(extra_files, tmp)
        write_safetensors_sharded(tmp, tensors, max_shard_size, {"ssmkit_version": __version__})
        write_json(tmp / CONFIG, meta)  # last: a directory without it never loads
    return Path(path).expanduser().absolute()


def export_hf(model: LM, path: PathLike, *, max_shard_size: Union[int, str] = "2GB",
              special_ids: Optional[dict[str, Optional[int]]] = None, extra_files: Iterable[PathLike] = ()) -> Path:
    """Write a pure Mamba or Mamba-2 ``model`` in the transformers layout (``MambaForCausalLM`` /
    ``Mamba2ForCausalLM``), atomically. ``special_ids``: {"bos", "eos", "pad"} token ids for its config."""
    _check_model(model, "export_hf")
    parse_size(max_shard_size)
    hf_config = config_to_hf(model.config, special_ids)
    tensors = keys_to_hf(_model_tensors(model), model.config)
    with atomic_directory(path) as tmp:
        _copy_files(extra_files, tmp)
        write_safetensors_sharded(tmp, tensors, max_shard_size)
        write_json(tmp / CONFIG, hf_config)
    return Path(path).expanduser().absolute()


def load_weights_checked(model: LM, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy ``tensors`` (ssmkit names) into ``model``; every weight must be there, used, and of the right shape."""
    expected = model.state_dict()
    tied = model.lm_head.weight is model.embedding.weight
    tensors = dict(tensors)
    problems = []
    if tied:
        del expected["lm_head.weight"]
        head, emb = tensors.pop("lm_head.weight", None), tensors.get("embedding.weight")
        if head is not None and emb is not None and not (head.shape == emb.shape and torch.equal(head, emb)):
            problems.append("lm_head.weight differs from the embedding, but the config ties them "
                            "(tie_embeddings / tie_word_embeddings is true)")
    missing = sorted(set(expected) - set(tensors))
    unused = sorted(set(tensors) - set(expected))
    wrong = [f"{k}: {tuple(tensors[k].shape)} in the checkpoint, {tuple(expected[k].shape)} in the model"
             for k in sorted(set(expected) & set(tensors)) if tensors[k].shape != expected[k].shape]
    if missing:
        problems.append(f"missing weights ({len(missing)}): {short_list(missing)}")
    if unused:
        problems.append(f"unused weights ({len(unused)}), not in the model: {short_list(unused)}")
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {short_list(wrong, 4)}")
    if problems:
        raise CheckpointError(f"{where} does not match the model its config describes:\n  - " + "\n  - ".join(problems))
    if tied:
        tensors["lm_head.weight"] = tensors["embedding.weight"]
    model.load_state_dict(tensors, strict=True)


def load_pretrained(path_or_id: PathLike, *, dtype: Union[torch.dtype, str, None] = None,
                    device: Optional[Union[str, torch.device]] = None, backend: Optional[str] = None,
                    revision: Optional[str] = None, cache_dir: Optional[str] = None,
                    local_files_only: bool = False) -> LM:
    """An LM from a checkpoint directory or Hugging Face Hub id, in any of the three layouts, in eval mode.

    Args:
        dtype: cast the model (float32 by default; "auto": the embedding's dtype in the checkpoint;
            A_log, D and the Δ bias stay float32 whatever the dtype).
        device: move the model there. backend: replace the config's op backend.
        revision, cache_dir, local_files_only: passed to huggingface_hub for a Hub id.
    """
    if dtype is not None and dtype != "auto" and not isinstance(dtype, torch.dtype):
        raise TypeError(f"load_pretrained: argument `dtype` must be a torch.dtype, 'auto' or None, got {dtype!r}")
    directory = resolve_checkpoint(path_or_id, revision=revision, cache_dir=cache_dir,
                                   local_files_only=local_files_only)
    fmt, config = read_config(directory)
    if backend is not None:
        config = dataclasses.replace(config, backend=backend)
    tensors = read_weights(directory)
    tensors = {"hf": keys_from_hf, "mamba_ssm": keys_from_mamba_ssm}.get(fmt, dict)(tensors)
    if dtype == "auto":
        dtype = tensors["embedding.weight"].dtype if "embedding.weight" in tensors else None
    model = LM(config)
    load_weights_checked(model, tensors, f"checkpoint {str(directory)!r} ({fmt} layout)")
    if dtype is not None:
        model.to(dtype=dtype)
    if device is not None:
        model.to(device=device)
    return model.eval()
