"""Correctness of the SSD Triton kernels on the GPU, at full shapes (issue 4, item 3).

Each check draws fresh random inputs (seed printed), runs ``ssd(backend="triton")``
and compares the output, the final state and every gradient with the float64
reference loop (``ssd_reference``) by ||out - ref|| / ||ref|| against the
per-dtype tolerance of ``tests/numerics.py``. Also: packed sequences against
each sequence run alone, ``torch.compile(fullgraph=True)``, and the
long-sequence check at L = 2^20 with tensors past 2^31 elements.
Called by ``gpu_ssd.py``; every function returns rows for a table.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from numerics import TOL, projection_weights, rel_err  # noqa: E402

from ssmkit.ops.ssd import ssd, ssd_reference  # noqa: E402
from ssmkit.ops.ssd.triton import ssd_triton  # noqa: E402

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


def make_inputs(g, b, L, H, P, N, G, dtype, D_shape="H", strong=False, n_states=None):
    """Fresh inputs on the GPU: activations in ``dtype``, A, D, dt_bias in fp32."""
    dev = "cuda"

    def r(*s, scale=1.0, dt_=dtype):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype=dt_, device=dev)

    if strong:  # dt * |A| up to ~160 per step
        dt = (5 + 15 * torch.rand(b, L, H, generator=g, dtype=torch.float64)).to(dtype=dtype, device=dev)
        A = -torch.exp(torch.linspace(math.log(1e-3), math.log(8.0), H, dtype=torch.float64)).float().to(dev)
    else:
        dt = r(b, L, H)
        A = -torch.exp(r(H, dt_=torch.float32))
    return dict(
        x=r(b, L, H, P), dt=dt, A=A, B=r(b, L, G, N), C=r(b, L, G, N),
        D=r(*((H,) if D_shape == "H" else (H, P)), dt_=torch.float32), z=r(b, L, H, P),
        dt_bias=r(H, dt_=torch.float32, scale=0.5) - 1, initial_state=r(n_states or b, H, P, N, dt_=torch.float32),
    )  # fmt: skip


def with_grads(fn, inp, wy, ws, **kw):
    """Output, final state and gradients of <y, wy> + <s, ws> for every input."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items() if v is not None}
    y, s = fn(**leaves, return_final_state=True, **kw)
    ((y.double() * wy).sum() + (s.double() * ws).sum()).backward()
    return y, s, {k: v.grad for k, v in leaves.items()}


def _triton(seg_chunks: int, bwd_span: int = -1):
    """ssd_triton with a given segment length (0: the default plan) and backward span (-1: the
    default; 0: the backward walks the segments), called like ``ssd``."""

    def f(return_final_state=True, **kw):
        return ssd_triton(**kw, seg_chunks=seg_chunks, bwd_span=bwd_span)

    return f


def _reference_varlen(inp, cu, wy, ws, softplus):
    """float64 reference run on each packed sequence alone, then concatenated."""
    leaves = {k: v.detach().double().requires_grad_(True) for k, v in inp.items() if v is not None}
    ys, ss = [], []
    bounds = cu.tolist()
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        cut = {n: (leaves[n][:, a:b] if n in ("x", "dt", "B", "C", "z") else leaves[n]) for n in leaves}
        cut["initial_state"] = leaves["initial_state"][k : k + 1]
        y, s = ssd_reference(**cut, dt_softplus=softplus, return_final_state=True)
        ys.append(y)
        ss.append(s)
    y, s = torch.cat(ys, 1), torch.cat(ss, 0)
    ((y * wy).sum() + (s * ws).sum()).backward()
    return y, s, {k: v.grad for k, v in leaves.items()}


