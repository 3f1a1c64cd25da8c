"""Whole layers on the GPU: Mamba and Mamba-2 against attention of the same width (projections included).

    python benchmarks/gpu_layers.py            # bfloat16 on CUDA; tables under $OUT when set
    python benchmarks/gpu_layers.py --quick    # tiny float32 smoke test on the CPU

D = 2048: Mamba (N=16), Mamba-2 (N=128, P=64), causal attention (16 heads of 128, RoPE), each
layer's default backend ("auto"). B * L = 16K tokens per call (B = 1 from 16K on). Each layer is
first checked against the same weights with backend="torch" in float32 (output and dx, relative
error). Times: medians of CUDA-event timings (``triton.testing.do_bench``, at least 10 timed calls
per layer and round), forward under no_grad and forward+backward (parameter and input gradients).
Each length runs ``ROUNDS`` rounds, timing every layer once per round in turn, so that drifts of the
GPU's clocks touch all layers alike; a time is the median over all rounds' calls, and each ratio is
given with its range over the rounds (the ratio of the two layers' medians within each round).
"attention" is the layer's training path
(projections, RoPE, SDPA, out projection; what ``forward(x)`` computes without filling the KV
cache); "attn layer" is ``Attention.forward(x)`` as is, which also writes the KV cache.
Ratios and crossovers use "attention" (the faster of the two, so the stricter baseline).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _timing import markdown_table, median_time, ratio_over_rounds, save_report  # noqa: E402

from ssmkit.layers import Attention, Mamba, Mamba2  # noqa: E402
from ssmkit.ops.attention import attention  # noqa: E402

LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
TOKENS = 16384
ROUNDS = 3


def build(name: str, d: int, L: int, backend: str = "auto") -> torch.nn.Module:
    if name == "Mamba":
        return Mamba(d, d_state=16, backend=backend)
    if name == "Mamba-2":
        return Mamba2(d, d_state=128, headdim=64, backend=backend)
    return Attention(d, n_heads=max(1, d // 128), max_seq_len=L, backend=backend)


def attn_train(layer: Attention, x: torch.Tensor) -> torch.Tensor:
    """Attention.forward(x)'s output without the KV-cache write (the training path)."""
    B, L, _ = x.shape
    q, k, v = layer._qkv(x)
    pos = torch.arange(L, device=x.device).expand(B, L)
    o = attention(layer._rope(q, pos), layer._rope(k, pos), v, causal=True, backend=layer.backend)
    return layer.o_proj(o.flatten(2))


def check(name: str, layer: torch.nn.Module, d: int, L: int, dtype: torch.dtype) -> list:
    """Relative error of y and dx against backend="torch" in float32, same weights, one (1, L, d) slice."""
    dev = next(layer.parameters()).device
    ref = build(name, d, L, backend="torch").to(device=dev, dtype=torch.float32)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(1, L, d, device=dev)
    dy = torch.randn_like(x)
    outs = []
    for m, dt in ((layer, dtype), (ref, torch.float32)):
        xi = x.to(dt).requires_grad_(True)
        y = m(xi)[0]
        y.backward(dy.to(dt))
        outs.append((y.float(), xi.grad.float()))
        m.zero_grad(set_to_none=True)
    rel = [((a - b).norm() / b.norm()).item() for a, b in zip(*outs)]
    backends = layer.op_backends() if hasattr(layer, "op_backends") else {}
    ok = all(r < 5e-2 for r in rel)
    return [name, ", ".join(f"{k}={v}" for k, v in backends.items()), f"{rel[0]:.1e}", f"{rel[1]:.1e}", "yes" if ok else "NO"]


