"""Named model presets (``ModelConfig.preset(name)``).

Full-size presets follow the published models: ``mamba-130m`` and
``mamba2-130m`` match the public checkpoints' shapes (GPT-NeoX vocabulary of
50277 ids, padded to 50280 / 50288), ``s4d-lra`` a bidirectional S4D
classifier for Long Range Arena, ``hyena-small`` the 125M Hyena LM,
``transformer-small`` a GPT-2-small-sized Transformer++ (RoPE, SwiGLU),
``hybrid-small`` a Jamba-style stack (three Mamba layers per attention layer,
MoE on every other layer). The ``*-tiny`` presets are CPU-sized (D=64, 2-4
layers) over the byte vocabulary of :mod:`ssmkit.generation.tokenizer`.
"""

from __future__ import annotations

from typing import Callable

from ..generation.tokenizer import VOCAB_SIZE as BYTE_VOCAB
from .config import ModelConfig
from .mixer_configs import AttentionConfig, HyenaConfig, Mamba2Config, MambaConfig, S4Config, S4DConfig

NEOX_VOCAB = 50277  # GPT-NeoX tokenizer used by the Mamba checkpoints
GPT2_VOCAB = 50257


def mamba_130m() -> ModelConfig:
    return ModelConfig(layers="M" * 24, d_model=768, vocab_size=NEOX_VOCAB, pad_vocab_size_multiple=8,
                       mamba=MambaConfig(d_state=16, d_conv=4, expand=2))


def mamba2_130m() -> ModelConfig:
    return ModelConfig(layers="m" * 24, d_model=768, vocab_size=NEOX_VOCAB, pad_vocab_size_multiple=16,
                       mamba2=Mamba2Config(d_state=128, headdim=64, ngroups=1, chunk_size=256))


def s4d_lra() -> ModelConfig:
    return ModelConfig(layers="D" * 6, d_model=256, vocab_size=BYTE_VOCAB, mlp="gated", bidirectional=True,
                       s4d=S4DConfig(d_state=64))


def hyena_small() -> ModelConfig:
    return ModelConfig(layers="H" * 12, d_model=768, vocab_size=GPT2_VOCAB, mlp="mlp",
                       hyena=HyenaConfig(order=2, filter_order=64, max_len=2048))


def transformer_small() -> ModelConfig:
    return ModelConfig(layers="A" * 12, d_model=768, vocab_size=GPT2_VOCAB, mlp="gated", d_intermediate=2048,
                       attention=AttentionConfig(n_heads=12, max_seq_len=2048))


def hybrid_small() -> ModelConfig:
    return ModelConfig(layers="MMMA" * 4, d_model=768, vocab_size=NEOX_VOCAB, mlp="moe", n_experts=8, top_k=2,
                       moe_every=2, d_intermediate=1024, attention=AttentionConfig(n_heads=12, max_seq_len=4096))


def _tiny(layers: str, **kw) -> ModelConfig:
    return ModelConfig(layers=layers, d_model=64, vocab_size=BYTE_VOCAB, **kw)


def mamba_tiny() -> ModelConfig:
    return _tiny("MM", mamba=MambaConfig(d_state=8, d_conv=4, expand=2))


def mamba2_tiny() -> ModelConfig:
    return _tiny("mm", mamba2=Mamba2Config(d_state=16, headdim=16, ngroups=1, chunk_size=16))


def s4_tiny() -> ModelConfig:
    return _tiny("SS", mlp="gated", s4=S4Config(d_state=16))


def s4d_tiny() -> ModelConfig:
    return _tiny("DD", mlp="gated", s4d=S4DConfig(d_state=16))


def hyena_tiny() -> ModelConfig:
    return _tiny("HH", mlp="mlp", hyena=HyenaConfig(order=2, filter_order=16, max_len=512))


def transformer_tiny() -> ModelConfig:
    return _tiny("AA", mlp="gated", attention=AttentionConfig(n_heads=4, max_seq_len=512))


def hybrid_tiny() -> ModelConfig:
    return _tiny("MmMA", mlp="moe", n_experts=4, top_k=2, moe_every=2, d_intermediate=64,
                 mamba=MambaConfig(d_state=8), mamba2=Mamba2Config(d_state=16, headdim=16, chunk_size=16),
                 attention=AttentionConfig(n_heads=4, max_seq_len=512))


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "mamba-130m": mamba_130m,
    "mamba2-130m": mamba2_130m,
    "s4d-lra": s4d_lra,
    "hyena-small": hyena_small,
    "transformer-small": transformer_small,
    "hybrid-small": hybrid_small,
    "mamba-tiny": mamba_tiny,
    "mamba2-tiny": mamba2_tiny,
    "s4-tiny": s4_tiny,
    "s4d-tiny": s4d_tiny,
    "hyena-tiny": hyena_tiny,
    "transformer-tiny": transformer_tiny,
    "hybrid-tiny": hybrid_tiny,
}
