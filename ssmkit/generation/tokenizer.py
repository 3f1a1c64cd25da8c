"""A built-in byte-level tokenizer: UTF-8 bytes 0..255 plus three specials.

Ids 0..255 are the bytes of the UTF-8 encoding; ``BOS`` = 256, ``EOS`` = 257,
``PAD`` = 258; ``VOCAB_SIZE`` = 259 (the ``*-tiny`` presets use it). No
training, no files: every string round-trips exactly. Decoding a prefix that
ends inside a multi-byte character never fails: :meth:`ByteTokenizer.decode`
replaces broken bytes with U+FFFD, and :class:`StreamDecoder` holds an
incomplete character back until its last byte arrives (for streaming).
"""

from __future__ import annotations

import codecs
from typing import Iterable

BOS = 256
EOS = 257
PAD = 258
VOCAB_SIZE = 259


class StreamDecoder:
    """Turns ids into text one at a time; ``push`` returns only complete characters."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """Feed one id; return the text it completes ("" for specials or a partial character)."""
        token = int(token)
        if not 0 <= token < VOCAB_SIZE:
            raise ValueError(f"StreamDecoder.push: argument `token` must be in [0, {VOCAB_SIZE}), got {token}")
        if token >= 256:
            return ""
        return self._dec.decode(bytes([token]))

    def flush(self) -> str:
        """Text still held back (an unfinished character becomes U+FFFD)."""
        return self._dec.decode(b"", final=True)


class ByteTokenizer:
    """UTF-8 bytes as ids, with BOS/EOS/PAD specials (see module docstring)."""

    bos_id: int = BOS
    eos_id: int = EOS
    pad_id: int = PAD
    vocab_size: int = VOCAB_SIZE

    def encode(self, text: str, *, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        """text -> ids: [BOS] + UTF-8 bytes (+ [EOS])."""
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode: argument `text` must be a str, got {type(text).__name__}")
        ids = list(text.encode("utf-8"))
        return ([BOS] if add_bos else []) + ids + ([EOS] if add_eos else [])

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """ids -> text; specials are dropped, decoding stops at EOS (unless told not to).

        Invalid or truncated UTF-8 becomes U+FFFD instead of raising.
        """
        out = bytearray()
        for token in ids:
            token = int(token)
            if not 0 <= token < VOCAB_SIZE:
                raise ValueError(f"ByteTokenizer.decode: ids must be in [0, {VOCAB_SIZE}), got {token}")
            if token == EOS and stop_at_eos:
                break
            if token < 256:
                out.append(token)
        return out.decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        """A fresh incremental decoder for streamed ids."""
        return StreamDecoder()