def timer(device: str):
    """``bench(fn, grads)``: the ms of each timed call of ``fn`` (a list; [nan] if it failed)."""
    if device == "cuda":
        from _gpu_bench import samples

        def gpu(fn, grads):
            return samples(fn, grads)
    else:
        def gpu(fn, grads):
            return [median_time(fn, reps=3, warmup=1) * 1e3]

    def safe(fn, grads):  # one failure (memory, a kernel limit) should not lose the other rows
        try:
            return gpu(fn, grads)
        except Exception as e:
            print(f"FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
            return [float("nan")]

    return safe


def crossover(lengths, ratios) -> str:
    """Length where attention/SSM crosses 1, interpolated linearly in log L vs log ratio."""
    if ratios[0] >= 1:
        return f"<= {lengths[0]} (faster at every length measured)"
    for (l0, r0), (l1, r1) in zip(zip(lengths, ratios), zip(lengths[1:], ratios[1:])):
        if r0 < 1 <= r1:
            t = -math.log(r0) / (math.log(r1) - math.log(r0))
            return f"~{math.exp(math.log(l0) + t * (math.log(l1) - math.log(l0))):.0f} (between {l0} and {l1})"
    return f"> {lengths[-1]} (slower at every length measured)"


def run(out_dir: str | None, quick: bool = False) -> str:
    device, dtype = ("cpu", torch.float32) if quick else ("cuda", torch.bfloat16)
    d, lengths, tokens = (64, (32, 64, 128), 256) if quick else (2048, LENGTHS, TOKENS)
    torch.manual_seed(0)
    bench = timer(device)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    lines = [f"## Layers, D={d}, {dtype}, {gpu}, torch {torch.__version__}, B*L={tokens} (B>=1)\n"]
    checks, rows, data = [], {"fwd": [], "fwd+bwd": []}, []
    names = ("Mamba", "Mamba-2", "attention")
    for L in lengths:
        B = max(1, tokens // L)
        layers = {n: build(n, d, L, "torch" if quick else "auto").to(device=device, dtype=dtype) for n in names}
        if L == lengths[0]:
            checks = [check(n, m, d, min(L, 1024), dtype) for n, m in layers.items()]
            lines.append(markdown_table(["layer", "ops", "rel err y", "rel err dx", "ok (<5e-2)"], checks) + "\n")
            print(lines[-1], flush=True)
        fns = {n: (lambda m=m: m(x)[0]) for n, m in layers.items() if n != "attention"}
        fns["attention"] = lambda: attn_train(layers["attention"], x)
        fns["attn layer"] = lambda: layers["attention"](x)[0]
        x = torch.randn(B, L, d, device=device, dtype=dtype)
        rec = {"L": L, "B": B}
        for mode in ("fwd", "fwd+bwd"):
            calls = {n: [] for n in fns}  # every timed call, all rounds
            rounds = {n: [] for n in fns}  # each round's median
            if mode == "fwd+bwd":
                x.requires_grad_(True)
                dys = {n: torch.randn_like(f()) for n, f in fns.items()}
            for _ in range(ROUNDS):
                for n, f in fns.items():
                    m = layers["attention" if n == "attn layer" else n]
                    if mode == "fwd":
                        with torch.no_grad():
                            t = bench(f, None)
                    else:
                        t = bench(lambda f=f, dy=dys[n]: f().backward(dy), [x, *m.parameters()])
                    calls[n] += t
                    rounds[n].append(statistics.median(t))
            if mode == "fwd+bwd":
                x.requires_grad_(False)
                x.grad = None
                del dys
            for n in fns:
                rec[f"{n} {mode}"] = statistics.median(calls[n])
                rec[f"{n} {mode} rounds"] = rounds[n]
            ms = [rec[f"{n} {mode}"] for n in (*names, "attn layer")]
            us_tok = [t * 1e3 / (B * L) for t in ms[:3]]
            rows[mode].append([L, B, *(f"{t:.3f}" for t in ms), *(f"{u:.4f}" for u in us_tok),
                               ratio_over_rounds(rounds["attention"], rounds["Mamba"]),
                               ratio_over_rounds(rounds["attention"], rounds["Mamba-2"])])  # fmt: skip
            print(mode, rows[mode][-1], flush=True)
        data.append(rec)
        del layers, fns, x
        if device == "cuda":
            torch.cuda.empty_cache()
    head = ["L", "B", "Mamba ms", "Mamba-2 ms", "attention ms", "attn layer ms", "Mamba us/tok", "Mamba-2 us/tok",
            "attention us/tok", "attn/Mamba (rounds)", "attn/Mamba-2 (rounds)"]  # fmt: skip
    summary = {}
    for mode in ("fwd+bwd", "fwd"):
        lines.append(f"### {mode}\n\n" + markdown_table(head, rows[mode]) + "\n")
        for i, n in enumerate(("Mamba", "Mamba-2")):
            r = [rec[f"attention {mode}"] / rec[f"{n} {mode}"] for rec in data]
            last = ratio_over_rounds(data[-1][f"attention {mode} rounds"], data[-1][f"{n} {mode} rounds"])
            summary[f"{n} {mode}"] = {"crossover": crossover(list(lengths), r), f"ratio at {lengths[-1]}": r[-1],
                                      f"ratio at {lengths[-1]} (range over rounds)": last}  # fmt: skip
            lines.append(f"- {n} {mode}: crossover (layer faster than attention) at L {summary[f'{n} {mode}']['crossover']}"
                         f"; attention/{n} at L={lengths[-1]}: {last}x over {ROUNDS} rounds")  # fmt: skip
        lines.append("")
    text = "\n".join(lines)
    if out_dir:
        save_report(out_dir, "gpu_layers", text, {"device": gpu, "dtype": str(dtype), "d_model": d, "tokens": tokens,
                                                  "checks": checks, "ms": data, "summary": summary})  # fmt: skip
    return text


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny float32 sizes on the CPU (a smoke test)")
    a = p.parse_args()
    print(run(os.environ.get("OUT"), quick=a.quick))
