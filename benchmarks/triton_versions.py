"""Compile every Triton kernel ssmkit launches, for sm_90 / sm_80 / sm_75, with one or several Triton versions;
no GPU needed.

ssmkit supports torch 2.4 and later, and each torch release pins its own Triton (2.4: 3.0, 2.5: 3.1, 2.6: 3.2,
2.7: 3.3, 2.8: 3.4, 2.9: 3.5, 2.10 / 2.11: 3.6, ...). The interpreter tests run the kernels as Python under
whichever Triton is installed, and the GPU runs use the GPU machine's; neither shows what another version's
compiler does with them. Here the launchers run on *meta* tensors as on a GPU (132 SMs; the GPU's fast math,
programmatic dependent launch where the Triton has it), every ``kernel[grid](...)`` is recorded instead of
launched, and each distinct launch is compiled through the JIT's own path for each target
(``_offline_compile.compile_launch``), in a child process of its own: a compiler that aborts (LLVM's
"UNREACHABLE") fails that launch, not the run.

    python benchmarks/triton_versions.py                              # the installed Triton, sm_90 sm_80 sm_75
    python benchmarks/triton_versions.py --arch 90 --only ssd scan    # some families, one target
    python benchmarks/triton_versions.py --tritons /tmp/t3.0.0 /tmp/t3.3.1 --out DIR
        # each folder holds an unpacked Triton wheel (``pip download triton==3.3.1 --no-deps``, then unzip), put
        # first on PYTHONPATH of a child run; prints a table of launches x versions (DIR: JSON and Markdown)

Launches (family: what is recorded): ssd (the forward and backward of four plans: the 16-bit walking plan at
Mamba-2's shape, a masked chunk-64 plan with the fused backward walking, the fp32 head loop, packed sequences),
scan (the forward with and without checkpoints, two lanes and one, and the backward), conv (forward and
backward at one, two and four channels per thread), norm (the gated RMSNorm's forward and backward, the fused
residual add + RMSNorm), decode (the conv1d update, the scan and SSD steps and the one-row GEMV).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from unittest import mock

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _offline_compile import compile_launch  # noqa: E402

from ssmkit.ops import _triton as tri  # noqa: E402

SM_COUNT = 132  # (the H200's: the launch rules see a GPU of this size)
FAMILIES = ("ssd", "scan", "conv", "norm", "decode")


def _gpu_keywords(fn, kw: dict) -> dict:
    """A recorded launch's keywords as on the GPU: fast math on (``_offline_compile.target_keywords`` sets PDL
    and the SSD's forms per target)."""
    names = {p.name for p in fn.params}
    return dict(kw, **{name: True for name in ("FAST_MATH", "FAST") if name in names})


def record(run) -> list:
    """(kernel, args, kwargs) of every Triton launch ``run()`` makes, none of them launched."""
    calls: list = []

    def fake_run(self, *args, grid, warmup, **kw):
        calls.append((self, args, _gpu_keywords(self, kw)))

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(triton.runtime.jit.JITFunction, "run", fake_run))
        for name, module in list(sys.modules.items()):
            if name.startswith("ssmkit.") and getattr(module, "sm_count", None) is tri.sm_count:
                stack.enter_context(mock.patch.object(module, "sm_count", lambda device: SM_COUNT))
        run()
    return calls


def _meta(*shape, dtype=torch.bfloat16) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def _function(op):
    """The Python function behind a ``torch.library.custom_op`` (called with meta tensors, the op itself would
    run its fake implementation)."""
    return getattr(op, "_init_fn", op)


