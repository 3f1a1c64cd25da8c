"""GPU: variants of the SSD backward, each checked and then timed in one process.

    python3 benchmarks/gpu_ssd_backward.py [--out DIR] [--parts op layer-op 16k layer profile profile-layer-op host heads
                                            head-sums ...]

The fused backward (``triton_scan_bwd.py``) holds 255 registers at chunk 32 with 4 warps, so
two programs share an SM. Variants (``triton_launch`` constants and ``make_plan`` keywords):

- "recompute states" (``KEEP_STATES=False``, the plan before): the backward recomputes the state
  entering every chunk by a state walk; by default the forward keeps them (the chunk-parallel
  forward writes them anyway, the walking scan stores them as it goes);
- "chunk-parallel forward" (``fwd_span=1``): at the layer's shapes (one sequence, 64 heads) the plan
  walks; this forces the chunk-parallel forward (a state walk with segments, then chunks in parallel);
- "walking forward, tiled walks" (``WALKING_PLAN_TILES``, ``fwd_span=0``): the walking scan, with the
  state walks in (64, 32) tiles;
- "chunk 64" (the chunk as asked, 8 warps in the fused backward) and "chunk 64, 4 warps, Y_off from dC";
- "own Y_off" (``y_off_from_dc=False``): dy·Y_off by its own product.

(Also tried in the sessions that wrote this script, then removed from the kernels: the fused
kernel's state products transposed so that they take wgmma, register caps of 168, the decay
gradient's <g, h> formed by the dstates walk or from a second read of the tiles, smaller state
tiles for the chunk-parallel forward at the layer's shapes; all slower: ``docs/kernels_gpu_notes_ssd.md``,
tenth and eleventh sessions.)

- "op": B=8, L=4096, H=32, P=64, N=128, G=1, bf16 (D, dt_bias, softplus, a final-state
  gradient): y, the final state and every gradient against the float32 "torch" backend (bf16
  tolerance 3e-2), then forward / forward+backward ms.
- "layer-op": the same at the Mamba-2 layer's shapes (one sequence of 16K or 64K tokens, 64 heads),
  with segment counts too.
- "16k": the same at the shape of the comparison with attention at 16K tokens (one sequence, 32 heads),
  with segment counts and the chunk-parallel forward.
- "layer": the Mamba-2 layer (d_model 2048) at 16K and 64K tokens, default and the variants named
  in ``LAYER_VARIANTS``, next to the attention layer of ``gpu_layers.py``.
- "profile": per-kernel CUDA time of one forward+backward at the "op" shape; "profile-layer-op" the same
  at the layer's 64K shape.
- "heads": the chunk-parallel kernels launching the heads of a chunk together (the default), with the
  fused backward also summing the heads' dB, dC shares ("head sums in kernel", ``REDUCE_HEADS``), or
  every chunk of a head first ("heads outer"), at the op's and the layer's shapes, and the Mamba-2 layer.
- "host": host time per forward+backward through the eager autograd.Function and through the custom
  ops (``triton.EAGER_FUNCTION``), next to the measured forward+backward.
- "head-sums": the heads' dB, dC shares added up by one Triton launch (the default, ``HEAD_SUMS_KERNEL``)
  against two ``torch.sum`` calls, alternating twice, at the op's shape and one sequence of 16K / 64K tokens
  with 64 heads, the Mamba-2 layer, and the per-kernel profile of both at 64K tokens.
- "head-loop": the chunk-parallel backward with one program per (chunk, group) walking the group's heads
  (``triton_bwd_heads.py``; 4 or 8 warps, 1 or 2 stages) against one program per (chunk, head), at the op's
  and the layer's shapes (bf16), the Mamba-2 layer, and their per-kernel profile at 64K tokens;
  "head-loop-fp32": fp32 (B=2 and 8, L=4096, chunks 32 and 64): the default (the head loop) twice, before
  and after, one program per (chunk, head), and the chunk-parallel forward; "fp32-forward": the default
  and the chunk-parallel forward in fp32 where the plan walks (one sequence of 16K / 64K tokens, B=4).
- "whole-tiles": the chunk loops on whole tiles (the default where they apply, ``WHOLE_TILES``) against
  masked ones ("masked tiles"), alternating three times, at the op's shape and the layer's two, then the
  per-kernel profile of both at the op's shape.

Writes ``gpu_ssd_backward.md`` / ``.json``.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _gpu_bench import fwd_and_fwdbwd, parts_main, plan_constants, plan_keywords, table_report  # noqa: E402
from gpu_ssd import profiled, ssd_inputs  # noqa: E402
from gpu_ssd_forward import Checked, mamba2_layer_rows  # noqa: E402

from ssmkit.ops.ssd import triton as ssd_triton_module  # noqa: E402

VARIANTS = {  # label: (triton_launch constants, make_plan keywords)
    "default": ({}, {}),
    "recompute states": (dict(KEEP_STATES=False), {}),
    "chunk-parallel forward": ({}, dict(fwd_span=1)),
    "walking forward, tiled walks": (dict(WALKING_PLAN_TILES=True), dict(fwd_span=0)),
    "chunk 64": (dict(GPU_CHUNK_16BIT=64), dict(chunk_size=64)),
    "chunk 64, 4 warps, Y_off from dC": (dict(GPU_CHUNK_16BIT=64), dict(chunk_size=64, bwd_warps=4, y_off_from_dc=True)),
    "own Y_off": ({}, dict(y_off_from_dc=False)),
    "masked tiles": (dict(WHOLE_TILES=False), {}),
    "heads outer": ({}, dict(heads_inner=False, head_loop=False)),
    "head sums in kernel": (dict(REDUCE_HEADS=True), dict(head_loop=False)),
    "head sums by torch.sum": (dict(HEAD_SUMS_KERNEL=False), {}),
    "one head per program": ({}, dict(head_loop=False)),
    "head loop, 4 warps": ({}, dict(head_loop=True, bwd_warps=4)),
    "head loop, 8 warps": ({}, dict(head_loop=True, bwd_warps=8)),
    "head loop, 8 warps, 2 stages": ({}, dict(head_loop=True, bwd_warps=8, bwd_stages=2)),
    "state tiles (128, 32)": ({}, dict(state_tile=(128, 32))),
    "state tiles (64, 64)": ({}, dict(state_tile=(64, 64))),
    "state walks, 3 stages": ({}, dict(state_stages=3)),
    "state walks, 8 warps": ({}, dict(state_warps=8)),
    "segments of 32 chunks": ({}, dict(seg_chunks=32)),
    "segments of 64 chunks": ({}, dict(seg_chunks=64)),
    "segments of 128 chunks": ({}, dict(seg_chunks=128)),
    "chunk-parallel, segments of 64 chunks": ({}, dict(fwd_span=1, seg_chunks=64)),
    "chunk-parallel, segments of 128 chunks": ({}, dict(fwd_span=1, seg_chunks=128)),
}
# fp32 rows of "head-loop-fp32" (the default, the head loop since the twentieth session, twice: before and after)
FP32_LABELS = ("default", "one head per program", "chunk-parallel forward", "default")
SDPA_SHAPE = (1, 16384, 32)  # the SSD core's shape in the comparison with attention at 16K tokens
LAYER_VARIANTS = ("recompute states", "walking forward, tiled walks", "chunk-parallel forward")
LAYER_SHAPES = ((1, 16384, 64), (1, 65536, 64))
LAYER_SEGMENTS = ("segments of 32 chunks", "segments of 64 chunks", "segments of 128 chunks",
                  "chunk-parallel, segments of 64 chunks")


@contextlib.contextmanager
def variant(label: str):
    """Inside: the plan of ``VARIANTS[label]``."""
    constants, keywords = VARIANTS[label]
    with plan_constants(**constants), plan_keywords(**keywords):
        yield


def op_rows(shapes=((8, 4096, 32),), labels=tuple(VARIANTS)) -> list[list]:
    rows = []
    for b, L, H in shapes:
        checked = Checked(ssd_inputs(b, L, H=H))
        for label in labels:
            with variant(label):
                rows.append(checked.row(f"B={b} L={L} H={H}: {label}", 32))
        del checked
        torch.cuda.empty_cache()
    return rows


def layer_rows() -> list[list]:
    """The Mamba-2 layer rows (``gpu_ssd_forward.mamba2_layer_rows``): default and ``LAYER_VARIANTS``."""
    return mamba2_layer_rows([(label, lambda label=label: variant(label)) for label in ("default",) + LAYER_VARIANTS])


def host_rows() -> list[list]:
    """Host ms per forward+backward (launches issued, GPU not waited for: the time the Python side
    takes) and the measured forward+backward ms, through the autograd.Function (default) and through
    the custom ops (``EAGER_FUNCTION=False``), at the 16K comparison shape and the op shape."""
    import time

    rows = []
    for b, L, H in (SDPA_SHAPE, (8, 4096, 32)):
        inp = {k: v.requires_grad_(True) for k, v in ssd_inputs(b, L, H=H).items()}
        dy = torch.randn(b, L, H, 64, device="cuda", dtype=torch.bfloat16)
        for label, eager in (("autograd.Function", True), ("custom ops", False)):
            saved, ssd_triton_module.EAGER_FUNCTION = ssd_triton_module.EAGER_FUNCTION, eager
            try:
                def step():
                    for v in inp.values():
                        v.grad = None  # (as the timing below: no accumulation)
                    ssd_triton_module.ssd_triton(**inp, dt_softplus=True)[0].backward(dy)

                for _ in range(10):
                    step()
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(20):  # (few enough that the launch queue never fills and blocks the host)
                    step()
                host = (time.perf_counter() - t) / 20 * 1e3
                torch.cuda.synchronize()
                _, t_fb = fwd_and_fwdbwd(lambda **k: ssd_triton_module.ssd_triton(**k, dt_softplus=True)[0], inp)
            finally:
                ssd_triton_module.EAGER_FUNCTION = saved
            rows.append([f"B={b} L={L} H={H}: through the {label}, host ms per fwd+bwd {host:.3f}", "",
                         f"{t_fb:.3f}", "", ""])  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def profile_rows(labels=("default",) + LAYER_VARIANTS, shape=(8, 4096, 32)) -> list[list]:
    """Per-kernel CUDA ms of one forward+backward (mean of 5) at ``shape`` (B, L, H), by default the op's."""
    b, L, H = shape
    inp = {k: v.requires_grad_(True) for k, v in ssd_inputs(b, L, H=H).items()}
    rows = []
    for label in labels:
        with variant(label):
            averages = profiled(inp)
        for ev in sorted(averages, key=lambda e: -e.device_time_total)[:8]:
            rows.append([f"profile B={b} L={L} H={H}, {label}: {ev.key[:60]}", "", f"{ev.device_time_total / 5e3:.3f}", f"x{ev.count // 5}", ""])
            print(rows[-1], flush=True)
    return rows


