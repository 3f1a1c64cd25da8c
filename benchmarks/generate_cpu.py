"""Greedy decoding speed at batch 1: ssmkit against Hugging Face transformers, same weights.

Builds a random-weight ``MambaForCausalLM`` with the shape of mamba-130m
(768 wide, 24 layers, state 16, vocabulary 50280), or with ``--arch mamba2`` a
``Mamba2ForCausalLM`` with mamba2-130m's (24 heads of 64, state 128, one group),
saves it, loads the same
checkpoint into ssmkit (``ssmkit.io.load_pretrained``), reports the relative
error between their logits on a prompt, then times greedy decoding (in float32 and in bfloat16 weights) of ``--new-tokens``
tokens after a ``--prompt-len`` prompt with each, in this process. Decode
rate = new tokens / (time to generate them - time to prefill the prompt).

    .venv/bin/python benchmarks/generate_cpu.py   # transformers comes with the test extra [--new-tokens 64] [--prompt-len 16]
    .venv/bin/python benchmarks/generate_cpu.py --arch mamba2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import markdown_table  # noqa: E402

import ssmkit  # noqa: E402
from ssmkit.io import load_pretrained  # noqa: E402


def hf_model(arch: str, width: int, layers: int, vocab: int):
    import transformers

    torch.manual_seed(0)
    if arch == "mamba":
        cfg = transformers.MambaConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, state_size=16,
                                       expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True,
                                       tie_word_embeddings=True)  # fmt: skip
        return transformers.MambaForCausalLM(cfg).eval()
    cfg = transformers.Mamba2Config(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, state_size=128,
                                    expand=2, head_dim=64, num_heads=2 * width // 64, n_groups=1, conv_kernel=4,
                                    chunk_size=256, use_bias=False, use_conv_bias=True,
                                    tie_word_embeddings=True)  # fmt: skip
    return transformers.Mamba2ForCausalLM(cfg).eval()


@torch.no_grad()
def time_hf(model, prompt: torch.Tensor, new: int) -> float:
    def run(n):
        t0 = time.perf_counter()
        model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)
        return time.perf_counter() - t0

    run(4)  # warm up
    return (run(new + 1) - run(1)) / new


@torch.no_grad()
def time_ssmkit(model, prompt: torch.Tensor, new: int) -> float:
    def run(n):
        t0 = time.perf_counter()
        ssmkit.generate(model, prompt, max_new_tokens=n)
        return time.perf_counter() - t0

    run(4)
    return (run(new + 1) - run(1)) / new


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["mamba", "mamba2"], default="mamba",
                    help="Mamba or Mamba-2 (transformers' class)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--vocab", type=int, default=50280)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="weight/activation dtypes to time")
    args = ap.parse_args(argv)
    hf = hf_model(args.arch, args.width, args.layers, args.vocab)
    hf_name = type(hf).__name__
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_pretrained(tmp)
    prompt = torch.randint(0, args.vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(prompt).logits.double()
        got = ours(prompt)[0].double()
    err = ((got - ref).norm() / ref.norm()).item()
    print(f"logits relative error ssmkit vs transformers: {err:.1e}", file=sys.stderr)
    rows = []
    for dtype in args.dtypes:
        hf, ours = hf.to(getattr(torch, dtype)), ours.to(getattr(torch, dtype))
        t_hf = time_hf(hf, prompt, args.new_tokens)
        t_ours = time_ssmkit(ours, prompt, args.new_tokens)
        rows.append([dtype, f"transformers {hf_name}", f"{1 / t_hf:.1f}", f"{t_hf * 1e3:.1f}", "1.00x"])
        rows.append([dtype, "ssmkit LM", f"{1 / t_ours:.1f}", f"{t_ours * 1e3:.1f}", f"{t_hf / t_ours:.2f}x"])
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"width {args.width}, {args.layers} layers, batch 1, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens; logits rel. error {err:.1e}\n")
    print(markdown_table(["dtype", "model", "tokens/s", "ms/token", "speed-up"], rows))


if __name__ == "__main__":
    main()
