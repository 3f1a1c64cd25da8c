"""Compile the selective scan Triton kernels for sm_90 without a GPU and count instructions.

Uses the ``ptxas`` / ``nvdisasm`` shipped in Triton's wheel. Integer arguments and
pointers get the divisibility-by-16 hints the JIT infers on the GPU for the usual
shapes (which is what changed the layouts on the device once: see
docs/kernels_gpu_notes_scan.md). Per kernel: registers, spills, and per loop of
the SASS the instructions by kind; the forward's main loop should show no SHFL
and no local memory (LDL/STL).

    python benchmarks/scan_codegen.py            # forward (full and local pass), backward (main kernel, last launch)
    python benchmarks/scan_codegen.py --scoreboards   # also: main loops' waits on global loads
    PYTHONPATH=<other triton> python benchmarks/scan_codegen.py   # another Triton version
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile

import sass_scoreboards
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ssmkit.ops.scan.triton_bwd import selective_scan_bwd_kernel  # noqa: E402
from ssmkit.ops.scan.triton_bwd_sums import selective_scan_bwd_sums_kernel  # noqa: E402
from ssmkit.ops.scan.triton_fwd import selective_scan_fwd_kernel  # noqa: E402
from ssmkit.ops.scan.triton_launch import SUMS_BLOCK, SUMS_BLOCK_R  # noqa: E402

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
BF16 = {"u_ptr", "dl_ptr", "z_ptr", "B_ptr", "C_ptr", "y_ptr", "dy_ptr", "du_ptr", "ddl_ptr", "dz_ptr"}
KINDS = ("MUFU", "SHFL", "LDS", "STS", "BAR", "LDG", "STG", "RED", "FFMA", "FMUL", "FADD", "LDL", "STL")
COMMON = dict(N=16, NP=16, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, GROUP_UNIFORM=True, FAST_MATH=True,
              FMA_EXP=0, VEC_SAVE=True)


def compile_sm90(kernel, constexprs: dict, num_warps: int = 1, bf16: frozenset = frozenset()):
    """(cubin bytes, SASS text) of ``kernel`` for sm_90, with the JIT's divisibility hints (pointers named in
    ``BF16`` or ``bf16`` to bfloat16, the others to float32)."""
    sig, attrs = {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        else:
            sig[p.name] = ("*bf16" if p.name in BF16 | bf16 else "*fp32") if p.name.endswith("_ptr") else "i32"
            if p.name != "ONE":  # ONE = 1 is passed unspecialized on purpose
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": 1, "enable_fp_fusion": True}
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(c.asm["cubin"])
    res = subprocess.run([f"{BIN}/cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
    sass = subprocess.run([f"{BIN}/nvdisasm", "-c", f.name], capture_output=True, text=True).stdout
    compile_sm90.scoreboards = sass_scoreboards.decode(f.name, BIN)  # of the latest compile
    os.unlink(f.name)
    return res, sass


def largest_loop(sass: str) -> tuple[int, int]:
    """(first, last) instruction addresses of the largest backward-branch loop."""
    lines = sass.splitlines()
    addr = lambda l: int(re.match(r"\s*/\*([0-9a-f]+)\*/", l).group(1), 16)  # noqa: E731
    labels, best = {}, (0, -1)
    for i, l in enumerate(lines):
        if m := re.match(r"^\.(L_x_\d+):", l.strip()):
            nxt = next((x for x in lines[i + 1 :] if re.match(r"\s*/\*[0-9a-f]+\*/", x)), None)
            if nxt is not None:
                labels[m.group(1)] = addr(nxt)
        elif (m := re.search(r"BRA `\(\.(L_x_\d+)\)", l)) and m.group(1) in labels:
            if addr(l) - labels[m.group(1)] > best[1] - best[0]:
                best = (labels[m.group(1)], addr(l))
    return best


def loops(sass: str) -> list[tuple[int, collections.Counter]]:
    """(size, instruction counts) of every backward-branch loop body in the SASS."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, l in enumerate(lines) if (m := re.match(r"^\.(L_x_\d+):", l.strip()))}
    out = []
    for i, l in enumerate(lines):
        m = re.search(r"BRA `\(\.(L_x_\d+)\)", l)
        if m and labels.get(m.group(1), i) < i:
            ops = collections.Counter(
                mm.group(2) for line in lines[labels[m.group(1)] : i + 1]
                if (mm := re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)", line))
            )  # fmt: skip
            out.append((sum(ops.values()), ops))
    return out


