"""The Hugging Face transformers layout: ``MambaForCausalLM`` and ``Mamba2ForCausalLM``.

``config.json`` (``model_type`` "mamba" / "mamba2") <-> :class:`ModelConfig`:

    hidden_size -> d_model     num_hidden_layers -> "M" or "m" * n     vocab_size -> vocab_size (no padding)
    layer_norm_epsilon -> norm_eps (Mamba-2: also the gated norm's ``norm_eps``)
    residual_in_fp32 -> residual_in_fp32     tie_word_embeddings -> tie_embeddings
    state_size -> d_state    conv_kernel -> d_conv    expand -> expand
    use_bias -> bias         use_conv_bias -> conv_bias
    Mamba:   time_step_rank -> dt_rank,
             time_step_{min,max,floor,scale,init_scheme} -> dt_{min,max,init_floor,scale,init}
    Mamba-2: head_dim -> headdim, n_groups -> ngroups, chunk_size -> chunk_size,
             time_step_limit -> dt_limit, time_step_{min,max,floor} -> dt_{min,max,init_floor};
             num_heads must equal expand * hidden_size / head_dim

Weights: ``backbone.embeddings.weight`` <-> ``embedding.weight`` (older files:
``backbone.embedding.weight``); ``backbone.layers.{i}.{norm,mixer}.*``,
``backbone.norm_f.weight`` and ``lm_head.weight`` keep their names. A tied head
is stored once. transformers does not pad the vocabulary, so an export writes
the first ``vocab_size`` embedding rows (the padding rows are never used).

An export writes ``rescale_prenorm_residual: false``: the flag only shapes a
fresh initialisation, and transformers (5.x) applies its out_proj rescaling to
weights it has just loaded. Two more transformers behaviours to know: its
Mamba-2 applies ``time_step_limit`` in the full-sequence path but not in the
one-token decode path (as mamba_ssm's ``step``), while ssmkit clamps Δ in both;
and its Mamba-2 always gates before the norm, whatever an old config's
``norm_before_gate`` says.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from ..models.config import ModelConfig
from ..models.mixer_configs import Mamba2Config, MambaConfig
from .files import CheckpointError

FORMAT = "hf"
ARCHITECTURES = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}
# Fields any transformers config may carry that do not change what the model computes.
GENERIC_KEYS = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "_name_or_path",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "use_cache",
    "initializer_range", "return_dict", "output_hidden_states", "output_attentions", "tokenizer_class",
    "is_decoder", "is_encoder_decoder", "add_cross_attention", "tie_encoder_decoder", "torchscript",
    "use_bfloat16", "chunk_size_feed_forward", "problem_type", "id2label", "label2id", "finetuning_task",
    "task_specific_params", "prefix", "pruned_heads", "cross_attention_hidden_size", "tf_legacy_loss",
}
# Model-specific fields read below, and ones that only pick a kernel or an initialisation.
_MAMBA_KEYS = {"hidden_size", "num_hidden_layers", "vocab_size", "state_size", "expand", "conv_kernel", "use_bias",
               "use_conv_bias", "hidden_act", "layer_norm_epsilon", "residual_in_fp32", "tie_word_embeddings",
               "rescale_prenorm_residual", "time_step_rank", "time_step_scale", "time_step_min", "time_step_max",
               "time_step_init_scheme", "time_step_floor", "intermediate_size", "n_layer", "rms_norm",
               "use_mambapy", "use_associative_scan", "fused_add_norm", "pad_vocab_size_multiple", "d_model",
               "d_inner", "ssm_cfg"}  # the last three: mamba_ssm names that early conversions kept
_MAMBA2_KEYS = {"hidden_size", "num_hidden_layers", "vocab_size", "state_size", "expand", "conv_kernel", "use_bias",
                "use_conv_bias", "hidden_act", "layer_norm_epsilon", "residual_in_fp32", "tie_word_embeddings",
                "rescale_prenorm_residual", "num_heads", "head_dim", "n_groups", "chunk_size", "time_step_rank",
                "time_step_min", "time_step_max", "time_step_floor", "time_step_limit", "rms_norm",
                "norm_before_gate", "n_layer", "fused_add_norm", "pad_vocab_size_multiple", "d_model"}


def is_hf_config(raw: dict[str, Any]) -> bool:
    return raw.get("model_type") in ARCHITECTURES or any(a in ARCHITECTURES.values()
                                                         for a in raw.get("architectures") or [])


def _fail(where: str, msg: str) -> CheckpointError:
    return CheckpointError(f"{where}: {msg}")


def config_from_hf(raw: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """The ModelConfig of a transformers ``MambaConfig`` / ``Mamba2Config`` dict."""
    by_arch = {v: k for k, v in ARCHITECTURES.items()}
    model_type = raw.get("model_type") or next(by_arch[a] for a in raw["architectures"] if a in by_arch)
    if model_type not in ARCHITECTURES:
        raise _fail(where, f"model_type={model_type!r} is not supported; expected one of {sorted(ARCHITECTURES)}")
    known = (_MAMBA_KEYS if model_type == "mamba" else _MAMBA2_KEYS) | GENERIC_KEYS
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _fail(where, f"unknown field(s) {unknown} for a transformers {model_type} config")
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if key not in raw:
            raise _fail(where, f"missing required field {key!r}")
    if raw.get("hidden_act", "silu") != "silu":
        raise _fail(where, f"hidden_act={raw['hidden_act']!r} is not supported; Mamba layers use 'silu'")
    if not raw.get("rms_norm", True):
        raise _fail(where, "rms_norm=false is not supported: ssmkit blocks use RMSNorm")
    d, n = raw["hidden_size"], raw["num_hidden_layers"]
    g = raw.get
    try:
        for alias, name, value in (("n_layer", "num_hidden_layers", n), ("d_model", "hidden_size", d),
                                   ("d_inner", "expand * hidden_size", g("expand", 2) * d)):
            if g(alias, value) != value:
                raise _fail(where, f"{alias}={raw[alias]} disagrees with {name}={value}")
        if model_type == "mamba":
            if g("intermediate_size", g("expand", 2) * d) != g("expand", 2) * d:
                raise _fail(where, f"intermediate_size={raw['intermediate_size']} must equal expand * hidden_size")
            mixer: Any = MambaConfig(
                d_state=g("state_size", 16), d_conv=g("conv_kernel", 4), expand=g("expand", 2),
                dt_rank=g("time_step_rank", "auto"), dt_min=g("time_step_min", 0.001), dt_max=g("time_step_max", 0.1),
                dt_init=g("time_step_init_scheme", "random"), dt_scale=g("time_step_scale", 1.0),
                dt_init_floor=g("time_step_floor", 1e-4), conv_bias=g("use_conv_bias", True), bias=g("use_bias", False))
            extra = {"mamba": mixer}
        else:
            headdim, d_inner = g("head_dim", 64), g("expand", 2) * d
            if g("num_heads", d_inner // headdim) * headdim != d_inner:
                raise _fail(where, f"num_heads={raw['num_heads']} * head_dim={headdim} must equal expand * "
                            f"hidden_size = {d_inner}")
            mixer = Mamba2Config(
                d_state=g("state_size", 128), d_conv=g("conv_kernel", 4), expand=g("expand", 2), headdim=headdim,
                ngroups=g("n_groups", 8), chunk_size=g("chunk_size", 256), dt_min=g("time_step_min", 0.001),
                dt_max=g("time_step_max", 0.1), dt_init_floor=g("time_step_floor", 1e-4),
                dt_limit=tuple(g("time_step_limit", (0.0, math.inf))), norm_eps=g("layer_norm_epsilon", 1e-5),
                conv_bias=g("use_conv_bias", True), bias=g("use_bias", False))
            extra = {"mamba2": mixer}
        return ModelConfig(
            layers=("M" if model_type == "mamba" else "m") * n, d_model=d, vocab_size=raw["vocab_size"],
            pad_vocab_size_multiple=1, norm_eps=g("layer_norm_epsilon", 1e-5),
            residual_in_fp32=bool(g("residual_in_fp32", True)),
            tie_embeddings=bool(g("tie_word_embeddings", model_type == "mamba")),
            rescale_prenorm_residual=bool(g("rescale_prenorm_residual", False)), **extra)
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise _fail(where, f"invalid transformers {model_type} config: {e}") from None


def keys_from_hf(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers names -> ssmkit names (only the embedding moves)."""
    rename = {"backbone.embeddings.weight": "embedding.weight", "backbone.embedding.weight": "embedding.weight"}
    return {rename.get(k, k): v for k, v in tensors.items()}


