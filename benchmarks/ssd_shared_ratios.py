"""Largest ratio of compiled shared memory to the tiles' bytes, per SSD kernel and operand size, for one target.

``triton_launch.shared_estimate`` bounds each kernel's shared memory by its tiles' elements times the operand size
times a factor per kernel, operand size and architecture generation (``SHARED_FACTOR``); the factors are set
above the ratios this prints. For bf16 and fp32, P in 32 / 64 / 128, N in 16 / 64 / 128 / 256 and chunks 16 / 32 /
64 it makes the plan the chosen GPU would make (``ssd_shared_memory.gpu_plan``), records its forward and backward
on meta tensors, compiles each distinct kernel for that GPU's architecture with the installed Triton (no GPU
needed) and divides its shared memory by the tiles' bytes. Each new largest ratio is printed as it is found.

    python benchmarks/ssd_shared_ratios.py b200        # any GPU of gpu_emulate.GPUS (via ssd_shared_memory.GPUS)
"""

from __future__ import annotations

import collections
import os
import sys
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(__file__))
import ssd_shared_memory as ssm  # noqa: E402
from ssd_shared_memory import codegen, launch  # noqa: E402

KIND = {"_ssd_states_kernel": "walk", "_ssd_scan_fwd_kernel": "scan"}  # (the backward kernels: "bwd")


def ratios(gpu: str) -> dict:
    arch, sms, limit = ssm.GPUS[gpu]
    worst = collections.defaultdict(float)
    for dtype in (torch.bfloat16, torch.float32):
        for P in (32, 64, 128):
            for N in (16, 64, 128, 256):
                for chunk in (16, 32, 64):
                    inp = codegen.bench_inputs(chunk, dtype, b=2, L=1024, H=8, P=P, N=N)
                    x, dt, A, B, C, D, bias = (inp[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias"))
                    try:
                        plan = ssm.gpu_plan(x, N, chunk, arch, sms, limit, True)
                    except ValueError:  # (no tiles fit this GPU: the plan says so)
                        continue
                    es, gen = x.element_size(), launch.generation(arch // 10)
                    est = launch.shared_estimate(plan, es, arch // 10)
                    out = {}

                    def fwd():
                        out["f"] = launch.ssd_fwd(x, dt, A, B, C, D, None, bias, None, None, 2, plan, True, False, True)

                    def bwd():
                        y, _, seg_in, seg_decay, _, h = out["f"]
                        launch.ssd_bwd(torch.empty_like(y), None, x, dt, A, B, C, D, bias, None, None, seg_in,
                                       seg_decay, 2, plan, True, h)  # fmt: skip

                    seen = set()
                    for run in (fwd, bwd):
                        with mock.patch.object(launch, "sm_count", lambda device: sms):
                            calls = codegen.record(run)
                        for fn, _, args, kw in calls:
                            name = "_ssd_states_kernel" if fn.__name__ in ssm.WALKS else fn.__name__
                            key = (name, repr(sorted(kw.items())))
                            if name not in est or key in seen:
                                continue
                            seen.add(key)
                            kind = KIND.get(name, "bwd")
                            tiles = est[name] / launch.SHARED_FACTOR[kind, es, gen]  # (the tiles' bytes)
                            r = ssm.compile_shared(fn, args, kw, arch) / tiles
                            if r > worst[kind, es]:
                                worst[kind, es] = r
                                print(f"{kind} {es}-byte P={P} N={N} chunk={chunk}: {r:.3f}", flush=True)
    return dict(worst)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ssm.GPUS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(ssm.GPUS)}}}")
    found = ratios(sys.argv[1])
    print(f"{sys.argv[1]}: largest ratios " + ", ".join(f"{k} {es}-byte {v:.3f}" for (k, es), v in sorted(found.items())))
