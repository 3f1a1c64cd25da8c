"""Builds each decode-chain kernel for sm_90 with PDL on and prints where its PTX waits, loads and stores.

With ``--own-gdc``, the kernels call ssmkit's inline PTX instead of Triton's gdc functions (as with Triton 3.4).
Run by ``test_pdl.py`` in a process without Triton's interpreter (``TRITON_INTERPRET=0``; no GPU needed): each
launcher is called on small CPU tensors with its kernel replaced by a recorder and ``chain_launch`` forced on,
then the recorded launch is compiled. The last line of the output is a JSON object: kernel name -> where its PTX
calls ``griddepcontrol.launch_dependents`` / ``.wait``, how many global loads and stores come before and after
the wait, and, from its Triton IR, which pointer arguments the loads before the wait read from.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ON = {"PDL": True, "launch_pdl": True}
PTR = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}


class Recorder:
    """Stands in for a JIT kernel: ``kernel[grid](*args, **kw)`` records the launch instead of running it."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((args, kw))


def record(module, kernel: str, call):
    """(kernel, args, keywords) of the one launch of ``module.kernel`` that ``call()`` makes, PDL forced on."""
    fn, chain = getattr(module, kernel), module.chain_launch
    rec = Recorder(fn)
    setattr(module, kernel, rec)
    module.chain_launch = lambda device: dict(ON)
    try:
        call()
    finally:
        setattr(module, kernel, fn)
        module.chain_launch = chain
    assert len(rec.calls) == 1, f"{kernel}: {len(rec.calls)} launches"
    return fn, *rec.calls[0]


def build(fn, args, kw) -> dict:
    """The kernel compiled for sm_90 from a recorded launch: its ``asm`` (``ttir``, ``ptx``, ...)."""
    options = {k: kw.pop(k) for k in ("num_warps", "num_stages", "enable_fp_fusion", "launch_pdl") if k in kw}
    assert options.get("launch_pdl") is True
    values = dict(zip([p.name for p in fn.params], args)) | kw
    sig, constexprs = {}, {}
    for p in fn.params:
        v = values[p.name] if p.name in values else p.default
        if p.is_constexpr:
            sig[p.name], constexprs[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = PTR[v.dtype]
        else:
            sig[p.name] = "fp32" if isinstance(v, float) else "i32"
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm


def launches():
    """(name, kernel, args, keywords) of each decode-chain kernel's launch on small shapes."""
    from ssmkit.ops.conv import causal_conv1d_triton as conv
    from ssmkit.ops.linear import gemv_triton
    from ssmkit.ops.norm import add_rms_norm_triton, gated_rms_norm_triton
    from ssmkit.ops.scan import triton_step as scan_step
    from ssmkit.ops.ssd import triton_step as ssd_step

    bf, f32 = dict(dtype=torch.bfloat16), dict(dtype=torch.float32)
    D, N, K, H, P = 96, 16, 4, 4, 24
    x, w = torch.randn(1, 3000, **bf), torch.randn(40, 3000, **bf)
    yield "gemv", *record(gemv_triton, "gemv_kernel", lambda: gemv_triton.gemv(x, w, torch.randn(40, **bf)))
    r, y, nw = torch.randn(1, D, **f32), torch.randn(1, D, **bf), torch.randn(D, **bf)
    yield "add_rms_norm", *record(add_rms_norm_triton, "add_rms_norm_kernel",
                                  lambda: add_rms_norm_triton.add_rms_norm(r, y, nw, 1e-5, torch.bfloat16))
    st, cw, cb = torch.randn(1, K - 1, D, **bf), torch.randn(D, K, **bf), torch.randn(D, **bf)
    yield "conv1d_step", *record(conv, "conv1d_step_kernel", lambda: conv._step_op(y, st, cw, cb, True))
    A, Dp, bias, h = -torch.rand(D, N, **f32), torch.randn(D, **f32), torch.randn(D, **f32), torch.randn(1, D, N, **f32)
    B, C = torch.randn(1, N, **bf), torch.randn(1, N, **bf)
    yield "scan_step", *record(scan_step, "scan_step_kernel",
                               lambda: scan_step._step_op(h, y, y, A, B, C, Dp, y, bias, True))
    xs, dt, hs = torch.randn(1, H, P, **bf), torch.randn(1, H, **bf), torch.randn(1, H, P, N, **f32)
    Bg, Cg = torch.randn(1, 1, N, **bf), torch.randn(1, 1, N, **bf)
    yield "ssd_step", *record(ssd_step, "ssd_step_kernel", lambda: ssd_step._step_op(
        hs, xs, dt, -torch.rand(H, **f32), Bg, Cg, torch.randn(H, **f32), xs, torch.randn(H, **f32), True))
    yield "gated_rms_norm_fwd", *record(gated_rms_norm_triton, "gated_rms_norm_fwd_kernel",
                                        lambda: gated_rms_norm_triton.norm_fwd(y, y, nw, 1e-5, 48, False))


def early_sources(ttir: str) -> list[str]:
    """The pointer arguments that the loads before the wait read from: each ``tt.load``'s address traced back
    through the SSA definitions (Triton IR names arguments by their parameter names)."""
    defs, params, found = {}, set(re.findall(r"%(\w+): !tt\.ptr", ttir)), set()
    for line in ttir.splitlines():
        if "grid_dependency_wait" in line or "griddepcontrol.wait" in line:  # (an op of its own, or inline asm)
            break
        m = re.match(r"\s*%(\w+)(?::\d+)? = (\S+) (.*)", line)
        if not m:
            continue
        operands = re.findall(r"%(\w+)", m.group(3))
        defs[m.group(1)] = operands
        if m.group(2) == "tt.load":
            todo, seen = [operands[0]], set()
            while todo:
                v = todo.pop()
                if v not in seen:
                    seen.add(v)
                    todo += defs.get(v, [])
            found |= seen & params
    return sorted(found)


def summary(asm: dict) -> dict:
    lines = [ln.strip() for ln in asm["ptx"].splitlines()]
    where = lambda pat: [i for i, ln in enumerate(lines) if re.match(pat, ln)]  # noqa: E731
    release, wait = where(r"griddepcontrol\.launch_dependents"), where(r"griddepcontrol\.wait")
    loads, stores = where(r"(@%p\d+ )?ld\.global"), where(r"(@%p\d+ )?st\.global")
    w = wait[0] if wait else -1
    return {"releases": len(release), "waits": len(wait), "release": release[0] if release else -1, "wait": w,
            "loads_before": sum(i < w for i in loads), "loads_after": sum(i > w for i in loads),
            "stores_before": sum(i < w for i in stores), "stores_after": sum(i > w for i in stores),
            "early_sources": early_sources(asm["ttir"])}  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # (the checkout's ssmkit)
    if "--own-gdc" in sys.argv:  # (the inline PTX that Triton 3.4 gets; set before the kernels are imported)
        from ssmkit.ops import _pdl

        _pdl.release_dependents, _pdl.wait_inputs = _pdl.own_release_dependents, _pdl.own_wait_inputs
    print(json.dumps({name: summary(build(fn, args, dict(kw))) for name, fn, args, kw in launches()}))