def hf_exportable(config: ModelConfig) -> str:
    """The transformers model_type of ``config`` ("mamba" / "mamba2"); CheckpointError if it has none."""
    where = "export to transformers"
    pattern = config.pattern
    if set(pattern) not in ({"M"}, {"m"}):
        raise _fail(where, f"only pure Mamba ('M' * n) or Mamba-2 ('m' * n) models have a transformers "
                    f"layout; this model's layers are {pattern!r}")
    if config.mlp != "none":
        raise _fail(where, f"mlp={config.mlp!r}: transformers' Mamba blocks have no MLP sublayer")
    cfgs = config.layer_configs()
    first = {k: v for k, v in cfgs[0].to_dict().items() if k != "backend"}
    if any({k: v for k, v in c.to_dict().items() if k != "backend"} != first for c in cfgs[1:]):
        raise _fail(where, "the layers have different settings; a transformers config holds one setting for all")
    c = cfgs[0]
    if isinstance(c, MambaConfig) and c.state_norm:
        raise _fail(where, "state_norm=True has no transformers equivalent")
    if isinstance(c, Mamba2Config):
        if not c.rmsnorm or c.norm_before_gate:
            raise _fail(where, "transformers' Mamba-2 needs rmsnorm=True and norm_before_gate=False")
        if c.norm_eps != config.norm_eps:
            raise _fail(where, f"transformers' Mamba-2 uses one epsilon for every norm, but norm_eps="
                        f"{config.norm_eps} and the gated norm's norm_eps={c.norm_eps}")
    return "mamba" if pattern[0] == "M" else "mamba2"


