"""GPU speed of the gated RMSNorm (Mamba-2's output norm): the fused Triton kernels against PyTorch.

    python benchmarks/kernels_gpu.py --only gpu_norm   # with the other GPU modules' driver
    python benchmarks/gpu_norm.py                      # alone; reports under $OUT when set
    python benchmarks/gpu_norm.py --quick              # tiny float32 smoke test on the CPU (Triton interpreter)
    python benchmarks/gpu_norm.py --sweep-groups 256 1024   # only the tiling sweep (3.), at these group sizes

Called by ``kernels_gpu.py`` (``run(out_dir)``), in one process:
  1. correctness at full shape: ``gated_rms_norm(backend="triton")`` and ``"torch"`` against the
     float64 reference on the GPU (output, dy, dz, dweight; ||out - ref|| / ||ref|| against
     ``tests/numerics.py``'s bfloat16 tolerance), fresh random inputs (seed printed);
  2. timings at the Mamba-2 layer's shapes (d_model 2048: d_inner D = 4096; ngroups 1 and 8:
     group_size 4096 and 512; 16384 and 65536 tokens; bfloat16 y, z and weight, norm_before_gate
     False), forward under no_grad and forward+backward, ``triton.testing.do_bench`` medians, for
     "triton", "torch" and the "torch" path under ``torch.compile`` (what fusing by compiler gives).
     GB/s counts the bytes the fused kernels must move: forward reads y, z and writes out
     (3 x 2 bytes per element); forward+backward adds dout, y, z read and dy, dz written (+5 x 2);
  3. a sweep of the kernels' tilings (``Tiling`` in ``gated_rms_norm_triton.py``) at 65536 rows,
     to check the defaults on the GPU at hand (registers cap the backward's occupancy), and the
     default tiling with the exact sigmoid (``FAST_SIGMOID`` off).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from contextlib import contextmanager
from typing import Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _gpu_bench import section  # noqa: E402
from _timing import markdown_table, median_time, save_report  # noqa: E402
from numerics import TOL, rel_err  # noqa: E402

from ssmkit.ops.norm import gated_rms_norm  # noqa: E402
from ssmkit.ops.norm import gated_rms_norm_triton as norm_triton  # noqa: E402

D = 4096
ROWS = (16384, 65536)
GROUPS = (4096, 512)
QUICK = dict(D=96, ROWS=(64, 75), GROUPS=(96, 32))  # --quick: CPU, float32, the Triton interpreter


def new_seed() -> int:
    return int(os.environ.get("SSMKIT_TEST_SEED", random.SystemRandom().randrange(2**31)))


def make_inputs(rows: int, d: int, dtype: torch.dtype, device: str, seed: int) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, device=device).to(dtype)

    return dict(y=r(rows, d), z=r(rows, d), weight=(r(d).float().abs() + 0.5).to(dtype))


def with_grads(backend: str, inp: dict, dout: torch.Tensor, to64: bool = False, **kw) -> list[torch.Tensor]:
    """[out, dy, dz, dweight] (dz absent when z is None) for the gradient ``dout``."""
    leaves = {k: (v.double() if to64 else v).detach().clone().requires_grad_(True) for k, v in inp.items() if v is not None}
    out = gated_rms_norm(leaves["y"], leaves["weight"], leaves.get("z"), backend=backend, **kw)
    out.backward(dout.to(out.dtype))
    return [out.detach()] + [leaves[k].grad for k in ("y", "z", "weight") if k in leaves]


def checks(seed: int, device: str, dtype: torch.dtype, d: int, rows: tuple, groups: tuple) -> list[list]:
    """Each backend against the float64 reference at the benchmark shapes, plus the other variants once."""
    cases = [(r, gs, False, True) for r in rows for gs in groups]
    cases += [(rows[0], groups[-1], True, True), (rows[0], groups[-1], False, False)]  # norm first; no gate
    tol = TOL[dtype]
    out = []
    for i, (r, gs, nbg, gated) in enumerate(cases):
        inp = make_inputs(r, d, dtype, device, seed + i)
        if not gated:
            inp["z"] = None
        g = torch.Generator(device=device).manual_seed(seed + 1000 + i)
        dout = torch.randn(r, d, generator=g, device=device).to(dtype)  # the reference gets the same values
        kw = dict(group_size=gs, norm_before_gate=nbg)
        ref = with_grads("reference", inp, dout, to64=True, **kw)
        names = ["out", "dy"] + (["dz"] if gated else []) + ["dweight"]
        for backend in ("triton", "torch"):
            got = with_grads(backend, inp, dout, **kw)
            errs = [rel_err(a, b) for a, b in zip(got, ref)]
            case = f"{backend}: rows={r} D={d} group={gs}{' norm first' if nbg else ''}{'' if gated else ' no z'}"
            out.append([case, ", ".join(f"{n} {e:.1e}" for n, e in zip(names, errs)), f"{tol:.0e}",
                        "yes" if max(errs) <= tol else "NO"])  # fmt: skip
        del ref, got
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def timer(device: str) -> Callable:
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn, grads=None: do_bench(fn, warmup=25, rep=200, grad_to_none=grads, return_mode="median")
    return lambda fn, grads=None: median_time(fn, reps=3, warmup=1) * 1e3


def _compiled_torch(y, weight, z, **kw):
    return gated_rms_norm(y, weight, z, backend="torch", **kw)


def timings(seed: int, device: str, dtype: torch.dtype, d: int, rows: tuple, groups: tuple, compiled: bool) -> list[list]:
    ms = timer(device)
    fns = {"triton": lambda *a, **k: gated_rms_norm(*a, backend="triton", **k),
           "torch": lambda *a, **k: gated_rms_norm(*a, backend="torch", **k)}  # fmt: skip
    out = []
    for r in rows:
        for gs in groups:
            if compiled:  # a fresh compile per shape (forward and forward+backward graphs), under the recompile limit
                torch._dynamo.reset()
                fns["torch.compile(torch)"] = torch.compile(_compiled_torch, dynamic=False)
            inp = make_inputs(r, d, dtype, device, seed)
            leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
            dout = torch.randn_like(inp["y"])
            t = {}
            for name, f in fns.items():
                try:
                    with torch.no_grad():
                        t[name, "fwd"] = ms(lambda f=f: f(inp["y"], inp["weight"], inp["z"], group_size=gs))
                    fb = lambda f=f: f(leaves["y"], leaves["weight"], leaves["z"], group_size=gs).backward(dout)  # noqa: E731
                    t[name, "fwd+bwd"] = ms(fb, list(leaves.values()))
                except Exception as e:  # one failure (memory, compile) should not lose the other rows
                    print(f"FAILED {name} rows={r} group={gs}: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    t[name, "fwd"] = t[name, "fwd+bwd"] = float("nan")
            elem, nbytes = r * d, inp["y"].element_size()
            for mode, moved in (("fwd", 3), ("fwd+bwd", 8)):
                tri, tor = t["triton", mode], t["torch", mode]
                row = [f"rows={r} group={gs}", mode, f"{tri:.3f}", f"{tor:.3f}"]
                if compiled:
                    row.append(f"{t['torch.compile(torch)', mode]:.3f}")
                row += [f"{tor / tri:.2f}x", f"{moved * nbytes * elem / tri / 1e6:.0f}"]
                out.append(row)
                print(row, flush=True)
            del inp, leaves, dout
            if device == "cuda":
                torch.cuda.empty_cache()
    return out


@contextmanager
def tilings(fwd: Optional[norm_triton.Tiling], bwd: Optional[norm_triton.Tiling]):
    """Run the kernels with other tilings for a while (a benchmark knob; restored on exit). A backward
    tiling given here serves every group size (in place of the narrow and wide groups' defaults too)."""
    names = ("FWD_TILING", "BWD_TILING", "BWD_TILING_NARROW", "BWD_TILING_WIDE")
    saved = [getattr(norm_triton, n) for n in names]
    for n, t in zip(names, (fwd, bwd, bwd, bwd)):  # a backward variant serves every group
        setattr(norm_triton, n, t or getattr(norm_triton, n))
    try:
        yield
    finally:
        for n, t in zip(names, saved):
            setattr(norm_triton, n, t)


def sweep(seed: int, device: str, dtype: torch.dtype, d: int, rows: int, groups: tuple) -> list[list]:
    """Forward ms under forward tilings, forward+backward ms under backward tilings (the other one default)."""
    T = norm_triton.Tiling
    fwd_variants = [None, T(4096, 16, 8192, 2048), T(4096, 8, 8192, 2048), T(16384, 16, 8192, 2048),
                    T(8192, 16, 2048, 1024)]  # fmt: skip
    bwd_variants = [None, T(2048, 8, 4096, 1024), T(4096, 8, 2048, 1024), T(4096, 8, 1024, 512), T(2048, 4, 4096, 1024),
                    T(8192, 16, 4096, 1024), T(8192, 8, 4096, 1024, 32), T(16384, 16, 4096, 1024, 32),
                    T(4096, 32, 4096, 1024), T(4096, 16, 4096, 1024), T(8192, 32, 4096, 1024)]  # fmt: skip
    # programs per SM, and each tile loaded while the one before is summed (thirty-second session)
    bwd_variants += [T(8192, 16, 4096, 1024, 16, 4, True), T(4096, 32, 4096, 1024, 16, 4, True),
                     T(8192, 32, 4096, 1024, 16, 8), T(8192, 32, 4096, 1024, 16, 8, True),
                     T(8192, 32, 4096, 1024, 16, 4, True), T(8192, 32, 4096, 1024, 16, 16, True),
                     T(4096, 32, 4096, 1024, 16, 8), T(4096, 32, 4096, 1024, 16, 8, True),
                     T(4096, 16, 4096, 1024, 16, 8), T(4096, 16, 4096, 1024, 16, 8, True)]  # fmt: skip
    ms = timer(device)
    out = []
    for gs in groups:
        inp = make_inputs(rows, d, dtype, device, seed)
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
        dout = torch.randn_like(inp["y"])
        for mode, variants in (("fwd", fwd_variants), ("fwd+bwd", bwd_variants)):
            for t, fast in [(None, False)] + [(t, True) for t in variants]:
                label = "default" if t is None else (f"tile={t.tile} per_thread={t.per_thread} max_block={t.max_block} "
                                                     f"chunk={t.chunk} max_warps={t.max_warps}")  # fmt: skip
                if t is not None and mode != "fwd":
                    label += f" per_sm={t.per_sm}" + (" ahead" if t.ahead else "")
                label += "" if fast else ", exact sigmoid (FAST_SIGMOID off)"
                plan = norm_triton._plan(gs, t or (norm_triton.FWD_TILING if mode == "fwd" else norm_triton.bwd_tiling(gs)))
                saved_fast, norm_triton.FAST_SIGMOID = norm_triton.FAST_SIGMOID, fast
                try:
                    with tilings(t if mode == "fwd" else None, t if mode != "fwd" else None):
                        if mode == "fwd":
                            with torch.no_grad():
                                v = ms(lambda: gated_rms_norm(inp["y"], inp["weight"], inp["z"], group_size=gs, backend="triton"))
                        else:
                            v = ms(lambda: gated_rms_norm(leaves["y"], leaves["weight"], leaves["z"], group_size=gs,
                                                          backend="triton").backward(dout), list(leaves.values()))  # fmt: skip
                    cell = f"{v:.3f}"
                except Exception as e:  # a tiling can exceed the registers or shared memory
                    cell = f"failed: {type(e).__name__}"
                finally:
                    norm_triton.FAST_SIGMOID = saved_fast
                out.append([f"rows={rows} group={gs}", mode, label, "BLOCK_M={} BLOCK_N={} chunks={} warps={}".format(*plan), cell])
        del inp, leaves, dout
    return out




def run(out_dir: str | None, quick: bool = False) -> str:
    """Checks then timings; writes ``gpu_norm.md`` / ``gpu_norm.json`` under ``out_dir``; returns the report."""
    device, dtype = ("cpu", torch.float32) if quick else ("cuda", torch.bfloat16)
    d, rows, groups = (QUICK["D"], QUICK["ROWS"], QUICK["GROUPS"]) if quick else (D, ROWS, GROUPS)
    seed = new_seed()
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)"
    report = [f"## Gated RMSNorm on {where} (torch {torch.__version__}, {str(dtype)[6:]}, D={d}, seed {seed})\n"]
    results: dict = {}
    check_head = ["case (norm_before_gate False unless said)", "rel err vs float64 reference", "tol", "ok"]
    section("correctness vs float64 reference",
             lambda: markdown_table(check_head, checks(seed, device, dtype, d, rows, groups)), report, results)  # fmt: skip
    head = ["shape", "mode", "triton ms", "torch ms"] + ([] if quick else ["torch.compile ms"]) + \
           ["torch/triton", "triton GB/s"]  # fmt: skip
    section("timings (median)", lambda: markdown_table(head, timings(seed, device, dtype, d, rows, groups, not quick)),
             report, results)  # fmt: skip
    head = ["shape", "mode", "tiling (fwd for fwd, bwd for fwd+bwd)", "plan", "triton ms"]
    section("tiling sweep", lambda: markdown_table(head, sweep(seed, device, dtype, d, rows[-1], groups)),
            report, results)  # fmt: skip
    text = "\n".join(report)
    if out_dir:
        data = {"device": where, "seed": seed, **{k: str(v) for k, v in results.items()}}
        save_report(out_dir, "gpu_norm", text, data)
    return text


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny float32 sizes on the CPU, in the Triton interpreter")
    p.add_argument("--sweep-groups", type=int, nargs="+", help="only the tiling sweep, at these group sizes")
    a = p.parse_args()
    if a.sweep_groups:
        head = ["shape", "mode", "tiling (fwd for fwd, bwd for fwd+bwd)", "plan", "triton ms"]
        text = markdown_table(head, sweep(new_seed(), "cuda", torch.bfloat16, D, ROWS[-1], tuple(a.sweep_groups)))
        if os.environ.get("OUT"):
            save_report(os.environ["OUT"], "gpu_norm_sweep", text, {"groups": a.sweep_groups, "table": text})
        print(text)
        sys.exit(0)
    if a.quick and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        # the interpreter must be on before `triton` is first imported (importing torch imports it): start again
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "TRITON_INTERPRET": "1"})
    print(run(os.environ.get("OUT"), quick=a.quick))
