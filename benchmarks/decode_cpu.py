"""Per-token decode latency and state memory as the context grows (issue 3, item 7).

Five language models of about the same size (D=256, byte vocabulary, 3-4M
parameters) — Mamba and Mamba-2 (8 mixer layers, no MLP, as in the papers),
Hyena and attention (4 layers, each with a gated MLP) and a hybrid (6 layers
of Mamba, Mamba-2 and one attention) — are each prefilled with a random context of 1K, 4K and 16K tokens
and then decode one token at a time. For each we report the median time of
one decode step and the bytes held by the state (KV cache for attention;
Hyena's history buffer is sized to the context, as its docstring states).

A state space model's step does the same work whatever the context, so its
rows stay flat (the 16K/1K ratio is ~1); attention reads a cache that grows
linearly with the context.

    python benchmarks/decode_cpu.py
    python benchmarks/decode_cpu.py --contexts 1024 4096 --steps 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import markdown_table  # noqa: E402

from ssmkit import LM, ModelConfig  # noqa: E402
from ssmkit.models.mixer_configs import AttentionConfig, HyenaConfig, Mamba2Config, MambaConfig  # noqa: E402

D_MODEL, VOCAB = 256, 259
ROUNDS, WARMUP = 3, 4


def model_configs(max_len: int) -> dict[str, ModelConfig]:
    """The five models; `max_len` sizes the attention cache and Hyena's history."""
    common = dict(d_model=D_MODEL, vocab_size=VOCAB)
    attn = AttentionConfig(n_heads=4, max_seq_len=max_len)
    return {
        "Mamba": ModelConfig(layers="M" * 8, mamba=MambaConfig(d_state=16), **common),
        "Mamba-2": ModelConfig(layers="m" * 8, mamba2=Mamba2Config(d_state=64, headdim=64, chunk_size=64), **common),
        "Hyena": ModelConfig(layers="HHHH", mlp="gated", hyena=HyenaConfig(order=2, filter_order=64, max_len=max_len),
                             **common),
        "Attention": ModelConfig(layers="AAAA", mlp="gated", attention=attn, **common),
        "Hybrid (MmMAmM)": ModelConfig(layers="MmMAmM", mamba=MambaConfig(d_state=16),
                                     mamba2=Mamba2Config(d_state=64, headdim=64, chunk_size=64), attention=attn, **common),
    }


def state_bytes(state) -> int:
    return sum(s.nbytes() for s in state if s is not None)


@torch.no_grad()
def measure(model: LM, context: int, steps: int, gen: torch.Generator) -> tuple[float, int]:
    """(seconds per decode step, state bytes) after prefilling `context` tokens.

    The time is the smallest of three medians over `steps` steps, so a burst of
    other load on the machine does not pass for a trend.
    """
    ids = torch.randint(0, 256, (1, context), generator=gen)
    logits, state = model(ids, num_last_tokens=1)
    token = logits[:, -1].argmax(-1)
    medians = []
    for _ in range(ROUNDS):  # the least disturbed of three rounds of `steps` steps (after 4 warm-up steps)
        times = []
        for i in range(steps + WARMUP):
            t0 = time.perf_counter()
            logits, state = model.step(token, state)
            if i >= WARMUP:
                times.append(time.perf_counter() - t0)
            token = logits.argmax(-1)
        medians.append(statistics.median(times))
    return min(medians), state_bytes(state)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--steps", type=int, default=32, help="timed decode steps per point (median)")
    ap.add_argument("--json", help="also write the raw numbers here")
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    results: dict[str, dict[int, tuple[float, int]]] = {}
    params = {}
    measure(LM(model_configs(256)["Hybrid (MmMAmM)"]).eval(), 128, 4, gen)  # warm up the process
    for ctx in args.contexts:
        for name, cfg in model_configs(ctx + ROUNDS * (args.steps + WARMUP)).items():
            torch.manual_seed(0)
            model = LM(cfg).eval()
            params[name] = sum(p.numel() for p in model.parameters())
            results.setdefault(name, {})[ctx] = measure(model, ctx, args.steps, gen)
            t, b = results[name][ctx]
            print(f"  {name:14s} context {ctx:6d}: {t * 1e3:7.2f} ms/token, state {b / 2**20:8.2f} MiB",
                  file=sys.stderr, flush=True)
    first, last = args.contexts[0], args.contexts[-1]
    headers = ["model", "params"] + [f"ms/token @{c}" for c in args.contexts] + [f"latency {last}/{first}"] + \
              [f"state MiB @{c}" for c in args.contexts]
    rows = []
    for name, per_ctx in results.items():
        lat = [per_ctx[c][0] for c in args.contexts]
        mem = [per_ctx[c][1] / 2**20 for c in args.contexts]
        rows.append([name, f"{params[name] / 1e6:.2f}M", *(f"{t * 1e3:.2f}" for t in lat), f"{lat[-1] / lat[0]:.2f}",
                     *(f"{m:.2f}" for m in mem)])
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; batch 1, float32, D={D_MODEL}, {args.steps} steps per point\n")
    print(markdown_table(headers, rows))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({n: {str(c): {"s_per_token": t, "state_bytes": b} for c, (t, b) in r.items()}
                       for n, r in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
