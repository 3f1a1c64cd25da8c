"""Correctness of the selective scan Triton kernels on the GPU, at full shapes (issue 4, item 4).

Each check draws fresh random inputs (seed printed in the report), runs
``selective_scan(backend="triton")`` and compares the output, the final state and
every gradient with the float64 reference loop by ||out - ref|| / ||ref||, against
the per-dtype tolerance of ``tests/numerics.py``. The long-sequence check runs
L = 2^20 with B=1, D=2304 (2.4e9 elements per activation, past 2^31) and
compares with the float32 "torch" path run chunk by chunk, the state carried.
Called by ``gpu_scan.py``; every function returns rows for a table.
"""

from __future__ import annotations

import os
import random
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from numerics import TOL, projection_weights, rel_err  # noqa: E402

from ssmkit.ops.scan import selective_scan, selective_scan_reference  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def new_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def make_inputs(g, b, L, D, N, G=None, dtype=torch.bfloat16, full=True, strong=False):
    """Fresh inputs on the GPU: activations in ``dtype``, A, D, delta_bias, state in float32."""

    def r(*s, scale=1.0, dt_=dtype):
        return (torch.randn(*s, generator=g, device="cuda") * scale).to(dt_)

    bc = (b, L, N) if G is None else (b, L, G, N)
    A = -torch.exp(r(D, N, dt_=torch.float32, scale=0.5)) * (30.0 if strong else 1.0)
    return dict(
        u=r(b, L, D), delta=r(b, L, D, scale=0.7), A=A, B=r(*bc), C=r(*bc),
        D=r(D, dt_=torch.float32) if full else None, z=r(b, L, D) if full else None,
        delta_bias=(r(D, dt_=torch.float32, scale=0.5) - 1.0) if full else None,
        initial_state=r(b, D, N, dt_=torch.float32) if full else None,
    )  # fmt: skip


