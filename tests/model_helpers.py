"""Helpers shared by the model and generation tests (tests/models, tests/generation)."""

from __future__ import annotations

import pytest
import torch

from ssmkit.models.config import ModelConfig
from ssmkit.models.lm import LM

TINY_PRESETS = ["mamba-tiny", "mamba2-tiny", "s4-tiny", "s4d-tiny", "hyena-tiny", "transformer-tiny", "hybrid-tiny"]
# Presets whose every layer has a fixed-size state (no KV cache).
SSM_TINY_PRESETS = ["mamba-tiny", "mamba2-tiny", "s4-tiny", "s4d-tiny"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (many small ops; the CPU is shared)."""
    torch.set_num_threads(1)
    yield


def tiny_lm(name: str, **overrides) -> LM:
    """A float32 LM of a tiny preset, in eval mode (weights from the global seed set by `gen`)."""
    return LM(ModelConfig.preset(name, **overrides)).eval()


def random_ids(gen: torch.Generator, *shape: int, vocab: int = 256) -> torch.Tensor:
    """Token ids in [0, vocab) from ``gen``."""
    return torch.randint(0, vocab, shape, generator=gen)
