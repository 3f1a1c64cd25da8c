"""GPU: the Mamba and Mamba-2 layers' forward+backward at 16K and 64K tokens, for whichever ssmkit is
first on PYTHONPATH.

Two versions of the code cannot share a process (one package name), so an A/B runs this script
in separate processes, alternating, in one session on the GPU (as ``gpu_scan_versions.py``):

    git archive <rev> ssmkit | tar -x -C /tmp/old      # the version to compare against
    for i in 1 2; do for v in /tmp/old $PWD; do PYTHONPATH=$v python3 benchmarks/gpu_layer_versions.py $v; done; done

Prints one line per process: median forward+backward ms of each layer of ``gpu_layers.py`` (d_model
2048, bf16, default backends) on one sequence of each length, timed as there, and the package's path.
"""

from __future__ import annotations

import os
import statistics
import sys

import ssmkit  # (first: gpu_layers puts this checkout on sys.path, which must not shadow the version asked for)
import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpu_layers import build, timer  # noqa: E402

D_MODEL = 2048
LAYERS = ("Mamba", "Mamba-2")
LENGTHS = (16384, 65536)

if __name__ == "__main__":
    torch.manual_seed(0)
    bench = timer("cuda")
    out = [sys.argv[1] if len(sys.argv) > 1 else "ssmkit"]
    for L in LENGTHS:
        x = torch.randn(1, L, D_MODEL, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for name in LAYERS:
            layer = build(name, D_MODEL, L).to(device="cuda", dtype=torch.bfloat16)
            dy = torch.randn_like(x)
            t = statistics.median(bench(lambda: layer(x)[0].backward(dy), [x, *layer.parameters()]))
            out.append(f"{name} {L // 1024}K {t:.2f}")
            del layer
    print(" | ".join(out), ssmkit.__file__)
