"""GPU: host time of single calls of the Triton ops and layers, for whichever ssmkit is first on PYTHONPATH.

    for i in 1 2; do for v in /tmp/old $PWD; do PYTHONPATH=$v python3 benchmarks/gpu_host_versions.py $v; done; done

(two versions cannot share a process: one package name; see ``gpu_ssd_versions.py``). A call's host time is
what the Python side takes to issue its launches: the GPU is synchronized before each call, so no queue of earlier
work can block it, and the clock stops when the call returns, before its kernels finish. A call whose kernels take
less than its host time is host-bound: back to back, its calls then run at the host's pace. Per case, medians over
``CALLS`` calls (after ``WARMUP``), microseconds: the forward under ``no_grad``, the forward with autograd
(which also records what the backward needs), and ``backward`` from its output. With ``--gpu``, the GPU time of the
forward and the forward+backward (``fwd_and_fwdbwd``) follows each SSD case, to set the host times against.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import torch  # noqa: E402
from _gpu_bench import fwd_and_fwdbwd  # noqa: E402
from gpu_scan_checks import make_inputs  # noqa: E402
from gpu_ssd import ssd_inputs  # noqa: E402

import ssmkit  # noqa: E402
from ssmkit.layers import Mamba, Mamba2  # noqa: E402
from ssmkit.ops.conv import causal_conv1d  # noqa: E402
from ssmkit.ops.norm import gated_rms_norm  # noqa: E402
from ssmkit.ops.scan import selective_scan  # noqa: E402
from ssmkit.ops.ssd import ssd  # noqa: E402

CALLS, WARMUP = 40, 10


def host_us(call) -> float:
    """Median host microseconds of ``call()``, the GPU idle before each call."""
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(CALLS):
        torch.cuda.synchronize()
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def phases(fn, leaves: list, dy: torch.Tensor) -> tuple[float, float, float]:
    """(forward under no_grad, forward with autograd, backward) host microseconds of ``fn(*leaves)``."""
    for t in leaves:
        t.requires_grad_(True)

    def fwd_nograd():
        with torch.no_grad():
            fn(*leaves)

    def fwd_grad():
        for t in leaves:
            t.grad = None
        return fn(*leaves)

    outs = []

    def make():  # a fresh graph for each backward, built outside the timed call
        torch.cuda.synchronize()
        outs.append(fwd_grad())

    def bwd():
        outs.pop().backward(dy)

    f = host_us(fwd_nograd)
    g = host_us(fwd_grad)
    for _ in range(WARMUP):
        make()
        bwd()
    times = []
    for _ in range(CALLS):
        make()
        torch.cuda.synchronize()
        t = time.perf_counter()
        bwd()
        times.append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    return f, g, statistics.median(times)


def ssd_case(b: int, L: int, H: int, gpu: bool) -> str:
    inp = ssd_inputs(b, L, H=H)
    keys = list(inp)
    fn = lambda *a: ssd(**dict(zip(keys, a)), dt_softplus=True, backend="triton")  # noqa: E731
    dy = torch.randn_like(inp["x"])
    f, g, bw = phases(fn, list(inp.values()), dy)
    text = f"SSD {b}x{L}xH{H} {f:.0f}/{g:.0f}/{bw:.0f}"
    if gpu:
        t_f, t_fb = fwd_and_fwdbwd(lambda **k: ssd(**k, dt_softplus=True, backend="triton"), inp)
        text += f" (GPU {t_f * 1e3:.0f}/{t_fb * 1e3:.0f})"
    return text


def scan_case(b: int, L: int, D: int) -> str:
    g = torch.Generator(device="cuda").manual_seed(0)
    k = make_inputs(g, b, L, D, 16)
    leaves = [k[n] for n in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    fn = lambda *a: selective_scan(*a, True, backend="triton")  # noqa: E731
    f, gr, bw = phases(fn, leaves, torch.randn_like(k["u"]))
    return f"scan {b}x{L}xD{D} {f:.0f}/{gr:.0f}/{bw:.0f}"


def small_ops() -> list[str]:
    x = torch.randn(2, 1024, 1024, device="cuda", dtype=torch.bfloat16)
    w, bias = torch.randn(1024, 4, device="cuda"), torch.randn(1024, device="cuda")
    z, nw = torch.randn_like(x), torch.randn(1024, device="cuda")
    conv = phases(lambda x, w, b: causal_conv1d(x, w, b, activation="silu", backend="triton"), [x, w, bias], x)
    norm = phases(lambda y, w, z: gated_rms_norm(y, w, z, group_size=1024, backend="triton"), [x.clone(), nw, z], x)
    return [f"conv1d 2x1024xD1024 {'/'.join(f'{v:.0f}' for v in conv)}",
            f"norm 2x1024xD1024 {'/'.join(f'{v:.0f}' for v in norm)}"]  # fmt: skip


def layer_case(name: str, L: int) -> str:
    layer = (Mamba2(2048, d_state=128, headdim=64) if name == "Mamba-2" else Mamba(2048, d_state=16)).cuda().bfloat16()
    x = torch.randn(1, L, 2048, device="cuda", dtype=torch.bfloat16)
    f, g, bw = phases(lambda x: layer(x)[0], [x], torch.randn_like(x))
    return f"{name} layer 1x{L} {f:.0f}/{g:.0f}/{bw:.0f}"


if __name__ == "__main__":
    gpu = "--gpu" in sys.argv
    out = [next((a for a in sys.argv[1:] if not a.startswith("--")), "ssmkit"), "host us fwd no_grad/fwd/bwd:"]
    out += [ssd_case(8, 4096, 32, gpu), ssd_case(1, 16384, 32, gpu), ssd_case(8, 2048, 32, gpu)]
    out += [scan_case(8, 4096, 2048)] + small_ops() + [layer_case("Mamba-2", 2048), layer_case("Mamba", 2048)]
    print(" | ".join(out), ssmkit.__file__, flush=True)
