"""GPU: the decode step's projections at batch 1, cuBLAS (F.linear) against ssmkit's Triton matrix-vector kernel.

    python3 benchmarks/gemv_gpu.py          # bfloat16 on CUDA; tables under $OUT when set

For the projections of the three public Mamba shapes (130m, mamba2-130m, 1.4b) and their LM head: each
call is captured 200 times in a row in one CUDA graph (as graphed decoding runs them), and the time per call
is the best of 5 replays. Both results are checked against the float32 product (relative error). Rows of x: 1
(what ``ssmkit.ops.linear`` takes the kernel for) and 4 (for comparison).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _timing import markdown_table, save_report  # noqa: E402

from ssmkit.ops.linear import gemv  # noqa: E402
from ssmkit.ops._triton import sm_count  # noqa: E402
from ssmkit.ops.linear.gemv_triton import gemv_tiles  # noqa: E402

SHAPES = {  # (N, K) of nn.Linear's weight
    "mamba-130m in_proj": (3072, 768), "mamba-130m x_proj": (80, 1536), "mamba-130m dt_proj": (1536, 48),
    "mamba-130m out_proj": (768, 1536), "mamba2-130m in_proj": (3352, 768), "mamba-1.4b in_proj": (8192, 2048),
    "mamba-1.4b x_proj": (160, 4096), "mamba-1.4b dt_proj": (4096, 128), "mamba-1.4b out_proj": (2048, 4096),
    "LM head (50280 x 768)": (50280, 768),
}  # fmt: skip


def graph_us(fn, reps: int = 200) -> float:
    """µs per call of ``fn``, captured ``reps`` times in one CUDA graph; the best of 5 replays."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) * 1e3 / reps)
    return best


def run(out_dir: str | None) -> str:
    torch.manual_seed(0)
    rows, data = [], []
    for M in (1, 4):
        for name, (N, K) in SHAPES.items():
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            w = (torch.randn(N, K, device="cuda") * K**-0.5).to(torch.bfloat16)
            ref = F.linear(x.float(), w.float())
            err = [((o.float() - ref).norm() / ref.norm()).item() for o in (F.linear(x, w), gemv(x, w))]
            t_cublas, t_ours = graph_us(lambda: F.linear(x, w)), graph_us(lambda: gemv(x, w))
            gb_s = N * K * 2 / (t_ours * 1e-6) / 1e9
            rows.append([M, name, f"{N * K * 2 / 1e6:.2f}", "x".join(map(str, gemv_tiles(K, N, sm_count(torch.device("cuda"))))), f"{t_cublas:.2f}",
                         f"{t_ours:.2f}", f"{t_cublas / t_ours:.2f}x", f"{gb_s:.0f}", f"{err[0]:.1e} / {err[1]:.1e}"])
            data.append(dict(rows=M, shape=name, N=N, K=K, cublas_us=t_cublas, ssmkit_us=t_ours, err=err))
            print(rows[-1], flush=True)
    head = ["rows", "projection", "weight MB", "tile (N x K)", "cuBLAS µs", "ssmkit µs", "cuBLAS / ssmkit",
            "ssmkit GB/s", "rel err cuBLAS / ssmkit"]  # fmt: skip
    text = f"## Decode projections, bf16, {torch.cuda.get_device_name()}, torch {torch.__version__}\n\n"
    text += markdown_table(head, rows) + "\n"
    if out_dir:
        save_report(out_dir, "gemv_gpu", text, {"device": torch.cuda.get_device_name(), "rows": data})
    return text


if __name__ == "__main__":
    print(run(os.environ.get("OUT")))