def run(out_dir: str, parts) -> str:
    rows = []
    if "op" in parts:
        rows += op_rows(labels=("default", "recompute states", "state tiles (128, 32)", "state tiles (64, 64)",
                                "state walks, 3 stages", "state walks, 8 warps"))
    if "layer-op" in parts:
        rows += op_rows(LAYER_SHAPES, ("default",) + LAYER_VARIANTS + LAYER_SEGMENTS)
    if "16k" in parts:
        rows += op_rows((SDPA_SHAPE,), ("default", "state walks, 3 stages", "chunk-parallel forward",
                                        "segments of 32 chunks", "segments of 64 chunks", "segments of 128 chunks",
                                        "chunk-parallel, segments of 64 chunks", "chunk-parallel, segments of 128 chunks"))
    if "layer" in parts:
        rows += layer_rows()
    if "profile" in parts:
        rows += profile_rows(("default",))
    if "profile-layer-op" in parts:
        rows += profile_rows(("default",), LAYER_SHAPES[-1])
    if "host" in parts:
        rows += host_rows()
    if "heads" in parts:
        labels = ("default", "head sums in kernel", "heads outer")
        rows += op_rows(((8, 4096, 32), (1, 65536, 64)), labels)
        rows += mamba2_layer_rows([(label, lambda label=label: variant(label)) for label in labels])
    if "head-sums" in parts:
        labels = ("default", "head sums by torch.sum")
        rows += op_rows(((8, 4096, 32), (1, 16384, 64), (1, 65536, 64)), labels * 2)
        rows += mamba2_layer_rows([(label, lambda label=label: variant(label)) for label in labels * 2])
        rows += profile_rows(labels, LAYER_SHAPES[-1])
    if "head-loop" in parts:
        labels = ("one head per program", "head loop, 4 warps", "head loop, 8 warps", "head loop, 8 warps, 2 stages")
        rows += op_rows(((8, 4096, 32), (1, 16384, 64), (1, 65536, 64)), labels)
        rows += mamba2_layer_rows([(label, lambda label=label: variant(label)) for label in labels[::2]])
        rows += profile_rows(labels[::2], LAYER_SHAPES[-1])
    if "head-loop-fp32" in parts:
        for b in (2, 8):
            checked = Checked(ssd_inputs(b, 4096, dtype=torch.float32))
            for Q in (32, 64):
                for label in FP32_LABELS:
                    with variant(label):
                        rows.append(checked.row(f"fp32 B={b} L=4096 H=32 chunk {Q}: {label}", Q))
            del checked
            torch.cuda.empty_cache()
    if "whole-tiles" in parts:
        rows += op_rows(((8, 4096, 32), (1, 16384, 64), (1, 65536, 64)), ("default", "masked tiles") * 3)
        rows += profile_rows(("default", "masked tiles"))
    if "fp32-forward" in parts:
        for b, L, H in ((1, 16384, 32), (1, 65536, 64), (4, 4096, 32)):
            checked = Checked(ssd_inputs(b, L, H=H, dtype=torch.float32))
            for label in ("default", "chunk-parallel forward", "default"):
                with variant(label):
                    rows.append(checked.row(f"fp32 B={b} L={L} H={H} chunk 64: {label}", 64))
            del checked
            torch.cuda.empty_cache()
    head = ["variant (bf16, P=64, N=128, chunk 32)", "fwd ms", "fwd+bwd ms", "worst rel err", "ok"]
    return table_report(out_dir, "gpu_ssd_backward", "SSD backward variants", head, rows)


if __name__ == "__main__":
    parts_main(__doc__, run, ["op", "layer-op", "16k", "layer", "profile", "profile-layer-op", "host", "heads",
                              "head-sums", "head-loop", "head-loop-fp32", "fp32-forward", "whole-tiles"])
