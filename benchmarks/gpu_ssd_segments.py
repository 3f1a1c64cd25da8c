"""GPU: SSD forward and forward+backward against the number of segments per batch row.

    MAMBA_SRC=/path/to/mamba_ssm-2.3.2.post1 python3 benchmarks/gpu_ssd_segments.py [--out DIR]

A segment is a run of chunks that one program walks with the state in registers; the
forward and the backward's state passes get one program per (row, head, P block, segment).
The default plan (``triton_launch.make_plan``) takes enough segments for about four programs
per SM. This times the op end to end (custom op, autograd) at B=8, L=4096, H=32, P=64, N=128,
G=1, bf16 (D, dt_bias, softplus) for chunks 32 and 64 and 1 to 6 segments per row, with
mamba_ssm's ``mamba_chunk_scan_combined`` at chunks 64 and 256 in the same process when
``MAMBA_SRC`` names its unpacked source; then the Mamba-2 layer (d_model 2048) at 16K and 64K
tokens with the default plan aiming at 4, 2 or 1 programs per SM
(``triton_launch.SEG_PROGRAMS_PER_SM``). Every chunk runs as asked (``ssd_chunks_as_asked``).
Writes ``gpu_ssd_segments.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _gpu_bench import from_mamba_source, fwd_and_fwdbwd, plan_constants, ssd_chunks_as_asked, table_report  # noqa: E402
from gpu_ssd import ssd_inputs  # noqa: E402

from ssmkit.layers import Mamba2  # noqa: E402
from ssmkit.ops.ssd.triton import ssd_triton  # noqa: E402
from ssmkit.ops.ssd.triton_launch import make_plan  # noqa: E402

SEGMENTS = (1, 2, 3, 4, 6)
PER_SM = (4, 2, 1)  # values of triton_launch.SEG_PROGRAMS_PER_SM for the layer's rows


def layer_rows() -> list[list]:
    """The Mamba-2 layer (d_model 2048, N=128, head dim 64: 64 heads) forward / forward+backward at
    16K and 64K tokens (one sequence), chunks 32 and 64, for each default-plan target of programs per SM."""
    rows = []
    for length in (16384, 65536):
        x = torch.randn(1, length, 2048, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for q in (32, 64):
            torch.manual_seed(0)
            m = Mamba2(2048, d_state=128, headdim=64, chunk_size=q).to(device="cuda", dtype=torch.bfloat16)
            for per_sm in PER_SM:
                with plan_constants(SEG_PROGRAMS_PER_SM=per_sm):
                    like = torch.empty(1, 1, 1, 1, device="cuda", dtype=torch.bfloat16).expand(1, length, 64, 64)
                    segs = make_plan(like, 128, q, None).n_segs  # (what the layer's SSD call plans)
                    t_f, t_fb = fwd_and_fwdbwd(lambda x: m(x)[0], {"x": x})
                rows.append([f"Mamba-2 layer L={length} chunk={q}, {per_sm} programs/SM ({segs} segments)",
                             f"{t_f:.3f}", f"{t_fb:.3f}"])  # fmt: skip
                print(rows[-1], flush=True)
    return rows


def run(out_dir: str) -> str:
    with ssd_chunks_as_asked():  # chunk 64 rows run chunks of 64 (by default 16-bit runs 32 on the GPU)
        return _run(out_dir)


def _run(out_dir: str) -> str:
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
    rows += layer_rows()
    head = ["B=8 L=4096 H=32 P=64 N=128 bf16 (op); the Mamba-2 layer", "fwd ms", "fwd+bwd ms"]
    return table_report(out_dir, "gpu_ssd_segments", "SSD against segments per row", head, rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results"), help="folder for the report")
    print(run(ap.parse_args().out))
