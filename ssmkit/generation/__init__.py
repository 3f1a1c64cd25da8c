"""Generation: sampling functions, the prefill/decode loop, a byte-level tokenizer."""

from .generate import decode_one, generate, prefill, stream
from .sampling import apply_repetition_penalty, greedy, sample, top_k_filter, top_p_filter
from .tokenizer import ByteTokenizer, StreamDecoder

__all__ = [
    "generate", "stream", "prefill", "decode_one",
    "sample", "greedy", "top_k_filter", "top_p_filter", "apply_repetition_penalty",
    "ByteTokenizer", "StreamDecoder",
]
