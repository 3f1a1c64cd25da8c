"""``ssmkit convert SRC DST --to {ssmkit,hf}``: any readable checkpoint -> the ssmkit or transformers layout.

The model is loaded with :func:`load_pretrained` (so every check of a load
applies), written with :func:`save_pretrained` or :func:`export_hf`, and the
source's tokenizer files (``tokenizer.json`` ...) are copied along. For a
transformers export the config's bos/eos/pad ids come from that tokenizer
(or the built-in byte tokenizer's, for a model over its 259 ids).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from ..generation.tokenizer import ByteTokenizer
from .checkpoint import export_hf, load_pretrained, save_pretrained
from .files import CheckpointError
from .hub import resolve_checkpoint
from .tokenizer import load_tokenizer, tokenizer_files

TARGETS = ("ssmkit", "hf")


def _special_ids(src: Path, vocab_size: int) -> dict[str, Optional[int]]:
    tok = load_tokenizer(src)
    if isinstance(tok, ByteTokenizer):
        if vocab_size != tok.vocab_size:
            return {}  # no tokenizer.json, and not a byte-level model: no ids to claim
        return {"bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id}
    return {"bos": tok.bos_id, "eos": tok.eos_id, "pad": None}


def convert(src: Union[str, os.PathLike], dst: Union[str, os.PathLike], *, to: str = "ssmkit",
            max_shard_size: Union[int, str] = "2GB", **hub_kwargs) -> Path:
    """Read the checkpoint ``src`` (directory or Hub id, any layout) and write it to ``dst`` in layout ``to``.

    Returns:
        the written directory.
    """
    if to not in TARGETS:
        raise ValueError(f"convert: argument `to` must be one of {list(TARGETS)}, got {to!r}")
    src_dir = resolve_checkpoint(src, **hub_kwargs)
    if Path(dst).expanduser().absolute() == src_dir.absolute():
        raise CheckpointError(f"convert: destination {str(dst)!r} is the source; write to another directory")
    model = load_pretrained(src_dir, dtype="auto")  # keep the source's precision
    extra = tokenizer_files(src_dir)
    if to == "ssmkit":
        return save_pretrained(model, dst, max_shard_size=max_shard_size, extra_files=extra)
    return export_hf(model, dst, max_shard_size=max_shard_size, extra_files=extra,
                     special_ids=_special_ids(src_dir, model.config.vocab_size))
