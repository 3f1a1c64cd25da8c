"""GPU: the selective scan forward with each channel's states spread over two lanes, against the default.

With one lane per channel (N = 16 states in a thread's registers) batch x channels give about one warp
per scheduler at B=8 D=2048, so the forward cuts the sequence into segments, and their local pass walks
part of it twice (a second exponential per element there). Two lanes per channel (8 states each,
``ScanKernelConfig.lanes = 2``) double the warps without that pass; ``share_td`` also divides the
per-(t, d) work (softplus of Δ, the z gate, D, y's stores) between the two lanes, half the steps each.

    python3 benchmarks/gpu_scan_lanes.py [--dtype float32]

Prints a table: ms of the forward launcher (bf16 unless ``--dtype``, N=16, z, D, delta bias, softplus)
without and with checkpoints, per config and shape; each output and checkpoint checked against the
default config's.
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

from ssmkit.ops.scan.triton_launch import default_config, scan_fwd  # noqa: E402

# (B, L, D): the kernel benchmark's shape, then the Mamba layer's of gpu_layers.py
SHAPES = ((8, 4096, 2048), (4, 4096, 4096), (16, 2048, 1536), (2, 8192, 4096))
# changes to the default config, each a row (two lanes per channel, sharing the per-(t, d) work, unless noted)
_TWO = dict(lanes=2, share_td=True)
CONFIGS = (
    {},
    dict(_TWO, block_d=32, num_warps=2),
    dict(_TWO, block_d=32, num_warps=2, chunk=8),  # forward_config's tiles where batch x channels fill the GPU
    dict(_TWO, block_d=32, num_warps=2, chunk=8, maxnreg=168),
    dict(_TWO, block_d=32, num_warps=2, chunk=8, maxnreg=184),  # forward_config's cap in one wave, saving
    dict(_TWO, block_d=32, num_warps=2, chunk=8, maxnreg=204),  # the same without checkpoints
    dict(_TWO, block_d=32, num_warps=2, chunk=8, maxnreg=128),
    dict(_TWO, block_d=16, num_warps=1, chunk=8, maxnreg=168),
    dict(_TWO, block_d=32, num_warps=2, chunk=8, fma_exp=1, save_fma_exp=1),
    dict(_TWO, block_d=32, num_warps=2, chunk=8, fma_exp=2, save_fma_exp=2),
    dict(_TWO, block_d=16, num_warps=1, chunk=8),
    dict(_TWO, block_d=16, num_warps=1, chunk=8, fma_exp=1, save_fma_exp=1),
    dict(_TWO, block_d=64, num_warps=4, chunk=8, n_segs=1),
    dict(lanes=2, block_d=32, num_warps=2, chunk=8),  # the per-(t, d) work not shared
)


def _name(changes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "default (one lane per channel)"


def rows_for(b: int, L: int, D: int, dtype: torch.dtype = torch.bfloat16) -> list[list]:
    inp = make_inputs(torch.Generator(device="cuda").manual_seed(new_seed()), b=b, L=L, D=D, N=16, dtype=dtype)
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    base = default_config(16, dtype)
    y0, _, s0 = scan_fwd(*args, None, True, True, base)
    rows = []
    for changes in CONFIGS:
        cfg, name = dataclasses.replace(base, **changes), _name(changes)
        y, _, s = scan_fwd(*args, None, True, True, cfg)
        err = max(rel_err(y.float(), y0.float()), rel_err(s, s0))
        t = [ms(lambda cfg=cfg, save=save: scan_fwd(*args, None, True, save, cfg)) for save in (False, True)]
        rows.append([f"B={b} L={L} D={D} {str(dtype)[6:]}", name, f"{t[0]:.3f} / {t[1]:.3f}", f"{err:.1e}"])
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    dt = getattr(torch, sys.argv[sys.argv.index("--dtype") + 1]) if "--dtype" in sys.argv else torch.bfloat16
    rows = [r for shape in SHAPES for r in rows_for(*shape, dt)]
    print(markdown_table(["shape", "config", "forward ms (without / saving checkpoints)",
                          "rel. diff to the default's output and checkpoints"], rows))  # fmt: skip
