"""GPU: the SSD Triton kernels at chosen tile plans, each case in a process of its own.

    python3 benchmarks/gpu_ssd_tiles.py [--sanitize] [--only NAME ...] [--jobs 4] [--out DIR]

A CUDA fault (illegal memory access) leaves the process that hit it unusable, so every case
runs in a child process (four at a time by default); the parent collects one line of JSON per
case. A case runs the triton backend forward and backward (output, final state, every
gradient) on fresh inputs at B=2, L=300, H=4, G=1 (all optional inputs) and compares each
with the float64 loop against the per-dtype tolerance of ``tests/numerics.py``. Plans are
the default ones, or a default with fields replaced (``Plan.block_p``: the P tile of the
forward and state kernels, ``Plan.block_p_bwd``: the fused backward's), or without the
launchers' chunk cap for narrow 16-bit P tiles. Where the forward's P tile is below 64, the
forward is also compared with the same plan at a tile of 64 (segment states, y, final
state), to show which kernel departs. ``--sanitize`` runs the children under
``compute-sanitizer --tool memcheck``. Writes ``gpu_ssd_tiles.md`` / ``.json`` under ``--out``.

Found with it (H200, Triton 3.6): 16-bit inputs, P tiles below 64 at chunks of 64 or 128
give a wrong final state (y right) or an illegal memory access; compute-sanitizer finds no
bad address in the wrong-value case. Hence ``triton_launch.NARROW_TILE_CHUNK``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# name: (dtype, chunk, P, N, plan fields replaced). "forced" and "uncapped" cases run their chunk as
# asked (by default 16-bit runs chunks of 32 on the GPU); "uncapped" also lifts the cap of the chunk at
# 32 for 16-bit P tiles below 64 (``triton_launch.NARROW_TILE_CHUNK``), i.e. the plans before it.
# Those are diagnostics of the Triton fault the cap avoids. "default": what users get.
UNCAPPED = {"uncapped": True}
CASES = {
    "forced fwd P tile 32 at Q=64, P=64 bf16": ("bfloat16", 64, 64, 128, {"block_p": 32}),
    "forced fwd P tile 32 at Q=128, P=64 bf16": ("bfloat16", 128, 64, 128, {"block_p": 32}),
    "forced fwd P tile 32 at Q=32, P=64 bf16": ("bfloat16", 32, 64, 128, {"block_p": 32}),
    "forced bwd P tile 32 at Q=64, P=64 bf16": ("bfloat16", 64, 64, 128, {"block_p_bwd": 32}),
    "uncapped Q=64, P=32 bf16": ("bfloat16", 64, 32, 128, UNCAPPED),
    "uncapped Q=64, P=32 bf16, fwd 8 warps": ("bfloat16", 64, 32, 128, {**UNCAPPED, "fwd_warps": 8}),
    "uncapped Q=64, P=32 bf16, fwd P tile 64": ("bfloat16", 64, 32, 128, {**UNCAPPED, "block_p": 64}),
    "uncapped Q=64, P=64, N=256 bf16": ("bfloat16", 64, 64, 256, UNCAPPED),
    "uncapped Q=128, P=16 fp16": ("float16", 128, 16, 128, UNCAPPED),
    "uncapped Q=128, P=16 fp16, P tiles 64": ("float16", 128, 16, 128, {**UNCAPPED, "block_p": 64, "block_p_bwd": 64}),
    "default Q=64, P=32 bf16": ("bfloat16", 64, 32, 128, {}),
    "default Q=64, P=32, N=64 bf16": ("bfloat16", 64, 32, 64, {}),
    "default Q=64, P=64, N=256 bf16": ("bfloat16", 64, 64, 256, {}),
    "default Q=128, P=16 fp16": ("float16", 128, 16, 128, {}),
    "default Q=64, P=16 bf16": ("bfloat16", 64, 16, 128, {}),
    "default Q=64, P=32 fp32": ("float32", 64, 32, 128, {}),
    "default Q=64, P=64 bf16": ("bfloat16", 64, 64, 128, {}),
}
HEAD = ["case", "plan", "result", "largest rel err / tol", "detail"]


def run_case(name: str) -> dict:
    """One case in this process: the plan used, pass/fail, the worst error over tolerance."""
    from gpu_ssd_checks import compare, make_inputs, new_seed, with_grads

    from _gpu_bench import ssd_chunks_as_asked

    from ssmkit.ops.ssd import ssd, ssd_reference
    from ssmkit.ops.ssd import triton as ssd_triton_mod

    dtype_name, Q, P, N, fields = CASES[name]
    fields = dict(fields)
    uncapped = fields.pop("uncapped", False)
    if not name.startswith("default"):  # the chunk as asked (16-bit runs 32 on the GPU by default)
        ssd_chunks_as_asked(narrow_too=uncapped).__enter__()  # (for the rest of this child process)
    dtype = getattr(torch, dtype_name)
    default = ssd_triton_mod.make_plan
    used = []

    def make_plan(*a, **k):
        plan = dataclasses.replace(default(*a, **k), **fields)
        used.append(plan)
        return plan

    ssd_triton_mod.make_plan = make_plan
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    L, H = 300, 4
    inp = make_inputs(g, 2, L, H, P, N, 1, dtype, "HP")
    wy = torch.randn(2, L, H, P, generator=g, dtype=torch.float64).cuda()
    ws = torch.randn(2, H, P, N, generator=g, dtype=torch.float64).cuda()
    got = with_grads(ssd, inp, wy, ws, dt_softplus=True, chunk_size=Q, backend="triton")
    torch.cuda.synchronize()
    ref = with_grads(ssd_reference, {k: v.double() for k, v in inp.items()}, wy, ws, dt_softplus=True)
    rows = compare(name, dtype, got, ref)
    fwd = _forward_against_tile_64(inp, used[-1])
    worst = max(rows, key=lambda r: float(r[2]) / float(r[3]))
    plan = used[-1]
    return dict(
        case=name, seed=seed, ok=all(r[4] for r in rows), worst=f"{worst[1]} {worst[2]} / {worst[3]}",
        failed=", ".join(f"{r[1]} {r[2]}" for r in rows if not r[4]), fwd=fwd,
        plan=f"Q={plan.Q} block_p={plan.block_p} block_p_bwd={plan.block_p_bwd} block_n={plan.block_n} "
             f"warps={plan.fwd_warps}/{plan.bwd_warps}",
    )  # fmt: skip


def _forward_against_tile_64(inp: dict, plan) -> str:
    """Where a forward with a P tile below 64 departs from the same forward with a tile of 64:
    the states entering the segments (states and passing kernels), y and the final state (scan)."""
    from ssmkit.ops.ssd.triton_launch import ssd_fwd

    if plan.block_p >= 64:
        return ""
    args = [inp[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")]
    a = ssd_fwd(*args, None, 2, plan, True, False)
    b = ssd_fwd(*args, None, 2, dataclasses.replace(plan, block_p=64), True, False)
    def diff(u, v):  # relative, or absolute where v is zero (the first segment's entering state)
        u, v = u.double(), v.double()
        return f"{((u - v).norm() / (v.norm() if v.norm() > 0 else 1)).item():.1e}"

    return f"fwd against P tile 64: seg_in {diff(a[2], b[2])}, y {diff(a[0], b[0])}, final {diff(a[1], b[1])}"


def _child(name: str, sanitize: bool) -> tuple[list, str]:
    """Run one case in a child process: its table row and the child's output."""
    cmd = [sys.executable, __file__, "--case", name]
    if sanitize:
        tool = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
        cmd = [tool, "--tool", "memcheck", "--print-limit", "5", *cmd]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        out = done.stdout + done.stderr
        line = next((s for s in reversed(done.stdout.splitlines()) if s.startswith("{")), None)
    except subprocess.TimeoutExpired as e:
        out, line = f"timed out after {e.timeout} s", None
    found = re.search(r"ERROR SUMMARY: (\d+) error", out)
    checked = f"compute-sanitizer: {found.group(1)} errors" if found else ""
    if line:
        r = json.loads(line)
        notes = (f"seed {r['seed']}", r["failed"] and f"failed: {r['failed']}", r["fwd"], checked)
        return [name, r["plan"], "pass" if r["ok"] else "FAIL", r["worst"], "; ".join(n for n in notes if n)], out
    tail = [s for s in out.splitlines() if s.strip()][-12:]  # the child died: keep the lines that say where
    return [name, "", "FAULT", "", " / ".join(tail)[-600:]], out


