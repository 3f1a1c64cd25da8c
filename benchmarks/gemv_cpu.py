"""CPU: the decode step's projections at batch 1, F.linear against ssmkit's C matrix-vector kernel.

    .venv/bin/python benchmarks/gemv_cpu.py            # [--out DIR] writes gemv_cpu.md / .json

For the projections of mamba-130m (24 layers) and its LM head, in float32 and bfloat16: every projection
of all 24 layers is called once per round, each with its own weights, so the weights stream from memory
as they do when decoding (mamba-130m's are 180 / 360 MB, past the caches); the LM head is its own row.
Times are per call, the median of 7 rounds, both paths in this process; each result is checked against the
float64 product (relative error). Threads: torch's setting.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _timing import markdown_table, save_report  # noqa: E402

from ssmkit.ops.linear import cpu_gemv_applies, gemv_cpu  # noqa: E402

LAYERS = 24
SHAPES = {"in_proj": (3072, 768), "x_proj": (80, 1536), "dt_proj": (1536, 48), "out_proj": (768, 1536)}  # (N, K)
HEAD = (50280, 768)


def per_call_us(calls, rounds: int = 7) -> float:
    """Median over rounds of the time per call of a round that makes every call once."""
    for call in calls:
        call()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for call in calls:
            call()
        times.append((time.perf_counter() - t0) / len(calls))
    return statistics.median(times) * 1e6


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


@torch.no_grad()
def measure(dtype: torch.dtype) -> list[list]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    jobs = [(name, n, k, LAYERS) for name, (n, k) in SHAPES.items()] + [("LM head", *HEAD, 1)]
    for name, n, k, copies in jobs:
        ws = [(torch.randn(n, k, generator=gen) * k**-0.5).to(dtype) for _ in range(copies)]
        x = torch.randn(1, k, generator=gen).to(dtype)
        assert cpu_gemv_applies(x, ws[0]), "the C kernel does not take this call"
        ref = F.linear(x.double(), ws[0].double())
        errs = (rel_err(F.linear(x, ws[0]), ref), rel_err(gemv_cpu(x, ws[0]), ref))
        torch_us = per_call_us([lambda w=w: F.linear(x, w) for w in ws])
        c_us = per_call_us([lambda w=w: gemv_cpu(x, w) for w in ws])
        gbs = lambda us: n * k * ws[0].element_size() / us / 1e3  # noqa: E731
        rows.append([str(dtype).replace("torch.", ""), name, f"{n} x {k}", copies, f"{torch_us:.1f}", f"{c_us:.1f}",
                     f"{gbs(torch_us):.1f}", f"{gbs(c_us):.1f}", f"{torch_us / c_us:.2f}x",
                     f"{errs[0]:.1e} / {errs[1]:.1e}"])  # fmt: skip
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="directory for gemv_cpu.md / gemv_cpu.json")
    args = parser.parse_args()
    rows = measure(torch.float32) + measure(torch.bfloat16)
    headers = ["dtype", "projection", "N x K", "weights streamed", "F.linear µs", "C µs", "F.linear GB/s", "C GB/s",
               "speed-up", "rel err F.linear / C"]  # fmt: skip
    head = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads; one row; mamba-130m's projections, {LAYERS} layers of weights per round")  # fmt: skip
    text = f"## F.linear against the C kernel\n\n{head}\n\n{markdown_table(headers, rows)}\n"
    print("\n" + text)
    if args.out:
        save_report(args.out, "gemv_cpu", text, {"headers": headers, "rows": rows, "setup": head})


if __name__ == "__main__":
    main()
