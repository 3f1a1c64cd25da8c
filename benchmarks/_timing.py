"""Timing helpers shared by the benchmark scripts (CPU and GPU)."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from typing import Callable, Sequence

import torch


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], *, reps: int = 5, warmup: int = 1, device="cpu", budget_s: float = 30.0) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` calls.

    Stops repeating early once ``budget_s`` is spent (at least one timed call),
    so that slow baselines (the reference loop at long L) stay affordable.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def fit_exponent(lengths: Sequence[int], times: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(L): 1.0 means linear in L."""
    xs = [math.log(n) for n in lengths]
    ys = [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio_over_rounds(base: Sequence[float], other: Sequence[float], digits: int = 2) -> str:
    """base / other of the medians over the rounds, and the range of the rounds' own ratios: "4.83 (4.76-4.86)".
    ``base[i]`` and ``other[i]`` are medians timed in turn in round i (drifts of the clocks touch both)."""
    per_round = [b / o for b, o in zip(base, other)]
    r = statistics.median(base) / statistics.median(other)
    return f"{r:.{digits}f} ({min(per_round):.{digits}f}-{max(per_round):.{digits}f})"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def save_report(out_dir: str, stem: str, text: str, data: dict) -> None:
    """Write ``<stem>.md`` (the report) and ``<stem>.json`` (its data) under ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(data, f, indent=1)
