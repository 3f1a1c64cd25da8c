"""GPU: the chunk-parallel SSD forward against the walking one, and the state walks' plan.

    MAMBA_SRC=/path/to/mamba_ssm-2.3.2.post1 python3 benchmarks/gpu_ssd_forward.py [--out DIR] [--parts op sweep layer]

The forward either walks segments of chunks with the state in registers (``fwd_span=0``),
or has the state walk (``triton_states.py``) write the state entering every chunk and then
computes every chunk's output on its own (``fwd_span`` chunks per program). The state walks
own (N, P) tiles of the state (``triton_launch.STATE_TILE``) with the chunk-parallel forward;
"before" is the walking plan, the one before the chunk-parallel forward (whole states, no
pipelining: ``BEFORE``).

- "op": plans at B=8, L=4096, H=32, P=64, N=128, G=1, bf16 (D, dt_bias, softplus, a
  final-state gradient), each checked, then timed, in one process: y, the final state and
  every gradient against the float32 "torch" backend on the same inputs (relative error,
  bf16 tolerance 3e-2); mamba_ssm's ``mamba_chunk_scan_combined`` at chunks 64 and 256 when
  ``MAMBA_SRC`` names its source. Every chunk runs as asked (``ssd_chunks_as_asked``).
- "sweep": the op, checked the same way, at the Mamba-2 layer's shapes (one sequence of
  16K or 64K tokens, 64 heads) and the benchmark's, chunk 32: the chunk-parallel forward
  against segments per row and the state walks' warps and pipelining stages.
- "layer": the Mamba-2 layer (d_model 2048, 64 heads) at 16K and 64K tokens, before and
  default, next to the attention layer of ``gpu_layers.py`` (its training path).

Writes ``gpu_ssd_forward.md`` / ``.json``.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _gpu_bench import (  # noqa: E402
    from_mamba_source, fwd_and_fwdbwd, parts_main, plan_constants, ssd_chunks_as_asked, table_report,
)
from gpu_ssd import ssd_inputs  # noqa: E402

from ssmkit.layers import Mamba2  # noqa: E402
from ssmkit.ops.ssd import ssd  # noqa: E402
from ssmkit.ops.ssd.triton import ssd_triton  # noqa: E402

# The plan before the chunk-parallel forward, which the walking plan still is: the scan walks, the state
# walks take whole states, no pipelining.
BEFORE = dict(FWD_SPAN=0)
PLANS = [  # (label, chunk, ssd_triton arguments, triton_launch constants)
    ("before", 32, dict(fwd_span=0), BEFORE),
    ("default", 32, {}, {}),
    ("chunk-parallel, 2 chunks per scan program", 32, dict(fwd_span=2), {}),
    ("chunk-parallel, state tile (64, 64)", 32, dict(fwd_span=1), dict(STATE_TILE=(64, 64))),
    ("before", 64, dict(fwd_span=0), BEFORE),
    ("default plan", 64, {}, {}),
]
SWEEP_SHAPES = ((1, 16384, 64), (1, 65536, 64), (8, 4096, 32))  # (B, L, H); P=64, N=128
SWEEP = [(n, st, 4) for n in (1, 2, 4, 8, 16) for st in (1, 2, 3)] + [(2, 1, 2), (8, 1, 2)]  # segments, stages, warps
GRADS = ("x", "dt", "A", "B", "C", "D", "dt_bias")
TOL_BF16 = 3e-2


def outputs(f, inp: dict, dy, dfinal) -> list:
    """y, the final state and the gradients of <y, dy> + <final, dfinal>, in float32."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in inp.items()}
    y, final = f(**leaves)
    ((y.float() * dy).sum() + (final * dfinal).sum()).backward()
    return [y.float(), final.float()] + [leaves[k].grad.float() for k in GRADS]


def worst_error(got: list, ref: list) -> tuple[float, str]:
    errs = [((a - b).norm() / b.norm()).item() for a, b in zip(got, ref)]
    names = ["y", "final"] + [f"d{k}" for k in GRADS]
    k = max(range(len(errs)), key=lambda i: errs[i])
    return errs[k], names[k]


class Checked:
    """Times ``ssd_triton`` plans on one set of inputs after checking each against the float32 "torch" backend."""

    def __init__(self, inp: dict):
        self.inp = inp
        self.dy = torch.randn(inp["x"].shape, device="cuda")
        b, _, H, P = inp["x"].shape
        self.dfinal = torch.randn(b, H, P, inp["B"].shape[-1], device="cuda")
        torch_path = lambda **k: ssd(**{n: v.float() for n, v in k.items()}, dt_softplus=True, backend="torch",  # noqa: E731
                                     return_final_state=True)  # fmt: skip
        self.ref = outputs(torch_path, inp, self.dy, self.dfinal)

    def row(self, label: str, Q: int, **kw) -> list:
        f = lambda **k: ssd_triton(**k, dt_softplus=True, chunk_size=Q, **kw)  # noqa: E731
        err, name = worst_error(outputs(f, self.inp, self.dy, self.dfinal), self.ref)
        t_f, t_fb = fwd_and_fwdbwd(lambda **k: f(**k)[0], self.inp)
        row = [label, f"{t_f:.3f}", f"{t_fb:.3f}", f"{err:.1e} ({name})", "yes" if err < TOL_BF16 else "NO"]
        print(row, flush=True)
        return row


