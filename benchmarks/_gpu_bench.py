"""Helpers shared by the GPU benchmark scripts (``gpu_scan.py``, ``gpu_ssd.py``)."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import traceback
import types
from typing import Callable, Iterator, Optional

import torch
from triton.testing import do_bench


def from_mamba_source(src: Optional[str], module: str, name: str) -> Optional[Callable]:
    """``name`` from ``mamba_ssm.<module>`` in an unpacked mamba_ssm source tree (its compiled
    extensions built in place), without running the package's ``__init__``; None without a tree."""
    if not src or not os.path.isdir(os.path.join(src, "mamba_ssm")):
        return None
    sys.path.insert(0, src)  # selective_scan_cuda sits in the source tree (build_ext --inplace)
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = [os.path.join(src, "mamba_ssm")]
    sys.modules["mamba_ssm"] = pkg
    mod = __import__(f"mamba_ssm.{module}", fromlist=[name])
    return getattr(mod, name)


def table_report(out_dir: str, stem: str, title: str, head: list, rows: list, data=None) -> str:
    """A titled Markdown table (the title gets the GPU's name and torch's version), saved as
    ``stem.md`` and ``stem.json`` (``data``, else the rows) under ``out_dir``; returns the text."""
    from _timing import markdown_table, save_report

    text = f"## {title} on {torch.cuda.get_device_name()} (torch {torch.__version__})\n\n" + markdown_table(head, rows)
    save_report(out_dir, stem, text, {"rows": rows} if data is None else data)
    return text


def parts_main(doc: str, run: Callable[[str, list], str], parts: list) -> None:
    """Command line of a script whose report has named parts: ``--out DIR`` (default $OUT or
    ``results``) and ``--parts`` (default all); prints ``run(out, parts)``."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results"), help="folder for the report")
    ap.add_argument("--parts", nargs="+", default=parts, choices=parts)
    args = ap.parse_args()
    print(run(args.out, args.parts))


# Timed calls behind every median. ``do_bench`` sizes its repeats from a five-call estimate, so its 200 ms
# of repeats are a single call of anything slower than 100 ms (attention at 64K tokens: ~135 ms), and
# the median of that one call moved by 7% from one process to the next.
MIN_SAMPLES = 10


def samples(fn: Callable, grads=None, min_samples: int = MIN_SAMPLES) -> list:
    """Milliseconds of each timed call of ``fn`` (CUDA events; 25 ms warmup, 200 ms of repeats, and
    more repeats until there are ``min_samples``); ``grads`` are set to None before every call."""
    times = list(do_bench(fn, warmup=25, rep=200, grad_to_none=grads, return_mode="all"))
    while len(times) < min_samples:
        more = (min_samples - len(times)) * statistics.median(times)
        times += do_bench(fn, warmup=0, rep=more, grad_to_none=grads, return_mode="all")
    return times


def ms(fn: Callable, grads=None) -> float:
    """Median milliseconds of ``fn`` over at least ``MIN_SAMPLES`` timed calls (:func:`samples`)."""
    return statistics.median(samples(fn, grads))


def fwd_and_fwdbwd(f: Callable, inp: dict) -> tuple[float, float]:
    """Median ms of f(**inp) without autograd, and of f(**leaves).backward(dy) (a fresh graph each time)."""
    leaves = {k: (v.detach().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    with torch.no_grad():
        t_f = ms(lambda: f(**inp))
    dy = torch.randn_like(f(**leaves))
    t_fb = ms(lambda: f(**leaves).backward(dy), grads=[v for v in leaves.values() if v is not None])
    return t_f, t_fb


def fwd_and_fwdbwd_rounds(fns: dict, rounds: int) -> dict:
    """{name: (forward ms per round, forward+backward ms per round)} for fns = {name: (f, inp)}: each round
    times every entry in turn (:func:`fwd_and_fwdbwd`), so that drifts of the GPU's clocks touch all alike."""
    out = {n: ([], []) for n in fns}
    for _ in range(rounds):
        for n, (f, inp) in fns.items():
            for times, t in zip(out[n], fwd_and_fwdbwd(f, inp)):
                times.append(t)
    return out


def section(title: str, fn: Callable, report: list, results: dict) -> None:
    """Run one part of a report: its text (or the traceback, so that one failure keeps the rest)
    goes to ``report`` and ``results[title]``, and to stdout."""
    print(f"== {title}", flush=True)
    try:
        out = fn()
        results[title] = out
        report.append(f"### {title}\n\n{out}\n")
        print(out, flush=True)
    except Exception:  # keep going: one call should bring back every section it can
        tb = traceback.format_exc()
        results[title] = tb
        report.append(f"### {title}\n\nFAILED\n```\n{tb}\n```\n")
        print(tb, flush=True)


@contextlib.contextmanager
def plan_constants(**values) -> Iterator[None]:
    """Inside: the given launch-plan constants of ``ssmkit.ops.ssd.triton_launch`` (STATE_TILE,
    SEG_PROGRAMS_PER_SM, ...) set to these values; restored on the way out."""
    from ssmkit.ops.ssd import triton_launch

    saved = {k: getattr(triton_launch, k) for k in values}
    try:
        for k, v in values.items():
            setattr(triton_launch, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(triton_launch, k, v)


@contextlib.contextmanager
def plan_keywords(n_segs: int = 0, **keywords) -> Iterator[None]:
    """Inside: the SSD op plans with these ``make_plan`` keywords (``seg_chunks``, ``fwd_stages``, ...,
    overriding what the op passes), and with ``n_segs`` segments per row if given."""
    from ssmkit.ops.ssd import triton as ssd_triton_module

    make_plan = ssd_triton_module.make_plan
    positional = {"chunk_size": 2, "seg_chunks": 4}  # (make_plan's arguments the op passes by position)

    def patched(*args, **kw):
        args = list(args)
        for name, at in positional.items():
            if name in keywords and len(args) > at:
                args[at] = keywords[name]
        kw = kw | {k: v for k, v in keywords.items() if not (k in positional and len(args) > positional[k])}
        if n_segs:
            plan = make_plan(*args, **kw)
            if len(args) > positional["seg_chunks"]:
                args[positional["seg_chunks"]] = -(-plan.n_chunks // n_segs)
            else:
                kw["seg_chunks"] = -(-plan.n_chunks // n_segs)
        return make_plan(*args, **kw)

    ssd_triton_module.make_plan = patched
    try:
        yield
    finally:
        ssd_triton_module.make_plan = make_plan


def ssd_chunks_as_asked(narrow_too: bool = False):
    """Inside: the SSD launchers run a 16-bit chunk_size as asked on the GPU (they cap it at 32 there,
    ``triton_launch.GPU_CHUNK_16BIT``), so rows labelled with a chunk time that chunk; with
    ``narrow_too`` also for P tiles below 64 (``NARROW_TILE_CHUNK``: those plans miscompile)."""
    names = ("GPU_CHUNK_16BIT", "NARROW_TILE_CHUNK") if narrow_too else ("GPU_CHUNK_16BIT",)
    return plan_constants(**{k: 1 << 30 for k in names})
