"""GPU: clocks and board power while the 64K-token layers run back to back, and the Mamba-2 layer's in_proj GEMMs.

    python3 benchmarks/gpu_power.py --parts clocks gemms [--out DIR]

``clocks``: each workload (the Mamba-2 layer's forward+backward at one sequence of 64K tokens, the attention
layer's, and the Mamba-2 layer's in_proj GEMM alone) runs back to back for ``SECONDS`` while ``nvidia-smi``
samples the SM clock, the board power and the temperature every 50 ms; the table gives each workload's median
CUDA-event time and the samples of its last three quarters (after the clocks have settled). The layers are
those of ``gpu_layers.py``. ``gemms``: the in_proj's three products at 64K tokens (forward, input and weight
gradients) at its width of 8512 and at padded or smaller widths, three interleaved rounds of
``triton.testing.do_bench`` medians each.
"""

from __future__ import annotations

import datetime
import os
import statistics
import subprocess
import sys
import time

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from gpu_layers import attn_train, build  # noqa: E402

L, D_MODEL, D_PROJ = 65536, 2048, 8512
SECONDS = 4.0
WIDTHS = (8512, 8576, 8704, 8448, 8192)


def _run_for(fn, seconds: float) -> list:
    """CUDA-event ms of each call of ``fn`` made in ``seconds`` (back to back, synchronizing every 4 calls)."""
    events = []
    t0 = time.time()
    while time.time() - t0 < seconds:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        events.append((s, e))
        if len(events) % 4 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


def clock_rows() -> list[list]:
    torch.manual_seed(0)
    x = torch.randn(1, L, D_MODEL, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)
    layers = {n: build(n, D_MODEL, L).to("cuda", torch.bfloat16) for n in ("Mamba-2", "attention")}
    w = torch.randn(D_PROJ, D_MODEL, device="cuda", dtype=torch.bfloat16)
    u = torch.randn(L, D_MODEL, device="cuda", dtype=torch.bfloat16)

    def fwd_bwd(name):
        def call():
            m = layers[name]
            (attn_train(m, x) if name == "attention" else m(x)[0]).backward(dy)
            for t in (x, *m.parameters()):
                t.grad = None
        return call

    work = {"Mamba-2 layer 64K fwd+bwd": fwd_bwd("Mamba-2"), "attention layer 64K fwd+bwd": fwd_bwd("attention"),
            f"in_proj GEMM alone ({L} x {D_MODEL} -> {D_PROJ})": lambda: torch.nn.functional.linear(u, w)}  # fmt: skip
    query = "--query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu"
    smi = subprocess.Popen(["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "50"],
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    spans = []
    try:
        for name, fn in work.items():
            fn()
            torch.cuda.synchronize()
            t0 = time.time()
            ms = _run_for(fn, SECONDS)
            spans.append((name, t0, time.time(), ms))
    finally:
        smi.terminate()
    samples = []
    for line in smi.stdout.read().splitlines():
        stamp, clk, pw, temp = (f.strip() for f in line.split(","))
        when = datetime.datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
        samples.append((when, float(clk), float(pw), float(temp)))
    rows = []
    for name, t0, t1, ms in spans:
        sel = [s for s in samples if t0 + (t1 - t0) / 4 <= s[0] <= t1]
        clk, pw = [s[1] for s in sel], [s[2] for s in sel]
        if not sel:
            rows.append([name, f"{statistics.median(ms):.2f} ({len(ms)} calls)", "no samples", "", ""])
            continue
        rows.append([name, f"{statistics.median(ms):.2f} ({len(ms)} calls)",
                     f"{statistics.median(clk):.0f} ({min(clk):.0f}-{max(clk):.0f})",
                     f"{statistics.median(pw):.0f} (max {max(pw):.0f})", f"{max(s[3] for s in sel):.0f}"])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def gemm_rows() -> list[list]:
    torch.manual_seed(0)
    u = torch.randn(L, D_MODEL, device="cuda", dtype=torch.bfloat16)
    times: dict = {}
    for _ in range(3):
        for n in WIDTHS:
            w = torch.randn(n, D_MODEL, device="cuda", dtype=torch.bfloat16)
            dz = torch.randn(L, n, device="cuda", dtype=torch.bfloat16)
            for part, fn in (("forward", lambda: torch.nn.functional.linear(u, w)), ("input gradient", lambda: dz @ w),
                             ("weight gradient", lambda: dz.t() @ u)):  # fmt: skip
                times.setdefault(n, {}).setdefault(part, []).append(do_bench(fn, warmup=25, rep=200))
    rows = []
    for n in WIDTHS:
        med = {p: statistics.median(t) for p, t in times[n].items()}
        tflops = 2 * L * D_MODEL * n / 1e9
        rows.append([f"in_proj width {n}" + (" (the layer's)" if n == D_PROJ else ""),
                     *(f"{m:.3f} ({tflops / m:.0f} TFLOP/s)" for m in med.values()),
                     f"{sum(med.values()):.3f}"])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def run(out_dir: str, parts) -> str:
    from _gpu_bench import table_report

    text = ""
    if "clocks" in parts:
        head = ["workload", "ms", "SM clock MHz, median (range)", "board power W", "temperature C"]
        text += table_report(out_dir, "gpu_power_clocks", "clocks and power, back-to-back calls", head, clock_rows())
        text += "\n\n"
    if "gemms" in parts:
        head = ["GEMM", "forward ms", "input gradient ms", "weight gradient ms", "sum ms"]
        text += table_report(out_dir, "gpu_power_gemms", "the Mamba-2 in_proj GEMMs against their width", head,
                             gemm_rows())  # fmt: skip
    return text


if __name__ == "__main__":
    from _gpu_bench import parts_main

    parts_main(__doc__, run, ["clocks", "gemms"])
