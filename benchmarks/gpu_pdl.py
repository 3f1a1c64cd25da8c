"""GPU: the decode step's kernels with programmatic dependent launch (PDL) on and off, in one process.

    python3 benchmarks/gpu_pdl.py [--models mamba-130m mamba2-130m mamba-1.4b] [--rounds 2] [--out DIR]
    python3 benchmarks/gpu_pdl.py --gemv-limits 16777216 67108864 [--models ...]
    python3 benchmarks/gpu_pdl.py --gemv-spread [--models ...]
    python3 benchmarks/gpu_pdl.py --step-spread [--models ...]

For each model shape (random bfloat16 weights, ``generate_gpu.ssmkit_alone``), alternating PDL on and off
(``SSMKIT_PDL``; each switch re-captures the step's CUDA graph) for ``--rounds`` rounds: the GPU time of one
graphed step (CUDA events around 200 replays), the greedy decode rate over 256 new tokens after a 16-token
prompt (``generate_gpu.decode_rate``), and checks: the graphed step's logits over 32 tokens with PDL on equal
to those with it off (the same kernels and arithmetic, so bit for bit), and the greedy tokens of both. Run
from the root of the ssmkit checkout to measure (the package is imported from the working directory, so an
older checkout's root measures that code: it ignores ``SSMKIT_PDL``). Writes ``gpu_pdl.md`` / ``.json``.

With ``--gemv-limits``, PDL stays on and the rounds alternate instead between values of
``ssmkit.ops.linear.GEMV_MAX_WEIGHTS`` (the largest weight the Triton matrix-vector kernel takes; larger ones
go to cuBLAS, which is not launched with PDL): replay ms, tokens/s, and the logits' relative error against
those of the first limit (different kernels: not bit for bit). Writes ``gpu_gemv_limits.md`` / ``.json``.
With ``--gemv-spread``, the same between the matrix-vector kernel's tiles spread over the SMs
(``gemv_triton.gemv_tiles``' rule) and by K alone (``gpu_gemv_spread.md``); with ``--step-spread``, between
the conv, scan and SSD steps' blocks spread over the SMs (``_triton.spread_block``) and sized by the channels
alone (``gpu_step_spread.md``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import torch  # noqa: E402
from _gpu_bench import table_report  # noqa: E402
from generate_gpu import VOCAB, decode_rate, replay_ms, ssmkit_alone  # noqa: E402

import ssmkit  # noqa: E402
import ssmkit.ops.linear as linear  # noqa: E402
import ssmkit.ops.linear.gemv_triton as gemv_triton  # noqa: E402
from ssmkit.generation import graphed_step, prefill, release_graphs  # noqa: E402


def set_pdl(on: bool, model) -> None:
    os.environ["SSMKIT_PDL"] = "1" if on else "0"
    release_graphs(model)


@torch.no_grad()
def graphed_logits(model, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """(n, V) logits of n greedy steps through the captured step."""
    logits, state = prefill(model, prompt)
    token = logits.argmax(-1)
    step = graphed_step(model, token, state)
    out = []
    for _ in range(n):
        logits = step(token)
        out.append(logits.float().clone())
        token = logits.argmax(-1)
    return torch.cat(out)


def model_and_prompt(name: str):
    """The model shape's random-weight LM on the GPU and a fixed 16-token prompt."""
    g = torch.Generator(device="cuda").manual_seed(1)
    return ssmkit_alone(name), torch.randint(0, VOCAB, (1, 16), device="cuda", generator=g)


def timed(lm, prompt: torch.Tensor) -> tuple[float, float]:
    """(graph replay ms, decode tokens/s over 256 new tokens) of the step as it is set now."""
    rep = replay_ms(lm, prompt)
    return rep, decode_rate(lambda k: ssmkit.generate(lm, prompt, max_new_tokens=k, cuda_graph=True), 256)


def drop(lm) -> None:
    """Free the model and its captured graph before the next shape."""
    release_graphs(lm)
    del lm
    torch.cuda.empty_cache()


def run_model(name: str, rounds: int) -> list[list]:
    lm, prompt = model_and_prompt(name)
    rows = []
    for rnd in range(rounds):
        for on in (True, False):
            set_pdl(on, lm)
            rep, rate = timed(lm, prompt)
            rows.append([name, "on" if on else "off", rnd, round(rep, 4), round(rate, 1)])
            print(f"{name} PDL {'on' if on else 'off'} round {rnd}: replay {rep:.4f} ms, {rate:.0f} tokens/s", flush=True)
    logits, tokens = {}, {}
    for on in (True, False):
        set_pdl(on, lm)
        logits[on] = graphed_logits(lm, prompt, 32)
        tokens[on] = ssmkit.generate(lm, prompt, max_new_tokens=128, cuda_graph=True)[0, 16:]
    diff = (logits[True] - logits[False]).abs().max().item()
    agree = 128 if torch.equal(tokens[True], tokens[False]) else int((tokens[True] != tokens[False]).int().argmax())
    print(f"{name}: logits on vs off, max |diff| {diff:.3e}; greedy tokens agreeing {agree}/128", flush=True)
    for r in rows:
        r += [diff, agree]
    os.environ.pop("SSMKIT_PDL")
    drop(lm)
    return rows