def compare(case: str, dtype, got, ref) -> list[list]:
    """Rows (case, what, rel err, tolerance, ok) for output, state and grads."""
    y, s, g = got
    y_r, s_r, g_r = ref
    tol = TOL[dtype]
    pairs = [("y", y, y_r), ("final state", s, s_r)] + [(f"d{k}", g[k], g_r[k]) for k in g]
    return [[case, what, f"{rel_err(a, b):.2e}", f"{tol:.0e}", rel_err(a, b) <= tol] for what, a, b in pairs]


# The chunk is the chunk_size asked: on the GPU the launchers run 16-bit inputs in chunks of at most 32
# (``triton_launch.GPU_CHUNK_16BIT``), fp32 in chunks of at most 64.
CASES = [  # (name, dtype, L, chunk, G, D shape, softplus, inputs left out, strong decay, seg_chunks, bwd_span)
    ("bf16 L=1000 Q=64 G=1", torch.bfloat16, 1000, 64, 1, "H", True, (), False, 0, -1),
    ("bf16 L=1000 Q=64 G=1 bwd walks segments", torch.bfloat16, 1000, 64, 1, "H", True, (), False, 0, 0),
    ("fp16 L=777 Q=128 G=4", torch.float16, 777, 128, 4, "H", True, (), False, 3, -1),
    ("fp16 L=777 Q=128 G=4 bwd span 1", torch.float16, 777, 128, 4, "H", True, (), False, 3, 1),
    ("bf16 L=1000 Q=256 G=8", torch.bfloat16, 1000, 256, 8, "HP", True, (), False, 0, -1),
    ("bf16 L=1000 Q=32 G=2 seg=1", torch.bfloat16, 1000, 32, 2, "HP", True, (), False, 1, 3),
    ("fp32 L=1000 Q=64 G=2 D(H,P)", torch.float32, 1000, 64, 2, "HP", True, (), False, 0, -1),
    ("fp32 L=1000 Q=64 G=2 D(H,P) bwd walks segments", torch.float32, 1000, 64, 2, "HP", True, (), False, 0, 0),
    ("fp32 L=515 Q=32 bare", torch.float32, 515, 32, 2, "H", False, ("D", "z", "dt_bias", "initial_state"), False, 1, -1),
    ("fp32 strong decay Q=64", torch.float32, 600, 64, 2, "H", False, (), True, 2, -1),
    # whole tiles (``triton_launch.WHOLE_TILES``: L a multiple of the chunk run, P and N of the tiles)
    ("bf16 L=1024 Q=32 G=1 whole tiles", torch.bfloat16, 1024, 32, 1, "H", True, (), False, 0, -1),
    ("bf16 L=1024 Q=32 G=2 whole tiles, both walk", torch.bfloat16, 1024, 32, 2, "HP", True, (), False, 4, 0),
    ("fp32 L=1024 Q=64 G=2 whole tiles", torch.float32, 1024, 64, 2, "HP", True, (), False, 0, -1),
]  # fmt: skip
H_, P_, N_ = 8, 64, 128
# Other head dims (as CASES, the last field is P). P = 128 in 16-bit: the forward and the backward split
# P into two blocks of 64 (shares of dB, dC, d dt).
CASES_P128 = [
    ("bf16 L=1000 Q=64 G=1 P=128", torch.bfloat16, 1000, 64, 1, "HP", True, (), False, 0, -1, 128),
    ("fp16 L=515 Q=32 G=2 P=128 bwd walks segments", torch.float16, 515, 32, 2, "H", True, (), False, 3, 0, 128),
]  # fmt: skip
# Head dims below 64: one P block narrower than 64. In 16-bit the launchers run them at chunks of 32
# on the GPU (``triton_launch.NARROW_TILE_CHUNK``: at 64 and 128 such tiles gave wrong final states or
# illegal memory accesses on the H200, eighth session). They run last: a fault fails every case after it.
CASES_SMALL_P = [
    ("bf16 L=1000 Q=64 G=1 P=32", torch.bfloat16, 1000, 64, 1, "H", True, (), False, 0, -1, 32),
    ("fp16 L=515 Q=128 G=2 P=16", torch.float16, 515, 128, 2, "HP", True, (), False, 3, -1, 16),
    ("fp32 L=515 Q=64 G=2 P=32", torch.float32, 515, 64, 2, "H", True, (), False, 0, -1, 32),
]  # fmt: skip


