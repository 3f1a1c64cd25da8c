"""GPU: the selective scan's times at the benchmark shape, for whichever ssmkit is first on PYTHONPATH.

Two versions of the code cannot share a process (one package name), so an A/B runs this script
in separate processes, alternating, in one session on the GPU:

    git archive <rev> ssmkit | tar -x -C /tmp/old      # the version to compare against
    for i in 1 2; do for v in /tmp/old $PWD; do PYTHONPATH=$v python3 benchmarks/gpu_scan_versions.py $v; done; done
    PYTHONPATH=$PWD python3 benchmarks/gpu_scan_versions.py --kernels   # also the backward per kernel

Prints one line per process (B=8 L=4096 D=2048 N=16 bf16, z, D, delta bias, softplus; default
configs): the op's forward / forward+backward ms, then the launchers' forward, forward saving
checkpoints and backward (its local pass included) ms, and the package's path.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import torch  # noqa: E402
from _gpu_bench import fwd_and_fwdbwd, ms  # noqa: E402
from gpu_scan import SHAPE, ours  # noqa: E402
from gpu_scan_checks import make_inputs  # noqa: E402

import ssmkit  # noqa: E402
from ssmkit.ops.scan.triton_launch import scan_bwd, scan_fwd  # noqa: E402

if __name__ == "__main__":
    g = torch.Generator(device="cuda").manual_seed(1234)
    inp = make_inputs(g, **SHAPE)
    inp.pop("initial_state")
    f, fb = fwd_and_fwdbwd(ours, inp)
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    dy = torch.randn_like(inp["u"])
    _, _, hsave = scan_fwd(*args, None, True, True)
    parts = [ms(lambda: scan_fwd(*args, None, True, False)), ms(lambda: scan_fwd(*args, None, True, True)),
             ms(lambda: scan_bwd(dy, None, *args, hsave, True))]  # fmt: skip
    label = next((a for a in sys.argv[1:] if not a.startswith("--")), "ssmkit")
    print(f"{label}: op {f:.3f}/{fb:.3f} | launchers fwd {parts[0]:.3f} "
          f"fwd-saving {parts[1]:.3f} bwd {parts[2]:.3f}", ssmkit.__file__)  # fmt: skip
    if "--kernels" in sys.argv:  # per-kernel CUDA time of one backward (the local pass and the main kernel)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                scan_bwd(dy, None, *args, hsave, True)
            torch.cuda.synchronize()
        for e in prof.key_averages():
            if "selective_scan" in e.key:
                print(f"  {e.key}: {e.device_time_total / e.count / 1e3:.3f} ms x {e.count}")
