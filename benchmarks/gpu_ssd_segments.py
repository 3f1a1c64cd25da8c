"""GPU: SSD forward and forward+backward against the number of segments per row, where the plan walks.

    python3 benchmarks/gpu_ssd_segments.py [--out DIR] [--parts op variants layer registers chunk-parallel tiles-ahead
                                                                one-walk walk-stages fused-knobs chained-sums]

A segment is a run of chunks that one program walks with the state in registers. Where a row has
few heads (``triton_launch.make_plan``'s walking plan: one sequence, up to ~200 heads), the
forward scan and the backward's state walks get one program per (row, head, segment), and
segments are what fills the GPU. The walks are long and equal, so the GPU runs them in waves of
as many programs as fit at once: a count of segments one past a whole wave adds a whole walk.

- "op": for each shape of ``SHAPES`` (bf16, P=64, N=128, G=1, chunk 32; D, dt_bias, softplus),
  fwd / fwd+bwd ms for every count of ``COUNTS`` and around each whole number of waves, the
  plan's own count marked; the plan's count is also checked against the float32 "torch" backend.
- "variants": the plan and the launch variants of ``VARIANTS`` (stages and warps of the walks) at
  ``VARIANT_SHAPES``, each checked.
- "layer": the Mamba-2 layer (d_model 2048, 64 heads) at 16K and 64K tokens with the plan and the
  ``VARIANTS``, next to the attention layer.
- "registers": register caps (``make_plan``'s ``scan_regs`` / ``walk_regs`` / ``bwd_regs``: more programs
  resident per SM, some registers spilled) of ``REGISTER_VARIANTS``, at ``VARIANT_SHAPES`` (each checked)
  and in the Mamba-2 layer.
- "chunk-parallel": the chunk-parallel plan (tiled state walks, then every chunk's output on its own;
  ``make_plan``'s ``fwd_span=1``) forced where the walking plan is chosen, at several segment counts
  (``SPAN_VARIANTS``), at ``VARIANT_SHAPES`` (each checked) and in the Mamba-2 layer. Since the forward
  keeps the per-chunk states for the backward, the walking scan writes them too, as the chunk-parallel
  plan's state walk always did. Also at two shapes where the plan is chunk-parallel with a gradient to
  come and walks without one (``triton_launch.forward_span``): there the forward column compares the two.
- "tiles-ahead": the walking scan loading each chunk's x, B, C tiles while the chunk before it is computed
  (``triton_launch.TILES_AHEAD``) against loading them where they are used (``AHEAD_VARIANTS``; each twice,
  alternating), at ``VARIANT_SHAPES`` and two shapes where a forward without a gradient walks (each checked),
  and in the layer.
- "one-walk": where one segment per row fills the walking scan's waves (``triton_launch.WALK_FILL``), 16-bit
  forwards walk with one segment, with or without a gradient to come. At ``ONE_WALK_SHAPES`` (each checked), the
  plan against the rule before (``WALK_FILL`` above 1) and one segment forced everywhere (``WALK_FILL`` 0),
  each twice, alternating.
- "walk-stages": the walking scan that stores every chunk's state for the backward with its tiles loaded a chunk
  ahead (``triton_launch.STORE_H_TILES_AHEAD``) and the walking plan's state walks at 3 pipelining stages
  (``WALK_STATE_STAGES``), against either alone and neither (``WALK_STAGES_VARIANTS``, each twice, alternating),
  at ``WALK_STAGES_SHAPES`` (each checked) and in the layer (neither against both).
- "fused-knobs": the fused backward's pipelining stages and warps, spans of two chunks per program, and the walking
  scan at 8 warps under register caps (two programs per SM), against the plan (``FUSED_KNOBS``, each twice,
  alternating); then register caps of the fused backward and the walking scan that keep two programs per SM
  (once each), at ``FUSED_KNOBS_SHAPES`` (each checked).
- "chained-sums": each segment's own sums before the passing as one chained product per segment
  (``triton_launch.CHAINED_SEGMENT_SUMS``, ``SEGMENT_BLOCK_T`` tokens per product) against the walks' recurrence
  and against 64-token products (``CHAINED_VARIANTS``, each twice, alternating), at ``CHAINED_SHAPES`` (each
  checked) and in the layer.

Splitting the walking plan's state walks into shorter segments than the scan's (rev e83f849, ``--parts
walk-sub`` there) and reading each chunk's C B^T formed once per group (rev 2bc82ba, ``--parts cb`` there)
were measured slower and reverted: see docs/kernels_gpu_notes_ssd.md.

Writes ``gpu_ssd_segments.md`` / ``.json``.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _gpu_bench import fwd_and_fwdbwd, parts_main, plan_constants, plan_keywords, table_report  # noqa: E402
from gpu_ssd import ssd_inputs  # noqa: E402
from gpu_ssd_forward import Checked, mamba2_layer_rows  # noqa: E402

from ssmkit.ops.ssd.triton import ssd_triton  # noqa: E402
from ssmkit.ops.ssd.triton_launch import make_plan  # noqa: E402

SHAPES = ((1, 16384, 32), (1, 16384, 64), (1, 65536, 64), (1, 65536, 32), (2, 8192, 32), (4, 4096, 32),
          (2, 16384, 64), (1, 32768, 96))  # fmt: skip
COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
VARIANT_SHAPES = ((1, 16384, 32), (1, 16384, 64), (1, 65536, 64), (4, 4096, 32))
INFERENCE_SHAPES = ((8, 4096, 32), (16, 2048, 32))  # chunk-parallel with a gradient to come, walking without one
VARIANTS = {  # label: make_plan keywords
    "plan": {},
    "state walks 1 stage": dict(state_stages=1),
    "state walks 3 stages": dict(state_stages=3),
    "scan and walks 8 warps": dict(fwd_warps=8),
    "scan 8 warps, walks 4": dict(fwd_warps=8, state_warps=4),
    "scan 2 stages": dict(fwd_stages=2),
}
REGISTER_VARIANTS = {  # label: plan_keywords keywords (caps of 168 registers: 3 programs of 4 warps per SM)
    "plan": {},
    "scan <= 168 registers": dict(scan_regs=168),
    "scan <= 168, 6 segments": dict(scan_regs=168, n_segs=6),
    "scan <= 128 (4 per SM)": dict(scan_regs=128),
    "walks <= 168": dict(walk_regs=168),
    "scan and walks <= 168, 6 segments": dict(scan_regs=168, walk_regs=168, n_segs=6),
    "fused backward <= 168": dict(bwd_regs=168),
}
SPAN_VARIANTS = {  # label: plan_keywords keywords
    "plan": {},
    "chunk-parallel, its segments": dict(fwd_span=1),
    "chunk-parallel, 2 segments": dict(fwd_span=1, n_segs=2),
    "chunk-parallel, 8 segments": dict(fwd_span=1, n_segs=8),
    "chunk-parallel, 16 segments": dict(fwd_span=1, n_segs=16),
    "chunk-parallel, 8 segments, walks 1 stage": dict(fwd_span=1, n_segs=8, state_stages=1),
}
AHEAD_VARIANTS = {  # label: plan_keywords keywords, with "constants" for ``plan_constants``
    f"{label} ({k})": dict(constants=dict(TILES_AHEAD=on))
    for k in (1, 2) for label, on in (("tiles loaded where used", False), ("tiles loaded a chunk ahead", True))
}
ONE_WALK_SHAPES = ((8, 4096, 32), (4, 4096, 32), (16, 2048, 32), (6, 4096, 32), (2, 8192, 64), (1, 16384, 128),
                   (2, 8192, 32))  # fmt: skip
ONE_WALK_VARIANTS = {  # label: plan_keywords keywords, with "constants" for ``plan_constants``; each twice, alternating
    f"{label} ({k})": dict(constants=constants)
    for k in (1, 2) for label, constants in (("rule before: no one-segment walk", dict(WALK_FILL=2.0)), ("plan", {}),
                                             ("one segment forced", dict(WALK_FILL=0.0)))
}  # fmt: skip
WALK_STAGES_SHAPES = ((8, 4096, 32), (1, 16384, 64), (1, 65536, 64), (2, 8192, 32))
WALK_STAGES = (("storing scan's tiles where used, walks 2 stages (before)", False, 2),
               ("tiles ahead, walks 2 stages", True, 2), ("tiles where used, walks 3 stages", False, 3),
               ("tiles ahead, walks 3 stages (plan)", True, 3))  # fmt: skip
WALK_STAGES_VARIANTS = {  # label: plan_keywords keywords with "constants"; each twice, alternating
    f"{label} ({k})": dict(constants=dict(STORE_H_TILES_AHEAD=ahead, WALK_STATE_STAGES=stages))
    for k in (1, 2) for label, ahead, stages in WALK_STAGES
}
FUSED_KNOBS_SHAPES = ((8, 4096, 32), (1, 65536, 64))
FUSED_KNOBS = {  # label: plan_keywords keywords; each twice, alternating
    f"{label} ({k})": keywords
    for k in (1, 2) for label, keywords in (
        ("plan", {}), ("fused backward 2 stages", dict(bwd_stages=2)), ("fused backward 3 stages", dict(bwd_stages=3)),
        ("fused backward 8 warps", dict(bwd_warps=8)),
        ("fused backward spans of 2 chunks, 2 stages, 8 warps", dict(bwd_span=2, bwd_stages=2, bwd_warps=8)),
        ("scan 8 warps <= 128 registers, walks 4 warps", dict(fwd_warps=8, scan_regs=128, state_warps=4)),
        ("scan 8 warps <= 120 registers, walks 4 warps", dict(fwd_warps=8, scan_regs=120, state_warps=4)))
} | {  # register caps that keep two programs per SM (they change only the schedule ptxas picks); once each
    f"fused backward <= {n} registers": dict(bwd_regs=n) for n in (192, 208, 224, 240)
} | {f"walking scan <= {n} registers": dict(scan_regs=n) for n in (208, 224, 240)}  # fmt: skip
CHAINED_SHAPES = ((1, 65536, 64), (1, 65536, 32), (1, 16384, 64))
CHAINED_VARIANTS = {  # label: plan_keywords keywords with "constants"; each twice, alternating
    f"{label} ({k})": dict(constants=constants)
    for k in (1, 2) for label, constants in (("walks' recurrence", dict(CHAINED_SEGMENT_SUMS=False)),
                                             ("chained, 32 tokens per product (plan)", {}),
                                             ("chained, 64 tokens per product", dict(SEGMENT_BLOCK_T=64)))
}  # fmt: skip
WAVE = 2  # walking-scan programs per SM in the sweep's "whole waves" (244 registers at 4 warps)


def counts_for(programs: int, n_chunks: int, sms: int, default: int) -> list[int]:
    """Segment counts to time: ``COUNTS``, the largest count within each of 1 to 8 whole waves, one past it,
    and the plan's own."""
    wave = WAVE * sms
    near = {n for k in range(1, 9) for n in (k * wave // programs, k * wave // programs + 1)}
    return sorted(n for n in set(COUNTS) | near | {default} if 1 <= n <= min(n_chunks, 64))


def op_rows() -> list[list]:
    rows = []
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for b, L, H in SHAPES:
        inp = ssd_inputs(b, L, H=H)
        plan = make_plan(inp["x"], 128, 32, None)
        if plan.fwd_span:
            continue  # (chunk-parallel there: the state walks own tiles, no segments)
        checked = Checked(inp)
        rows.append(checked.row(f"B={b} L={L} H={H}: the plan's {plan.n_segs} segments (checked)", 32))
        for n in counts_for(b * H, plan.n_chunks, sms, plan.n_segs):
            seg = triton.cdiv(plan.n_chunks, n)
            n_real = triton.cdiv(plan.n_chunks, seg)
            f = lambda seg=seg, **k: ssd_triton(**k, dt_softplus=True, chunk_size=32, seg_chunks=seg)[0]  # noqa: E731
            t_f, t_fb = fwd_and_fwdbwd(f, inp)
            waves = b * H * n_real / (WAVE * sms)
            mark = " (plan)" if n_real == plan.n_segs else ""
            rows.append([f"B={b} L={L} H={H}: {n_real} segments of {seg} chunks, {waves:.2f} waves{mark}",
                         f"{t_f:.3f}", f"{t_fb:.3f}", "", ""])  # fmt: skip
            print(rows[-1], flush=True)
        for stages in (2,):
            with plan_keywords(fwd_stages=stages):
                t_f, t_fb = fwd_and_fwdbwd(lambda **k: ssd_triton(**k, dt_softplus=True, chunk_size=32)[0], inp)
            rows.append([f"B={b} L={L} H={H}: the plan's segments, {stages} stages", f"{t_f:.3f}", f"{t_fb:.3f}", "", ""])
            print(rows[-1], flush=True)
        del inp, checked
        torch.cuda.empty_cache()
    return rows


@contextlib.contextmanager
def _planned(keywords: dict):
    """``plan_keywords`` of ``keywords``, and ``plan_constants`` of its "constants" entry."""
    keywords = dict(keywords)
    with plan_constants(**keywords.pop("constants", {})), plan_keywords(**keywords):
        yield


def variant_rows(variants: dict = VARIANTS, shapes=VARIANT_SHAPES) -> list[list]:
    """The plan and ``variants`` at ``shapes``, each checked against the float32 "torch" backend."""
    rows = []
    for b, L, H in shapes:
        checked = Checked(ssd_inputs(b, L, H=H))
        for label, keywords in variants.items():
            with _planned(keywords):
                rows.append(checked.row(f"B={b} L={L} H={H}: {label}", 32))
        del checked
        torch.cuda.empty_cache()
    return rows


def layer_rows(variants: dict = VARIANTS) -> list[list]:
    """The Mamba-2 layer at 16K and 64K tokens: the plan and ``variants``."""
    return mamba2_layer_rows([(label, lambda kw=kw: _planned(kw)) for label, kw in variants.items()])


def run(out_dir: str, parts) -> str:
    rows = (op_rows() if "op" in parts else []) + (variant_rows() if "variants" in parts else [])
    rows += layer_rows() if "layer" in parts else []
    rows += variant_rows(REGISTER_VARIANTS) + layer_rows(REGISTER_VARIANTS) if "registers" in parts else []
    if "chunk-parallel" in parts:
        rows += variant_rows(SPAN_VARIANTS, VARIANT_SHAPES + INFERENCE_SHAPES) + layer_rows(SPAN_VARIANTS)
    if "one-walk" in parts:
        rows += variant_rows(ONE_WALK_VARIANTS, ONE_WALK_SHAPES)
    if "walk-stages" in parts:
        rows += variant_rows(WALK_STAGES_VARIANTS, WALK_STAGES_SHAPES)
        rows += layer_rows({k: v for k, v in WALK_STAGES_VARIANTS.items() if "before" in k or "plan" in k})
    if "fused-knobs" in parts:
        rows += variant_rows(FUSED_KNOBS, FUSED_KNOBS_SHAPES)
    if "chained-sums" in parts:
        rows += variant_rows(CHAINED_VARIANTS, CHAINED_SHAPES) + layer_rows(CHAINED_VARIANTS)
    if "tiles-ahead" in parts:
        rows += variant_rows(AHEAD_VARIANTS, VARIANT_SHAPES + INFERENCE_SHAPES)
        rows += layer_rows(AHEAD_VARIANTS)
    head = ["walking plan, bf16, P=64, N=128, chunk 32", "fwd ms", "fwd+bwd ms", "worst rel err", "ok"]
    return table_report(out_dir, "gpu_ssd_segments", "SSD against segments per row", head, rows)


if __name__ == "__main__":
    parts = ["op", "variants", "layer", "registers", "chunk-parallel", "tiles-ahead", "one-walk", "walk-stages",
             "fused-knobs", "chained-sums"]
    parts_main(__doc__, run, parts)
