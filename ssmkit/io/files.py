"""Checkpoint files: atomic directory writes, (sharded) safetensors, reading any weight layout.

Writing (:func:`atomic_directory`, :func:`write_safetensors_sharded`):

    target/                       the checkpoint, replaced in one step
    .target.tmp-<id>/             built here first: every file written and fsynced,
                                  config.json last, then the directory fsynced and
                                  renamed onto ``target``

An existing ``target`` is swapped out atomically (``renameat2(RENAME_EXCHANGE)``
on Linux; elsewhere two renames), and files in it that are not checkpoint
files (a ``tokenizer.json``, a README) are carried over (hard-linked where
the filesystem allows, else copied). A failure before the
rename removes the temporary directory; a crash leaves, at worst, a hidden
``.target.tmp-*`` without ``config.json``, which does not load.

Sharding follows the Hugging Face convention: ``model.safetensors`` when the
weights fit in ``max_shard_size``, else ``model-00001-of-0000N.safetensors`` and
``model.safetensors.index.json`` = ``{"metadata": {"total_size": bytes},
"weight_map": {name: file}}``.

Reading (:func:`read_weights`): ``model.safetensors``, its sharded index,
``pytorch_model.bin`` (``torch.load(weights_only=True)``) or its index, in
that order of preference. Every failure is a :class:`CheckpointError` naming
the file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fnmatch
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, Union

import torch

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
CONFIG = "config.json"
# Names a checkpoint write owns: never carried over from the checkpoint it replaces.
CHECKPOINT_PATTERNS = (CONFIG, "model*.safetensors", SAFETENSORS_INDEX, "pytorch_model*.bin", BIN_INDEX,
                       "generation_config.json")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class CheckpointError(ValueError):
    """A checkpoint cannot be read, written or matched to its model; the message says what and why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint directory or one of its files does not exist."""


# -- writing ----------------------------------------------------------------------------------------


def parse_size(size: Union[int, str], name: str = "max_shard_size") -> int:
    """Bytes in ``size``: an int, or a string such as "2GB" (10^9), "500MiB" (2^20 units), "10KB"."""
    if isinstance(size, bool):
        raise TypeError(f"argument `{name}` must be an int or a string like '2GB', got {size!r}")
    if isinstance(size, int):
        value = size
    elif isinstance(size, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", size.upper())):
        value = int(float(m.group(1)) * _UNITS[m.group(2) or ""])
    else:
        raise TypeError(f"argument `{name}` must be an int or a string like '2GB' or '500MiB', got {size!r}")
    if value < 1:
        raise ValueError(f"argument `{name}` must be at least 1 byte, got {size!r}")
    return value


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a directory's entries) to disk. Directories that cannot be opened
    (Windows) are skipped: there a rename is as durable as the system makes it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON and fsync it."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def write_safetensors_sharded(directory: Path, tensors: dict[str, torch.Tensor], max_shard_size: Union[int, str],
                              metadata: dict[str, str] | None = None) -> list[str]:
    """Write ``tensors`` into ``directory`` as one file or shards + index (fsynced). Returns the file names."""
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():  # greedy in key order; a tensor over the limit gets a shard of its own
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = t.detach().to("cpu").contiguous()
        size += nbytes
    n = len(shards)
    names = [SAFETENSORS] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for shard, fname in zip(shards, names):
        save_file(shard, str(directory / fname), metadata={"format": "pt", **(metadata or {})})
        fsync_path(directory / fname)
    if n > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map = {k: fname for shard, fname in zip(shards, names) for k in shard}
        write_json(directory / SAFETENSORS_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
        names.append(SAFETENSORS_INDEX)
    return names


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False when the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (same filesystem: instant, no space), else copy it and fsync the copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
        fsync_path(Path(dst))


def _carry_over(old: Path, new: Path) -> None:
    """Bring the entries of ``old`` that are not checkpoint files (and not already in ``new``) into ``new``."""
    for entry in old.iterdir():
        name, dst = entry.name, new / entry.name
        if dst.exists() or any(fnmatch.fnmatch(name, p) for p in CHECKPOINT_PATTERNS):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dst)
        elif entry.is_dir():
            shutil.copytree(entry, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(dst))


def _remove_tmp(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``target``; on success move it into place (see module docstring).

    The caller writes the checkpoint's files into the yielded directory, ``config.json`` last.
    """
    target = Path(target).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {str(target)!r}: it exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            _carry_over(target, tmp)
        fsync_path(tmp)
        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            _remove_tmp(tmp)  # tmp now holds the previous checkpoint
        else:
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)  # put the previous checkpoint back
                raise
            _remove_tmp(old)
        fsync_path(target.parent)
    except BaseException:
        _remove_tmp(tmp)
        raise


