"""GPU: the SSD op's times at a few shapes, for whichever ssmkit is first on PYTHONPATH.

Two versions of the code cannot share a process (one package name), so an A/B runs this script
in separate processes, alternating, in one session on the GPU:

    git archive <rev> ssmkit | tar -x -C /tmp/old      # the version to compare against
    for i in 1 2; do for v in /tmp/old $PWD; do PYTHONPATH=$v python3 benchmarks/gpu_ssd_versions.py $v; done; done

Prints one line per process: forward / forward+backward ms (bf16, P=64, N=128, G=1, D, dt_bias,
softplus; the default chunk) at each (batch, length, heads) of ``SHAPES``, and the package's path.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _gpu_bench import fwd_and_fwdbwd  # noqa: E402
from gpu_ssd import ssd_inputs  # noqa: E402

import ssmkit  # noqa: E402
from ssmkit.ops.ssd import ssd  # noqa: E402

SHAPES = ((8, 2048, 32), (2, 8192, 32), (1, 16384, 32), (1, 65536, 32), (8, 4096, 32), (1, 16384, 64), (1, 65536, 64))

if __name__ == "__main__":
    out = [sys.argv[1] if len(sys.argv) > 1 else "ssmkit"]
    for b, L, H in SHAPES:
        f, fb = fwd_and_fwdbwd(lambda **k: ssd(**k, dt_softplus=True, backend="triton"), ssd_inputs(b, L, H=H))
        out.append(f"{b}x{L}xH{H}: {f:.3f}/{fb:.3f}")
    print(" | ".join(out), ssmkit.__file__)
