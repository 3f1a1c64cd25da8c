"""Models: typed configs and presets, the backbone over any layer pattern, the LM, the classifier."""

from .backbone import Backbone, Block
from .classifier import SequenceClassifier
from .config import ModelConfig
from .lm import LM
from .mixer_configs import AttentionConfig, HyenaConfig, Mamba2Config, MambaConfig, MixerConfig, S4Config, S4DConfig

__all__ = [
    "ModelConfig", "MixerConfig", "MambaConfig", "Mamba2Config", "S4Config", "S4DConfig", "HyenaConfig",
    "AttentionConfig", "Backbone", "Block", "LM", "SequenceClassifier",
]
