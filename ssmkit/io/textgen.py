"""``ssmkit generate``: load a checkpoint and its tokenizer, stream the continuation of a prompt.

Text is written to ``out`` as each token is produced (through
:func:`ssmkit.generation.stream` and the tokenizer's stream decoder, which
holds back a partial UTF-8 character), generation stops at the tokenizer's
EOS, and the speed is reported on ``err``: new tokens, seconds, tokens/s,
and the time to the first token (the prefill).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, TextIO, Union

import torch

from ..generation import stream
from ..generation.tokenizer import ByteTokenizer
from .checkpoint import load_pretrained
from .files import CheckpointError
from .hub import resolve_checkpoint
from .tokenizer import load_tokenizer


@dataclass
class GenerationStats:
    """What one ``generate_text`` call produced and how fast."""

    new_tokens: int  # tokens generated (including a final EOS)
    seconds: float  # wall time from the start of the prefill to the last token
    first_token_seconds: float  # time to the first token (prefill + sampling)
    text: str  # the generated text (without the prompt)
    token_ids: list[int]  # the generated ids

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


def generate_text(model_path: Union[str, os.PathLike], prompt: str, *, max_new_tokens: int = 128,
                  temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                  repetition_penalty: float = 1.0, seed: Optional[int] = None, device: Optional[str] = None,
                  out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> GenerationStats:
    """Stream ``prompt``'s continuation by the checkpoint at ``model_path`` (directory or Hub id) to ``out``.

    The prompt is echoed first; the speed line goes to ``err``. ``seed`` makes sampling reproducible.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    directory = resolve_checkpoint(model_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_pretrained(directory, device=device)
    tok = load_tokenizer(directory)
    if isinstance(tok, ByteTokenizer) and model.vocab_size != tok.vocab_size:
        raise CheckpointError(f"{str(directory)!r} has no tokenizer.json, and the built-in byte tokenizer "
                              f"({tok.vocab_size} ids) does not fit this model's vocabulary of {model.vocab_size} "
                              f"ids; put the model's tokenizer.json into the checkpoint directory")
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("generate: the prompt encodes to no tokens; give a non-empty --prompt")
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    stop = [tok.eos_id] if tok.eos_id is not None and tok.eos_id < model.vocab_size else []
    tokens = stream(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                    repetition_penalty=repetition_penalty, stop_tokens=stop, generator=generator)  # checks args
    decoder = tok.stream_decoder()
    pieces: list[str] = []
    new_ids: list[int] = []
    out.write(prompt)
    out.flush()
    n, first = 0, 0.0
    start = time.perf_counter()
    for token in tokens:
        n += 1
        new_ids.append(token)
        if n == 1:
            first = time.perf_counter() - start
        piece = decoder.push(token)
        if piece:
            pieces.append(piece)
            out.write(piece)
            out.flush()
    seconds = time.perf_counter() - start
    tail = decoder.flush()
    pieces.append(tail)
    out.write(tail + "\n")
    out.flush()
    stats = GenerationStats(n, seconds, first, "".join(pieces), new_ids)
    err.write(f"{n} tokens in {seconds:.2f} s: {stats.tokens_per_second:.1f} tokens/s "
              f"(first token after {first:.2f} s)\n")
    err.flush()
    return stats
