"""Shared memory of the SSD (Mamba-2) Triton kernels, per GPU, without a GPU.

A kernel that asks for more shared memory per block than the GPU has does not start: Triton raises
``OutOfResources`` at its first launch. The H200 has 227 KiB per block, an A100 163 KiB, consumer and
workstation cards of compute capability 8.6 / 8.9 (RTX 3090 / 4090, A10, L4, L40) 99 KiB, a V100 96 KiB,
a T4 (and the RTX 20xx, compute capability 7.5) 64 KiB.

For each shape and dtype this makes the plan a CUDA device of the chosen kind would make
(``triton_launch.make_plan`` with the device's SM count and shared memory), records every launch of a
forward and a backward on *meta* tensors (``ssd_codegen.record``), compiles each kernel for that device's
architecture with the installed Triton, and prints the shared memory each asks for against the device's
limit. The plan's own estimate (``triton_launch.shared_estimate``) is printed beside it.

    python benchmarks/ssd_shared_memory.py                          # every GPU below; the default shapes
    python benchmarks/ssd_shared_memory.py --gpus rtx4090 --shapes 64,256 --dtypes float32
    python benchmarks/ssd_shared_memory.py --no-fit                 # the plans as they were made before the limit

Exit status 1 when a kernel asks for more than its device has, or for more than the plan estimated.
"""

from __future__ import annotations

import argparse
import os
import sys
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import ssd_codegen as codegen  # noqa: E402
from gpu_emulate import GPUS as EMULATE_GPUS  # noqa: E402

from ssmkit.ops.ssd import triton_launch as launch  # noqa: E402

# name: (compute capability, SMs, shared memory per block (opt-in), bytes), from gpu_emulate.GPUS
GPUS = {name: (10 * cc[0] + cc[1], sms, shared) for name, (cc, sms, shared, _, _) in EMULATE_GPUS.items()
        if name in ("h200", "a100", "rtx4090", "v100", "t4", "b200", "rtx5090")}  # fmt: skip
DEFAULT_SHAPES = ["64,128", "64,256", "128,128", "64,64", "32,64"]  # P,N
WALKS = ("_ssd_states_kernel", "_ssd_dstates_kernel", "_ssd_segment_sums_kernel")  # (one estimate)


class _CudaLike:
    """What ``make_plan`` reads of x, as a tensor on a CUDA device would show it."""

    def __init__(self, x: torch.Tensor):
        self.shape, self.dtype = x.shape, x.dtype
        self.device = torch.device("cuda", 0)

    def element_size(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()


def gpu_plan(x: torch.Tensor, N: int, chunk: int, arch: int, sms: int, shared: int, fit: bool) -> launch.Plan:
    with mock.patch.object(launch, "sm_count", lambda device: sms), \
         mock.patch.object(launch, "device_major", lambda device: arch // 10), \
         mock.patch.object(launch, "shared_memory", lambda device: shared if fit else 1 << 40):  # fmt: skip
        return launch.make_plan(_CudaLike(x), N, chunk, None)


def compile_shared(fn, args, kw, arch: int) -> int:
    """Shared bytes of one recorded launch compiled for ``arch``."""
    return codegen.compile_launch(fn, args, dict(kw), arch)[2]


def check(gpu: str, dtype: torch.dtype, P: int, N: int, chunk: int, fit: bool, shape=(2, 1024, 8)) -> bool:
    arch, sms, limit = GPUS[gpu]
    inp = codegen.bench_inputs(chunk, dtype, b=shape[0], L=shape[1], H=shape[2], P=P, N=N)
    x, dt, A, B, C, D, bias = (inp[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias"))
    try:
        plan = gpu_plan(x, N, chunk, arch, sms, limit, fit)
    except ValueError as e:  # (too large a state for this GPU even in the smallest tiles: the plan says so)
        print(f"{gpu} (sm_{arch}, {limit // 1024} KiB)  {str(dtype)[6:]}  P={P} N={N}  no plan: {e}", flush=True)
        return True
    out = {}

    def fwd():
        out["fwd"] = launch.ssd_fwd(x, dt, A, B, C, D, None, bias, None, None, x.shape[0], plan, True, False, True)

    def bwd():
        y, final, seg_in, seg_decay, _, h = out["fwd"]
        launch.ssd_bwd(torch.empty_like(y), None, x, dt, A, B, C, D, bias, None, None, seg_in, seg_decay,
                       x.shape[0], plan, True, h)  # fmt: skip

    ok = True
    est = launch.shared_estimate(plan, x.element_size(), arch // 10)
    print(f"{gpu} (sm_{arch}, {limit // 1024} KiB)  {str(dtype)[6:]}  P={P} N={N}  chunk {chunk} -> Q={plan.Q} "
          f"block_p={plan.block_p} bwd={plan.block_p_bwd} walks=({plan.state_block_n}, {plan.state_block_p}) "
          f"stages={plan.state_stages}  estimate {max(est.values(), default=0) // 1024} KiB", flush=True)  # fmt: skip
    seen = set()
    for stage, run in (("fwd", fwd), ("bwd", bwd)):
        with mock.patch.object(launch, "sm_count", lambda device: sms):
            calls = codegen.record(run)
        for fn, grid, args, kw in calls:
            key = (fn.__name__, tuple(sorted((k, v) for k, v in kw.items() if k.isupper() or k == "num_stages")))
            if fn.__name__ == "_ssd_passing_kernel" or key in seen:
                continue
            seen.add(key)
            shared = compile_shared(fn, args, kw, arch)
            name = "_ssd_states_kernel" if fn.__name__ in WALKS else fn.__name__
            bound = est.get(name)
            fits, under = shared <= limit, bound is not None and shared > bound
            ok &= fits and not under
            note = "" if bound is None else f"estimate {bound // 1024} KiB" + ("  BELOW THE COMPILED SIZE" if under else "")
            print(f"  {stage} {fn.__name__:26s} {shared // 1024:4d} KiB  {'fits' if fits else 'TOO LARGE'}   {note}",
                  flush=True)  # fmt: skip
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", nargs="*", default=list(GPUS), choices=list(GPUS))
    ap.add_argument("--dtypes", nargs="*", default=["bfloat16", "float32"], choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--shapes", nargs="*", default=DEFAULT_SHAPES, help="P,N pairs")
    ap.add_argument("--chunk", type=int, default=64, help="chunk_size asked (the plan may run a smaller chunk)")
    ap.add_argument("--no-fit", action="store_true", help="plans made without the device's shared memory limit")
    a = ap.parse_args()
    print(f"triton {codegen.triton.__version__}")
    ok = True
    for gpu in a.gpus:
        for dtype in a.dtypes:
            for pn in a.shapes:
                P, N = map(int, pn.split(","))
                ok &= check(gpu, getattr(torch, dtype), P, N, a.chunk, not a.no_fit)
    print("every kernel fits, within its estimate" if ok else
          "some kernels ask for more shared memory than their GPU has, or than the plan estimated")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