def dense_case(g, name, dtype, L, Q, G, D_shape, softplus, drop, strong, seg, span, P=P_) -> list[list]:
    inp = make_inputs(g, 2, L, H_, P, N_, G, dtype, D_shape, strong)
    if not softplus and not strong:  # Δ = dt + dt_bias itself must be positive
        inp["dt"] = torch.exp(inp["dt"].float() * 0.5 - 1).to(dtype)
        inp["dt_bias"] = 0.1 * torch.rand(H_, generator=g).cuda()
    for k in drop:
        inp[k] = None
    wy = projection_weights((2, L, H_, P), g, "cuda")  # (bf16 values: the op's y receives them exactly)
    ws = torch.randn(2, H_, P, N_, generator=g, dtype=torch.float64).cuda()
    got = with_grads(_triton(seg, span), inp, wy, ws, dt_softplus=softplus, chunk_size=Q)
    ref = with_grads(ssd_reference, {k: None if v is None else v.double() for k, v in inp.items()}, wy, ws,
                     dt_softplus=softplus)  # fmt: skip
    return compare(name, dtype, got, ref)


def packed_case(g, dtype) -> list[list]:
    lens = [300, 0, 1, 517, 64, 130, 45]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    T, S = sum(lens), len(lens)
    inp = make_inputs(g, 1, T, H_, P_, N_, 2, dtype, "HP", n_states=S)
    wy = projection_weights((1, T, H_, P_), g, "cuda")
    ws = torch.randn(S, H_, P_, N_, generator=g, dtype=torch.float64).cuda()
    got = with_grads(ssd, inp, wy, ws, dt_softplus=True, chunk_size=64, backend="triton", cu_seqlens=cu)
    return compare(f"packed {S} seqs {str(dtype)[6:]}", dtype, got, _reference_varlen(inp, cu, wy, ws, True))


def run_checks(seed: int) -> list[list]:
    """Every case; 16-bit ones first (a failure is reported and the next case runs)."""
    g = torch.Generator().manual_seed(seed)
    jobs = [(c[0], lambda c=c: dense_case(g, *c)) for c in CASES if c[1] != torch.float32]
    jobs += [(c[0], lambda c=c: dense_case(g, *c[:-1], P=c[-1])) for c in CASES_P128]
    jobs += [("packed bf16", lambda: packed_case(g, torch.bfloat16)), ("torch.compile", lambda: check_compile(g))]
    jobs += [(c[0], lambda c=c: dense_case(g, *c)) for c in CASES if c[1] == torch.float32]
    jobs += [("packed fp32", lambda: packed_case(g, torch.float32))]
    jobs += [(c[0], lambda c=c: dense_case(g, *c[:-1], P=c[-1])) for c in CASES_SMALL_P]
    only = [k for k in os.environ.get("SSD_CHECK_ONLY", "").split(",") if k]  # substrings of case names
    jobs = [j for j in jobs if not only or any(k in j[0] for k in only)]
    rows = []
    for name, job in jobs:
        t0 = time.perf_counter()
        try:
            rows += job()
        except Exception as e:  # report and go on with the other cases
            rows.append([name, "run", f"failed: {type(e).__name__}: {str(e)[:160]}", "", False])
        print(f"  {name}: {time.perf_counter() - t0:.1f} s", flush=True)  # progress, when a call runs out of time
    return rows


