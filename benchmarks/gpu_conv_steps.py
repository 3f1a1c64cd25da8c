"""GPU checks and timings of the small Triton kernels: causal conv1d (+ step) and the decode steps.

Called by ``gpu_scan.py``. Each check compares backend "triton" with the float64
"reference" / "torch" path on fresh random inputs (output, state, every gradient);
each timing is the median of CUDA-event timings against the "torch" path and, for
the Mamba decode step, ``mamba_ssm``'s Triton ``selective_state_update``.

Alone, ``python3 benchmarks/gpu_conv_steps.py --parts bwd switches lanes [--out DIR]`` times the conv1d
backward's channel blocks and programs per SM at the Mamba-2 layer's 64K shape (``bwd_rows``), the
kernels' instruction-saving switches and the forward's programs per SM (``SWITCHES``), and the channels per
thread with the forward's switches (``LANES``) at the Mamba and Mamba-2 layers' shapes (``switch_rows``),
each setting checked against float64 first.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from numerics import TOL, rel_err  # noqa: E402

from ssmkit.ops.conv import causal_conv1d  # noqa: E402
from ssmkit.ops.conv.causal_conv1d_triton import causal_conv1d_step_triton  # noqa: E402
from ssmkit.ops.scan.step import selective_scan_step_impl  # noqa: E402
from ssmkit.ops.scan.triton_step import selective_scan_step_triton  # noqa: E402
from ssmkit.ops.ssd.step import ssd_step_torch  # noqa: E402
from ssmkit.ops.ssd.triton_step import ssd_step_triton  # noqa: E402


def _squeeze1(out):
    return out[0][:, 0], out[1]


def _grads(fn, args, seed):
    """Outputs of fn and the gradients of a random projection of them w.r.t. every tensor arg."""
    leaves = [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
    outs = fn(*leaves)
    g = torch.Generator(device="cuda").manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, device="cuda", dtype=torch.float64)).sum()
               for o in outs if o.numel())  # fmt: skip
    ts = [a for a in leaves if isinstance(a, torch.Tensor)]
    return outs, torch.autograd.grad(loss, ts)


def _compare(case, fn, ref, args, dtype) -> list[list]:
    seed = int(torch.randint(2**31, (1,)))
    out, g = _grads(fn, args, seed)
    out_r, g_r = _grads(ref, [a.double() if isinstance(a, torch.Tensor) else a for a in args], seed)
    tol = TOL[dtype]
    rows = []
    for what, a, b in [*(("output", o, r) for o, r in zip(out, out_r) if r.numel()),
                       *((f"grad #{i}", a, b) for i, (a, b) in enumerate(zip(g, g_r)))]:  # fmt: skip
        err = rel_err(a, b)
        rows.append([case, what, f"{err:.2e}", f"{tol:.0e}", "yes" if err <= tol else "NO"])
    return rows


def checks(seed: int) -> list[list]:
    g = torch.Generator(device="cuda").manual_seed(seed)

    def r(*s, dt=torch.float32):
        return torch.randn(*s, generator=g, device="cuda").to(dt)

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x, w, b, s = r(4, 4093, 1000, dt=dtype), r(1000, 4), r(1000), r(4, 3, 1000, dt=dtype)
        rows += _compare(f"conv1d B=4 L=4093 D=1000 K=4 silu {str(dtype)[6:]}",
                         lambda *a: causal_conv1d(*a, activation="silu", return_final_state=True, backend="triton"),
                         lambda *a: causal_conv1d(*a, activation="silu", return_final_state=True, backend="torch"),
                         [x, w, b, s], dtype)  # fmt: skip
        xt, st = r(8, 1000, dt=dtype), r(8, 3, 1000, dt=dtype)
        rows += _compare(f"conv1d step B=8 D=1000 K=4 {str(dtype)[6:]}",
                         lambda *a: causal_conv1d_step_triton(*a, "silu"),
                         lambda *a: _squeeze1(causal_conv1d(a[0][:, None], a[2], a[3], a[1], "silu", True, "torch")),
                         [xt, st, w, b], dtype)  # fmt: skip
        st, u, dl, z = r(8, 1000, 16), r(8, 1000, dt=dtype), r(8, 1000, dt=dtype), r(8, 1000, dt=dtype)
        A, Bv, Cv, D, bias = -torch.exp(r(1000, 16)), r(8, 2, 16, dt=dtype), r(8, 2, 16, dt=dtype), r(1000), r(1000)
        rows += _compare(f"selective_scan_step B=8 D=1000 N=16 G=2 {str(dtype)[6:]}",
                         lambda *a: selective_scan_step_triton(*a, delta_softplus=True),
                         lambda *a: selective_scan_step_impl(*a, delta_softplus=True),
                         [st, u, dl, A, Bv, Cv, D, z, bias], dtype)  # fmt: skip
        st, x, dt_, z = r(8, 24, 64, 128), r(8, 24, 64, dt=dtype), r(8, 24, dt=dtype), r(8, 24, 64, dt=dtype)
        A, Bv, Cv, D, bias = -torch.exp(r(24)), r(8, 2, 128, dt=dtype), r(8, 2, 128, dt=dtype), r(24), r(24)
        rows += _compare(f"ssd_step B=8 H=24 P=64 N=128 G=2 {str(dtype)[6:]}",
                         lambda *a: ssd_step_triton(*a, dt_softplus=True),
                         lambda *a: ssd_step_torch(*a, dt_softplus=True),
                         [st, x, dt_, A, Bv, Cv, D, z, bias], dtype)  # fmt: skip
    return rows + check_long_conv(seed)


def check_long_conv(seed: int) -> list[list]:
    """conv1d at L = 2^20 + 3, B = 1, D = 2304 bf16 (2.4e9 elements: 64-bit offsets), with an initial
    state: output, dx, dweight, dbias, dstate against the "torch" path run in float32 on the same
    inputs (one backward each, dy random)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    L, D = 2**20 + 3, 2304
    x = torch.randn(1, L, D, generator=g, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(1, L, D, generator=g, device="cuda", dtype=torch.bfloat16)
    w, b = torch.randn(D, 4, generator=g, device="cuda"), torch.randn(D, generator=g, device="cuda")
    s = torch.randn(1, 3, D, generator=g, device="cuda", dtype=torch.bfloat16)
    rows, results = [], []
    for backend, dt in (("triton", torch.bfloat16), ("torch", torch.float32)):
        leaves = [t.to(dt).requires_grad_(True) for t in (x, w, b, s)]
        y = causal_conv1d(*leaves, activation="silu", backend=backend)
        grads = torch.autograd.grad(y, leaves, dy.to(dt))
        results.append([y.float(), *(t.float() for t in grads)])
        del y, grads, leaves
    tol = TOL[torch.bfloat16]
    for what, a, r in zip(("output", "dx", "dweight", "dbias", "dstate"), *results):
        a, r = a.flatten(), r.flatten()  # ||a - r|| / ||r|| in float64, 2^26 elements at a time
        parts = range(0, a.numel(), 2**26)
        num = sum(float((a[i:i + 2**26].double() - r[i:i + 2**26].double()).square().sum()) for i in parts)
        den = sum(float(r[i:i + 2**26].double().square().sum()) for i in parts)
        err = (num / den) ** 0.5 if torch.isfinite(a).all() else float("inf")
        rows.append([f"conv1d B=1 L=2^20+3 D=2304 K=4 silu bf16 ({L * D / 2**31:.2f} x 2^31 elements)", what,
                     f"{err:.2e}", f"{tol:.0e}", "yes" if err <= tol else "NO"])  # fmt: skip
    return rows


def _ms(fn: Callable) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def timings(mamba_src) -> list[list]:
    rows = []
    bf = torch.bfloat16
    x, w, b = torch.randn(8, 4096, 2048, device="cuda", dtype=bf), torch.randn(2048, 4, device="cuda"), torch.randn(2048, device="cuda")
    for be in ("triton", "torch"):
        f = lambda be=be: causal_conv1d(x, w, b, activation="silu", backend=be)  # noqa: E731
        xg = x.detach().requires_grad_(True)
        dy = torch.randn_like(x)
        fb = lambda be=be: causal_conv1d(xg, w, b, activation="silu", backend=be).backward(dy)  # noqa: E731
        rows.append([f"conv1d B=8 L=4096 D=2048 K=4 bf16, {be}", f"{_ms(f):.3f}", f"{_ms(fb):.3f}"])
    B_, D_, N_ = 16, 5120, 16
    st = torch.randn(B_, D_, N_, device="cuda")
    u, dl, z = (torch.randn(B_, D_, device="cuda", dtype=bf) for _ in range(3))
    A, Bv, Cv = -torch.rand(D_, N_, device="cuda"), torch.randn(B_, N_, device="cuda", dtype=bf), torch.randn(B_, N_, device="cuda", dtype=bf)
    D, bias = torch.randn(D_, device="cuda"), torch.randn(D_, device="cuda")
    with torch.no_grad():
        rows.append([f"selective_scan_step B={B_} D={D_} N={N_}, triton",
                     f"{_ms(lambda: selective_scan_step_triton(st, u, dl, A, Bv, Cv, D, z, bias, True)):.4f}", ""])
        rows.append([f"selective_scan_step B={B_} D={D_} N={N_}, torch",
                     f"{_ms(lambda: selective_scan_step_impl(st, u, dl, A, Bv, Cv, D, z, bias, True)):.4f}", ""])
        if mamba_src:
            try:
                from mamba_ssm.ops.triton.selective_state_update import selective_state_update

                s2 = st.clone()
                rows.append([f"mamba_ssm selective_state_update (in place) B={B_} D={D_} N={N_}",
                             f"{_ms(lambda: selective_state_update(s2, u, dl, A, Bv, Cv, D, z, bias, True)):.4f}", ""])  # fmt: skip
            except Exception as e:  # noqa: BLE001
                rows.append(["mamba_ssm selective_state_update", f"unavailable: {type(e).__name__}", ""])
        H, P, N2 = 80, 64, 128
        s3 = torch.randn(B_, H, P, N2, device="cuda")
        xs, dts, zs = torch.randn(B_, H, P, device="cuda", dtype=bf), torch.randn(B_, H, device="cuda", dtype=bf), torch.randn(B_, H, P, device="cuda", dtype=bf)
        A2, B2, C2 = -torch.rand(H, device="cuda"), torch.randn(B_, 1, N2, device="cuda", dtype=bf), torch.randn(B_, 1, N2, device="cuda", dtype=bf)
        D2, b2 = torch.randn(H, device="cuda"), torch.randn(H, device="cuda")
        for name, fn in (("triton", ssd_step_triton), ("torch", ssd_step_torch)):
            rows.append([f"ssd_step B={B_} H={H} P={P} N={N2}, {name}",
                         f"{_ms(lambda fn=fn: fn(s3, xs, dts, A2, B2, C2, D2, zs, b2, True)):.4f}", ""])  # fmt: skip
    return rows


def bwd_rows() -> list[list]:
    """The conv1d backward (silu, bias, bf16) at the Mamba-2 layer's 64K shape (x a view of the projection,
    dx written into a view of another, as ``ops/ssd/triton_layer.py`` does) for channel blocks of 128 / 256
    / 512 (``BWD_LANE_CHANNELS`` per thread) and 8 to 64 programs per SM (``BWD_PROGRAMS_PER_SM``), the default
    marked."""
    import ssmkit.ops.conv.causal_conv1d_triton as conv_triton

    proj = torch.randn(1, 65536, 8512, device="cuda", dtype=torch.bfloat16)
    x, dx = proj[..., 4096:8448], torch.empty_like(proj)[..., 4096:8448]
    dy = torch.randn(x.shape, device="cuda", dtype=x.dtype)
    w, b = torch.randn(4352, 4, device="cuda", dtype=x.dtype), torch.randn(4352, device="cuda", dtype=x.dtype)
    tiles, per_sm = conv_triton._tiles, conv_triton.BWD_PROGRAMS_PER_SM
    default = (tiles(4, 4352, conv_triton.BWD_LANE_CHANNELS)[2], per_sm)
    rows = []
    for bd in (128, 256, 512):
        for n in (8, 16, 32, 64):
            conv_triton._tiles = lambda K, D, V, bd=bd: (8, 4, bd, bd // (32 * V))
            conv_triton.BWD_PROGRAMS_PER_SM = n
            try:
                t = _ms(lambda: conv_triton.conv_bwd(dy, x, w, b, None, True, dx_out=dx))
            finally:
                conv_triton._tiles, conv_triton.BWD_PROGRAMS_PER_SM = tiles, per_sm
            mark = " (default)" if (bd, n) == default else ""
            warps = bd // (32 * conv_triton.BWD_LANE_CHANNELS)
            rows.append([f"backward, 1 x 65536 x 4352: BLOCK_D={bd} warps={warps} programs/SM={n}{mark}",
                         f"{t:.3f}", ""])  # fmt: skip
            print(rows[-1], flush=True)
    return rows


SWITCHES = {  # label: module constants of ssmkit.ops.conv.causal_conv1d_triton
    "none of the three switches": dict(CONST_STRIDES=False, UNMASKED_INSIDE=False, FAST_SIGMOID=False,
                                       FWD_CONST_STRIDES=False, FWD_UNMASKED_INSIDE=False),
    "constant strides only": dict(UNMASKED_INSIDE=False, FAST_SIGMOID=False, FWD_CONST_STRIDES=True),
    "unmasked inside tiles only": dict(CONST_STRIDES=False, FAST_SIGMOID=False, FWD_UNMASKED_INSIDE=True),
    "fast sigmoid only": dict(CONST_STRIDES=False, UNMASKED_INSIDE=False, FWD_CONST_STRIDES=False,
                              FWD_UNMASKED_INSIDE=False),
    "default (all three; the forward the fast sigmoid alone)": {},
    "forward 16 programs per SM": dict(FWD_PROGRAMS_PER_SM=16),
    "forward 32 programs per SM": dict(FWD_PROGRAMS_PER_SM=32),
    "forward: all three switches": dict(FWD_CONST_STRIDES=True, FWD_UNMASKED_INSIDE=True),
    "forward: fast sigmoid and constant strides": dict(FWD_CONST_STRIDES=True),
    "forward: fast sigmoid and unmasked inside tiles": dict(FWD_UNMASKED_INSIDE=True),
}


LANES = {  # channels per thread (forward, backward) and the forward's switches with them, each setting twice
    **{f"{label} ({i})": kw for i in (1, 2) for label, kw in (
        ("one channel per thread", dict(FWD_LANE_CHANNELS=1, BWD_LANE_CHANNELS=1)),
        ("default (two channels per thread)", {}),
        ("forward: four channels per thread", dict(FWD_LANE_CHANNELS=4)),
        ("forward: two channels, unmasked inside tiles", dict(FWD_UNMASKED_INSIDE=True)),
        ("forward: two channels, constant strides", dict(FWD_CONST_STRIDES=True)),
        ("forward: four channels, unmasked inside tiles", dict(FWD_LANE_CHANNELS=4, FWD_UNMASKED_INSIDE=True)),
        ("backward: 16 programs per SM", dict(BWD_PROGRAMS_PER_SM=16)),
        ("backward: 64 programs per SM", dict(BWD_PROGRAMS_PER_SM=64)))},
}


def switch_rows(switches: dict = SWITCHES) -> list[list]:
    """conv1d forward / backward (silu, bias, bf16) under each of ``switches`` at the Mamba-2 layer's 64K shape
    (x a view of the projection, dx written into a view of another) and Mamba's B=8 L=4096 D=2048; each
    setting is first checked against the float64 reference on fresh inputs (B=2 L=1000 D=256 plus an odd
    shape with an initial state)."""
    import ssmkit.ops.conv.causal_conv1d_triton as conv_triton

    defaults = {name: getattr(conv_triton, name) for kw in switches.values() for name in kw}
    proj = torch.randn(1, 65536, 8512, device="cuda", dtype=torch.bfloat16)
    shapes = (("Mamba-2 1 x 65536 x 4352 view", proj[..., 4096:8448], torch.empty_like(proj)[..., 4096:8448]),
              ("Mamba 8 x 4096 x 2048", torch.randn(8, 4096, 2048, device="cuda", dtype=torch.bfloat16), None))  # fmt: skip
    rows = []
    for label, consts in switches.items():
        for name, value in (defaults | consts).items():
            setattr(conv_triton, name, value)
        try:
            worst = max(float(r_[2]) for r_ in _switch_checks())
            for name, x, dx in shapes:
                D = x.shape[-1]
                w, b = torch.randn(D, 4, device="cuda", dtype=x.dtype), torch.randn(D, device="cuda", dtype=x.dtype)
                dy = torch.randn(x.shape, device="cuda", dtype=x.dtype)
                t_f = _ms(lambda x=x, w=w, b=b: conv_triton.conv_fwd(x, w, b, None, True))
                t_b = _ms(lambda x=x, w=w, b=b, dy=dy, dx=dx: conv_triton.conv_bwd(dy, x, w, b, None, True, dx_out=dx))
                rows.append([f"{name}: {label} (worst check {worst:.1e})", f"{t_f:.3f}", f"{t_b:.3f}"])
                print(rows[-1], flush=True)
        finally:
            for name, value in defaults.items():
                setattr(conv_triton, name, value)
    return rows


def _switch_checks() -> list[list]:
    """``_compare``'s rows (forward, final state and every gradient against float64) for conv1d with silu, an
    initial state and bias at B=2 L=1000 D=256 (whole channel blocks: the unmasked tiles run) and B=3 L=77
    D=200, fp32 and bf16; asserts every row within its tolerance."""
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for b, L, D in ((2, 1000, 256), (3, 77, 200)):
            x, s = torch.randn(b, L, D, device="cuda").to(dtype), torch.randn(b, 3, D, device="cuda").to(dtype)
            w, bias = torch.randn(D, 4, device="cuda"), torch.randn(D, device="cuda")
            rows += _compare(f"conv1d {b}x{L}x{D} {str(dtype)[6:]}",
                             lambda *a: causal_conv1d(*a, activation="silu", return_final_state=True, backend="triton"),
                             lambda *a: causal_conv1d(*a, activation="silu", return_final_state=True, backend="torch"),
                             [x, w, bias, s], dtype)  # fmt: skip
    assert all(r[-1] == "yes" for r in rows), [r for r in rows if r[-1] != "yes"]
    return rows


def run(out_dir: str, parts) -> str:
    sys.path.insert(0, os.path.dirname(__file__))
    from _gpu_bench import table_report

    rows = (bwd_rows() if "bwd" in parts else []) + (switch_rows() if "switches" in parts else [])
    rows += switch_rows(LANES) if "lanes" in parts else []
    head = ["case", "ms (switches: forward)", "(switches: backward ms)"]
    return table_report(out_dir, "gpu_conv_tiles", "causal conv1d tiles", head, rows)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    from _gpu_bench import parts_main

    parts_main("GPU: causal conv1d launch settings (python3 benchmarks/gpu_conv_steps.py --parts bwd switches lanes)",
               run, ["bwd", "switches", "lanes"])  # fmt: skip