def ssd_launches() -> list:
    from ssmkit.ops.ssd import triton_launch as launch

    out = []
    plans = {  # label -> (B, L, H, P, N, dtype, chunk, make_plan keywords, packed)
        "bf16, walking plan (Mamba-2's shape)": (8, 4096, 32, 64, 128, torch.bfloat16, 32, {}, False),
        "bf16, chunk 64, masked, walking backward": (2, 1000, 8, 64, 64, torch.bfloat16, 64,
                                                     {"bwd_span": 0, "y_off_from_dc": False}, False),
        "fp32, head loop": (2, 1000, 4, 64, 128, torch.float32, 64, {}, False),
        "fp16, packed sequences": (1, 2048, 8, 64, 128, torch.float16, 32, {}, True),
    }  # fmt: skip
    for label, (b, L, H, P, N, dtype, Q, kw, packed) in plans.items():
        x, dt = _meta(b, L, H, P, dtype=dtype), _meta(b, L, H, dtype=dtype)
        A, D, bias = _meta(H, dtype=torch.float32), _meta(H, dtype=torch.float32), _meta(H, dtype=torch.float32)
        B, C = _meta(b, L, 1, N, dtype=dtype), _meta(b, L, 1, N, dtype=dtype)
        n_seqs = 3 if packed else b
        table = _meta(64, 4, dtype=torch.int32) if packed else None
        init = _meta(n_seqs, H, P, N, dtype=torch.float32)
        with mock.patch.object(launch, "sm_count", lambda device: SM_COUNT):
            plan = launch.make_plan(x, N, Q, n_seqs if packed else None, **kw)
        fwd = []

        def run():
            fwd.append(launch.ssd_fwd(x, dt, A, B, C, D, None, bias, init, table, n_seqs, plan, True, False))
            y, final, seg_in, seg_decay, *_ = fwd[0]
            launch.ssd_bwd(torch.empty_like(y), torch.empty_like(final), x, dt, A, B, C, D, bias, init, table,
                           seg_in, seg_decay, n_seqs, plan, True)  # fmt: skip

        out += [(f"ssd {label}", *c) for c in record(run)]
    return out


def scan_launches() -> list:
    from ssmkit.ops.scan import triton_launch as launch

    out = []
    bf16, f32 = torch.bfloat16, torch.float32
    for label, (b, L, dim, N, dtype, cfg) in {
        "bf16 N=16, two lanes (the GPU's wide rows)": (8, 4096, 2048, 16, bf16, None),
        "bf16 N=16, one lane (default config)": (2, 4096, 512, 16, bf16, launch.default_config(16, bf16)),
        "fp32 N=64, grouped B/C": (2, 1000, 300, 64, f32, None),
    }.items():  # fmt: skip
        u, delta, z = (_meta(b, L, dim, dtype=dtype) for _ in range(3))
        A, D, bias = _meta(dim, N, dtype=f32), _meta(dim, dtype=f32), _meta(dim, dtype=f32)
        G = 2 if N == 64 else 1
        B, C = _meta(b, L, G, N, dtype=dtype), _meta(b, L, G, N, dtype=dtype)
        h0 = _meta(b, dim, N, dtype=torch.float32)

        def run():
            launch.scan_fwd(u, delta, A, B, C, D, z, bias, h0, True, False, cfg)
            y, last, saved = launch.scan_fwd(u, delta, A, B, C, D, z, bias, h0, True, True, cfg)
            launch.scan_bwd(torch.empty_like(y), torch.empty_like(last), u, delta, A, B, C, D, z, bias, saved, True)

        out += [(f"scan {label}", *c) for c in record(run)]
    return out


def conv_launches() -> list:
    from ssmkit.ops.conv import causal_conv1d_triton as conv

    out = []
    width, D, L = 8512, 4352, 4096
    for lanes in (1, 2, 4):
        x = _meta(1, L, width)[..., width - D - 64: width - 64]  # (a strided view of the layer's projection)
        w, bias, dy = _meta(D, 4), _meta(D), _meta(1, L, D)
        with mock.patch.object(conv, "FWD_LANE_CHANNELS", lanes), mock.patch.object(conv, "BWD_LANE_CHANNELS", lanes):
            out += [(f"conv bf16, {lanes} channels per thread", *c) for c in record(lambda: (
                conv.conv_fwd(x, w, bias, None, True), conv.conv_bwd(dy, x, w, bias, None, True)))]  # fmt: skip
    f32 = torch.float32
    x, w, s0 = _meta(2, 1000, 300, dtype=f32), _meta(300, 3, dtype=f32), _meta(2, 2, 300, dtype=f32)  # (K = 3)
    out += [("conv fp32, masked, initial state", *c) for c in record(lambda: (
        conv.conv_fwd(x, w, None, s0, False), conv.conv_bwd(torch.empty_like(x), x, w, None, s0, False)))]  # fmt: skip
    return out


