"""The original ``state-spaces/mamba-*`` / ``mamba2-*`` checkpoint layout (the mamba_ssm package).

``config.json`` (mamba_ssm's ``MambaConfig``) -> :class:`ModelConfig`:

    d_model                  -> d_model                n_layer -> len(layers)
    vocab_size               -> vocab_size             pad_vocab_size_multiple -> pad_vocab_size_multiple
    ssm_cfg["layer"]         "Mamba1" (default) -> "M" * n_layer, "Mamba2" -> "m" * n_layer
    ssm_cfg[...]             -> MambaConfig / Mamba2Config fields of the same names; a missing one takes
                                mamba_ssm's default (Mamba2 chunk_size 256, not ssmkit's 64)
    d_intermediate > 0       -> mlp="gated" (SwiGLU, fc1 = [value, gate]), width rounded up to 128
    residual_in_fp32, tie_embeddings -> the same;  rms_norm must be true;  norm eps 1e-5 everywhere

Weights (``pytorch_model.bin``, loaded with ``torch.load(weights_only=True)``):
``backbone.embedding.weight`` <-> ``embedding.weight``; every other name
(``backbone.layers.{i}.norm.weight``, ``backbone.layers.{i}.mixer.*``,
``backbone.layers.{i}.norm2.weight``, ``backbone.layers.{i}.mlp.fc{1,2}.weight``,
``backbone.norm_f.weight``, ``lm_head.weight``) is the same in ssmkit.

mamba_ssm's LM returns logits for all padded rows; ssmkit returns the first
``vocab_size`` (the others are padding). Attention layers (``attn_layer_idx``)
and LayerNorm blocks (``rms_norm: false``) are refused with a clear error.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.config import ModelConfig
from ..models.mixer_configs import Mamba2Config, MambaConfig
from .files import CheckpointError

FORMAT = "mamba_ssm"
TOP_KEYS = {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg",
            "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings"}
# ssm_cfg keys that only select a kernel or an initialisation that the weights already carry.
_IGNORED_SSM = {"use_fast_path", "use_mem_eff_path", "conv_init", "layer_idx"}
_MAMBA1_SSM = {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor",
               "conv_bias", "bias"}
_MAMBA2_SSM = {"d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "dt_min", "dt_max",
               "dt_init_floor", "dt_limit", "A_init_range", "rmsnorm", "norm_before_gate", "conv_bias", "bias"}
# mamba_ssm's constructor defaults: a field missing from ssm_cfg takes these, not ssmkit's defaults.
_MAMBA1_DEFAULTS = dict(d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1, dt_init="random",
                        dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False)
_MAMBA2_DEFAULTS = dict(d_state=128, d_conv=4, expand=2, headdim=64, ngroups=1, chunk_size=256, dt_min=0.001,
                        dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), A_init_range=(1.0, 16.0),
                        rmsnorm=True, norm_before_gate=False, conv_bias=True, bias=False)
GATED_MLP_MULTIPLE = 128  # mamba_ssm's GatedMLP rounds its width up to a multiple of this


def is_mamba_ssm_config(raw: dict[str, Any]) -> bool:
    return "d_model" in raw and "n_layer" in raw


def _fail(where: str, msg: str) -> CheckpointError:
    return CheckpointError(f"{where}: {msg}")


def config_from_mamba_ssm(raw: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """The ModelConfig of a mamba_ssm ``config.json`` (see the module docstring for the mapping)."""
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise _fail(where, f"unknown field(s) {unknown} for a mamba_ssm (state-spaces) config; known: "
                    f"{sorted(TOP_KEYS)}")
    for key in ("d_model", "n_layer", "vocab_size"):
        if key not in raw:
            raise _fail(where, f"missing required field {key!r}")
    if not raw.get("rms_norm", True):
        raise _fail(where, "rms_norm=false (LayerNorm blocks) is not supported: ssmkit blocks use RMSNorm")
    if raw.get("attn_layer_idx"):
        raise _fail(where, f"attention layers (attn_layer_idx={raw['attn_layer_idx']}) in the mamba_ssm layout "
                    f"are not supported")
    ssm = dict(raw.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    for key in _IGNORED_SSM:
        ssm.pop(key, None)
    if layer == "Mamba1":
        known, letter = _MAMBA1_SSM, "M"
    elif layer == "Mamba2":
        known, letter = _MAMBA2_SSM, "m"
        if ssm.pop("D_has_hdim", False):
            raise _fail(where, "ssm_cfg.D_has_hdim=true (a D per channel) is not supported; ssmkit's Mamba2 has one "
                        "D per head")
        d_ssm = ssm.pop("d_ssm", None)
        if d_ssm is not None and d_ssm != ssm.get("expand", 2) * raw["d_model"]:
            raise _fail(where, f"ssm_cfg.d_ssm={d_ssm} (an SSM narrower than expand * d_model, with a fused MLP) "
                        f"is not supported")
        for key in ("dt_limit", "A_init_range"):
            if isinstance(ssm.get(key), list):
                ssm[key] = tuple(ssm[key])
    else:
        raise _fail(where, f"ssm_cfg.layer={layer!r} is not a known layer; expected 'Mamba1' or 'Mamba2'")
    unknown = sorted(set(ssm) - known)
    if unknown:
        raise _fail(where, f"unknown ssm_cfg field(s) {unknown} for {layer}; known: {sorted(known)}")
    d_int = raw.get("d_intermediate", 0) or 0
    try:
        if letter == "M":
            mixer = MambaConfig(**{**_MAMBA1_DEFAULTS, **ssm})
        else:
            mixer = Mamba2Config(**{**_MAMBA2_DEFAULTS, **ssm}, norm_eps=1e-5)
        return ModelConfig(
            layers=letter * int(raw["n_layer"]), d_model=raw["d_model"], vocab_size=raw["vocab_size"],
            pad_vocab_size_multiple=raw.get("pad_vocab_size_multiple", 8),
            mlp="gated" if d_int > 0 else "none",
            d_intermediate=-(-d_int // GATED_MLP_MULTIPLE) * GATED_MLP_MULTIPLE if d_int > 0 else None,
            norm_eps=1e-5, residual_in_fp32=bool(raw.get("residual_in_fp32", True)),
            tie_embeddings=bool(raw.get("tie_embeddings", True)),
            **({"mamba": mixer} if letter == "M" else {"mamba2": mixer}),
        )
    except (TypeError, ValueError) as e:
        raise _fail(where, f"invalid mamba_ssm config: {e}") from None


def keys_from_mamba_ssm(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mamba_ssm names -> ssmkit names (only the embedding moves)."""
    return {("embedding.weight" if k == "backbone.embedding.weight" else k): v for k, v in tensors.items()}