def op_rows() -> list[list]:
    inp = ssd_inputs(8, 4096)
    checked = Checked(inp)
    rows = []
    for label, Q, kw, constants in PLANS:
        with plan_constants(**constants):
            rows.append(checked.row(f"ssmkit Q={Q}: {label}", Q, **kw))
    mamba = from_mamba_source(os.environ.get("MAMBA_SRC"), "ops.triton.ssd_combined", "mamba_chunk_scan_combined")
    if mamba is not None:
        for Q in (64, 256):
            f = lambda Q=Q, **k: mamba(k["x"], k["dt"], k["A"], k["B"], k["C"], Q, D=k["D"], dt_bias=k["dt_bias"], dt_softplus=True)  # noqa: E731
            t_f, t_fb = fwd_and_fwdbwd(f, inp)
            rows.append([f"mamba_ssm Q={Q}", f"{t_f:.3f}", f"{t_fb:.3f}", "", ""])
            print(rows[-1], flush=True)
    return rows


def sweep_rows() -> list[list]:
    """The op at the layer's shapes and the benchmark's, chunk 32: segments per row, stages, warps."""
    rows = []
    for b, L, H in SWEEP_SHAPES:
        inp = ssd_inputs(b, L, H=H)
        checked = Checked(inp)
        n_chunks = triton.cdiv(L, 32)
        with plan_constants(**BEFORE):
            rows.append(checked.row(f"B={b} L={L} H={H}: before", 32, fwd_span=0))
        rows.append(checked.row(f"B={b} L={L} H={H}: default", 32))
        for n, stages, warps in SWEEP:
            with plan_constants(STATE_STAGES=stages, STATE_WARPS=warps):
                label = f"B={b} L={L} H={H}: chunk-parallel, {n} segments, state walks {warps} warps {stages} stages"
                rows.append(checked.row(label, 32, fwd_span=1, seg_chunks=triton.cdiv(n_chunks, n)))
        del inp, checked
        torch.cuda.empty_cache()
    return rows


def mamba2_layer_rows(plans) -> list[list]:
    """The Mamba-2 layer at 16K and 64K tokens (one sequence, its default chunk) under each of ``plans``
    ((label, a function returning the context that sets the plan) pairs), and the attention layer's
    training path (gpu_layers.py) at the same length."""
    from gpu_layers import attn_train, build

    rows = []
    for length in (16384, 65536):
        x = torch.randn(1, length, 2048, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        torch.manual_seed(0)
        m = Mamba2(2048, d_state=128, headdim=64).to(device="cuda", dtype=torch.bfloat16)
        for label, plan in plans:
            with plan():
                t_f, t_fb = fwd_and_fwdbwd(lambda x, m=m: m(x)[0], {"x": x})
            rows.append([f"Mamba-2 layer L={length}: {label}", f"{t_f:.3f}", f"{t_fb:.3f}", "", ""])
            print(rows[-1], flush=True)
        attn = build("attention", 2048, length).to(device="cuda", dtype=torch.bfloat16)
        t_f, t_fb = fwd_and_fwdbwd(lambda x, attn=attn: attn_train(attn, x), {"x": x})
        rows.append([f"attention layer L={length} (training path)", f"{t_f:.3f}", f"{t_fb:.3f}", "", ""])
        print(rows[-1], flush=True)
        del x, m, attn
        torch.cuda.empty_cache()
    return rows


def layer_rows() -> list[list]:
    """The layer rows: the plan before and the default."""
    return mamba2_layer_rows([("before", lambda: plan_constants(**BEFORE)), ("default", contextlib.nullcontext)])


def run(out_dir: str, parts=("op", "sweep", "layer")) -> str:
    rows = []
    if "op" in parts:
        with ssd_chunks_as_asked():  # chunk 64 rows run chunks of 64 (by default 16-bit runs 32 on the GPU)
            rows += op_rows()
    if "sweep" in parts:
        rows += sweep_rows()
    if "layer" in parts:
        rows += layer_rows()
    head = ["B=8 L=4096 H=32 P=64 N=128 bf16 (op); layers", "fwd ms", "fwd+bwd ms", "worst rel err", "ok"]
    return table_report(out_dir, "gpu_ssd_forward", "SSD forward: chunk-parallel against walking", head, rows)


if __name__ == "__main__":
    parts_main(__doc__, run, ["op", "sweep", "layer"])
