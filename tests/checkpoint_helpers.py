"""Helpers shared by the checkpoint tests (tests/io): non-degenerate random weights, greedy decoding."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ssmkit.generation import generate


def import_transformers():
    """transformers, or a skip when it is missing or cannot use this torch (transformers 5 needs torch >= 2.6)."""
    transformers = pytest.importorskip("transformers")
    if not transformers.utils.is_torch_available():
        pytest.skip(f"transformers {transformers.__version__} does not run on torch {torch.__version__}",
                    allow_module_level=True)
    return transformers


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (many small ops; the CPU is shared)."""
    torch.set_num_threads(1)
    yield


# transformers normalises Mamba-2's gated output per group of d_inner / n_groups (as mamba_ssm and
# ssmkit do) from 5.23 on; before that over all of d_inner, which differs once n_groups > 1.
HF_GROUPED_NORM = (5, 23)


def skip_without_grouped_norm(transformers, n_groups: int) -> None:
    """Skip a Mamba-2 comparison with ``n_groups`` > 1 against a transformers too old to be its reference
    (the test extra asks for transformers >= 5.23, so a fresh setup runs every case)."""
    version = tuple(int(part) for part in transformers.__version__.split(".")[:2])
    if n_groups > 1 and version < HF_GROUPED_NORM:
        pytest.skip(f"transformers {transformers.__version__} normalises Mamba-2's gated output over all of d_inner, "
                    f"not per group (fixed in 5.23): it is no reference for n_groups={n_groups}")


@torch.no_grad()
def rerandomize_(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Replace every parameter by fresh, non-degenerate random values (no ones, zeros or aranges).

    Works on ssmkit and transformers Mamba models alike (same parameter names):
    A = exp(A_log) ~ U[0.5, 4]; softplus(Δ bias) ~ U[0.005, 0.2]; norm gains 1 + 0.3 N(0, 1);
    other vectors 0.3 N(0, 1); matrices N(0, 1/fan_in); embeddings and heads N(0, 1).
    """
    for name, p in model.named_parameters():
        r = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        u = torch.rand(p.shape, generator=gen, dtype=torch.float64)
        if name.endswith("A_log"):
            v = torch.log(0.5 + 3.5 * u)
        elif name.endswith(("dt_proj.bias", "dt_bias")):
            dt = 0.005 + 0.195 * u
            v = dt + torch.log(-torch.expm1(-dt))  # softplus^{-1}
        elif name.endswith("norm.weight") or name.endswith(("norm_f.weight", "norm2.weight")):
            v = 1 + 0.3 * r
        elif p.dim() == 1:
            v = 0.3 * r
        elif "embedding" in name or "lm_head" in name:
            v = r
        else:
            v = r / math.sqrt(p[0].numel())
        p.copy_(v.to(p.dtype))
    return model


@torch.no_grad()
def hf_greedy(hf_model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """transformers greedy decoding of ``steps`` tokens: (B, L) -> (B, L + steps); no EOS stop, no padding."""
    hf_model.generation_config.eos_token_id = None
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                            pad_token_id=0)
    assert out.shape == (ids.shape[0], ids.shape[1] + steps), "transformers stopped early"
    return out


@torch.no_grad()
def ssmkit_greedy(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """ssmkit greedy decoding (prefill + step): (B, L) -> (B, L + steps)."""
    return generate(model, ids, max_new_tokens=steps, temperature=0.0)


@torch.no_grad()
def hf_logits(hf_model, ids: torch.Tensor) -> torch.Tensor:
    return hf_model(ids, use_cache=False).logits  # (B, L, V)


@torch.no_grad()
def ssmkit_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids)[0]  # (B, L, V)


def make_tokenizer_json(directory, eos_in: str = "tokenizer_config") -> None:
    """A small byte-level BPE tokenizer.json (+ where its EOS is named) in ``directory``."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["state space models scan the sequence", "hello world " * 5], trainer=trainer)
    directory.mkdir(exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if eos_in == "tokenizer_config":
        (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<eos>"},
                                                                     "bos_token": "<bos>"}))
    elif eos_in == "config":
        (directory / "config.json").write_text(json.dumps({"eos_token_id": 1, "bos_token_id": 0}))
