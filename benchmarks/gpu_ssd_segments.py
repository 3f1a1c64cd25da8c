"""GPU: SSD forward and forward+backward against the number of segments per batch row.

    MAMBA_SRC=/path/to/mamba_ssm-2.3.2.post1 python3 benchmarks/gpu_ssd_segments.py [--out DIR]

A segment is a run of chunks that one program walks with the state in registers; the
forward and the backward's state passes get one program per (row, head, P block, segment).
The default plan (``triton_launch.make_plan``) takes enough segments for about four programs
per SM. This times the op end to end (custom op, autograd) at B=8, L=4096, H=32, P=64, N=128,
G=1, bf16 (D, dt_bias, softplus) for chunks 32 and 64 and 1 to 6 segments per row, with
mamba_ssm's ``mamba_chunk_scan_combined`` at chunks 64 and 256 in the same process when
``MAMBA_SRC`` names its unpacked source. Writes ``gpu_ssd_segments.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _gpu_bench import from_mamba_source, fwd_and_fwdbwd  # noqa: E402
from _timing import markdown_table, save_report  # noqa: E402
from gpu_ssd import ssd_inputs  # noqa: E402

from ssmkit.ops.ssd.triton import ssd_triton  # noqa: E402
from ssmkit.ops.ssd.triton_launch import make_plan  # noqa: E402

SEGMENTS = (1, 2, 3, 4, 6)


def run(out_dir: str) -> str:
    inp = ssd_inputs(8, 4096)
    rows = []
    for Q in (32, 64):
        default = make_plan(inp["x"], 128, Q, None)
        for n in SEGMENTS:
            seg = triton.cdiv(default.n_chunks, n)
            f = lambda Q=Q, seg=seg, **k: ssd_triton(**k, dt_softplus=True, chunk_size=Q, seg_chunks=seg)[0]  # noqa: E731
            t_f, t_fb = fwd_and_fwdbwd(f, inp)
            mark = " (default)" if seg == default.seg_chunks else ""
            rows.append([f"ssmkit Q={Q}, {n} segments of {seg} chunks{mark}", f"{t_f:.3f}", f"{t_fb:.3f}"])
            print(rows[-1], flush=True)
    mamba = from_mamba_source(os.environ.get("MAMBA_SRC"), "ops.triton.ssd_combined", "mamba_chunk_scan_combined")
    if mamba is not None:
        for Q in (64, 256):
            f = lambda Q=Q, **k: mamba(k["x"], k["dt"], k["A"], k["B"], k["C"], Q, D=k["D"], dt_bias=k["dt_bias"], dt_softplus=True)  # noqa: E731
            t_f, t_fb = fwd_and_fwdbwd(f, inp)
            rows.append([f"mamba_ssm Q={Q}", f"{t_f:.3f}", f"{t_fb:.3f}"])
            print(rows[-1], flush=True)
    head = ["B=8 L=4096 H=32 P=64 N=128 bf16", "fwd ms", "fwd+bwd ms"]
    text = f"## SSD against segments per row on {torch.cuda.get_device_name()} (torch {torch.__version__})\n\n"
    text += markdown_table(head, rows)
    save_report(out_dir, "gpu_ssd_segments", text, {"rows": rows})
    return text


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results"), help="folder for the report")
    print(run(ap.parse_args().out))
