"""Where a layer's time goes on the GPU: per-kernel CUDA time, aten ops with shapes, and the
Mamba-2 layer against its chunk size.

    python benchmarks/gpu_layer_profile.py              # Mamba-2 and Mamba, B=1 L=16K d=2048 bf16
    python benchmarks/gpu_layer_profile.py --chunks     # also: Mamba-2 fwd / fwd+bwd at chunk 32, 64, 128
    python benchmarks/gpu_layer_profile.py --length 65536 --layers Mamba-2   # one layer, one sequence of 64K

Each profile is of 5 forward+backward calls after 3 warm-up calls (``torch.profiler``; per-call
times are the totals divided by 5). The layers are those of ``gpu_layers.py`` (default backends).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(__file__))
from _gpu_bench import ssd_chunks_as_asked  # noqa: E402
from gpu_layers import build  # noqa: E402

from ssmkit.layers import Mamba2  # noqa: E402

D_MODEL, L = 2048, 16384


def profile(name: str, L: int = L) -> str:
    """Kernel table and aten-op table (with input shapes) of 5 forward+backward calls of one layer
    on one sequence of L tokens."""
    torch.manual_seed(0)
    layer = build(name, D_MODEL, L).to(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, L, D_MODEL, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)

    def step():
        y = layer(x)
        (y[0] if isinstance(y, tuple) else y).backward(dy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    kernels = prof.key_averages().table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=90)
    ops = sorted((e for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith("aten::")),
                 key=lambda e: -e.self_device_time_total)[:25]  # fmt: skip
    lines = [f"== {name}, B=1 L={L} d={D_MODEL} bf16, 5 x fwd+bwd", kernels, "aten ops (self CUDA time, 5 calls):"]
    lines += [f"{e.self_device_time_total / 1e3:8.3f} ms  n={e.count:4d}  {e.key:30s} {str(e.input_shapes)[:140]}"
              for e in ops]  # fmt: skip
    return "\n".join(lines)


def chunk_sizes() -> str:
    """Mamba-2 layer forward / forward+backward median ms at chunk 32, 64, 128, L = 16K and 64K (each
    chunk as asked: by default the SSD kernels run 16-bit chunks of 32 on the GPU)."""
    with ssd_chunks_as_asked():
        return _chunk_sizes()


def _chunk_sizes() -> str:
    lines = []
    for length in (16384, 65536):
        x = torch.randn(1, length, D_MODEL, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn_like(x)
        for q in (32, 64, 128):
            torch.manual_seed(0)
            m = Mamba2(D_MODEL, d_state=128, headdim=64, chunk_size=q).to(device="cuda", dtype=torch.bfloat16)
            with torch.no_grad():
                t_f = do_bench(lambda: m(x)[0], warmup=25, rep=200)
            t_fb = do_bench(lambda: m(x)[0].backward(dy), warmup=25, rep=200, grad_to_none=[x, *m.parameters()])
            lines.append(f"L={length} chunk={q}: fwd {t_f:.3f} ms, fwd+bwd {t_fb:.3f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", action="store_true", help="also time the Mamba-2 layer at chunk 32, 64, 128")
    p.add_argument("--length", type=int, default=L, help=f"tokens of the profiled sequence (default {L})")
    p.add_argument("--layers", nargs="+", default=["Mamba-2", "Mamba"], choices=["Mamba-2", "Mamba"])
    a = p.parse_args()
    for n in a.layers:
        print(profile(n, a.length), flush=True)
    if a.chunks:
        print(chunk_sizes(), flush=True)
