"""GPU: the SSD Triton kernels with float32 inputs, by how their products are formed.

    python3 benchmarks/gpu_ssd_fp32.py [--ways ieee:0 ieee:1 tf32x3:0 tf32x3:1] [--out DIR]
    # all four ways: ~6 minutes on an H200, most of it compiling "ieee"

fp32 inputs need products as accurate as fp32. Four ways, in one process:
"ieee" (FMA units) or "tf32x3" (three tensor-core products of split operands), each with
and without ``maxnreg=255`` (without it ptxas gave the large fp32 kernels 32 registers).
The default of ``ssmkit.ops.ssd.triton_launch`` is the last row's pair where Triton has it.
Per way and chunk size: the first call's time (compiling), the largest relative error of
the output, final state and every gradient against the float64 loop (B=2, L=1000, H=8,
P=64, N=128, G=2, all optional inputs), and forward / forward+backward milliseconds at
B=2, L=4096, H=32, P=64, N=128, G=1. Writes ``gpu_ssd_fp32.md`` / ``.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import triton.language as tl

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _gpu_bench import fwd_and_fwdbwd, table_report  # noqa: E402
from gpu_ssd_checks import make_inputs, new_seed, with_grads  # noqa: E402
from numerics import rel_err  # noqa: E402

from ssmkit.ops.ssd import ssd, ssd_reference  # noqa: E402
from ssmkit.ops.ssd import triton_launch as launch  # noqa: E402

WAYS = (("ieee", False), ("ieee", True), ("tf32x3", False), ("tf32x3", True))
DEFAULTS = launch._dot_flags, launch.register_cap


def use(prec: str, cap: bool) -> None:
    """Make the launchers form fp32 products in ``prec``, with or without the register cap."""
    flags, regs = DEFAULTS
    launch._dot_flags = lambda x: dict(DT=tl.float32, PREC=prec) if x.dtype == torch.float32 else flags(x)
    launch.register_cap = (regs if cap else (lambda x, cap=0: {"maxnreg": cap} if cap > 0 else {}))


def run(out_dir: str, ways=WAYS) -> str:
    g = torch.Generator().manual_seed(new_seed())
    small = make_inputs(g, 2, 1000, 8, 64, 128, 2, torch.float32)
    w = [torch.randn(2, 1000, 8, 64, generator=g, dtype=torch.float64).cuda(),
         torch.randn(2, 8, 64, 128, generator=g, dtype=torch.float64).cuda()]  # fmt: skip
    ref = with_grads(ssd_reference, {k: v.double() for k, v in small.items()}, *w, dt_softplus=True)
    big = {k: v for k, v in make_inputs(g, 2, 4096, 32, 64, 128, 1, torch.float32).items()
           if k not in ("z", "initial_state")}  # fmt: skip
    try:
        rows = [row for prec, cap in ways for row in _way(prec, cap, small, w, ref, big)]
    finally:
        launch._dot_flags, launch.register_cap = DEFAULTS
    head = ["products", "maxnreg", "chunk", "first call s", "max rel err vs float64", "fwd ms", "fwd+bwd ms"]
    return table_report(out_dir, "gpu_ssd_fp32", "SSD, float32 inputs,", head, rows)


def _way(prec: str, cap: bool, small: dict, w: list, ref: tuple, big: dict) -> list[list]:
    """One way's rows (chunks 64 and 32): first call s, max error against float64, fwd / fwd+bwd ms."""
    use(prec, cap)
    rows = []
    for Q in (64, 32):
        t0 = time.perf_counter()
        got = with_grads(ssd, small, *w, dt_softplus=True, chunk_size=Q, backend="triton")
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        pairs = [(got[0], ref[0]), (got[1], ref[1])] + [(got[2][k], ref[2][k]) for k in ref[2]]
        err = max(rel_err(a, r) for a, r in pairs)
        t_f, t_fb = fwd_and_fwdbwd(lambda Q=Q, **k: ssd(**k, dt_softplus=True, chunk_size=Q, backend="triton"), big)
        rows.append([prec, "255" if cap else "-", Q, f"{first:.1f}", f"{err:.1e}", f"{t_f:.3f}", f"{t_fb:.3f}"])
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results"), help="folder for the report")
    ap.add_argument("--ways", nargs="*", default=[f"{p}:{int(c)}" for p, c in WAYS],
                    help="PRECISION:CAP pairs to run (default: all four, e.g. tf32x3:1 is the default way)")
    args = ap.parse_args()
    print(run(args.out, [(w.split(":")[0], w.split(":")[1] == "1") for w in args.ways]))
