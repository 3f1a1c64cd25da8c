"""Host time of the Triton ops' Python path: custom ops against the plain autograd.Functions used outside compile.

    python benchmarks/host_overhead.py [--out DIR]      # CPU only; sets TRITON_INTERPRET=1 itself

Every Triton kernel of the four ops (selective scan, SSD, causal conv1d, gated RMSNorm) is replaced by a launch
that does nothing, so what is timed is the host work of one call on small CPU tensors: argument checks, plans,
allocations, the autograd graph, and either the ``torch.library`` custom ops (their dispatch, autograd wrapper
and output checks, as under ``torch.compile``) or the ops' plain ``autograd.Function`` (``EAGER_FUNCTION``, the
default for plain tensors outside compilation). On a GPU the kernels are queued asynchronously, so a call whose
kernels take less than this host time is host-bound. Forward under ``no_grad`` and forward+backward, microseconds,
medians of ``ROUNDS`` rounds of ``CALLS`` calls, the two paths alternating.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("TRITON_INTERPRET") != "1":  # (the ops accept CPU tensors only in the interpreter; set it first)
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "TRITON_INTERPRET": "1"})

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from unittest import mock  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _timing import markdown_table, save_report  # noqa: E402

from ssmkit.ops.conv import causal_conv1d, causal_conv1d_triton  # noqa: E402
from ssmkit.ops.conv import causal_conv1d_triton as conv_module  # noqa: E402
from ssmkit.ops.norm import gated_rms_norm  # noqa: E402
from ssmkit.ops.norm import gated_rms_norm_triton as norm_module  # noqa: E402
from ssmkit.ops.scan import selective_scan  # noqa: E402
from ssmkit.ops.scan import triton as scan_module  # noqa: E402
from ssmkit.ops.scan import triton_launch as scan_launch  # noqa: E402
from ssmkit.ops.ssd import ssd  # noqa: E402
from ssmkit.ops.ssd import triton as ssd_module  # noqa: E402
from ssmkit.ops.ssd import triton_launch as ssd_launch  # noqa: E402

ROUNDS, CALLS = 5, 40
KERNEL_MODULES = (scan_launch, ssd_launch, conv_module, norm_module)
KERNEL_TYPES = (triton.runtime.jit.JITFunction, triton.runtime.interpreter.InterpretedFunction)  # (@triton.jit's)


class _NoLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _cases() -> dict:
    """op name -> (module with EAGER_FUNCTION, call(grad) returning a tensor to backpropagate from); the inputs are
    made once, so that a call times the op alone."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    def op_call(fn, *args):
        leaves = [a.requires_grad_(True) for a in args]

        def call(grad: bool):
            for t in leaves:
                t.grad = None
            return fn(*(a if grad else a.detach() for a in leaves))
        return call

    scan = op_call(lambda u, dl, A, B, C, D, z, bias: selective_scan(u, dl, A, B, C, D, z, bias, delta_softplus=True,
                                                                    backend="triton"),
                   r(2, 64, 32), r(2, 64, 32), -r(32, 16).exp(), r(2, 64, 16), r(2, 64, 16), r(32), r(2, 64, 32), r(32))
    ssd_call = op_call(lambda x, dt, A, B, C, D, bias: ssd(x, dt, A, B, C, D, dt_bias=bias, dt_softplus=True,
                                                           chunk_size=16, backend="triton")[0],
                       r(2, 64, 4, 16), r(2, 64, 4), -r(4).exp(), r(2, 64, 1, 32), r(2, 64, 1, 32), r(4), r(4))
    conv = op_call(lambda x, w, b: causal_conv1d(x, w, b, activation="silu", backend="triton"),
                   r(2, 64, 32), r(32, 4), r(32))
    norm = op_call(lambda y, w, z: gated_rms_norm(y, w, z, group_size=32, backend="triton"),
                   r(2, 64, 32), r(32), r(2, 64, 32))
    return {"selective scan": (scan_module, scan), "SSD": (ssd_module, ssd_call),
            "causal conv1d": (conv_module, conv), "gated RMSNorm": (norm_module, norm)}  # fmt: skip


def _us(fn) -> float:
    t0 = time.perf_counter()
    for _ in range(CALLS):
        fn()
    return (time.perf_counter() - t0) / CALLS * 1e6


def rows() -> list[list]:
    out = []
    with ExitStack() as stack:
        for module in KERNEL_MODULES:
            for name, obj in vars(module).items():
                if isinstance(obj, KERNEL_TYPES):
                    stack.enter_context(mock.patch.object(module, name, _NoLaunch()))
        for op, (module, call) in _cases().items():
            times: dict = {}
            for _ in range(ROUNDS):
                for eager in (True, False):
                    with mock.patch.object(module, "EAGER_FUNCTION", eager):
                        with torch.no_grad():
                            fwd = _us(lambda: call(False))
                        both = _us(lambda: call(True).sum().backward())
                    times.setdefault(eager, []).append((fwd, both))
            med = {e: [statistics.median(t[i] for t in ts) for i in (0, 1)] for e, ts in times.items()}
            (ops_f, ops_fb), (fn_f, fn_fb) = med[False], med[True]
            out.append([op, f"{ops_f:.0f}", f"{fn_f:.0f}", f"{ops_fb:.0f}", f"{fn_fb:.0f}", f"{ops_fb / fn_fb:.1f}x"])
            print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for host_overhead.md / .json")
    a = ap.parse_args()
    head = ["op (small CPU tensors, kernels not run)", "fwd us, custom ops", "fwd us, autograd.Function",
            "fwd+bwd us, custom ops", "fwd+bwd us, autograd.Function", "fwd+bwd ops / Function"]  # fmt: skip
    text = f"## Host time per call, torch {torch.__version__}, {os.cpu_count()} CPUs\n\n" + markdown_table(head, rows())
    if a.out:
        save_report(a.out, "host_overhead", text, {"table": text})
    print(text)


if __name__ == "__main__":
    main()
