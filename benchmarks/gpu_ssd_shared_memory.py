"""SSD plans fitted to smaller GPUs, run on this one: correct, within the shared memory they were fitted to,
and what they cost.

For each emulated GPU (its shared memory per program, compute capability and SM count patched into the
plan, ``triton_launch.fit_shared_memory``) and each input (bf16 / fp32, state size N), one forward+backward
with the fitted plan runs here. Printed: the plan's chunk and P tiles, the largest shared memory any of its
kernels was compiled to (from the launches themselves) against the emulated limit, the largest relative
error of y, dx, dB, dC, ddt against the float32 "torch" backend on the same inputs, and forward+backward ms
against this GPU's own plan. The first rows are this GPU's own plans.

    python3 benchmarks/gpu_ssd_shared_memory.py [--out DIR]
    python3 benchmarks/gpu_ssd_shared_memory.py --gpus this --dtypes float16 --states 64 128 --no-time

(the second, under ``gpu_emulate.py``, checks the plans an older GPU makes for itself, compiled for it.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from unittest import mock

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ssmkit.ops.ssd import ssd  # noqa: E402
from ssmkit.ops.ssd import triton_launch as launch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from gpu_emulate import GPUS as EMULATE_GPUS  # noqa: E402

# whose plans run: this GPU's, or those of an emulated GPU ((major, SMs, shared memory), from gpu_emulate.GPUS)
EMULATED = {"this": None} | {n: (EMULATE_GPUS[n][0][0],) + EMULATE_GPUS[n][1:3] for n in ("a100", "rtx4090")}


class _Shared:
    """Stands in for the launch module's kernels: launches them and keeps the largest shared memory."""

    def __init__(self, fn, seen: list):
        self.fn, self.seen = fn, seen

    def __getitem__(self, grid):
        def launch_it(*args, **kw):
            kernel = self.fn[grid](*args, **kw)
            self.seen.append(getattr(getattr(kernel, "metadata", None), "shared", 0))
            return kernel

        return launch_it


@contextlib.contextmanager
def gpu_like(spec, seen: list):
    with contextlib.ExitStack() as stack:
        for name, obj in vars(launch).items():
            if isinstance(obj, triton.runtime.jit.JITFunction):
                stack.enter_context(mock.patch.object(launch, name, _Shared(obj, seen)))
        if spec is not None:
            major, sms, shared = spec
            stack.enter_context(mock.patch.object(launch, "device_major", lambda device: major))
            stack.enter_context(mock.patch.object(launch, "sm_count", lambda device: sms))
            stack.enter_context(mock.patch.object(launch, "shared_memory", lambda device: shared))
        yield


def inputs(dtype, N: int, b=4, L=4096, H=32, P=64):
    g = torch.Generator(device="cuda").manual_seed(N)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    return dict(x=r(b, L, H, P).to(dtype), dt=r(b, L, H).to(dtype), A=-torch.exp(r(H)),
                B=r(b, L, 1, N).to(dtype), C=r(b, L, 1, N).to(dtype), D=r(H), dt_bias=r(H) - 1)  # fmt: skip


def fwd_bwd(inp: dict, backend: str, dy: torch.Tensor):
    leaves = {k: v.detach().requires_grad_(True) for k, v in inp.items()}
    y = ssd(**leaves, dt_softplus=True, chunk_size=64, backend=backend)
    y.backward(dy)
    return [y] + [leaves[k].grad for k in ("x", "B", "C", "dt")]


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--gpus", nargs="*", default=list(EMULATED), choices=list(EMULATED),
                    help="whose plans run: this GPU's, or those of the emulated A100 / RTX 4090")
    ap.add_argument("--dtypes", nargs="*", default=["bfloat16", "float32"], choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--states", type=int, nargs="*", default=[128, 256], help="state sizes N")
    ap.add_argument("--no-time", action="store_true", help="check only (no timings)")
    a = ap.parse_args()
    chosen = {k: v for k, v in EMULATED.items() if k in a.gpus}
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}: {launch.shared_memory(dev) // 1024} KiB of shared memory per program, "
          f"triton {triton.__version__}, torch {torch.__version__}")  # fmt: skip
    rows = ["| GPU the plan is for | dtype | N | chunk, P tile, backward P tile | largest kernel KiB | limit KiB | "
            "worst rel. err vs fp32 torch | fwd+bwd ms | this GPU's plan ms |", "|---|---|---|---|---|---|---|---|---|"]
    bench = (lambda f: float("nan")) if a.no_time else (lambda f: do_bench(f, rep=200))  # noqa: E731
    for dtype in (getattr(torch, d) for d in a.dtypes):
        for N in a.states:
            inp = inputs(dtype, N)
            dy = torch.randn(inp["x"].shape, device="cuda", dtype=dtype)
            ref = fwd_bwd({k: v.float() for k, v in inp.items()}, "torch", dy.float())
            own = bench(lambda: fwd_bwd(inp, "triton", dy))
            for name, spec in chosen.items():
                seen: list = []
                with gpu_like(spec, seen):
                    x = inp["x"]
                    plan = launch.make_plan(x, N, 64, None)
                    got = fwd_bwd(inp, "triton", dy)
                    ms = bench(lambda: fwd_bwd(inp, "triton", dy))
                limit = (spec[2] if spec else launch.shared_memory(dev)) // 1024
                err = max(rel(g, r) for g, r in zip(got, ref))
                label = "this GPU" if spec is None else f"{name} ({limit} KiB)"
                rows.append(f"| {label} | {str(dtype)[6:]} | {N} | {plan.Q}, {plan.block_p}, {plan.block_p_bwd} | "
                            f"{max(seen) // 1024} | {limit} | {err:.1e} | {ms:.3f} | {own:.3f} |")  # fmt: skip
                print(rows[-1], flush=True)
                assert max(seen) <= limit * 1024, f"{name}: a kernel took {max(seen)} bytes"
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "gpu_ssd_shared_memory.md"), "w") as f:
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
