"""Generation: sampling functions, the prefill/decode loop (through a CUDA graph where it can), a byte-level tokenizer."""

from .generate import decode_one, generate, prefill, stream
from .graphs import GraphedStep, graph_unsupported_reason, graphed_step, release_graphs
from .sampling import apply_repetition_penalty, greedy, sample, top_k_filter, top_p_filter
from .tokenizer import ByteTokenizer, StreamDecoder

__all__ = [
    "generate", "stream", "prefill", "decode_one", "GraphedStep", "graphed_step",
    "graph_unsupported_reason", "release_graphs",
    "sample", "greedy", "top_k_filter", "top_p_filter", "apply_repetition_penalty",
    "ByteTokenizer", "StreamDecoder",
]
