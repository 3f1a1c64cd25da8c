"""Per-mixer configs: one typed dataclass per layer letter of a pattern.

Legend: ``M`` Mamba, ``m`` Mamba-2, ``S`` S4, ``D`` S4D, ``H`` Hyena,
``A`` attention. Each config's fields mirror the keyword arguments of its
layer (``ssmkit.layers.<module>.<Class>``), except ``backend``, which is
None to inherit the model's backend, and ``bidirectional``, which is set
model-wide (``ModelConfig.bidirectional``). ``check(d_model, where)``
validates the sizes that depend on the model width before anything is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union


def _err(where: str, msg: str) -> ValueError:
    return ValueError(f"{where}: {msg}")


def _positive(where: str, **values: Any) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _err(where, f"`{name}` must be an int >= 1, got {v!r}")


@dataclass(kw_only=True)
class MixerConfig:
    """Base of the per-mixer configs."""

    letter: ClassVar[str] = "?"  # the pattern letter
    kind: ClassVar[str] = "?"  # the name used in to_dict ("type")
    layer: ClassVar[str] = "?"  # "module:Class" under ssmkit.layers
    bidirectional_ok: ClassVar[bool] = False  # the layer can be built non-causal

    backend: Optional[str] = None  # op backend for this layer; None = the model's `backend`

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the layer constructor (without backend)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "backend"}

    def check(self, d_model: int, where: str) -> None:
        """Raise ValueError when this config cannot be built at width ``d_model``."""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, **dataclasses.asdict(self)}


@dataclass(kw_only=True)
class MambaConfig(MixerConfig):
    """Mamba (selective scan, Gu & Dao 2023)."""

    letter: ClassVar[str] = "M"
    kind: ClassVar[str] = "mamba"
    layer: ClassVar[str] = "mamba:Mamba"

    d_state: int = 16  # N, state size per channel
    d_conv: int = 4  # width of the causal depthwise conv
    expand: int = 2  # d_inner = expand * d_model
    dt_rank: Union[int, str] = "auto"  # rank of the Δ projection; "auto" = ceil(d_model / 16)
    dt_min: float = 0.001  # softplus(dt bias) drawn log-uniformly in [dt_min, dt_max]
    dt_max: float = 0.1  # upper end of the Δ init range
    dt_init: str = "random"  # dt_proj.weight init: "random" or "constant"
    dt_scale: float = 1.0  # scale of dt_proj.weight's init
    dt_init_floor: float = 1e-4  # lower clamp of the drawn Δ
    conv_bias: bool = True  # bias in the causal conv
    bias: bool = False  # bias in in_proj / out_proj
    state_norm: bool = False  # StateNorm on the scan output before the gate (long contexts)

    def check(self, d_model: int, where: str) -> None:
        _positive(where, d_state=self.d_state, d_conv=self.d_conv, expand=self.expand)
        if self.dt_rank != "auto":
            _positive(where, dt_rank=self.dt_rank)


@dataclass(kw_only=True)
class Mamba2Config(MixerConfig):
    """Mamba-2 (state space duality, Dao & Gu 2024)."""

    letter: ClassVar[str] = "m"
    kind: ClassVar[str] = "mamba2"
    layer: ClassVar[str] = "mamba2:Mamba2"

    d_state: int = 128  # N, state size per head
    d_conv: int = 4  # width of the causal depthwise conv
    expand: int = 2  # d_inner = expand * d_model
    headdim: int = 64  # P, channels per head; nheads = d_inner / headdim
    ngroups: int = 1  # G, groups sharing B and C
    chunk_size: int = 64  # SSD chunk length
    dt_min: float = 0.001  # softplus(dt_bias) drawn log-uniformly in [dt_min, dt_max]
    dt_max: float = 0.1  # upper end of the Δ init range
    dt_init_floor: float = 1e-4  # lower clamp of the drawn Δ
    dt_limit: tuple[float, float] = (0.0, float("inf"))  # (lo, hi) clamp of Δ after the softplus
    A_init_range: tuple[float, float] = (1.0, 16.0)  # A drawn uniformly in this range
    rmsnorm: bool = True  # gated RMSNorm on the output (else a plain silu(z) gate)
    norm_eps: float = 1e-5  # epsilon of that gated RMSNorm (transformers checkpoints: their layer_norm_epsilon)
    norm_before_gate: bool = False  # normalise y before the silu(z) gate
    conv_bias: bool = True  # bias in the causal conv
    bias: bool = False  # bias in in_proj / out_proj

    def check(self, d_model: int, where: str) -> None:
        _positive(where, d_state=self.d_state, d_conv=self.d_conv, expand=self.expand, headdim=self.headdim,
                  ngroups=self.ngroups, chunk_size=self.chunk_size)
        d_inner = self.expand * d_model
        if d_inner % self.headdim:
            raise _err(where, f"Mamba2 d_inner = expand * d_model = {d_inner} must be divisible by `headdim`={self.headdim}")
        nheads = d_inner // self.headdim
        if nheads % self.ngroups:
            raise _err(where, f"Mamba2 nheads = {nheads} must be divisible by `ngroups`={self.ngroups}")


@dataclass(kw_only=True)
class S4Config(MixerConfig):
    """S4 (HiPPO, structured state space, Gu et al. 2022)."""

    letter: ClassVar[str] = "S"
    kind: ClassVar[str] = "s4"
    layer: ClassVar[str] = "s4:S4"
    bidirectional_ok: ClassVar[bool] = True

    d_state: int = 64  # N, state size per channel (even: N/2 conjugate pairs)
    init: str = "legs"  # HiPPO measure A starts from: "legs", "legt" or "fout"
    discretization: str = "bilinear"  # continuous -> discrete rule: "bilinear" or "zoh"
    dt_min: float = 1e-3  # Δ initialised log-uniformly in [dt_min, dt_max]
    dt_max: float = 1e-1  # upper end of the Δ init range
    lr: Optional[float] = None  # learning rate of the SSM parameters (A, B, Δ); None = the optimizer's

    def check(self, d_model: int, where: str) -> None:
        _positive(where, d_state=self.d_state)
        if self.d_state % 2:
            raise _err(where, f"S4 `d_state`={self.d_state} must be even (N/2 complex conjugate-pair modes)")


@dataclass(kw_only=True)
class S4DConfig(MixerConfig):
    """S4D (diagonal S4, Gu et al. 2022)."""

    letter: ClassVar[str] = "D"
    kind: ClassVar[str] = "s4d"
    layer: ClassVar[str] = "s4d:S4D"
    bidirectional_ok: ClassVar[bool] = True

    d_state: int = 64  # N, state size per channel (even unless init="real")
    init: str = "legs"  # diagonal init of A: "legs" (S4D-LegS), "inv", "lin" or "real"
    discretization: str = "zoh"  # continuous -> discrete rule: "zoh" or "bilinear"
    dt_min: float = 1e-3  # Δ initialised log-uniformly in [dt_min, dt_max]
    dt_max: float = 1e-1  # upper end of the Δ init range
    lr: Optional[float] = None  # learning rate of the SSM parameters (A, B, Δ); None = the optimizer's

    def check(self, d_model: int, where: str) -> None:
        _positive(where, d_state=self.d_state)
        if self.init != "real" and self.d_state % 2:
            raise _err(where, f"S4D `d_state`={self.d_state} must be even for init={self.init!r} "
                       f"(N/2 conjugate-pair modes; or use init='real')")


@dataclass(kw_only=True)
class HyenaConfig(MixerConfig):
    """Hyena (implicit long convolutions with gating, Poli et al. 2023)."""

    letter: ClassVar[str] = "H"
    kind: ClassVar[str] = "hyena"
    layer: ClassVar[str] = "hyena:Hyena"
    bidirectional_ok: ClassVar[bool] = True

    order: int = 2  # N, number of gated long convolutions (the recurrence depth)
    filter_order: int = 64  # width of the implicit filter MLP
    emb_dim: int = 33  # positional features fed to the filter MLP (odd, >= 3)
    short_filter_order: int = 3  # taps of the short causal convolution
    max_len: int = 2048  # filter length: longest sequence (prompt + generated); the state holds this many steps
    w: float = 1.0  # initial frequency of the filter MLP's Sine activations
    fast_decay_pct: float = 0.3  # fastest channel's decay reaches decay_target at this fraction of max_len
    slow_decay_pct: float = 1.5  # slowest channel's decay reaches decay_target at this fraction of max_len
    decay_target: float = 1e-2  # value of the decay window at the *_decay_pct points
    modulation_shift: float = 0.0  # added to the decay window
    dropout: float = 0.0  # dropout on each gated output

    def check(self, d_model: int, where: str) -> None:
        _positive(where, order=self.order, filter_order=self.filter_order, max_len=self.max_len)


@dataclass(kw_only=True)
class AttentionConfig(MixerConfig):
    """Multi-head (grouped-query) attention with rotary embeddings and a KV cache."""

    letter: ClassVar[str] = "A"
    kind: ClassVar[str] = "attention"
    layer: ClassVar[str] = "attention:Attention"
    bidirectional_ok: ClassVar[bool] = True

    n_heads: int = 8  # query heads
    n_kv_heads: Optional[int] = None  # key/value heads (grouped-query attention); None = n_heads
    head_dim: Optional[int] = None  # channels per head; None = d_model / n_heads
    rope_base: float = 10000.0  # rotary embedding base
    rope_fraction: float = 1.0  # fraction of each head's channels rotated by RoPE
    window: Optional[int] = None  # sliding window (a ring-buffer cache of this many slots); None = full attention
    max_seq_len: int = 2048  # KV cache slots without a window: the longest sequence a state can hold
    qkv_bias: bool = False  # bias in q_proj / k_proj / v_proj
    out_bias: bool = False  # bias in o_proj

    def check(self, d_model: int, where: str) -> None:
        _positive(where, n_heads=self.n_heads, max_seq_len=self.max_seq_len)
        if self.head_dim is None and d_model % self.n_heads:
            raise _err(where, f"attention `n_heads`={self.n_heads} must divide d_model={d_model} "
                       f"(or set `head_dim`)")
        if self.head_dim is not None:
            _positive(where, head_dim=self.head_dim)
        if self.n_kv_heads is not None:
            _positive(where, n_kv_heads=self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise _err(where, f"attention `n_kv_heads`={self.n_kv_heads} must divide `n_heads`={self.n_heads}")
        if self.window is not None:
            _positive(where, window=self.window)


MIXER_CONFIGS: dict[str, type[MixerConfig]] = {
    c.letter: c for c in (MambaConfig, Mamba2Config, S4Config, S4DConfig, HyenaConfig, AttentionConfig)
}
LEGEND = "M=Mamba, m=Mamba2, S=S4, D=S4D, H=Hyena, A=attention"
KIND_TO_CONFIG: dict[str, type[MixerConfig]] = {c.kind: c for c in MIXER_CONFIGS.values()}


def mixer_config_from_dict(d: dict[str, Any], where: str) -> MixerConfig:
    """Inverse of ``MixerConfig.to_dict``."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"{where}: expected a dict with a 'type' key (one of {sorted(KIND_TO_CONFIG)}), got {d!r}")
    d = dict(d)
    kind = d.pop("type")
    if kind not in KIND_TO_CONFIG:
        raise ValueError(f"{where}: unknown mixer type {kind!r}; known: {sorted(KIND_TO_CONFIG)}")
    cls = KIND_TO_CONFIG[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
    for f in dataclasses.fields(cls):  # JSON has no tuples
        if isinstance(f.default, tuple) and isinstance(d.get(f.name), list):
            d[f.name] = tuple(d[f.name])
    return cls(**d)