def run(out_dir: str, only: list[str], sanitize: bool, jobs: int) -> str:
    from concurrent.futures import ThreadPoolExecutor

    from _gpu_bench import table_report

    names = [n for n in CASES if not only or any(k in n for k in only)]
    rows, results = [], []
    with ThreadPoolExecutor(max(1, jobs)) as pool:  # children compile on the CPU side by side
        for row, out in pool.map(lambda n: _child(n, sanitize), names):
            rows.append(row)
            results.append(dict(zip(HEAD, row), output=out[-4000:]))
            print(row, flush=True)
    title = "SSD tile plans" + (", under compute-sanitizer," if sanitize else "")
    return table_report(out_dir, "gpu_ssd_tiles", title, HEAD, rows, {"rows": results})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", help=argparse.SUPPRESS)  # (the child's entry point)
    ap.add_argument("--only", nargs="*", default=[], help="run the cases whose names contain one of these")
    ap.add_argument("--sanitize", action="store_true", help="run each case under compute-sanitizer memcheck")
    ap.add_argument("--jobs", type=int, default=4, help="cases run side by side (default 4)")
    ap.add_argument("--out", default=os.environ.get("OUT", "results"), help="folder for the report")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)), flush=True)
    else:
        print(run(args.out, args.only, args.sanitize, args.jobs))
