"""GPU: the selective scan's segments and the pieces its local passes are cut into, over shapes.

With few (batch, channel block) programs the scan kernels cut the sequence into segments run in
parallel: a local pass gives each segment's end state (forward) or the adjoint it sends back
(backward) from a zero start, then the full pass carries the true state across segments. The local
pass walks every segment but one a second time, so fewer segments mean fewer exponentials; the full
pass needs enough programs to hide its latencies. Since the local pass writes no output, its own
grid can be finer (``ScanKernelConfig.local_split`` / ``bwd_local_split`` pieces per segment).

    python3 benchmarks/gpu_scan_split.py              # forward and backward over segments, at 5 shapes

Prints a table: ms of the launchers (bf16, N=16, z, D, delta bias, softplus), forward without and
with checkpoints, backward; each output checked against the default config's.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _gpu_bench import ms  # noqa: E402
from _timing import markdown_table  # noqa: E402
from gpu_scan_checks import make_inputs, new_seed  # noqa: E402
from numerics import rel_err  # noqa: E402  (on the path through gpu_scan_checks)

from ssmkit.ops.scan.triton_launch import default_config, scan_bwd, scan_fwd  # noqa: E402

# (B, L, D): the kernel benchmark's shape, then the Mamba layer's of gpu_layers.py (d_inner 4096, 16K
# tokens per call; 64K in one sequence)
SHAPES = ((8, 4096, 2048), (4, 4096, 4096), (2, 8192, 4096), (1, 16384, 4096), (1, 65536, 4096))
FWD_SEGS = {(8, 4096, 2048): (0, 2, 3, 8), (4, 4096, 4096): (0, 2, 8), (2, 8192, 4096): (0, 4, 16),
            (1, 16384, 4096): (0, 8, 33), (1, 65536, 4096): (0, 8, 33)}  # 0: the default's rule
# (segments, pieces) of the backward; 0: the default's rule ((0, 1): its segments, the local pass not cut)
BWD_SPLITS = {(8, 4096, 2048): ((0, 0), (0, 1), (8, 6), (8, 12), (4, 6), (4, 12), (4, 24)),
              (4, 4096, 4096): ((0, 0), (0, 1), (4, 12)),
              (2, 8192, 4096): ((0, 0), (0, 1), (16, 2), (16, 5), (8, 6)),
              (1, 16384, 4096): ((0, 0), (0, 1), (33, 2), (33, 4), (16, 4)),
              (1, 65536, 4096): ((0, 0), (0, 1), (33, 4), (16, 4), (8, 12))}


def _args(b: int, L: int, D: int):
    inp = make_inputs(torch.Generator(device="cuda").manual_seed(new_seed()), b=b, L=L, D=D, N=16)
    return [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]


def rows_for(b: int, L: int, D: int) -> list[list]:
    args = _args(b, L, D)
    base = default_config(16, torch.bfloat16)
    y0, _, hsave = scan_fwd(*args, None, True, True, base)
    rows = []
    for ns in FWD_SEGS[(b, L, D)]:
        cfg = dataclasses.replace(base, n_segs=ns)
        err = rel_err(scan_fwd(*args, None, True, False, cfg)[0].float(), y0.float())
        t = [ms(lambda cfg=cfg, save=save: scan_fwd(*args, None, True, save, cfg)) for save in (False, True)]
        rows.append([f"B={b} L={L} D={D}", f"forward, {ns or 'default'} segments", f"{t[0]:.3f} / {t[1]:.3f}",
                     f"{err:.1e}"])  # fmt: skip
        print(rows[-1], flush=True)
    dy = torch.randn_like(args[0])
    grads0 = scan_bwd(dy, None, *args, hsave, True, base)
    for ns, k in BWD_SPLITS[(b, L, D)]:
        cfg = dataclasses.replace(base, bwd_n_segs=ns, bwd_local_split=k)
        grads = scan_bwd(dy, None, *args, hsave, True, cfg)
        err = max(rel_err(a, b) for a, b in zip(grads, grads0) if b.numel() and bool(b.any()))
        rows.append([f"B={b} L={L} D={D}", f"backward, {ns or 'default'} segments, local pass in {k or 'default'} pieces",
                     f"{ms(lambda cfg=cfg: scan_bwd(dy, None, *args, hsave, True, cfg)):.3f}", f"{err:.1e}"])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    rows = [r for shape in SHAPES for r in rows_for(*shape)]
    print(markdown_table(["shape", "launcher, config", "ms (forward: without / saving checkpoints)",
                          "rel. diff to the default's output"], rows))  # fmt: skip
