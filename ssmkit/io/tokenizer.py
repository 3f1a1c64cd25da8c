"""The tokenizer of a checkpoint: its ``tokenizer.json`` (via the ``tokenizers`` library) or the built-in bytes.

One small interface (:class:`Tokenizer`) for both:

    ids = tok.encode(text)            list[int]
    text = tok.decode(ids)            str (special tokens dropped)
    tok.eos_id, tok.bos_id            int or None;  tok.vocab_size
    dec = tok.stream_decoder()        dec.push(id) -> the text that id completes; dec.flush() -> the rest

``load_tokenizer(dir)`` returns an :class:`HFTokenizer` when ``dir`` holds
``tokenizer.json`` (``tokenizers`` is an optional dependency: a clear error
when it is missing), else the built-in :class:`ssmkit.generation.tokenizer.ByteTokenizer`.
The special ids come from ``tokenizer_config.json`` / ``special_tokens_map.json``
(``eos_token``, ``bos_token``), else from ``config.json`` (``eos_token_id``, ``bos_token_id``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional, Protocol, Union

from ..generation.tokenizer import ByteTokenizer
from .files import CheckpointError
from .hub import resolve_checkpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json")


class StreamingDecoder(Protocol):
    def push(self, token: int) -> str: ...
    def flush(self) -> str: ...


class Tokenizer(Protocol):
    """What generation needs from a tokenizer (ByteTokenizer and HFTokenizer both have it)."""

    vocab_size: int
    eos_id: Optional[int]
    bos_id: Optional[int]

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def stream_decoder(self) -> StreamingDecoder: ...


class _IncrementalDecoder:
    """Turns ids into text one at a time, returning only new, complete text.

    Decodes a short window (the previous piece as context, then the new ids), so
    a step costs O(window), and tokenizers that drop a leading space at the start
    of a decode still give the right spacing. A piece that ends in an unfinished
    UTF-8 character (U+FFFD) waits for the next id.
    """

    def __init__(self, tok: "HFTokenizer") -> None:
        self._tok, self._ids = tok, []
        self._prefix = self._read = 0  # ids[_prefix:_read]: context already emitted; ids[_read:]: pending

    def push(self, token: int) -> str:
        self._ids.append(int(token))
        before = self._tok.decode(self._ids[self._prefix:self._read])
        text = self._tok.decode(self._ids[self._prefix:])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(before):]

    def flush(self) -> str:
        before = self._tok.decode(self._ids[self._prefix:self._read])
        text = self._tok.decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return text[len(before):]


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` behind the :class:`Tokenizer` interface."""

    def __init__(self, tokenizer, eos_id: Optional[int] = None, bos_id: Optional[int] = None) -> None:
        self._tok = tokenizer
        self.eos_id, self.bos_id = eos_id, bos_id
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, directory: Union[str, os.PathLike]) -> "HFTokenizer":
        """From ``directory/tokenizer.json`` and the special tokens named next to it."""
        directory = Path(directory)
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError:
            raise CheckpointError(f"{str(directory)!r} holds a tokenizer.json; reading it needs the `tokenizers` "
                                  f"library (pip install tokenizers)") from None
        try:
            tok = _Tok.from_file(str(directory / "tokenizer.json"))
        except Exception as e:
            raise CheckpointError(f"cannot read {str(directory / 'tokenizer.json')!r}: {e}") from None
        ids = {name: _special_id(directory, tok, name) for name in ("eos", "bos")}
        return cls(tok, eos_id=ids["eos"], bos_id=ids["bos"])

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"HFTokenizer.encode: argument `text` must be a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def stream_decoder(self) -> _IncrementalDecoder:
        return _IncrementalDecoder(self)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {str(path)!r}: {e}") from None
    return data if isinstance(data, dict) else {}


def _special_id(directory: Path, tok, name: str) -> Optional[int]:
    """The id of the ``name`` ("eos"/"bos") token named by the tokenizer files, else by config.json."""
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        token = _json(directory / fname).get(f"{name}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and tok.token_to_id(token) is not None:
            return tok.token_to_id(token)
    value = _json(directory / "config.json").get(f"{name}_token_id")
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def load_tokenizer(path_or_id: Union[str, os.PathLike], **hub_kwargs) -> Union[HFTokenizer, ByteTokenizer]:
    """The checkpoint's tokenizer.json as an :class:`HFTokenizer`, else the built-in ByteTokenizer."""
    directory = resolve_checkpoint(path_or_id, **hub_kwargs)
    if (directory / "tokenizer.json").is_file():
        return HFTokenizer.from_dir(directory)
    return ByteTokenizer()


def tokenizer_files(directory: Union[str, os.PathLike]) -> list[Path]:
    """The tokenizer files present in ``directory`` (copied along by a conversion)."""
    return [Path(directory) / f for f in TOKENIZER_FILES if (Path(directory) / f).is_file()]
