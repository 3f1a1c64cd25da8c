"""ssmkit: state space sequence models -- S4, S4D, Mamba, Mamba-2, Hyena, attention and hybrids."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names resolved on first access (PEP 562), so `import ssmkit` stays light.
_LAZY = {
    "ModelConfig": "ssmkit.models.config",
    "LM": "ssmkit.models.lm",
    "SequenceClassifier": "ssmkit.models.classifier",
    "generate": "ssmkit.generation.generate",
    "stream": "ssmkit.generation.generate",
    "ByteTokenizer": "ssmkit.generation.tokenizer",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssmkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