def with_grads(fn, inp, wy, wh, **kw):
    """y, final state and the gradients of <y, wy> + <h, wh> for every input."""
    leaves = {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    y, h = fn(**leaves, return_final_state=True, **kw)
    ((y.double() * wy).sum() + (h.double() * wh).sum()).backward()
    return y, h, {k: v.grad for k, v in leaves.items() if v is not None}


def compare(case, inp, softplus=True, grads=True) -> list[list]:
    """Rows [case, quantity, rel err, tol, ok] of triton vs the float64 loop."""
    dtype = inp["u"].dtype
    tol = TOL[dtype]
    ref_in = {k: (v.double() if v is not None else None) for k, v in inp.items()}
    rows = []

    def add(what, out, ref):
        err = rel_err(out, ref)
        rows.append([case, what, f"{err:.2e}", f"{tol:.0e}", "yes" if err <= tol else "NO"])

    if not grads:
        with torch.no_grad():
            y, h = selective_scan(**inp, delta_softplus=softplus, return_final_state=True, backend="triton")
            y_ref, h_ref = selective_scan_reference(**ref_in, delta_softplus=softplus, return_final_state=True)
        add("output", y, y_ref)
        add("final state", h, h_ref)
        return rows
    g = torch.Generator(device="cuda").manual_seed(new_seed())
    b, L, D = inp["u"].shape
    wy = projection_weights((b, L, D), g, "cuda")  # (bf16 values: the op's y receives them exactly)
    wh = torch.randn(b, D, inp["A"].shape[1], generator=g, device="cuda", dtype=torch.float64)
    y, h, gr = with_grads(selective_scan, inp, wy, wh, delta_softplus=softplus, backend="triton")
    y_ref, h_ref, g_ref = with_grads(selective_scan_reference, ref_in, wy, wh, delta_softplus=softplus)
    add("output", y, y_ref)
    add("final state", h, h_ref)
    for k in gr:
        add(f"grad {k}", gr[k], g_ref[k])
    return rows


def run_checks(seed: int) -> list[list]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        rows += compare(f"B=2 L=1023 D=250 N=16 {str(dtype)[6:]}", make_inputs(g, 2, 1023, 250, 16, dtype=dtype))
    rows += compare("B=2 L=777 D=256 N=16 G=4 fp32", make_inputs(g, 2, 777, 256, 16, G=4, dtype=torch.float32))
    rows += compare("B=2 L=500 D=60 N=16 G=4 (15 ch/group) fp32", make_inputs(g, 2, 500, 60, 16, G=4, dtype=torch.float32))
    rows += compare("B=3 L=301 D=96 N=4 fp32", make_inputs(g, 3, 301, 96, 4, dtype=torch.float32))
    rows += compare("B=2 L=129 D=64 N=64 fp32", make_inputs(g, 2, 129, 64, 64, dtype=torch.float32))
    inp = make_inputs(g, 2, 255, 128, 16, dtype=torch.float32, full=False)
    inp["delta"] = torch.rand(inp["delta"].shape, generator=g, device="cuda")  # Δ > 0 without softplus
    rows += compare("no D/z/bias/state, no softplus", inp, softplus=False)
    rows += compare("strong decay (Δ|A| ~ 100)", make_inputs(g, 2, 255, 128, 16, dtype=torch.float32, strong=True))
    rows += compare("B=2 L=4096 D=2048 N=16 bf16 (full width)", make_inputs(g, 2, 4096, 2048, 16))
    rows += compare("B=8 L=4096 D=2048 N=16 bf16 (benchmark shape)", make_inputs(g, 8, 4096, 2048, 16), grads=False)
    return rows


def compiles_fullgraph(seed: int) -> list[list]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    inp = make_inputs(g, 2, 512, 256, 16, dtype=torch.float32)  # bf16 outputs would round run-to-run noise up

    def f(**k):
        y, h = selective_scan(**k, delta_softplus=True, return_final_state=True, backend="triton")
        return y.float().sum() + h.sum()

    leaves = {k: v.detach().requires_grad_(True) for k, v in inp.items()}
    out = torch.compile(f, fullgraph=True)(**leaves)
    out.backward()
    leaves_e = {k: v.detach().requires_grad_(True) for k, v in inp.items()}
    f(**leaves_e).backward()
    err = max(rel_err(leaves[k].grad, leaves_e[k].grad) for k in NAMES)
    return [["torch.compile(fullgraph=True) vs eager", "max grad rel diff", f"{err:.1e}", "1e-5",
             "yes" if err <= 1e-5 else "NO"]]  # fmt: skip


def check_long(seed: int, L: int = 2**20, D: int = 2304, N: int = 16, piece: int = 8192) -> list[list]:
    """L = 2^20, B=1, D=2304 in bf16: every output and the final state against the float32
    "torch" path run over pieces of ``piece`` steps with the state carried across."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    inp = make_inputs(g, 1, L, D, N)
    n_el = inp["u"].numel()
    with torch.no_grad():
        y, h = selective_scan(**inp, delta_softplus=True, return_final_state=True, backend="triton")
        state = inp["initial_state"]
        num = den = 0.0
        for t0 in range(0, L, piece):
            sl = slice(t0, t0 + piece)
            part = {k: (v[:, sl] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inp.items()}
            part["initial_state"] = state
            y_ref, state = selective_scan(**part, delta_softplus=True, return_final_state=True, backend="torch")
            num += (y[:, sl].double() - y_ref.double()).norm().item() ** 2
            den += y_ref.double().norm().item() ** 2
    tol = TOL[torch.bfloat16]
    err_y, err_h = (num / den) ** 0.5, rel_err(h, state)
    case = f"B=1 L=2^20 D={D} N={N} bf16 ({n_el / 2**31:.2f} x 2^31 elements)"
    return [[case, "output (all positions)", f"{err_y:.2e}", f"{tol:.0e}", "yes" if err_y <= tol else "NO"],
            [case, "final state", f"{err_h:.2e}", f"{tol:.0e}", "yes" if err_h <= tol else "NO"]]  # fmt: skip
