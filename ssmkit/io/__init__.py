"""Checkpoints that travel: save/load (safetensors), the public Mamba / Mamba-2 layouts, tokenizers.

    save_pretrained(model, dir)        ssmkit format, sharded safetensors, atomic (checkpoint.py, files.py)
    load_pretrained(dir_or_hub_id)     ssmkit, transformers or mamba_ssm layout, detected from config.json
    export_hf(model, dir)              MambaForCausalLM / Mamba2ForCausalLM layout (hf_format.py)
    convert(src, dst, to="hf")         any readable checkpoint -> ssmkit or transformers (convert.py)
    load_tokenizer(dir)                tokenizer.json via `tokenizers`, else the built-in bytes (tokenizer.py)
    generate_text(dir, prompt)         ``ssmkit generate``: stream a continuation (textgen.py)
"""

from .checkpoint import FORMATS, detect_format, export_hf, load_pretrained, read_config, save_pretrained
from .convert import convert
from .files import CheckpointError, CheckpointNotFoundError
from .hub import resolve_checkpoint
from .textgen import GenerationStats, generate_text
from .tokenizer import HFTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "save_pretrained", "load_pretrained", "export_hf", "convert", "detect_format", "read_config", "FORMATS",
    "CheckpointError", "CheckpointNotFoundError", "resolve_checkpoint", "load_tokenizer", "HFTokenizer",
    "Tokenizer", "generate_text", "GenerationStats",
]