def limit_variants(limits: list[int]) -> tuple[dict, Callable]:
    """(label -> setting: ``ssmkit.ops.linear.GEMV_MAX_WEIGHTS`` at each limit; the committed limit back)."""
    default = linear.GEMV_MAX_WEIGHTS
    return ({str(v): (lambda v=v: setattr(linear, "GEMV_MAX_WEIGHTS", v)) for v in limits},
            lambda: setattr(linear, "GEMV_MAX_WEIGHTS", default))  # fmt: skip


def spread_variants() -> tuple[dict, Callable]:
    """(label -> setting: the GEMV's tiles spread over the SMs, the committed rule, or by K alone, as before;
    the rule back)."""
    rule = gemv_triton.gemv_tiles
    back = lambda: setattr(gemv_triton, "gemv_tiles", rule)  # noqa: E731
    return ({"spread over the SMs": back,
             "by K alone": lambda: setattr(gemv_triton, "gemv_tiles", lambda K, N=0, min_programs=0: rule(K))}, back)


def step_spread_variants() -> tuple[dict, Callable]:
    """(label -> setting: the conv, scan and SSD steps' blocks spread over the SMs, ``_triton.spread_block``'s
    committed rule, or sized by the channels alone, as before; the rule back)."""
    import importlib  # (``ssmkit.ops.ssd`` is also the name of the op: import the modules by their paths)

    mods = [importlib.import_module(f"ssmkit.ops.{m}") for m in ("conv.causal_conv1d_triton", "scan.triton_step",
                                                                 "ssd.triton_step")]  # fmt: skip
    rule = mods[1].spread_block
    back = lambda: [setattr(m, "spread_block", rule) for m in mods]  # noqa: E731
    return ({"steps spread over the SMs": back,
             "steps by channels alone": lambda: [setattr(m, "spread_block", lambda b, *a: b) for m in mods]}, back)


def run_variants(name: str, rounds: int, variants: dict, restore: Callable) -> list[list]:
    """Replay ms, tokens/s and the logits' relative error against the first variant's, PDL on, rounds alternating
    between the variants (each re-captures the step); ``restore()`` afterwards."""
    lm, prompt = model_and_prompt(name)
    rows, logits, first = [], {}, next(iter(variants))
    for rnd in range(rounds):
        for label, setting in variants.items():
            setting()
            release_graphs(lm)
            rep, rate = timed(lm, prompt)
            if rnd == 0:
                logits[label] = graphed_logits(lm, prompt, 32)
            err = ((logits[label] - logits[first]).norm() / logits[first].norm()).item()
            rows.append([name, label, rnd, round(rep, 4), round(rate, 1), err])
            print(f"{name} {label} round {rnd}: replay {rep:.4f} ms, {rate:.0f} tokens/s, rel err {err:.1e}", flush=True)
    restore()
    drop(lm)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mamba-130m", "mamba2-130m", "mamba-1.4b"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--gemv-limits", nargs="+", type=int, default=None)
    ap.add_argument("--gemv-spread", action="store_true")
    ap.add_argument("--step-spread", action="store_true")
    args = ap.parse_args()
    if args.gemv_limits or args.gemv_spread or args.step_spread:
        if args.gemv_limits:
            (variants, restore), what, stem = limit_variants(args.gemv_limits), "GEMV_MAX_WEIGHTS", "gpu_gemv_limits"
        elif args.gemv_spread:
            (variants, restore), what, stem = spread_variants(), "GEMV tiles", "gpu_gemv_spread"
        else:
            (variants, restore), what, stem = step_spread_variants(), "step blocks", "gpu_step_spread"
        rows = [r for name in args.models for r in run_variants(name, args.rounds, variants, restore)]
        header = ["model", what, "round", "replay ms", "tokens/s", "logits rel. err vs the first"]
        print(table_report(args.out, stem, f"Decode step (PDL on) by {what}", header, rows))
        return
    rows = [r for name in args.models for r in run_model(name, args.rounds)]
    header = ["model", "PDL", "round", "replay ms", "tokens/s", "logits max |on - off|", "greedy agreeing /128"]
    print(table_report(args.out, "gpu_pdl", "Decode step with PDL on and off", header, rows))


if __name__ == "__main__":
    main()
