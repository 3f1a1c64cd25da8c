"""The scan, SSD and conv1d Triton kernels compile for the H200 (sm_90), and the SSD plans of other GPUs
for theirs (sm_89, sm_75, sm_100) within their shared memory, without a GPU; the decode-step, GEMV and norm kernels
compile for sm_90 and sm_80 through the JIT's own path (``benchmarks/triton_versions.py``, which also runs
every kernel across Triton versions).

The interpreter tests run the kernels as Python, so they cannot see what only Triton's compiler
rejects (a helper returning a tuple that holds None compiled nowhere, for example, yet ran in the
interpreter). Here ``benchmarks/scan_codegen.py``, ``ssd_codegen.py`` and ``conv_codegen.py`` compile
every launch of a forward and a backward, exactly as the launchers would make them, with Triton's own
ptxas, in a process without ``TRITON_INTERPRET``: the scan's default configs, SSD plans that
between them take each kernel's branches (whole tiles or masked ones, chunk-parallel or walking
backward, dy·Y_off from the dC product or its own, 16-bit or fp32 products, the fp32 head loop), and
the conv1d kernels at one, two and four channels per thread (bf16 at the Mamba-2 layer's shape, fp32
with masked channel blocks).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ptxas() -> str:
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.origin:
        return ""
    return os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "ptxas")


def _skip_reason() -> str:
    """Why the offline compiles cannot run here ("" when they can)."""
    if not os.path.exists(_ptxas()):
        return "needs Triton with its CUDA backend (ptxas)"
    import triton
    from triton.compiler import ASTSource

    if "constexprs" not in inspect.signature(ASTSource).parameters:  # (Triton 3.0-3.2: constants=)
        return (f"scan_codegen.py builds kernels with ASTSource(constexprs=...), which Triton "
                f"{triton.__version__} lacks")
    return ""


pytestmark = pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "runs")

WALKS = ("_ssd_segment_sums_kernel", "_ssd_states_kernel", "_ssd_scan_fwd_kernel")  # (every plan below: segments)
SSD_PLANS = {  # ssd_codegen.py arguments -> the kernels that must have compiled, besides WALKS
    "bf16 whole tiles": (["--q", "32", "--shape", "2", "1024", "4", "64"], ("_ssd_dstates_kernel", "_ssd_bwd_kernel")),
    "bf16 walking backward, own dy·Y_off, masked": (  # (the fused backward carries the gradient: no dstates walk)
        ["--q", "64", "--shape", "2", "1000", "8", "64", "--plan", "bwd_span=0", "y_off_from_dc=False"],
        ("_ssd_bwd_kernel",),
    ),
    "fp32 head loop": (["--q", "64", "--dtype", "float32", "--shape", "2", "1000", "4", "64"],
                       ("_ssd_dstates_kernel", "_ssd_bwd_heads_kernel")),
}


def _compile(script: str, args: list, tmp_path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, f"{script} {' '.join(args)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout


@pytest.mark.parametrize("name", list(SSD_PLANS))
def test_ssd_kernels_compile(name, tmp_path):
    args, kernels = SSD_PLANS[name]
    out = _compile("ssd_codegen.py", args, tmp_path)
    for kernel in WALKS + kernels:
        assert kernel in out, f"{name}: {kernel} was not compiled"
    # (each compiled kernel reports its registers; the segment sums compile twice, forward and backward)
    assert out.count("registers ") >= len(WALKS + kernels) + 1


def test_scan_kernels_compile(tmp_path):
    out = _compile("scan_codegen.py", [], tmp_path)
    for config in ("forward, full pass", "forward, local pass", "two lanes per channel saving bf16 checkpoints every 4",
                   "two lanes per channel saving fp32 checkpoints every 8", "reduce-scatter sums, bf16 checkpoints",
                   "reduce-scatter sums, fp32 checkpoints", "backward's last launch"):  # fmt: skip
        assert f"{config}" in out and "registers" in out, f"the scan's {config} was not compiled"


@pytest.mark.parametrize("args", [["--lanes", "1", "2", "4"],
                                  ["--lanes", "2", "--dtype", "float32", "--shape", "100", "200", "300"]])
def test_conv_kernels_compile(args, tmp_path):
    out = _compile("conv_codegen.py", args, tmp_path)
    for lanes in args[1:args.index("--dtype") if "--dtype" in args else None]:
        for kernel in ("conv1d_fwd_kernel", "conv1d_bwd_kernel"):
            assert f"[lanes={lanes}] {kernel}" in out, f"conv1d {kernel} at {lanes} channels per thread: not compiled"


def test_ssd_kernels_fit_shared_memory(tmp_path):
    """On a GPU of 99 KiB per program (sm_89: RTX 4090, L40), the SSD plans for state size 256, which the
    H200's tuning would overflow, compile to kernels within that limit and within the plan's own estimate
    (``benchmarks/ssd_shared_memory.py``: the plan as that GPU would make it, every launch compiled)."""
    out = _compile("ssd_shared_memory.py", ["--gpus", "rtx4090", "--shapes", "64,256", "--dtypes", "bfloat16",
                                            "float32"], tmp_path)  # fmt: skip
    assert "every kernel fits, within its estimate" in out
    assert out.count("fits   estimate") >= 8  # (each plan's kernels: forward scan, walks, backward)


def test_ssd_kernels_fit_a_t4(tmp_path):
    """On a T4 (sm_75, 64 KiB per program), where Triton multiplies tiles on the FMA units from whole staged
    operands, the plans for Mamba-2's state size 128 (16-bit and fp32) compile within the limit and within
    the plan's estimate."""
    out = _compile("ssd_shared_memory.py", ["--gpus", "t4", "--shapes", "64,128", "--dtypes", "float16",
                                            "float32"], tmp_path)  # fmt: skip
    assert "every kernel fits, within its estimate" in out
    assert out.count("fits   estimate") >= 8


def test_ssd_kernels_fit_a_b200(tmp_path):
    """On a B200 (sm_100, 227 KiB per program), whose tcgen05 products stage more than Hopper's wgmma, the
    16-bit plans for Mamba-2's state sizes compile within the plan's estimate (Blackwell's own factors)."""
    out = _compile("ssd_shared_memory.py", ["--gpus", "b200", "--shapes", "64,128", "32,64", "--dtypes", "bfloat16"],
                   tmp_path)  # fmt: skip
    assert "every kernel fits, within its estimate" in out
    assert out.count("fits   estimate") >= 8


def test_decode_and_norm_kernels_compile(tmp_path):
    """The kernels of the decode step (conv1d update, scan and SSD steps, GEMV) and the norms compile for sm_90
    (with programmatic dependent launch where this Triton has it) and sm_80 (without), as the launchers make
    them on a GPU."""
    out = _compile("triton_versions.py", ["--only", "norm", "decode", "--arch", "90", "80"], tmp_path)
    assert "FAIL" not in out, out[-3000:]
    ok = [line.split() for line in out.splitlines() if line.startswith("  ok   sm_")]
    for kernel in ("conv1d_step_kernel", "scan_step_kernel", "ssd_step_kernel", "gemv_kernel",
                   "gated_rms_norm_fwd_kernel", "gated_rms_norm_bwd_kernel", "add_rms_norm_kernel"):
        for arch in ("sm_90", "sm_80"):
            assert any(w[1] == arch and kernel in w for w in ok), f"{kernel} was not compiled for {arch}"