def norm_launches() -> list:
    from ssmkit.ops.norm import add_rms_norm_triton as add_norm
    from ssmkit.ops.norm import gated_rms_norm_triton as gated

    out = []
    for group in (4096, 256):
        y, z, w = _meta(8192, 4096), _meta(8192, 4096), _meta(4096)
        for before in (False, True):
            def run():
                o, rstd = gated.norm_fwd(y, z, w, 1e-5, group, before)
                gated.norm_bwd(torch.empty_like(o), y, z, w, rstd, group, before)

            out += [(f"norm gated, group {group}, norm before gate {before}", *c) for c in record(run)]
    r = _meta(1, 2048)
    out += [("norm add + RMSNorm", *c) for c in record(lambda: (
        add_norm.add_rms_norm(r, r, _meta(2048), 1e-5, torch.bfloat16),
        add_norm.add_rms_norm(r, None, _meta(2048), 1e-5, torch.float32)))]  # fmt: skip
    return out


def decode_launches() -> list:
    from ssmkit.ops.conv import causal_conv1d_triton as conv
    from ssmkit.ops.linear import gemv_triton
    from ssmkit.ops.scan import triton_step as scan_step
    from ssmkit.ops.ssd import triton_step as ssd_step

    out = []
    f32 = torch.float32
    D, conv_step = 4352, _function(conv._step_op)
    out += [("decode conv1d update", *c)
            for c in record(lambda: conv_step(_meta(1, D), _meta(1, 3, D), _meta(D, 4), _meta(D), True))]  # fmt: skip
    out += [("decode scan step", *c) for c in record(lambda: _function(scan_step._step_op)(
        _meta(1, 4096, 16, dtype=f32), _meta(1, 4096), _meta(1, 4096), _meta(4096, 16, dtype=f32), _meta(1, 16),
        _meta(1, 16), _meta(4096, dtype=f32), _meta(1, 4096), _meta(4096, dtype=f32), True))]  # fmt: skip
    out += [("decode SSD step", *c) for c in record(lambda: _function(ssd_step._step_op)(
        _meta(1, 24, 64, 128, dtype=f32), _meta(1, 24, 64), _meta(1, 24), _meta(24, dtype=f32), _meta(1, 1, 128),
        _meta(1, 1, 128), _meta(24, dtype=f32), _meta(1, 24, 64), _meta(24, dtype=f32), True))]  # fmt: skip
    for K, N, bias in ((768, 3072, False), (2048, 160, False), (128, 4096, True), (1000, 300, True)):
        out += [(f"decode GEMV {N} x {K}", *c) for c in record(lambda: gemv_triton.gemv(
            _meta(1, K), _meta(N, K), _meta(N) if bias else None))]  # fmt: skip
    return out


def launches(families) -> list:
    """(label, kernel, args, kwargs) of each distinct launch of the given families."""
    out, seen = [], set()
    for family in families:
        for label, fn, args, kw in globals()[f"{family}_launches"]():
            key = (fn.__name__, _describe(args), repr(sorted((k, _describe(v) if isinstance(v, torch.Tensor) else v)
                                                            for k, v in kw.items())))
            if key not in seen:
                seen.add(key)
                out.append((label, fn, args, kw))
    return out


def _describe(v):
    """What the JIT specializes a run-time argument on: dtypes and 16-byte alignment of tensors, ints as 1 /
    multiple of 16 / width."""
    if isinstance(v, torch.Tensor):
        return (str(v.dtype), v.storage_offset() * v.element_size() % 16 == 0)
    if isinstance(v, (tuple, list)):
        return tuple(_describe(a) for a in v)
    if isinstance(v, bool) or not isinstance(v, int):
        return repr(v)
    return (v == 1, v % 16 == 0, -(2**31) <= v < 2**31)


