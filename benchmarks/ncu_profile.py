"""Run the GPU kernels once each inside a profiler range, for Nsight Compute.

    python benchmarks/ncu_profile.py --only scan ssd          # compiles (warm-up) and runs
    (targets: scan, mamba_scan, ssd: one forward+backward; scan_forward, ssd_forward: one forward without
    autograd)
    ncu --profile-from-start off --clock-control none --set full -o prof \\
        python benchmarks/ncu_profile.py --only scan           # profiles one forward+backward

Each target is run twice outside the range (Triton compiles, caches fill) and once
inside ``cudaProfilerStart``/``Stop``, so ``--profile-from-start off`` captures
exactly one forward+backward per target, at the benchmark shapes of
``gpu_scan.py`` and ``gpu_ssd.py``. ``MAMBA_SRC``: also mamba_ssm's selective scan.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from _gpu_bench import from_mamba_source  # noqa: E402
from gpu_scan import SHAPE, ours  # noqa: E402
from gpu_scan_checks import make_inputs  # noqa: E402
from gpu_ssd import ssd_inputs  # noqa: E402

from ssmkit.ops.ssd import ssd  # noqa: E402


def scan_step():
    g = torch.Generator(device="cuda").manual_seed(1)
    inp = make_inputs(g, **SHAPE)
    inp.pop("initial_state")
    leaves = {k: v.requires_grad_(True) for k, v in inp.items()}
    dy = torch.randn(SHAPE["b"], SHAPE["L"], SHAPE["D"], device="cuda", dtype=torch.bfloat16)
    return lambda: ours(**leaves).backward(dy)


def scan_forward_step():
    """The selective scan's forward alone, without autograd (its local and full passes, no checkpoints)."""
    g = torch.Generator(device="cuda").manual_seed(1)
    inp = make_inputs(g, **SHAPE)
    inp.pop("initial_state")

    def step():
        with torch.no_grad():
            ours(**inp)

    return step


def mamba_scan_step():
    mamba = from_mamba_source(os.environ.get("MAMBA_SRC"), "ops.selective_scan_interface", "selective_scan_fn")
    if mamba is None:
        return None
    g = torch.Generator(device="cuda").manual_seed(1)
    inp = make_inputs(g, **SHAPE)
    inp.pop("initial_state")
    m = {k: (v.transpose(1, 2).contiguous() if k in ("u", "delta", "z", "B", "C") else v) for k, v in inp.items()}
    m = {k: v.requires_grad_(True) for k, v in m.items()}
    dy = torch.randn(SHAPE["b"], SHAPE["D"], SHAPE["L"], device="cuda", dtype=torch.bfloat16)
    return lambda: mamba(m["u"], m["delta"], m["A"], m["B"], m["C"], m["D"], m["z"], m["delta_bias"], True).backward(dy)


def ssd_step(Q: int = 32):
    inp = {k: v.requires_grad_(True) for k, v in ssd_inputs(8, 4096).items()}
    dy = torch.randn_like(inp["x"])
    return lambda: ssd(**inp, dt_softplus=True, chunk_size=Q, backend="triton").backward(dy)


def ssd_forward_step(Q: int = 32):
    """The SSD forward alone, without autograd (inference: the walking plan, ``triton_launch.forward_span``)."""
    inp = ssd_inputs(8, 4096)

    def step():
        with torch.no_grad():
            ssd(**inp, dt_softplus=True, chunk_size=Q, backend="triton")

    return step


TARGETS = {"scan": scan_step, "scan_forward": scan_forward_step, "mamba_scan": mamba_scan_step, "ssd": ssd_step,
           "ssd_forward": ssd_forward_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(TARGETS), default=list(TARGETS))
    args = parser.parse_args()
    steps = [(name, TARGETS[name]()) for name in args.only]
    steps = [(n, s) for n, s in steps if s is not None]
    for _, step in steps:
        step()
        step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for name, step in steps:
        torch.cuda.nvtx.range_push(name)
        step()
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print("profiled:", ", ".join(n for n, _ in steps))


if __name__ == "__main__":
    main()
