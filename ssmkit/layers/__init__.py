"""nn.Modules: the sequence mixers (Mixer interface), MLPs and norms.

Mixers: ``y, state = mixer(x, state=None, mask=None)``, ``mixer.step(x_t, state)``,
``mixer.init_state(batch_size, device=..., dtype=...)`` -- see :mod:`ssmkit.layers.base`.
"""

from .attention import Attention, AttentionState
from .base import Mixer, MixerState
from .hyena import Hyena, HyenaState
from .mamba import Mamba, MambaState
from .mamba2 import Mamba2, Mamba2State
from .mlp import MLP, GatedMLP, MoE
from .norm import GatedRMSNorm, RMSNorm, StateNorm
from .s4 import S4, S4State
from .s4d import S4D, S4DState

__all__ = [
    "Mixer", "MixerState",
    "S4", "S4State", "S4D", "S4DState", "Mamba", "MambaState", "Mamba2", "Mamba2State",
    "Hyena", "HyenaState", "Attention", "AttentionState",
    "MLP", "GatedMLP", "MoE", "RMSNorm", "GatedRMSNorm", "StateNorm",
]
