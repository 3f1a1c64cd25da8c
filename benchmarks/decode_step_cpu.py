"""CPU: batch-1 decode step of a Mamba and a Mamba-2 LM, ssmkit's defaults against its PyTorch-only path.

    .venv/bin/python benchmarks/decode_step_cpu.py     # [--out DIR] writes decode_step_cpu.md / .json

Random-weight LMs of 24 layers at d_model 768 (mamba-130m's and mamba2-130m's shapes, vocabulary 50280), in
float32 and bfloat16, one token per step after a 4-step warm-up; ms per token is the median of 3 rounds of
20 steps, the two paths alternating in this process. "PyTorch" runs the layers with backend "torch" and the
step ops' "c" backends replaced by their PyTorch steps for the run; "ssmkit" is the default (the C
projections, scan and SSD steps, the fused Mamba block). Both paths' logits are compared (relative error).
``--profile`` then prints where the default path's time goes: cProfile of 20 steps per model and dtype, the
functions with the most time of their own (a C call counts in the Python function that makes it).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import platform
import pstats
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _timing import markdown_table, save_report  # noqa: E402

from ssmkit.models import LM, ModelConfig  # noqa: E402

SCAN, SSD = sys.modules["ssmkit.ops.scan"], sys.modules["ssmkit.ops.ssd"]


@contextlib.contextmanager
def pytorch_steps():
    """The step ops' "c" backends run their PyTorch steps while inside."""
    tables = (SCAN.SCAN_STEP_BACKENDS, SSD.SSD_STEP_BACKENDS)
    saved = [t.impls["c"] for t in tables]
    try:
        for t in tables:
            t.impls["c"] = t.impls["torch"]
        yield
    finally:
        for t, impl in zip(tables, saved):
            t.impls["c"] = impl


def ms_per_token(lm: LM, dtype: torch.dtype, steps: int = 20) -> tuple[float, torch.Tensor]:
    state, ids = lm.init_state(1, dtype=dtype), torch.tensor([11])
    with torch.no_grad():
        for _ in range(4):
            logits, state = lm.step(ids, state)
        t0 = time.perf_counter()
        for _ in range(steps):
            logits, state = lm.step(ids, state)
    return (time.perf_counter() - t0) / steps * 1e3, logits


def measure(layers: str, dtype: torch.dtype) -> list:
    torch.manual_seed(0)
    fast = LM(ModelConfig(layers=layers * 24, d_model=768, vocab_size=50280)).to(dtype).eval()
    plain = LM(ModelConfig(layers=layers * 24, d_model=768, vocab_size=50280, backend="torch")).to(dtype).eval()
    plain.load_state_dict(fast.state_dict())
    times = {"torch": [], "ssmkit": []}
    for _ in range(3):
        with pytorch_steps():
            t, ref = ms_per_token(plain, dtype)
        times["torch"].append(t)
        t, out = ms_per_token(fast, dtype)
        times["ssmkit"].append(t)
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    a, b = statistics.median(times["torch"]), statistics.median(times["ssmkit"])
    name = {"M": "Mamba", "m": "Mamba-2"}[layers]
    return [name, str(dtype).replace("torch.", ""), f"{a:.1f}", f"{b:.1f}", f"{1e3 / b:.1f}", f"{a / b:.2f}x", f"{err:.1e}"]


def profile(layers: str, dtype: torch.dtype, steps: int = 20) -> None:
    """cProfile of ``steps`` default-path steps: the top functions by their own time, in ms per token."""
    torch.manual_seed(0)
    lm = LM(ModelConfig(layers=layers * 24, d_model=768, vocab_size=50280)).to(dtype).eval()
    state, ids = lm.init_state(1, dtype=dtype), torch.tensor([11])
    with torch.no_grad():
        for _ in range(4):
            _, state = lm.step(ids, state)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(steps):
            _, state = lm.step(ids, state)
        prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(v[2] for v in stats.values())
    print(f"\n{layers * 24}, {str(dtype).replace('torch.', '')}: {total / steps * 1e3:.1f} ms per token in all; own time:")
    for (path, line, name), v in sorted(stats.items(), key=lambda kv: -kv[1][2])[:6]:
        print(f"  {v[2] / steps * 1e3:6.2f} ms  {name} ({os.path.basename(path)}:{line})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="directory for decode_step_cpu.md / decode_step_cpu.json")
    parser.add_argument("--profile", action="store_true", help="then print where the default path's time goes")
    args = parser.parse_args()
    rows = []
    for layers in ("M", "m"):
        for dtype in (torch.float32, torch.bfloat16):
            rows.append(measure(layers, dtype))
            print(" | ".join(rows[-1]), flush=True)
    headers = ["model", "dtype", "PyTorch ms/token", "ssmkit ms/token", "ssmkit tokens/s", "speed-up",
               "logits rel err"]  # fmt: skip
    head = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
            "threads; 24 layers, d_model 768, batch 1")  # fmt: skip
    text = f"## CPU decode step: PyTorch path against ssmkit's defaults\n\n{head}\n\n{markdown_table(headers, rows)}\n"
    print("\n" + text)
    if args.out:
        save_report(args.out, "decode_step_cpu", text, {"headers": headers, "rows": rows, "setup": head})
    if args.profile:
        for layers in ("M", "m"):
            profile(layers, torch.bfloat16)


if __name__ == "__main__":
    main()
