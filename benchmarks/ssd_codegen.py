"""Compile the SSD (Mamba-2) Triton kernels for sm_90 without a GPU and count instructions.

The launch sequences of ``ssmkit/ops/ssd/triton_launch.py`` (``ssd_fwd``,
``ssd_bwd``) run on *meta* tensors with every Triton kernel replaced by a
recorder, so what gets compiled is exactly what the benchmark would launch:
same constexprs, pointer dtypes, launch options (num_warps / num_stages), compiled
by the JIT itself with its own specializations (``_offline_compile.py``: ints equal
to 1 become constants, ints divisible by 16 and aligned pointers get the
divisibility-by-16 hint). The GPU's SM count is taken as 132 (H200), which fixes
the plan's segments as on the device.

Shape: the benchmark's by default (B=8, L=4096, H=32, P=64, N=128, G=1, bf16; --shape, --n, --dtype), D (H,),
dt_bias, softplus, no z, at Q=32 and Q=64. Per kernel: registers, stack
(spill) bytes, shared memory, STL/LDL counts over the whole kernel, and for
every loop of the SASS (a backward branch) the instruction mix: tensor-core
products (HGMMA = wgmma, HMMA = mma.sync), MUFU (exp, ...), FP32 arithmetic,
global / shared memory traffic, barriers, shuffles, local memory.

    python benchmarks/ssd_codegen.py                     # default plans, Q = 32 and 64
    python benchmarks/ssd_codegen.py --q 32 --plan bwd_warps=8
    python benchmarks/ssd_codegen.py --sass DIR          # also write each kernel's SASS to DIR
    python benchmarks/ssd_codegen.py --q 64 --dtype float32 --n 256 --shape 2 1000 4 64   # other shapes

Compile times are printed per kernel; a second run finds Triton's cache (set
TRITON_CACHE_DIR to an empty folder for fresh compiles).

Reuses ``scan_codegen.py``'s helpers (where ptxas / nvdisasm live, the loop finder).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from unittest import mock

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _offline_compile import compile_launch as offline_compile  # noqa: E402
from scan_codegen import BIN, loops  # noqa: E402

from ssmkit.ops.ssd import triton_launch as launch  # noqa: E402

KINDS = ("HGMMA", "HMMA", "MUFU", "FFMA", "FMUL", "FADD", "LDG", "STG", "LDS", "LDSM", "STS", "BAR", "SHFL", "LDL", "STL")
SM_COUNT = 132  # H200


class Recorder:
    """Stands in for a JITFunction: ``rec[grid](*args, **kw)`` records the launch."""

    def __init__(self, fn, calls: list):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((self.fn, grid, args, kw))


def record(run) -> list:
    """(kernel, grid, args, kwargs) of every Triton launch made by ``run()``."""
    calls: list = []
    with ExitStack() as stack:
        for name, obj in vars(launch).items():
            if isinstance(obj, triton.runtime.jit.JITFunction):
                stack.enter_context(mock.patch.object(launch, name, Recorder(obj, calls)))
        stack.enter_context(mock.patch.object(launch, "sm_count", lambda device: SM_COUNT))
        run()
    return calls


def compile_launch(fn, args, kw, arch: int = 90):
    """(resource line, SASS, shared bytes, launch options) of one recorded launch, compiled for ``sm_<arch>``
    through the JIT's own path (``_offline_compile.compile_launch``)."""
    c = offline_compile(fn, args, kw, arch)
    options = {k: kw[k] for k in ("num_warps", "num_stages", "enable_fp_fusion", "maxnreg") if k in kw}
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(c.asm["cubin"])
    res = subprocess.run([f"{BIN}/cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
    sass = subprocess.run([f"{BIN}/nvdisasm", "-c", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    return res, sass, c.metadata.shared, options


def describe(label: str, fn, grid, args, kw, sass_dir=None) -> None:
    key = {k: v for k, v in kw.items() if k.isupper() and k not in ("DT", "PREC")}
    t0 = time.perf_counter()
    res, sass, shared, options = compile_launch(fn, args, dict(kw))
    seconds = time.perf_counter() - t0
    regs = re.search(r"REG:(\d+)", res)
    stack = re.search(r"STACK:(\d+)", res)
    total = collections.Counter(
        mm.group(2) for line in sass.splitlines()
        if (mm := re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)", line))
    )  # fmt: skip
    flags = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in key.items() if not k.startswith("BLOCK"))
    blocks = " ".join(f"{k[6:]}={v}" for k, v in key.items() if k.startswith("BLOCK"))
    print(f"{label} {fn.__name__}  grid={tuple(grid)}  warps={options.get('num_warps')} "
          f"stages={options.get('num_stages')}  blocks: {blocks}")  # fmt: skip
    print(f"  registers {regs and regs.group(1)}, stack {stack and stack.group(1)} B, shared {shared} B, "
          f"whole kernel: {sum(total.values())} instr, STL={total.get('STL', 0)} LDL={total.get('LDL', 0)} "
          f"HGMMA={total.get('HGMMA', 0)} HMMA={total.get('HMMA', 0)}, compiled in {seconds:.1f} s   [{flags}]")  # fmt: skip
    for size, ops in loops(sass):
        if size > 50:
            print(f"  loop of {size:5d} instr: " + " ".join(f"{k}={ops.get(k, 0)}" for k in KINDS))
    if sass_dir:
        os.makedirs(sass_dir, exist_ok=True)
        with open(os.path.join(sass_dir, f"{label.strip('[]').replace(' ', '_')}_{fn.__name__}.sass"), "w") as f:
            f.write(sass)


def bench_inputs(Q: int, dtype=torch.bfloat16, b=8, L=4096, H=32, P=64, N=128, G=1):
    """Meta tensors of the benchmark's shape and the default (or ``plan_kw``) plan."""
    m = dict(device="meta")
    x = torch.empty(b, L, H, P, dtype=dtype, **m)
    return dict(x=x, dt=torch.empty(b, L, H, dtype=dtype, **m), A=torch.empty(H, **m),
                B=torch.empty(b, L, G, N, dtype=dtype, **m), C=torch.empty(b, L, G, N, dtype=dtype, **m),
                D=torch.empty(H, **m), dt_bias=torch.empty(H, **m))  # fmt: skip


def report(Q: int, plan_kw: dict, sass_dir=None, dtype=torch.bfloat16, **shape) -> None:
    inp = bench_inputs(Q, dtype, **shape)
    x, dt, A, B, C, D, bias = (inp[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias"))
    with mock.patch.object(launch, "sm_count", lambda device: SM_COUNT):
        plan = launch.make_plan(x, B.shape[3], Q, None, **plan_kw)
    print(f"-- Q={Q} plan: {plan}")
    out = {}

    def fwd():
        out["fwd"] = launch.ssd_fwd(x, dt, A, B, C, D, None, bias, None, None, x.shape[0], plan, True, False)

    def bwd():
        y, final, seg_in, seg_decay, *_ = out["fwd"]
        launch.ssd_bwd(torch.empty_like(y), None, x, dt, A, B, C, D, bias, None, None, seg_in, seg_decay,
                       x.shape[0], plan, True)  # fmt: skip

    for stage, run in (("[fwd]", fwd), ("[bwd]", bwd)):
        for fn, grid, args, kw in record(run):
            if fn.__name__ != "_ssd_passing_kernel":  # elementwise: a load and a store per element and segment
                describe(stage, fn, grid, args, kw, sass_dir)


def parse_plan(items: list[str]) -> dict:
    out = {}
    for item in items:
        k, v = item.split("=")
        out[k] = (v == "True") if v in ("True", "False") else int(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--q", type=int, nargs="*", default=[32, 64], help="chunk sizes")
    ap.add_argument("--plan", nargs="*", default=[], help="make_plan keywords, e.g. bwd_warps=8 y_off_from_dc=True")
    ap.add_argument("--sass", default=None, help="folder to write each kernel's SASS to")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="input dtype")
    ap.add_argument("--n", type=int, default=128, help="state size N")
    ap.add_argument("--shape", type=int, nargs=4, default=[8, 4096, 32, 64], metavar=("B", "L", "H", "P"))
    a = ap.parse_args()
    b, L, H, P = a.shape
    print(f"triton {triton.__version__}, sm_90, B={b} L={L} H={H} P={P} N={a.n} G=1 {a.dtype} (SM count {SM_COUNT})")
    for Q in a.q:
        report(Q, parse_plan(a.plan), a.sass, getattr(torch, a.dtype), b=b, L=L, H=H, P=P, N=a.n)


if __name__ == "__main__":
    main()