def compile_isolated(fn, args, kw, arch: int) -> dict:
    """Compile one launch in a forked child (an abort inside the compiler kills the child only)."""
    err = tempfile.TemporaryFile()
    read, write = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        os.dup2(err.fileno(), 2)
        try:
            k = compile_launch(fn, args, kw, arch)
            msg = {"ok": True, "shared": int(k.metadata.shared), "cubin": len(k.asm["cubin"])}
        except BaseException as e:  # noqa: BLE001  (reported, whatever it is)
            msg = {"ok": False, "error": f"{type(e).__name__}: {_last_line(str(e))}"}
        os.write(write, json.dumps(msg).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if data:
        res = json.loads(data)
    else:
        err.seek(0)
        tail = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
        res = {"ok": False, "error": f"compiler crashed ({_exit_text(status)}): {' | '.join(tail[-2:])[:300]}"}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def _exit_text(status: int) -> str:
    return f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"


def _last_line(text: str) -> str:
    """The line of an error that says what went wrong (ptxas's own message rather than its command line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = [line for line in lines if "error" in line.lower() and "Repro command" not in line]
    return (said[0] if said else lines[-1] if lines else "")[:300]


def run_here(families, arches) -> dict:
    """{"triton": version, "launches": [{"label", "kernel", "arch", "ok", ...}]} for the installed Triton."""
    rows = []
    todo = launches(families)
    print(f"triton {triton.__version__}: {len(todo)} launches x sm_{', sm_'.join(map(str, arches))}", flush=True)
    for label, fn, args, kw in todo:
        for arch in arches:
            res = compile_isolated(fn, args, kw, arch)
            rows.append({"label": label, "kernel": fn.__name__, "arch": arch, **res})
            mark = "ok  " if res["ok"] else "FAIL"
            detail = f"shared {res['shared']} B" if res["ok"] else res["error"]
            print(f"  {mark} sm_{arch} {label}: {fn.__name__}  ({detail}, {res['seconds']} s)", flush=True)
    bad = sum(not r["ok"] for r in rows)
    failed = f", {bad} failed" if bad else ""
    print(f"triton {triton.__version__}: {len(rows) - bad} of {len(rows)} compiles ok{failed}")
    return {"triton": triton.__version__, "launches": rows}


def run_versions(folders, families, arches, out_dir) -> None:
    """Run this script once per unpacked Triton (first on PYTHONPATH), then tabulate."""
    results = []
    for folder in folders:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([folder, os.environ.get("PYTHONPATH", "")]),
                       TRITON_CACHE_DIR=os.path.join(tmp, "cache"))  # fmt: skip
            env.pop("TRITON_INTERPRET", None)
            path = os.path.join(tmp, "result.json")
            cmd = [sys.executable, __file__, "--json", path, "--only", *families, "--arch", *map(str, arches)]
            subprocess.run(cmd, env=env, check=False)
            if os.path.exists(path):
                with open(path) as f:
                    results.append(json.load(f))
            else:
                print(f"{folder}: no result (the run failed before compiling)")
    table = markdown(results, arches)
    print(table)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "triton_versions.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(out_dir, "triton_versions.md"), "w") as f:
            f.write(table)


def markdown(results, arches) -> str:
    """One row per (launch, kernel), one column per version: "ok" or which targets failed."""
    keys = []
    for r in results:
        for row in r["launches"]:
            if (row["label"], row["kernel"]) not in keys:
                keys.append((row["label"], row["kernel"]))
    head = "| launch | kernel | " + " | ".join(r["triton"] for r in results) + " |"
    lines = [head, "|" + "---|" * (2 + len(results))]
    for label, kernel in keys:
        cells = []
        for r in results:
            rows = [x for x in r["launches"] if (x["label"], x["kernel"]) == (label, kernel)]
            failed = [f"sm_{x['arch']}" for x in rows if not x["ok"]]
            cells.append("-" if not rows else "ok" if not failed else "**fails " + ", ".join(failed) + "**")
        lines.append(f"| {label} | `{kernel}` | " + " | ".join(cells) + " |")
    totals = [f"{sum(x['ok'] for x in r['launches'])}/{len(r['launches'])}" for r in results]
    lines.append("| compiles ok | | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="*", default=[90, 80, 75], help="compute capabilities (90: sm_90)")
    ap.add_argument("--only", nargs="*", default=list(FAMILIES), choices=FAMILIES, help="kernel families")
    ap.add_argument("--tritons", nargs="*", default=None, help="unpacked Triton wheels to run in turn")
    ap.add_argument("--out", default=None, help="folder for the table of --tritons (JSON, Markdown)")
    ap.add_argument("--json", default=None, help="write this run's results here")
    a = ap.parse_args()
    if a.tritons:
        run_versions(a.tritons, a.only, a.arch, a.out)
        return
    result = run_here(a.only, a.arch)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