def config_to_hf(config: ModelConfig, special_ids: Optional[dict[str, Optional[int]]] = None) -> dict[str, Any]:
    """The transformers config.json dict of an exportable ``config`` (see :func:`hf_exportable`)."""
    model_type = hf_exportable(config)
    c = config.layer_configs()[0]
    d = config.d_model
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]], "model_type": model_type, "hidden_size": d,
        "num_hidden_layers": config.n_layers, "vocab_size": config.vocab_size, "state_size": c.d_state,
        "expand": c.expand, "conv_kernel": c.d_conv, "use_bias": c.bias, "use_conv_bias": c.conv_bias,
        "hidden_act": "silu", "layer_norm_epsilon": config.norm_eps, "residual_in_fp32": config.residual_in_fp32,
        "tie_word_embeddings": config.tie_embeddings, "rescale_prenorm_residual": False,  # see module docstring
        "time_step_min": c.dt_min, "time_step_max": c.dt_max, "time_step_floor": c.dt_init_floor,
    }
    if model_type == "mamba":
        out.update(intermediate_size=c.expand * d, time_step_scale=c.dt_scale, time_step_init_scheme=c.dt_init,
                   time_step_rank=math.ceil(d / 16) if c.dt_rank == "auto" else c.dt_rank)
    else:
        out.update(head_dim=c.headdim, num_heads=c.expand * d // c.headdim, n_groups=c.ngroups,
                   chunk_size=c.chunk_size, time_step_limit=list(c.dt_limit))
    for name in ("bos", "eos", "pad"):
        out[f"{name}_token_id"] = (special_ids or {}).get(name)
    return out


def keys_to_hf(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """ssmkit names -> transformers names; embedding (and an untied head) cut to ``vocab_size`` rows."""
    out = {}
    for k, v in tensors.items():
        if k == "lm_head.weight" and config.tie_embeddings:
            continue  # transformers ties it back to the embedding
        if k in ("embedding.weight", "lm_head.weight"):
            v = v[: config.vocab_size]  # (V, D)
        out["backbone.embeddings.weight" if k == "embedding.weight" else k] = v
    return out