def report(name: str, kernel, constexprs: dict, elements_per_iteration: int, scoreboards: bool = False,
           num_warps: int = 1, bf16: frozenset = frozenset()) -> None:  # fmt: skip
    res, sass = compile_sm90(kernel, constexprs, num_warps, bf16)
    regs = re.search(r"REG:(\d+)", res)
    stack = re.search(r"STACK:(\d+)", res)
    print(f"{name}: registers {regs and regs.group(1)}, stack {stack and stack.group(1)} bytes")
    for size, ops in loops(sass):
        if size > 50:
            mix = " ".join(f"{k}={ops.get(k, 0)}" for k in KINDS)
            print(f"  loop of {size} instructions ({size / elements_per_iteration:.1f} per element): {mix}")
    if scoreboards:
        rows = compile_sm90.scoreboards
        lo, hi = largest_loop(sass)
        idx = [i for i, r in enumerate(rows) if lo <= r[0] <= hi]
        print("  largest loop, waits on global loads:\n" + sass_scoreboards.report(rows, idx[0], idx[-1]))


def main() -> None:
    sb = "--scoreboards" in sys.argv
    print(f"triton {triton.__version__}")
    fwd = dict(COMMON, BLOCK_D=32, T=4, SAVE_K=2, SAVE_SUB=1, HAS_H0=True, DT_AHEAD=True, LANES=1, SHARE_TD=False)
    for k in (0, 8):
        report(f"forward, full pass, fma_exp={k}", selective_scan_fwd_kernel,
               dict(fwd, SAVE_STATES=False, LOCAL=False, FMA_EXP=k), 64, sb)  # fmt: skip
    report("forward, full pass saving checkpoints", selective_scan_fwd_kernel, dict(fwd, SAVE_STATES=True, LOCAL=False), 64)
    report("forward, local pass", selective_scan_fwd_kernel, dict(fwd, SAVE_STATES=False, LOCAL=True), 64)
    # forward_config's pick where batch x channels fill the GPU: 16 channels x 2 lanes per warp, chunks of 8,
    # each lane 8 states (per chunk and lane: 64 elements); bf16 inputs save bf16 checkpoints every 4 steps (two
    # per chunk), float32 ones float32 checkpoints every 8. The bf16 defaults compile as at the benchmark shape,
    # with whole tiles (``WHOLE``); the float32 ones with the element masks
    two = dict(fwd, BLOCK_D=32, T=8, SAVE_K=1, DT_AHEAD=False, LANES=2, SHARE_TD=True, LOCAL=False)
    report("forward, two lanes per channel", selective_scan_fwd_kernel, dict(two, SAVE_STATES=False), 64, num_warps=2)
    report("forward, two lanes per channel saving bf16 checkpoints every 4 steps, whole tiles",
           selective_scan_fwd_kernel, dict(two, SAVE_STATES=True, SAVE_SUB=2, WHOLE=True), 64, num_warps=2,
           bf16=frozenset({"hsave_ptr"}))  # fmt: skip
    report("forward, two lanes per channel saving fp32 checkpoints every 8 steps", selective_scan_fwd_kernel,
           dict(two, SAVE_STATES=True), 64, num_warps=2)  # fmt: skip
    bwd = dict(COMMON, BLOCK_D=32, T=2, K=2, HAS_DHLAST=True, DOT_REDUCE=False)
    half = frozenset({"hsave_ptr"})
    report("backward, butterfly sums (chunk loop: per 32 elements)", selective_scan_bwd_kernel,
           dict(bwd, SCATTER=False), 32, bf16=half)  # fmt: skip
    report("backward, reduce-scatter sums, bf16 checkpoints every 4 steps, whole tiles (chunk loop: per 32 "
           "elements)", selective_scan_bwd_kernel, dict(bwd, SCATTER=True, WHOLE=True), 32, sb, bf16=half)  # fmt: skip
    report("backward, reduce-scatter sums, fp32 checkpoints every 8 steps (chunk loop: per 32 elements)",
           selective_scan_bwd_kernel, dict(bwd, SCATTER=True, K=4), 32)  # fmt: skip
    report("backward's last launch (dB, dC casts; dA, dD, Δ bias sums)", selective_scan_bwd_sums_kernel,
           dict(HAS_D=True, HAS_BIAS=True, BLOCK=SUMS_BLOCK, BLOCK_R=SUMS_BLOCK_R), SUMS_BLOCK_R, num_warps=4,
           bf16=frozenset({"dB_ptr", "dC_ptr"}))  # fmt: skip


if __name__ == "__main__":
    main()
