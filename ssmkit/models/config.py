"""Model configs: a model is a layer pattern plus sizes, never a copied file.

``ModelConfig.layers`` is either a pattern string over the legend
``M``=Mamba, ``m``=Mamba2, ``S``=S4, ``D``=S4D, ``H``=Hyena, ``A``=attention
(e.g. ``"MMMA" * 4``, a Jamba-style hybrid), taking each letter's settings
from the per-letter defaults (``mamba``, ``mamba2``, ...), or a list of
per-layer mixer configs. Layer i carries a channel-mixing sublayer chosen by
``mlp``: ``"none"`` (Mamba-style blocks), ``"mlp"`` (GELU), ``"gated"``
(SwiGLU) or ``"moe"`` (top-k experts on every ``moe_every``-th layer,
``(i + 1) % moe_every == 0``, a SwiGLU MLP on the others).

Named presets: :meth:`ModelConfig.preset` (see :mod:`ssmkit.models.presets`).
``to_dict`` / ``from_dict`` give a JSON round trip for checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .mixer_configs import (
    LEGEND,
    MIXER_CONFIGS,
    AttentionConfig,
    HyenaConfig,
    Mamba2Config,
    MambaConfig,
    MixerConfig,
    S4Config,
    S4DConfig,
    mixer_config_from_dict,
)

__all__ = [
    "ModelConfig", "MixerConfig", "MambaConfig", "Mamba2Config", "S4Config", "S4DConfig", "HyenaConfig",
    "AttentionConfig", "LEGEND",
]

MLP_KINDS = ("none", "mlp", "gated", "moe")
BACKENDS = ("auto", "reference", "torch", "triton", "c")
# ModelConfig field holding the default config of each letter.
LETTER_FIELD = {"M": "mamba", "m": "mamba2", "S": "s4", "D": "s4d", "H": "hyena", "A": "attention"}


@dataclass(kw_only=True)
class ModelConfig:
    """Everything needed to build a Backbone, LM or SequenceClassifier."""

    layers: Union[str, list[MixerConfig]]  # pattern over the legend, or one mixer config per layer
    d_model: int  # D, width of the residual stream
    vocab_size: int  # number of real token ids (logits have this many entries)
    pad_vocab_size_multiple: int = 8  # embedding rows are padded up to a multiple of this
    mlp: str = "none"  # channel-mixing sublayer per block: "none", "mlp", "gated" or "moe"
    d_intermediate: Optional[int] = None  # hidden width of the MLP / each expert; None = 4D (mlp), ~8D/3 (gated, moe)
    n_experts: int = 8  # experts per MoE layer
    top_k: int = 2  # experts each token is routed to
    moe_every: int = 1  # MoE on layers with (i + 1) % moe_every == 0, SwiGLU MLP elsewhere
    moe_aux_loss_coef: float = 0.01  # weight of the load-balancing loss in LM.aux_loss()
    norm_eps: float = 1e-5  # RMSNorm epsilon
    residual_in_fp32: bool = True  # keep the residual stream in float32 whatever the compute dtype
    tie_embeddings: bool = True  # lm_head shares the embedding matrix
    bidirectional: bool = False  # non-causal layers (S4/S4D/Hyena bidirectional, attention unmasked); classifiers only
    init_std: float = 0.02  # std of embedding / linear initialisation
    rescale_prenorm_residual: bool = True  # scale out_proj / fc2 init by 1/sqrt(n_layers) (GPT-2 scheme)
    backend: str = "auto"  # op backend of every layer whose config leaves `backend` None
    mamba: MambaConfig = field(default_factory=MambaConfig)  # settings of each "M" in a pattern
    mamba2: Mamba2Config = field(default_factory=Mamba2Config)  # settings of each "m"
    s4: S4Config = field(default_factory=S4Config)  # settings of each "S"
    s4d: S4DConfig = field(default_factory=S4DConfig)  # settings of each "D"
    hyena: HyenaConfig = field(default_factory=HyenaConfig)  # settings of each "H"
    attention: AttentionConfig = field(default_factory=AttentionConfig)  # settings of each "A"

    def __post_init__(self) -> None:
        where = "ModelConfig"
        for name in ("d_model", "vocab_size", "pad_vocab_size_multiple", "n_experts", "top_k", "moe_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{where}: `{name}` must be an int >= 1, got {v!r}")
        if self.d_intermediate is not None and (not isinstance(self.d_intermediate, int) or self.d_intermediate < 1):
            raise ValueError(f"{where}: `d_intermediate` must be None or an int >= 1, got {self.d_intermediate!r}")
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"{where}: `mlp` must be one of {list(MLP_KINDS)}, got {self.mlp!r}")
        if self.mlp == "moe" and self.top_k > self.n_experts:
            raise ValueError(f"{where}: `top_k`={self.top_k} must be <= `n_experts`={self.n_experts}")
        if self.backend not in BACKENDS:
            raise ValueError(f"{where}: `backend` must be one of {list(BACKENDS)}, got {self.backend!r}")
        for letter, name in LETTER_FIELD.items():
            if not isinstance(getattr(self, name), MIXER_CONFIGS[letter]):
                raise TypeError(f"{where}: `{name}` must be a {MIXER_CONFIGS[letter].__name__}, "
                                f"got {type(getattr(self, name)).__name__}")
        self._check_layers(where)
        for i, cfg in enumerate(self.layer_configs()):
            lw = f"{where}: layer {i} ({cfg.kind})"
            cfg.check(self.d_model, lw)
            if cfg.backend is not None and cfg.backend not in BACKENDS:
                raise ValueError(f"{lw}: `backend` must be None or one of {list(BACKENDS)}, got {cfg.backend!r}")
            if self.bidirectional and not cfg.bidirectional_ok:
                raise ValueError(f"{lw}: bidirectional=True, but {type(cfg).__name__[:-6]} has no bidirectional "
                                 f"mode (use S4, S4D, Hyena or attention layers, or bidirectional=False)")

    def _check_layers(self, where: str) -> None:
        if isinstance(self.layers, str):
            if not self.layers:
                raise ValueError(f"{where}: `layers` pattern is empty; use letters from the legend {LEGEND}")
            for i, letter in enumerate(self.layers):
                if letter not in MIXER_CONFIGS:
                    raise ValueError(f"{where}: `layers` pattern {self.layers!r} has unknown letter {letter!r} "
                                     f"at index {i}; legend: {LEGEND}")
        elif isinstance(self.layers, (list, tuple)):
            if not self.layers:
                raise ValueError(f"{where}: `layers` is an empty list; give at least one mixer config")
            for i, cfg in enumerate(self.layers):
                if not isinstance(cfg, MixerConfig) or type(cfg) is MixerConfig:
                    raise TypeError(f"{where}: `layers[{i}]` must be a mixer config "
                                    f"({', '.join(c.__name__ for c in MIXER_CONFIGS.values())}), "
                                    f"got {type(cfg).__name__}")
            self.layers = list(self.layers)
        else:
            raise TypeError(f"{where}: `layers` must be a pattern string or a list of mixer configs, "
                            f"got {type(self.layers).__name__}")

    # -- derived values ---------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def pattern(self) -> str:
        """The layer letters, also for a list of configs (e.g. "MMMA")."""
        return self.layers if isinstance(self.layers, str) else "".join(c.letter for c in self.layers)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    def layer_configs(self) -> list[MixerConfig]:
        """One (copied) mixer config per layer."""
        if isinstance(self.layers, str):
            return [dataclasses.replace(getattr(self, LETTER_FIELD[c])) for c in self.layers]
        return [dataclasses.replace(c) for c in self.layers]

    def mlp_kind(self, layer: int) -> str:
        """Channel-mixing sublayer of layer ``layer``: "none", "mlp", "gated" or "moe"."""
        if self.mlp == "moe" and (layer + 1) % self.moe_every != 0:
            return "gated"
        return self.mlp

    # -- presets and serialisation ----------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A named preset, optionally with fields replaced (``preset("mamba-tiny", d_model=32)``)."""
        from .presets import PRESETS

        if name not in PRESETS:
            raise ValueError(f"ModelConfig.preset: unknown preset {name!r}; known presets: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name](), **overrides)

    @staticmethod
    def presets() -> list[str]:
        """Names of the known presets."""
        from .presets import PRESETS

        return sorted(PRESETS)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict; ``from_dict(to_dict())`` rebuilds an equal config."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "layers":
                out["layers"] = v if isinstance(v, str) else [c.to_dict() for c in v]
            elif isinstance(v, MixerConfig):
                out[f.name] = dataclasses.asdict(v)
            else:
                out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        where = "ModelConfig.from_dict"
        if not isinstance(d, dict):
            raise TypeError(f"{where}: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        kwargs = dict(d)
        if isinstance(kwargs.get("layers"), list):
            kwargs["layers"] = [mixer_config_from_dict(c, f"{where}: layers[{i}]") for i, c in enumerate(kwargs["layers"])]
        for letter, name in LETTER_FIELD.items():
            if name in kwargs and isinstance(kwargs[name], dict):
                kwargs[name] = mixer_config_from_dict({"type": MIXER_CONFIGS[letter].kind, **kwargs[name]},
                                                      f"{where}: {name}")
        return cls(**kwargs)
