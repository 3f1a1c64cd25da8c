"""GPU probe of a measured, not kept change: the SSD backward with dB, dC by (chunk, group) (``split_bwd``) against
the fused kernel's per-head shares. Needs ``ssd_split_backward.patch`` applied; from the repository root:

    git apply benchmarks/attempts/ssd_split_backward.patch
    python3 benchmarks/attempts/ssd_split_backward_probe.py

Prints forward / forward+backward ms (each row checked against the float32 "torch" backend) in two alternating
rounds at three shapes, then per-kernel device times (torch.profiler). Results: docs/kernels_gpu_notes_ssd.md.
"""
import sys, time
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import torch
from _gpu_bench import plan_keywords
from gpu_ssd import ssd_inputs
from gpu_ssd_forward import Checked
from ssmkit.ops.ssd.triton import ssd_triton

VAR = {"fused+shares": dict(split_bwd=False), "split g4 s1": dict(split_bwd=True, group_warps=4, group_stages=1),
       "split g8 s1": dict(split_bwd=True, group_warps=8, group_stages=1),
       "split g4 s2": dict(split_bwd=True, group_warps=4, group_stages=2)}


def profile(inp, label, n=5):
    leaves = {k: (v.detach().requires_grad_(True) if v.is_floating_point() else v) for k, v in inp.items()}
    def step():
        y = ssd_triton(**leaves, dt_softplus=True, chunk_size=32)
        y = y[0] if isinstance(y, tuple) else y
        y.backward(torch.ones_like(y))
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    parts = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", 0) or getattr(ev, "cuda_time_total", 0)
        if t:
            parts[ev.key[:34]] = t / n / 1000
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:8]
    print(f"PROFILE {label}: total {sum(parts.values()):.3f} | " + " | ".join(f"{k} {v:.3f}" for k, v in top), flush=True)


t0 = time.time()
for b, L, H in [(8, 4096, 32), (1, 16384, 64), (1, 65536, 64)]:
    inp = ssd_inputs(b, L, H=H)
    checked = Checked(inp)
    for rnd in range(2):
        for label, kw in VAR.items():
            with plan_keywords(**kw):
                checked.row(f"B={b} L={L} H={H} {label} (round {rnd})", 32)
    for label in ("fused+shares", "split g4 s1", "split g8 s1"):
        with plan_keywords(**VAR[label]):
            profile(inp, f"B={b} L={L} H={H} {label}")
    del inp, checked
    torch.cuda.empty_cache()
    print(f"elapsed {time.time() - t0:.0f} s", flush=True)
