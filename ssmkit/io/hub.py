"""Where a checkpoint lives: a local directory, or a Hugging Face Hub id fetched with huggingface_hub.

``resolve_checkpoint("path/to/dir")`` returns the directory; anything that is
not an existing path and looks like ``owner/name`` is downloaded (only the
config, tokenizer and one weight layout: safetensors when the repository has
it, else ``pytorch_model.bin``) into the huggingface_hub cache. huggingface_hub
is an optional dependency; without it, or without a network, the error says so
and that a local directory always works.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

from .files import CheckpointError, CheckpointNotFoundError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")
_SMALL_FILES = ["*.json", "*.txt", "*.model"]  # configs, tokenizer files


def _looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.fullmatch(text)) and not text.startswith((".", "~"))


def _weights_pattern(files: list[str]) -> list[str]:
    if any(f.endswith(".safetensors") for f in files):
        return ["*.safetensors", "model.safetensors.index.json"]
    return ["*.bin", "pytorch_model.bin.index.json"]


def resolve_checkpoint(path_or_id: Union[str, os.PathLike], *, revision: Optional[str] = None,
                       cache_dir: Optional[str] = None, local_files_only: bool = False) -> Path:
    """The local directory of a checkpoint, downloading a Hub id when needed.

    Raises:
        CheckpointNotFoundError: a path that does not exist and is no Hub id.
        CheckpointError: a file where a directory is expected; a Hub id that cannot be fetched.
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(f"argument `path_or_id` must be a directory path or a Hub id (str), "
                        f"got {type(path_or_id).__name__}")
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{str(path)!r} is a file; a checkpoint is a directory holding config.json "
                                  f"and weights")
        return path
    text = os.fspath(path_or_id)
    if not _looks_like_hub_id(text):
        raise CheckpointNotFoundError(f"checkpoint directory {text!r} does not exist (and it is not a Hub id "
                                      f"of the form 'owner/name')")
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(f"{text!r} is not a local directory, and fetching it from the Hugging Face Hub "
                              f"needs huggingface_hub (pip install huggingface_hub); a local directory always "
                              f"works") from None
    try:
        if local_files_only:
            patterns = _SMALL_FILES + ["*.safetensors", "*.bin"]
        else:
            files = huggingface_hub.list_repo_files(text, revision=revision)
            patterns = _SMALL_FILES + _weights_pattern(files)
        local = huggingface_hub.snapshot_download(text, revision=revision, cache_dir=cache_dir,
                                                  local_files_only=local_files_only, allow_patterns=patterns)
    except Exception as e:  # network down, unknown repo, gated repo, offline cache miss ...
        raise CheckpointError(f"{text!r} is not a local directory, and fetching it from the Hugging Face Hub failed "
                              f"({type(e).__name__}: {e}); "
                              f"check the id and the network, or pass a local directory (those always work)") from None
    return Path(local)
