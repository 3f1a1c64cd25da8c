"""GPU speed of the selective scan (Mamba-1): ssmkit's Triton kernels against mamba_ssm.

Called by ``kernels_gpu.py`` (``run(out_dir)``), in one process:
  1. correctness at full shapes and at L = 2^20 (``gpu_scan_checks.py``);
  2. B=8, L=4096, D=2048, N=16, bfloat16, with z, D, delta bias and softplus:
     ssmkit "triton" vs ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``
     (CUDA kernel, fed its own (B, D, L) layout), forward and forward+backward,
     median of CUDA-event timings (``triton.testing.do_bench``), and the fraction
     of the forward floor: one exp per (b, l, d, n) at the special-function rate
     (16/clk/SM), or the bytes (each input read once, y written once);
  3. a sweep of the kernels' tile sizes, the compiled kernels' registers and spills,
     and a per-kernel profile.
mamba_ssm is imported from its source tree (``MAMBA_SRC``) without running its package
``__init__``; its compiled ``selective_scan_cuda`` must be importable.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import traceback
from typing import Optional

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _gpu_bench import from_mamba_source, fwd_and_fwdbwd_rounds, ms, section  # noqa: E402
from _timing import markdown_table, ratio_over_rounds, save_report  # noqa: E402
from gpu_scan_checks import check_long, compiles_fullgraph, make_inputs, new_seed, run_checks  # noqa: E402
from numerics import rel_err  # noqa: E402  (on the path through gpu_scan_checks)

from ssmkit.ops.scan import selective_scan, selective_scan_reference  # noqa: E402
from ssmkit.ops.scan.triton_launch import (  # noqa: E402
    ScanKernelConfig,
    default_config,
    forward_config,
    scan_bwd,
    scan_fwd,
)

SHAPE = dict(b=8, L=4096, D=2048, N=16)


def floors_ms(b: int, L: int, D: int, N: int) -> tuple[float, float]:
    """(special-function floor, byte floor) of the forward, in ms."""
    props = torch.cuda.get_device_properties(0)
    clock_hz = 1.98e9  # H100/H200 SXM boost clock
    exp_ms = b * L * D * N / (16 * props.multi_processor_count * clock_hz) * 1e3
    bytes_ = b * L * D * 2 * 4 + b * L * N * 2 * 2  # u, delta, z, y (bf16) and B, C
    return exp_ms, bytes_ / 4.16e12 * 1e3


def ours(**k):
    return selective_scan(k["u"], k["delta"], k["A"], k["B"], k["C"], k["D"], k["z"], k["delta_bias"], True,
                          backend="triton")  # fmt: skip


ROUNDS = 3  # ours and mamba_ssm timed in turn, three times


def bench_vs_mamba(mamba) -> str:
    g = torch.Generator(device="cuda").manual_seed(new_seed())
    inp = make_inputs(g, **SHAPE)
    inp.pop("initial_state")
    fns = {"ours": (ours, inp)}
    label = ""
    if mamba is not None:
        # mamba_ssm's layout: u, delta, z (B, D, L); B, C (B, N, L)
        m_inp = {k: (v.transpose(1, 2).contiguous() if k in ("u", "delta", "z", "B", "C") else v) for k, v in inp.items()}

        def theirs(**k):
            return mamba(k["u"], k["delta"], k["A"], k["B"], k["C"], k["D"], k["z"], k["delta_bias"], True)

        with torch.no_grad():
            diff = (theirs(**m_inp).transpose(1, 2).float() - ours(**inp).float()).norm() / ours(**inp).float().norm()
        fns["theirs"] = (theirs, m_inp)
        label = f"mamba_ssm selective_scan_fn (rel diff to ours {diff:.1e})"
    t = fwd_and_fwdbwd_rounds(fns, ROUNDS)
    exp_ms, byte_ms = floors_ms(**SHAPE)
    (t_f, t_fb), floor = [statistics.median(r) for r in t["ours"]], max(exp_ms, byte_ms)
    rows = [["ssmkit triton", f"{t_f:.3f}", f"{t_fb:.3f}", "1.00", "1.00", f"{floor / t_f:.0%}"]]
    if mamba is not None:
        m_f, m_fb = [statistics.median(r) for r in t["theirs"]]
        rows.append([label, f"{m_f:.3f}", f"{m_fb:.3f}", ratio_over_rounds(t["ours"][0], t["theirs"][0], 4),
                     ratio_over_rounds(t["ours"][1], t["theirs"][1], 4), f"{floor / m_f:.0%}"])  # fmt: skip
    head = ["B=8 L=4096 D=2048 N=16 bf16", "fwd ms", "fwd+bwd ms", "ours/mamba fwd (rounds)",
            "ours/mamba fwd+bwd (rounds)", "fwd floor / time"]  # fmt: skip
    note = (f"\nmedians over {ROUNDS} rounds (ours and mamba_ssm timed in turn; ratios: of the medians, and their range"
            f" over the rounds)\nforward floors: {exp_ms:.3f} ms (exp at 16/clk/SM), {byte_ms:.3f} ms (bytes at 4.16 TB/s)\n")
    return markdown_table(head, rows) + note


def sweep_configs() -> str:
    """Tile sizes and segment counts at the benchmark shape, through the launchers directly."""
    g = torch.Generator(device="cuda").manual_seed(new_seed())
    inp = make_inputs(g, **SHAPE)
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    rows = []

    def timed(label, fn):
        try:
            rows.append([label, f"{ms(fn):.3f}"])
        except Exception as e:  # a config can exceed registers or shared memory
            rows.append([label, f"failed: {type(e).__name__}: {str(e)[:80]}"])

    base = default_config(16)
    for bd, ch, nw, ns, ahead in ((32, 4, 1, 1, True), (32, 4, 1, 1, False), (32, 2, 1, 1, True), (64, 4, 2, 1, True),
                                  (128, 4, 4, 1, True), (32, 4, 1, 8, True), (64, 4, 2, 8, True),
                                  (64, 4, 2, 8, False), (32, 4, 1, 0, True)):  # fmt: skip
        cfg = ScanKernelConfig(bd, ch, base.bwd_block_d, base.bwd_chunk, 8, num_warps=nw, n_segs=ns, dt_ahead=ahead)
        timed(f"fwd block_d={bd} chunk={ch} warps={nw} n_segs={ns or 'auto'} dt_ahead={ahead}",
              lambda: scan_fwd(*args, None, True, False, cfg))  # fmt: skip
    cfg = ScanKernelConfig(32, 4, 32, 2, 8)
    timed("fwd block_d=32 chunk=4 warps=1 n_segs=auto, saving states every 8",
          lambda: scan_fwd(*args, None, True, True, cfg))  # fmt: skip
    dy = torch.randn_like(inp["u"])
    for bbd, bch, S, bnw, ns, scat in ((32, 2, 8, 1, 8, True), (32, 2, 8, 1, 8, False), (32, 2, 8, 1, 16, True),
                                       (32, 2, 8, 1, 4, True), (32, 1, 8, 1, 16, True), (32, 4, 8, 1, 16, True),
                                       (32, 2, 16, 1, 16, True), (64, 2, 8, 2, 8, True)):  # fmt: skip
        cfg = ScanKernelConfig(32, 4 if S % 4 == 0 else 2, bbd, bch, S, bwd_num_warps=bnw, bwd_n_segs=ns, scatter=scat)
        _, _, hsave = scan_fwd(*args, None, True, True, cfg)
        timed(f"bwd block_d={bbd} chunk={bch} save_every={S} warps={bnw} n_segs={ns or 'auto'} scatter={scat}",
              lambda: scan_bwd(dy, None, *args, hsave, True, cfg))  # fmt: skip
    # Ā on the FMA pipe for the first k states (fewer special-function operations, more
    # instructions); each output against fma_exp=0's as a check.
    y0 = scan_fwd(*args, None, True, False, dataclasses.replace(base, fma_exp=0))[0].float()
    for k in (0, 4, 8, 12, 16):
        cfg = dataclasses.replace(base, fma_exp=k)
        y = scan_fwd(*args, None, True, False, cfg)[0].float()
        rel = float((y - y0).norm() / y0.norm())
        timed(f"fwd (default: block_d={cfg.block_d} warps={cfg.num_warps}) fma_exp={k} (output vs fma_exp=0: "
              f"{rel:.1e})",
              lambda: scan_fwd(*args, None, True, False, cfg))  # fmt: skip
    for ch, k in ((4, 0), (4, 8), (2, 0), (2, 8)):
        cfg = dataclasses.replace(base, chunk=ch, save_fma_exp=k)
        timed(f"fwd block_d={cfg.block_d} warps={cfg.num_warps} chunk={ch} saving states every 8, save_fma_exp={k}",
              lambda: scan_fwd(*args, None, True, True, cfg))  # fmt: skip
    _, _, hsave = scan_fwd(*args, None, True, True, base)
    for k in (0, 8):
        cfg = dataclasses.replace(base, bwd_fma_exp=k)
        timed(f"bwd (default) bwd_fma_exp={k}", lambda: scan_bwd(dy, None, *args, hsave, True, cfg))
    return markdown_table(["config", "ms"], rows)


def retune_rows() -> list[list]:
    """The forward (without and with checkpoints) and the backward at the benchmark shape for channel blocks of
    32 (1 warp) and 64 (2 warps), segment counts, Δ one chunk ahead or not, and exponentials on the FMA pipe;
    each output checked against the default's.

        python3 benchmarks/gpu_scan.py --retune
    """
    g = torch.Generator(device="cuda").manual_seed(new_seed())
    inp = make_inputs(g, **SHAPE)
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    base = default_config(16, torch.bfloat16)
    y0 = scan_fwd(*args, None, True, False, base)[0].float()
    rows = [["default forward", f"{ms(lambda: scan_fwd(*args, None, True, False, base)):.3f}", ""]]
    for bd, nw in ((32, 1), (64, 2)):
        for ns in (0, 4, 8, 16):
            for ahead in (True, False):
                for fma in (0, 8):
                    cfg = dataclasses.replace(base, block_d=bd, num_warps=nw, n_segs=ns, dt_ahead=ahead, fma_exp=fma)
                    y = scan_fwd(*args, None, True, False, cfg)[0].float()
                    err = rel_err(y, y0)
                    rows.append([f"forward block_d={bd} warps={nw} n_segs={ns or 'auto'} dt_ahead={ahead} fma_exp={fma}",
                                 f"{ms(lambda cfg=cfg: scan_fwd(*args, None, True, False, cfg)):.3f}", f"{err:.1e}"])  # fmt: skip
                    print(rows[-1], flush=True)
    dy = torch.randn_like(inp["u"])
    for bd, nw in ((32, 1), (64, 2)):
        for ns in (0, 8):
            cfg = dataclasses.replace(base, block_d=bd, num_warps=nw, n_segs=ns)
            rows.append([f"forward saving checkpoints, block_d={bd} warps={nw} n_segs={ns or 'auto'}",
                         f"{ms(lambda cfg=cfg: scan_fwd(*args, None, True, True, cfg)):.3f}", ""])  # fmt: skip
            print(rows[-1], flush=True)
    _, _, hsave = scan_fwd(*args, None, True, True, base)
    grads0 = scan_bwd(dy, None, *args, hsave, True, base)
    for bd, nw in ((32, 1), (64, 2)):
        for ns in (0, 8, 16):
            cfg = dataclasses.replace(base, bwd_block_d=bd, bwd_num_warps=nw, bwd_n_segs=ns)
            grads = scan_bwd(dy, None, *args, hsave, True, cfg)
            err = max(rel_err(a, b) for a, b in zip(grads, grads0) if b.numel() and bool(b.any()))
            rows.append([f"backward block_d={bd} warps={nw} n_segs={ns or 'auto'}",
                         f"{ms(lambda cfg=cfg: scan_bwd(dy, None, *args, hsave, True, cfg)):.3f}", f"{err:.1e}"])  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def segment_rows() -> list[list]:
    """The forward (without and with checkpoints) and the backward at the benchmark shape over the number
    of sequence segments run in parallel (each local pass covers all segments but one), then with a
    checkpoint every 4 steps instead of 8 (twice the checkpoints' memory); each output checked against
    the default's.

        python3 benchmarks/gpu_scan.py --segments
    """
    g = torch.Generator(device="cuda").manual_seed(new_seed())
    inp = make_inputs(g, **SHAPE)
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    base = default_config(16, torch.bfloat16)
    dy = torch.randn_like(inp["u"])
    y0, _, hsave = scan_fwd(*args, None, True, True, base)
    grads0 = scan_bwd(dy, None, *args, hsave, True, base)
    rows = []
    for ns in (4, 6, 8, 12, 16):
        cfg = dataclasses.replace(base, n_segs=ns)
        for save in (False, True):
            err = rel_err(scan_fwd(*args, None, True, save, cfg)[0].float(), y0.float())
            t = ms(lambda cfg=cfg: scan_fwd(*args, None, True, save, cfg))
            rows.append([f"forward{' saving checkpoints' if save else ''}, {ns} segments", f"{t:.3f}", f"{err:.1e}"])
            print(rows[-1], flush=True)
    for ns in (4, 6, 8, 12, 16, 24):
        cfg = dataclasses.replace(base, bwd_n_segs=ns)
        grads = scan_bwd(dy, None, *args, hsave, True, cfg)
        err = max(rel_err(a, b) for a, b in zip(grads, grads0) if b.numel() and bool(b.any()))
        t = ms(lambda cfg=cfg: scan_bwd(dy, None, *args, hsave, True, cfg))
        rows.append([f"backward, {ns} segments", f"{t:.3f}", f"{err:.1e}"])
        print(rows[-1], flush=True)
    for S in (8, 4):
        cfg = dataclasses.replace(base, save_every=S)
        _, _, hs = scan_fwd(*args, None, True, True, cfg)
        grads = scan_bwd(dy, None, *args, hs, True, cfg)
        err = max(rel_err(a, b) for a, b in zip(grads, grads0) if b.numel() and bool(b.any()))
        t_f = ms(lambda cfg=cfg: scan_fwd(*args, None, True, True, cfg))
        t_b = ms(lambda cfg=cfg, hs=hs: scan_bwd(dy, None, *args, hs, True, cfg))
        rows.append([f"checkpoint every {S} steps: forward saving them + backward", f"{t_f:.3f} + {t_b:.3f}",
                     f"{err:.1e}"])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def _args_and_dy(g: torch.Generator, b: int, L: int, D: int) -> tuple[list, torch.Tensor]:
    """The launchers' positional inputs (u .. delta_bias, no initial state) at N = 16, bf16, and a gradient of y."""
    inp = make_inputs(g, b, L, D, 16)
    return [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")], torch.randn_like(inp["u"])


def checkpoint_rows() -> list[list]:
    """The checkpoints' spacing and dtype (float32 or bfloat16, every 8 or 4 steps) at three bf16 shapes: the
    forward that saves them (the two-lane forward where ``forward_config`` picks it, its chunks of 8 then holding
    two checkpoints each at 4 steps) and the backward, three rounds in turn; every variant's output and gradients
    against the float64 loop at B=2 L=1024 D=256 first (the largest relative error over y and the gradients).

        python3 benchmarks/gpu_scan.py --checkpoints
    """
    variants = [(f"{'bf16' if half else 'fp32'}, every {S}", S, half) for half in (False, True) for S in (8, 4)]
    rows = []

    def configs(b: int, D: int, S: int, half: bool) -> tuple[ScanKernelConfig, ScanKernelConfig]:
        """(forward, backward) configs of the defaults with checkpoints every S steps, bfloat16 or not."""
        fwd = forward_config(16, b, D, torch.device("cuda"), True, torch.bfloat16)
        return tuple(dataclasses.replace(c, save_every=S, half_checkpoints=half)
                     for c in (fwd, default_config(16, torch.bfloat16)))  # fmt: skip

    g = torch.Generator(device="cuda").manual_seed(new_seed())
    small = make_inputs(g, 2, 1024, 256, 16)
    small.pop("initial_state")
    names = [k for k, v in small.items() if v is not None]
    ref_in = {k: small[k].double().requires_grad_(True) for k in names}
    y_ref = selective_scan_reference(**{**small, **ref_in}, delta_softplus=True)
    wy = torch.randn(y_ref.shape, generator=g, device="cuda").to(torch.bfloat16)  # (the kernels' dy: bf16)
    g_ref = torch.autograd.grad((y_ref * wy.double()).sum(), [ref_in[k] for k in names])
    args = [small[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    for label, S, half in variants:
        fcfg, bcfg = configs(2, 256, S, half)
        y, _, hs = scan_fwd(*args, None, True, True, fcfg)
        grads = scan_bwd(wy, None, *args, hs, True, bcfg)
        errs = [rel_err(y, y_ref)] + [rel_err(a, r) for a, r in zip(grads, g_ref)]  # (g_ref: u .. delta_bias)
        rows.append([f"B=2 L=1024 D=256, {label}: largest error against float64", f"{max(errs):.1e}", hs.dtype])
        print(rows[-1], flush=True)
    for shape in (SHAPE, dict(b=2, L=8192, D=4096, N=16), dict(b=1, L=65536, D=4096, N=16)):
        args, dy = _args_and_dy(g, shape["b"], shape["L"], shape["D"])
        times: dict = {label: [] for label, _, _ in variants}
        for _ in range(3):
            for label, S, half in variants:
                fcfg, bcfg = configs(shape["b"], shape["D"], S, half)
                _, _, hs = scan_fwd(*args, None, True, True, fcfg)
                times[label].append((ms(lambda c=fcfg: scan_fwd(*args, None, True, True, c)),
                                     ms(lambda c=bcfg, hs=hs: scan_bwd(dy, None, *args, hs, True, c))))  # fmt: skip
                del hs
        for label, S, half in variants:
            f, b = (statistics.median(t[i] for t in times[label]) for i in (0, 1))
            gb = shape["b"] * shape["L"] // S * shape["D"] * 16 * (2 if half else 4) / 1e9
            rows.append([f"B={shape['b']} L={shape['L']} D={shape['D']}, {label} ({gb:.2f} GB): forward saving + "
                         f"backward ms", f"{f:.3f} + {b:.3f} = {f + b:.3f}", ""])  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def backward_segment_rows() -> list[list]:
    """The backward (bf16 checkpoints every 4 steps) over segment counts at seven bf16 shapes: the rule's count
    (``triton_launch._backward_split``), the earlier rule's (~32 programs per SM) and the counts that fill 1-4
    whole waves of ``BWD_RESIDENT_PER_SM`` programs per SM, with the local pass cut for 80 or 160 programs per
    SM; each variant's gradients checked against the default's, timed twice in turn.

        python3 benchmarks/gpu_scan.py --backward-segments
    """
    from ssmkit.ops.scan.triton_launch import BWD_RESIDENT_PER_SM, _backward_split
    from ssmkit.ops._triton import sm_count

    rows = []
    shapes = [(8, 4096, 2048), (4, 4096, 4096), (2, 8192, 4096), (16, 2048, 1536), (1, 16384, 4096), (1, 65536, 4096),
              (1, 65536, 1536)]  # fmt: skip
    g = torch.Generator(device="cuda").manual_seed(new_seed())
    for b, L, D in shapes:
        args, dy = _args_and_dy(g, b, L, D)
        base = default_config(16, torch.bfloat16)
        _, _, hs = scan_fwd(*args, None, True, True, forward_config(16, b, D, dy.device, True, torch.bfloat16))
        ref = scan_bwd(dy, None, *args, hs, True, base)
        programs = b * D // base.bwd_block_d
        wave = BWD_RESIDENT_PER_SM * sm_count(dy.device)
        rule = _backward_split(L, programs, base, dy.device)[0]
        earlier = round(32 * sm_count(dy.device) / programs)  # the rule before: ~32 programs per SM
        counts = sorted({rule, earlier, *(max(1, k * wave // programs) for k in range(1, 5))})
        variants = [(n, lp) for n in counts for lp in ((80, 160) if n == rule else (80,))]
        times: dict = {}
        for _ in range(2):
            for n, lp in variants:
                cfg = dataclasses.replace(base, bwd_n_segs=n, bwd_local_programs_per_sm=lp)
                times.setdefault((n, lp), []).append(ms(lambda c=cfg, hs=hs: scan_bwd(dy, None, *args, hs, True, c)))
        for n, lp in variants:
            cfg = dataclasses.replace(base, bwd_n_segs=n, bwd_local_programs_per_sm=lp)
            segs, _, pieces = _backward_split(L, programs, cfg, dy.device)
            err = max(rel_err(a, r) for a, r in zip(scan_bwd(dy, None, *args, hs, True, cfg), ref) if r.numel())
            label = f"{segs}{' (rule)' if n == rule else ''}"
            rows.append([f"B={b} L={L} D={D}", label, f"{programs * segs / wave:.2f}", f"{lp} ({pieces} pieces)",
                         " / ".join(f"{t:.3f}" for t in times[(n, lp)]), f"{err:.1e}"])  # fmt: skip
            print(rows[-1], flush=True)
        del hs
    return rows


def backward_variant_rows() -> list[list]:
    """The backward's other settings against the default (bf16 checkpoints every 4 steps) at two bf16 shapes:
    chunks of 4 (one per checkpoint span, no first pass), checkpoints every 2 steps, 2 or 4 of the 16 states'
    exponentials on the FMA pipe, the channel sums by tensor-core products or by ``tl.sum``'s butterfly instead
    of the reduce-scatter, the local pass cut for 10-40 programs per SM; each checked against the default's
    gradients, timed twice in turn (forward saving + backward ms).

        python3 benchmarks/gpu_scan.py --backward-variants
    """
    changes = [dict(), dict(bwd_chunk=4), dict(save_every=2), dict(bwd_fma_exp=2), dict(bwd_fma_exp=4),
               dict(dot_reduce=True), dict(scatter=False), dict(bwd_local_programs_per_sm=40),
               dict(bwd_local_programs_per_sm=20), dict(bwd_local_programs_per_sm=10)]  # fmt: skip
    rows = []
    g = torch.Generator(device="cuda").manual_seed(new_seed())
    for b, L, D in ((8, 4096, 2048), (16, 2048, 1536)):
        args, dy = _args_and_dy(g, b, L, D)
        fwd0, base = forward_config(16, b, D, dy.device, True, torch.bfloat16), default_config(16, torch.bfloat16)
        ref = scan_bwd(dy, None, *args, scan_fwd(*args, None, True, True, fwd0)[2], True, base)
        times: dict = {}
        for _ in range(2):
            for i, ch in enumerate(changes):
                fwd = dataclasses.replace(fwd0, save_every=ch.get("save_every", fwd0.save_every))
                bwd = dataclasses.replace(base, **ch)
                hs = scan_fwd(*args, None, True, True, fwd)[2]
                times.setdefault(i, []).append((ms(lambda c=fwd: scan_fwd(*args, None, True, True, c)),
                                                ms(lambda c=bwd, hs=hs: scan_bwd(dy, None, *args, hs, True, c))))
                if len(times[i]) == 2:
                    err = max(rel_err(a, r) for a, r in zip(scan_bwd(dy, None, *args, hs, True, bwd), ref) if r.numel())
                    rows.append([f"B={b} L={L} D={D}", ", ".join(f"{k}={v}" for k, v in ch.items()) or "default",
                                 " / ".join(f"{f:.3f} + {t:.3f}" for f, t in times[i]), f"{err:.1e}"])  # fmt: skip
                    print(rows[-1], flush=True)
                del hs
    return rows


def kernel_resources() -> str:
    import ssmkit.ops.scan.triton_launch as launch

    rows = []
    for name in ("selective_scan_fwd_kernel", "selective_scan_bwd_kernel"):
        fn = getattr(launch, name)
        for caches in fn.device_caches.values():
            for k in caches[0].values():
                md = k.metadata
                rows.append([name, md.num_warps, k.n_regs, k.n_spills, md.shared])
    return markdown_table(["kernel", "warps", "registers", "spills", "shared bytes"], rows)


def profile_kernels() -> str:
    g = torch.Generator(device="cuda").manual_seed(new_seed())
    inp = {k: v.requires_grad_(True) for k, v in make_inputs(g, **SHAPE).items()}
    for _ in range(3):
        ours(**inp).float().sum().backward()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            ours(**inp).float().sum().backward()
        torch.cuda.synchronize()
    return "```\n" + prof.key_averages().table(sort_by="cuda_time_total", row_limit=12) + "\n```"


def _wait_for(flag: Optional[str], timeout_s: float = 420.0) -> str:
    """Wait until the file ``flag`` exists (a background mamba_ssm build finished)."""
    import time

    t0 = time.time()
    while flag and not os.path.exists(flag) and time.time() - t0 < timeout_s:
        time.sleep(2)
    return f"waited {time.time() - t0:.0f} s for {flag}" if flag else "no build to wait for"


def run(out_dir: str) -> str:
    """All sections; writes ``gpu_scan.md`` / ``gpu_scan.json`` under ``out_dir``; returns the report.

    Correctness first (it needs no mamba_ssm, which may still be building in the
    background: ``MAMBA_READY`` names the file its build touches when done), timings after.
    """
    import gpu_conv_steps

    os.makedirs(out_dir, exist_ok=True)
    seed = new_seed()
    report = [f"## Selective scan (Mamba-1) on {torch.cuda.get_device_name()} (torch {torch.__version__}, seed {seed})\n"]
    results: dict = {}
    check_head = ["case", "quantity", "rel err", "tol", "ok"]
    section("correctness vs float64 reference", lambda: markdown_table(check_head, run_checks(seed)), report, results)
    section("torch.compile", lambda: markdown_table(check_head, compiles_fullgraph(seed)), report, results)
    section("L = 2^20, tensors past 2^31 elements", lambda: markdown_table(check_head, check_long(seed)),
            report, results)  # fmt: skip
    section("conv1d and decode steps: correctness", lambda: markdown_table(check_head, gpu_conv_steps.checks(seed)),
             report, results)  # fmt: skip
    print(_wait_for(os.environ.get("MAMBA_READY")), flush=True)
    try:
        mamba = from_mamba_source(os.environ.get("MAMBA_SRC"), "ops.selective_scan_interface", "selective_scan_fn")
    except Exception:  # a failed build: time ours alone
        print(traceback.format_exc(), flush=True)
        mamba = None
    section("ssmkit vs mamba_ssm", lambda: bench_vs_mamba(mamba), report, results)
    section("tile sizes", sweep_configs, report, results)
    section("compiled kernels", kernel_resources, report, results)
    section("kernel profile (5 x fwd+bwd)", profile_kernels, report, results)
    section("conv1d and decode steps: timings",
             lambda: markdown_table(["case", "fwd ms", "fwd+bwd ms"], gpu_conv_steps.timings(os.environ.get("MAMBA_SRC"))),
             report, results)  # fmt: skip
    text = "\n".join(report)
    save_report(out_dir, "gpu_scan", text, {k: str(v) for k, v in results.items()})
    return text


if __name__ == "__main__":
    if "--retune" in sys.argv:
        print(markdown_table(["B=8 L=4096 D=2048 N=16 bf16", "ms", "rel. diff to the default's output"],
                             retune_rows()))  # fmt: skip
    if "--checkpoints" in sys.argv:
        print(markdown_table(["bf16, N=16", "value", "checkpoints"], checkpoint_rows()))
    if "--backward-variants" in sys.argv:
        print(markdown_table(["bf16, N=16", "change", "forward saving + backward ms", "diff"], backward_variant_rows()))
    if "--backward-segments" in sys.argv:
        print(markdown_table(["bf16, N=16", "segments", "waves", "local programs per SM", "backward ms", "diff"],
                             backward_segment_rows()))  # fmt: skip
    if "--segments" in sys.argv:
        print(markdown_table(["B=8 L=4096 D=2048 N=16 bf16", "ms", "rel. diff to the default's output"],
                             segment_rows()))  # fmt: skip
