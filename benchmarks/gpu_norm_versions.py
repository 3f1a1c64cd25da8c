"""GPU: the gated RMSNorm backward kernel as the fused Mamba-2 layer calls it, for whichever ssmkit is first
on PYTHONPATH.

Two versions of the code cannot share a process (one package name), so an A/B runs this script in
separate processes, alternating, in one session on the GPU (as ``gpu_ssd_versions.py``):

    git archive <rev> ssmkit | tar -x -C /tmp/old      # the version to compare against
    for i in 1 2; do for v in /tmp/old $PWD; do PYTHONPATH=$v python3 benchmarks/gpu_norm_versions.py $v 2048,4096; done; done
    python3 benchmarks/gpu_norm_versions.py new 2048,4096 --tilings     # this version's candidate tilings too

Times ``norm_bwd`` (65536 rows, D = 4096, bf16, z and dz slices of rows of 8512 as the layer's in_proj
output and its gradient) at each group size given (default 64,256,512,1024,2048,4096): the median of
three ``do_bench`` medians, with each round printed, and the largest relative difference of the
gradients from the default tiling's (a check that a tiling computes the same thing).
"""

from __future__ import annotations

import statistics
import sys

import torch
from triton.testing import do_bench

from ssmkit.ops.norm import gated_rms_norm_triton as G

M, D, WIDTH = 65536, 4096, 8512
KNOBS = ("BWD_TILING", "BWD_TILING_NARROW", "BWD_TILING_WIDE")


def candidates() -> list:
    """(label, tiling) of the tilings that ``--tilings`` times besides the default (this version's ``Tiling``)."""
    T = G.Tiling
    tilings = (T(8192, 32, 4096, 1024, 16, 8, True), T(8192, 32, 4096, 1024, 16, 16, True),
               T(8192, 32, 4096, 1024, 16, 4, True), T(4096, 16, 4096, 1024, 16, 8, True),
               T(4096, 8, 4096, 1024, 16, 8, True), T(2048, 8, 4096, 1024, 16, 8, True),
               T(4096, 16, 4096, 1024, 16, 4, True), T(8192, 16, 4096, 1024, 16, 8, True),
               T(8192, 32, 4096, 1024, 16, 8), T(4096, 32, 4096, 1024, 16, 4, True))  # fmt: skip
    return [(f"tile={t.tile} per_thread={t.per_thread} per_sm={t.per_sm}{' ahead' if t.ahead else ''}", t)
            for t in tilings]  # fmt: skip


def main() -> None:
    tag = sys.argv[1] if len(sys.argv) > 1 else "ssmkit"
    groups = [int(g) for g in sys.argv[2].split(",")] if len(sys.argv) > 2 and sys.argv[2][0].isdigit() else \
        [64, 256, 512, 1024, 2048, 4096]  # fmt: skip
    torch.manual_seed(0)
    zx = torch.randn(M, WIDTH, device="cuda", dtype=torch.bfloat16)
    z = zx[:, :D]
    y = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    w = (1 + 0.1 * torch.randn(D, device="cuda")).to(torch.bfloat16)
    dout = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    dz = torch.empty_like(zx)[:, :D]
    variants = [("default", None)] + (candidates() if "--tilings" in sys.argv else [])
    for gs in groups:
        _, rstd = G.norm_fwd(y, z, w, 1e-5, gs, False)
        bwd = lambda: G.norm_bwd(dout, y, z, w, rstd, gs, False, dz_out=dz)  # noqa: E731
        ref = [t.float().clone() for t in bwd()]
        for label, t in variants:
            saved = {k: getattr(G, k) for k in KNOBS if hasattr(G, k)}
            for k in saved:
                setattr(G, k, t or saved[k])
            try:
                err = max(((a.float() - b).norm() / b.norm()).item() for a, b in zip(bwd(), ref))
                ts = [do_bench(bwd, warmup=25, rep=100, return_mode="median") for _ in range(3)]
                print(f"{tag} group={gs} {label}: {statistics.median(ts):.4f} ms rounds "
                      f"{[round(v, 4) for v in ts]} max diff {err:.1e}", flush=True)  # fmt: skip
            except Exception as e:  # a tiling can exceed the registers or shared memory
                print(f"{tag} group={gs} {label}: failed {type(e).__name__}: {str(e)[:120]}", flush=True)
            finally:
                for k, v in saved.items():
                    setattr(G, k, v)


if __name__ == "__main__":
    main()