# -- reading ----------------------------------------------------------------------------------------


def read_json(path: Path, what: str = "file") -> dict[str, Any]:
    """A JSON object from ``path``; missing or malformed files raise CheckpointError."""
    if not path.is_file():
        raise CheckpointNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_hook=_decode_special_floats)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{what} {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _decode_special_floats(obj: dict) -> Any:
    """transformers >= 5 writes inf as {"__float__": "Infinity"}."""
    if set(obj) == {"__float__"}:
        return float(obj["__float__"])
    return obj


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, OSError: report the file, never a half-loaded model
        raise CheckpointError(f"cannot read {str(path)!r}: not a valid safetensors file ({type(e).__name__}: {e}); "
                              f"it may be truncated or corrupt -- save or download it again") from None


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip reader), EOFError ...
        raise CheckpointError(f"cannot read {str(path)!r} with torch.load(weights_only=True) "
                              f"({type(e).__name__}: {e}); it may be truncated or corrupt") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        raise CheckpointError(f"{str(path)!r} must hold a state dict (names -> tensors), got {type(data).__name__}")
    return data


def _read_sharded(directory: Path, index_name: str, loader) -> dict[str, torch.Tensor]:
    index = read_json(directory / index_name, "index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"index {str(directory / index_name)!r} has no 'weight_map' object of name -> file")
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise CheckpointNotFoundError(f"index {str(directory / index_name)!r} lists shard(s) that do not exist: "
                                      f"{missing}")
    out: dict[str, torch.Tensor] = {}
    for fname in files:
        shard = loader(directory / fname)
        listed = {k for k, f in weight_map.items() if f == fname}
        if set(shard) != listed:
            absent, unlisted = sorted(listed - set(shard)), sorted(set(shard) - listed)
            raise CheckpointError(f"shard {str(directory / fname)!r} does not match {index_name}: listed but "
                                  f"absent {short_list(absent)}, present but unlisted {short_list(unlisted)}")
        out.update(shard)
    return out


def weight_files(directory: Path) -> str:
    """Which weight layout ``directory`` holds (one of the four file names); CheckpointError if none."""
    for name in (SAFETENSORS_INDEX, SAFETENSORS, BIN_INDEX, BIN):
        if (directory / name).is_file():
            return name
    found = sorted(p.name for p in directory.iterdir())
    raise CheckpointNotFoundError(f"no weights in {str(directory)!r}: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, "
                                  f"{BIN} or {BIN_INDEX}; found {found}")


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in ``directory``, on CPU, by their names in the files."""
    name = weight_files(directory)
    if name == SAFETENSORS_INDEX:
        return _read_sharded(directory, name, _load_safetensors)
    if name == BIN_INDEX:
        return _read_sharded(directory, name, _load_bin)
    return _load_safetensors(directory / name) if name == SAFETENSORS else _load_bin(directory / name)


def short_list(names: list[str], n: int = 8) -> str:
    """A list for an error message: at most ``n`` names, then a count."""
    return str(names) if len(names) <= n else f"{names[:n]} and {len(names) - n} more"

