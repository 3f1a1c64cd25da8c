"""CPU speed of the fast paths against their reference loops (issue item 8).

Three tables, each in one run, as ratios against the baseline measured in the
same process:
  1. selective scan (Mamba-1): float64 reference loop vs the PyTorch path
     ("torch") vs the compiled C kernel ("c"), forward and forward+backward;
  2. SSD (Mamba-2): reference loop vs the chunked PyTorch algorithm;
  3. S4D layer: recurrent mode (one `step` per token) vs convolution mode (FFT).
Shapes: B=2, D=256 (SSD: H=8 heads of P=32), N=16. The fitted exponent is the
slope of log(time) vs log(L): 1.0 is linear.

    python benchmarks/scan_cpu.py                      # L in 1024, 4096, 16384
    python benchmarks/scan_cpu.py --lengths 512 1024   # quicker
    python benchmarks/scan_cpu.py --json results/scan_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import fit_exponent, fmt_ms, markdown_table, median_time  # noqa: E402

from ssmkit.layers.s4d import S4D  # noqa: E402
from ssmkit.ops.backends import BackendUnavailableError  # noqa: E402
from ssmkit.ops.scan import SCAN_BACKENDS, selective_scan  # noqa: E402
from ssmkit.ops.ssd import ssd  # noqa: E402

B, D, N, H, P = 2, 256, 16, 8, 32


def scan_inputs(L: int, g: torch.Generator, grad: bool):
    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).requires_grad_(grad)

    return dict(
        u=r(B, L, D), delta=r(B, L, D, scale=0.5), A=(-torch.rand(D, N, generator=g) * 4 - 0.1).requires_grad_(grad),
        B=r(B, L, N), C=r(B, L, N), D=r(D), z=r(B, L, D), delta_bias=r(D, scale=0.1),
    )


def ssd_inputs(L: int, g: torch.Generator, grad: bool):
    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).requires_grad_(grad)

    return dict(
        x=r(B, L, H, P), dt=r(B, L, H, scale=0.5), A=(-torch.rand(H, generator=g) * 4 - 0.1).requires_grad_(grad),
        B=r(B, L, 1, N), C=r(B, L, 1, N), D=r(H), dt_bias=r(H, scale=0.1),
    )


def fwd(op, inputs, **kw):
    return lambda: op(**inputs, **kw)


def fwd_bwd(op, inputs, **kw):
    def run():
        y = op(**inputs, **kw)
        y.sum().backward()
        for t in inputs.values():
            t.grad = None

    return run


def bench_op(name, op, make_inputs, backends, lengths, extra, args):
    """Rows of (L, pass, backend) -> seconds for one op."""
    g = torch.Generator().manual_seed(0)
    results = {}
    for L in lengths:
        for mode, make in (("forward", fwd), ("forward+backward", fwd_bwd)):
            inputs = make_inputs(L, g, grad=(mode != "forward"))
            for be in backends:
                ctx = torch.no_grad() if mode == "forward" else torch.enable_grad()
                with ctx:
                    fn = make(op, inputs, backend=be, **extra)
                    reps = 3 if be == "reference" else args.reps  # the loop is slow: fewer repeats, capped at 30 s
                    t = median_time(fn, reps=reps, warmup=1)
                results[(L, mode, be)] = t
                print(f"  {name} L={L:6d} {mode:17s} {be:9s} {fmt_ms(t)}", file=sys.stderr, flush=True)
    return results


def table(title, results, backends, baseline, lengths):
    rows = []
    for mode in ("forward", "forward+backward"):
        for L in lengths:
            base = results[(L, mode, baseline)]
            row = [mode, L, fmt_ms(base)]
            for be in backends:
                if be != baseline:
                    t = results[(L, mode, be)]
                    row.append(f"{fmt_ms(t)} ({base / t:.1f}x)")
            rows.append(row)
        exps = [f"{fit_exponent(lengths, [results[(L, mode, be)] for L in lengths]):.2f}" for be in backends]
        rows.append([mode, "exponent", *exps])
    headers = ["pass", "L", f"{baseline}"] + [f"{be} (speed-up)" for be in backends if be != baseline]
    return f"### {title}\n\n" + markdown_table(headers, rows)


def bench_s4d(lengths, args):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layer = S4D(D, d_state=N)
    results = {}
    with torch.no_grad():
        for L in lengths:
            x = torch.randn(B, L, D, generator=g)

            def recurrent():
                state = layer.init_state(B)
                for t in range(L):
                    _, state = layer.step(x[:, t], state)

            results[(L, "forward", "recurrent")] = median_time(recurrent, reps=1, warmup=0)
            results[(L, "forward", "convolution")] = median_time(lambda: layer(x), reps=args.reps)
            print(f"  s4d L={L:6d} recurrent {fmt_ms(results[(L, 'forward', 'recurrent')])} "
                  f"convolution {fmt_ms(results[(L, 'forward', 'convolution')])}", file=sys.stderr, flush=True)
    rows = []
    for L in lengths:
        rec, conv = results[(L, "forward", "recurrent")], results[(L, "forward", "convolution")]
        rows.append([L, fmt_ms(rec), f"{fmt_ms(conv)} ({rec / conv:.1f}x)"])
    rows.append(["exponent", *(f"{fit_exponent(lengths, [results[(L, 'forward', m)] for L in lengths]):.2f}"
                               for m in ("recurrent", "convolution"))])
    text = "### S4D layer, forward: recurrent mode (step per token) vs convolution mode (FFT)\n\n"
    return text + markdown_table(["L", "recurrent", "convolution (speed-up)"], rows), results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions of the fast paths (median)")
    ap.add_argument("--json", help="also write the raw timings to this JSON file")
    args = ap.parse_args(argv)
    scan_backends = ["reference", "torch"]
    try:
        SCAN_BACKENDS.resolve("c", torch.device("cpu"))
        scan_backends.append("c")
    except BackendUnavailableError as e:
        print(f"note: {e}", file=sys.stderr)
    header = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={B}, D={D}, N={N}, float32 inputs")
    scan_res = bench_op("scan", selective_scan, scan_inputs, scan_backends, args.lengths,
                        dict(delta_softplus=True), args)
    ssd_res = bench_op("ssd", ssd, ssd_inputs, ["reference", "torch"], args.lengths,
                       dict(dt_softplus=True, chunk_size=64), args)
    s4d_text, s4d_res = bench_s4d(args.lengths, args)
    print(header + "\n")
    print(table("Selective scan (Mamba-1), with z, D, delta bias, softplus", scan_res, scan_backends, "reference",
                args.lengths) + "\n")
    print(table(f"SSD (Mamba-2), H={H}, P={P}, G=1, chunk 64", ssd_res, ["reference", "torch"], "reference",
                args.lengths) + "\n")
    print(s4d_text)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        raw = {f"{op}/{L}/{mode}/{be}": t for op, res in (("scan", scan_res), ("ssd", ssd_res), ("s4d", s4d_res))
               for (L, mode, be), t in res.items()}
        with open(args.json, "w") as f:
            json.dump({"machine": header, "seconds": raw}, f, indent=1)


if __name__ == "__main__":
    main()