def check_compile(g) -> list[list]:
    """torch.compile(fullgraph=True) through the custom ops equals eager."""
    inp = make_inputs(g, 2, 333, 8, 64, 128, 2, torch.bfloat16)
    wy = torch.randn(2, 333, 8, 64, generator=g, dtype=torch.float64).cuda()
    ws = torch.randn(2, 8, 64, 128, generator=g, dtype=torch.float64).cuda()

    def f(**kw):
        return ssd(**kw, dt_softplus=True, backend="triton")

    eager = with_grads(f, inp, wy, ws)
    # aot_eager: the capture (custom ops, fake kernels, autograd) is what is checked here.
    compiled = with_grads(torch.compile(f, fullgraph=True, backend="aot_eager"), inp, wy, ws)
    return compare("torch.compile fullgraph vs eager", torch.float32, compiled, eager)


def check_long(seed: int, L: int = 2**20, W: int = 1024) -> list[list]:
    """L = 2^20, B = 2, H*P = 2048: x, y, dx hold 2^32 elements (row 1 starts at
    element 2^31). The decay is fast enough (Δ|A| >= ~0.05 per step) that a window of W
    tokens run from a zero state equals the tail of the full run to ~exp(-50):
    compare the first W outputs of row 1 (exact: its start), the last W/2 outputs,
    final states and gradients of both rows with the float64 reference on the window."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    b, H, P, N, G = 2, 32, 64, 128, 1
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(b, L, H, P, device=dev, dtype=bf)
    dt = torch.randn(b, L, H, device=dev, dtype=bf)
    A = -(0.5 + torch.rand(H, generator=g)).to(dev)
    Bm, Cm = torch.randn(b, L, G, N, device=dev, dtype=bf), torch.randn(b, L, G, N, device=dev, dtype=bf)
    D, dt_bias = torch.randn(H, device=dev), torch.full((H,), -1.0, device=dev)
    assert x.numel() > 2**31
    leaves = [t.requires_grad_(True) for t in (x, dt, Bm, Cm)]
    y, s = ssd(x, dt, A, Bm, Cm, D=D, dt_bias=dt_bias, dt_softplus=True, return_final_state=True, backend="triton")
    dy = torch.randn_like(y)
    ds = torch.randn_like(s)
    torch.autograd.backward([y, s], [dy, ds])
    rows = []
    for row in (0, 1):
        win = slice(L - W, L)
        ref_in = [t.detach()[row : row + 1, win].double().requires_grad_(True) for t in (x, dt, Bm, Cm)]
        y_r, s_r = ssd_reference(ref_in[0], ref_in[1], A.double(), ref_in[2], ref_in[3], D=D.double(),
                                 dt_bias=dt_bias.double(), dt_softplus=True, return_final_state=True)  # fmt: skip
        torch.autograd.backward([y_r, s_r], [dy[row : row + 1, win].double(), ds[row : row + 1].double()])
        tail = slice(W // 2, W)
        rows.append([f"L=2^20 row {row}", "y (last W/2)", y[row : row + 1, win][:, tail], y_r[:, tail]])
        rows.append([f"L=2^20 row {row}", "final state", s[row : row + 1], s_r])
        for name, t, r in zip(("dx", "ddt", "dB", "dC"), leaves, ref_in):
            rows.append([f"L=2^20 row {row}", f"{name} (last W/2)", t.grad[row : row + 1, win][:, tail], r.grad[:, tail]])
    head_in = [t.detach()[1:2, :W].double() for t in (x, dt, Bm, Cm)]
    y_h = ssd_reference(head_in[0], head_in[1], A.double(), head_in[2], head_in[3], D=D.double(),
                        dt_bias=dt_bias.double(), dt_softplus=True)  # fmt: skip
    rows.append(["L=2^20 row 1", "y (first W, past 2^31)", y[1:2, :W], y_h])
    tol = TOL[bf]
    return [[c, w, f"{rel_err(a, b):.2e}", f"{tol:.0e}", rel_err(a, b) <= tol] for c, w, a, b in rows]


def new_seed() -> int:
    return int(os.environ.get("SSMKIT_TEST_SEED", random.SystemRandom().randrange(2**31)))
