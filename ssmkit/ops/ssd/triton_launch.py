"""SSD Triton: launch plans and the forward / backward launch sequences.

The kernels (one file per stage) are chained here:

    forward:  [states (segment-local) -> passing] -> states (per chunk) -> scan (chunks in parallel)
              or, walking: [states (segment-local) -> passing] -> scan (walks the segments)
    backward: [states (per chunk, from the saved segment inputs), unless the forward kept them]
              [dstates (segment-local) -> passing (reversed)] -> dstates (per chunk)
              scan_bwd (dx, d dt, dA, dB, dC, dD, d initial state)

A segment is `seg_chunks` consecutive chunks walked by one program with the
state in registers; segments give the GPU parallel work along the sequence,
and the bracketed passes run only when a row has more than one. The state
walks (states, dstates) own small (N, P) tiles of the state, so at a large
enough batch x heads one segment per row fills the GPU. The scan and the
fused backward (scan_bwd) read the state and its gradient at every chunk
from memory, so their programs take `fwd_span` / `bwd_span` chunks each,
independently (a span of 0: they walk the segments instead, carrying the
state or the gradient in registers, and the per-chunk states are not
stored: less memory, less parallel work).

Shapes: x (B, L, H, P), dt (B, L, H), B/C (B, L, G, N), states (B, H, P, N).
Packed variable-length sequences use B = 1 and a chunk table (see
``triton_cumsum.py``); "rows" below are batch rows (B, or 1 when packed) and
"sequences" the rows or the packed sequences (S).

The chunk kernels take the model's sizes (H, P, N, the chunk Q, heads per group) and every
per-token stride as compile-time constants: one compiled kernel per layer shape, none per
sequence length or batch (those stay run-time values). Offline (sm_90, Triton 3.6,
``benchmarks/ssd_codegen.py``) the walks' loops and the fused backward issue 7-14% fewer
instructions; on the H200 in alternating processes (``benchmarks/gpu_ssd_versions.py``, bf16,
P=64, N=128, forward / forward+backward ms): B=8 L=4096 H=32 0.50 / 2.66 -> 0.47 / 2.60, one
64K-token sequence with 64 heads 1.93 / 10.18 -> 1.79 / 10.18; errors against float64 unchanged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import triton.language as tl

from .._triton import LAUNCH, cdiv, device_major, next_pow2, shared_memory, sm_count
from . import triton_forms
from .triton_bwd_heads import _ssd_bwd_heads_kernel
from .triton_head_sums import _ssd_head_sums_kernel
from .triton_passing import _ssd_passing_kernel
from .triton_scan import _ssd_scan_fwd_kernel
from .triton_scan_bwd import _ssd_bwd_kernel
from .triton_segment_sums import _ssd_segment_sums_kernel
from .triton_states import _ssd_states_kernel
from .triton_states_bwd import _ssd_dstates_kernel

MAX_CHUNK = 256  # the largest chunk_size accepted
# The largest chunk the kernels run, by input element size: the fused backward's (Q, Q) and (Q, P)
# tiles must fit in shared memory (Q = 256 in bf16 needs 360 KB; the H200 has 227 KB per block).
# The result does not depend on the chunk (only its rounding does), so a larger chunk_size runs as
# chunks of this size. 128 (16-bit) and 64 (fp32) are the largest run on the H200 in the GPU checks.
TILE_CHUNK = {2: 128, 4: 64}
# Segments per batch row in the walking plan: as many as keep the walking scan's programs (rows x heads x
# segments) within this many per SM. Its 244 registers fit two programs per SM, so that is two whole
# waves: every walk is equally long, and one program past a whole wave costs a whole walk more. Measured
# on the H200 (``benchmarks/gpu_ssd_segments.py``, bf16, P=64, N=128, chunk 32, forward+backward ms,
# rounding down against up): one sequence of 64K tokens with 64 heads, 8 segments 11.43 against 9 12.87;
# 64K with 32 heads 5.79 / 6.64; 16K with 64 heads 2.93 / 3.33; B=2 L=8192 H=32 1.52 / 1.66; B=2 L=16K
# H=64 5.69 / 6.25. Counts past two waves were no faster when they filled their waves too.
SEG_PROGRAMS_PER_SM = 4
# On the GPU, with 16-bit inputs and a P tile below 64 (head dims below 64, or N = 256 where the fp32
# state tile is held to 8192 entries), the kernels run chunks of at most 32. At chunks of 64 and 128,
# the forward kernels that Triton 3.6 compiled for the H200 computed y correctly but wrote wrong final
# states (relative error ~5), or faulted with an illegal memory access. The fault stayed when every
# state was stored in its (N, P) layout, and compute-sanitizer reported no out-of-bounds address.
# What matched the float64 loop there: P tiles of 64 at any chunk, P tiles of 32 and 16 at chunk 32,
# and fp32 at chunk 64 with tiles of 32 (``benchmarks/gpu_ssd_tiles.py``). The CPU interpreter runs
# every chunk.
NARROW_TILE_CHUNK = 32
# On the GPU, 16-bit inputs run chunks of at most 32 whatever the chunk_size asked: the fastest chunk,
# forward and forward+backward, at every shape measured on the H200 (``benchmarks/gpu_ssd_chunks.py``;
# B=8 L=4096 H*P=2048 bf16, forward+backward ms at chunks 32 / 64 / 128: P=64 N=128 3.47 / 3.73 / 5.46,
# P=128 N=128 3.48 / 3.71 / 5.45, P=64 N=64 2.22 / 2.88 / 3.62, P=64 N=16 1.72 / 2.55 / 3.25; in the
# Mamba-2 layer at 64K tokens 32.2 against 33.0 ms at chunk 64). fp32 keeps the chunk asked (at 64 its
# forward is faster, 0.99 against 1.66 ms).
GPU_CHUNK_16BIT = 32
# When rows x heads x (N, P) tiles of STATE_TILE give at least STATE_PROGRAMS_PER_SM programs per SM, the
# forward is chunk-parallel (FWD_SPAN chunks per scan program, one segment per row) and the state walks
# (states, dstates) own those tiles, with STATE_WARPS warps and STATE_STAGES pipelining stages; else the
# scan walks segments (SEG_PROGRAMS_PER_SM above) and the state walks take whole states like the scan.
# Measured on the H200 (``benchmarks/gpu_ssd_forward.py``, bf16, P=64, N=128, chunk 32, forward /
# forward+backward ms): B=8 L=4096 H=32 (1024 state-walk programs), chunk-parallel 0.606 / 3.111 against
# 0.686 / 3.469 walking (1 stage instead of 2: 0.633 / 3.186); one sequence of 16K or 64K tokens with 64
# heads (256 programs), the chunk-parallel forward at its best segment count 0.878 / 3.822 and 3.686 /
# 15.272 against 0.879 / 4.005 and 3.363 / 15.386 walking. Segments cost a second walk, which pays only
# while one segment per row leaves less than about a wave of programs (8 are resident per SM): at B=8
# L=4096 H=32, 2 segments 0.840 / 3.595. With the walking forward, small tiles in the backward's state
# walks made the Mamba-2 layer no faster (64K tokens: 33.23 against 32.69 ms), so it keeps whole states.
FWD_SPAN = 1
# ... but only when a backward will follow (its per-chunk states then serve the backward too). Without one, a
# 16-bit forward walks (``fwd_span`` 0: nothing per chunk goes to memory). Measured on the H200 (bf16, P=64,
# N=128, chunk 32, forward without autograd, ms; first an ad-hoc probe, then ``benchmarks/gpu_ssd_segments.py
# --parts chunk-parallel`` with the walking scan's tiles ahead, below): B=8 L=4096 H=32 walking 0.558 (0.507 with
# the tiles ahead) against chunk-parallel 0.646; B=16 L=2048 H=32 0.451 (0.393) against 0.636-0.638; where the
# plan walks anyway (B=4 L=4096 H=32, one sequence of 16K / 64K tokens with 64 heads) the same, and the
# chunk-parallel forward there 0.46 / 0.93 / 3.64 against 0.27-0.29 / 0.56 / 2.14. fp16 alike (chunk 64 asked, 32 run:
# 0.545 against 0.627, 0.441 against 0.619, B=2 L=8192 0.282 against 0.464); fp32 the other way (chunk 64:
# walking 4.16 / 3.60 / 2.13 against 2.43 / 2.42 / 1.65), so it keeps the plan's choice (FP32_CHUNK_PARALLEL).
INFERENCE_FWD_SPAN = 0
# On the GPU, fp32 inputs take the chunk-parallel forward whatever the program count (with or without a
# backward to come). Measured on the H200 (``benchmarks/gpu_ssd_backward.py --parts fp32-forward
# head-loop-fp32``, fp32, P=64, N=128, chunk 64, forward / forward+backward ms, walking against
# chunk-parallel): one sequence of 16K tokens with 32 heads 2.95 / 10.72 against 1.62 / 9.92; 64K tokens with
# 64 heads 22.23 / 84.49 against 11.43 / 75.77; B=4 L=4096 H=32 2.83 / 10.62 against 1.50 / 9.70; B=2
# 1.49 / 5.43 against 0.79 / 4.91 (and without autograd, fourteenth session: 4.16 / 3.60 / 2.13 against
# 2.43 / 2.42 / 1.65 at three shapes).
FP32_CHUNK_PARALLEL = True
# 16-bit inputs on the GPU, where one segment per row gives the walking scan's programs the whole GPU (``walk_fill``
# at least WALK_FILL: every SM given a program, or, past one wave of WALK_RESIDENT_PER_SM per SM at its 244
# registers, whole waves), walk with one segment, with or without a gradient to come: this overrides the
# chunk-parallel rule (FWD_SPAN, STATE_PROGRAMS_PER_SM) and the walking plan's segment count (SEG_PROGRAMS_PER_SM).
# One segment needs no state walk before the scan and no segment passing, forward or backward, and the walking
# scan reads no per-chunk state from memory. Measured on the H200 (``benchmarks/gpu_ssd_segments.py --parts
# one-walk``, bf16, P=64, N=128, chunk 32, ms, each row checked against the float32 "torch" path, two rounds;
# forward without autograd / forward+backward, the rule before against one segment; before STORE_H_TILES_AHEAD and
# 3-stage walks):
#   B=8 L=4096 H=32 (256 programs)  2 segments, chunk-parallel 0.443-0.588 / 2.510-2.512; one 0.335-0.336 / 2.266-2.268
#   B=16 L=2048 H=32 (512)          1 segment, chunk-parallel 0.341-0.342 / 2.511; one 0.341-0.342 / 2.317-2.318
#   B=6 L=4096 H=32 (192)           3 segments, chunk-parallel 0.428-0.430 / 1.935-1.936; one 0.333-0.334 / 1.849-1.851
#   B=2 L=8192 H=64 (128)           4 segments, walking 0.454-0.455 / 2.537-2.558; one 0.451-0.452 / 2.550
#   B=1 L=16384 H=128 (128)         4 segments, walking 0.878-0.880 / 5.001-5.004; one 0.897-0.898 / 5.011-5.017
# (B=4 L=4096 H=32, 128 programs: forward 0.240 -> 0.228-0.229; its forward+backward is host-bound, 1.3-2.0 ms either
# way.) Where one segment leaves SMs idle the rules above stay: at B=2 L=8192 H=32 (64 programs) one segment took
# 0.446-0.447 ms forward against the rule's 8 segments 0.262-0.280 in the same run. At long sequences with about one
# program per SM, segments can still win a little: B=2 L=16384 H=64 (128 programs, 512 chunks) one segment 0.895 /
# 4.933 against 2 segments 0.894 / 4.833 (``--parts op``, one round).
WALK_FILL = 0.9
WALK_RESIDENT_PER_SM = 2
STATE_TILE = (64, 32)
STATE_WARPS = 4
STATE_STAGES = 2
STATE_PROGRAMS_PER_SM = 6
# Pipelining stages of the walking plan's state walks (whole states), and of its scan when it stores the
# state entering every chunk for the backward (otherwise the scan keeps ``fwd_stages``, 1). Measured on the
# H200 (``benchmarks/gpu_ssd_segments.py``, bf16, P=64, N=128, chunk 32, forward+backward ms, against 1
# stage): one sequence of 64K tokens with 64 heads, walks 11.21 / 11.46, then the storing scan too
# 10.76 / 11.20 (twice); 16K tokens with 64 heads 2.79 / 2.87. The forward that stores nothing is no faster
# with 2 stages (64K: 2.16 / 2.12 ms). Three stages for the walks since the twenty-eighth session
# (``benchmarks/gpu_ssd_segments.py --parts walk-stages``, forward+backward ms, two rounds, the storing scan's tiles
# where used / ahead (``STORE_H_TILES_AHEAD``), walks at 2 / 3 stages):
#   one sequence with 64 heads, 64K tokens  9.867-9.870 / ahead 9.757-9.763 / 3 stages 9.600-9.604 / both 9.601-9.609
#   16K tokens                              2.574-2.587 / 2.548 / 2.534-2.546 / both 2.505-2.506
#   B=8 L=4096 H=32 (one walk)              2.263-2.273 / 2.240-2.249 / 2.243-2.245 / both 2.218-2.219
# and the Mamba-2 layer at 64K 26.20-26.30 with neither against 25.78-26.01 with both.
WALK_STATE_STAGES = 3
STORE_H_STAGES = 2
# Default chunks per program of the fused backward: one. Measured on the H200 (B=8 L=4096 H=32 P=64
# N=128 bf16, whole backward): Q=64 2.97 ms (8 warps) against 4.11 walking the segments; spans of 2
# or 4 chunks spill (4.2-4.7 ms). 8 warps pay off from Q=64 (2.97 vs 3.08 with 4), not at Q=32
# (3.69 vs 3.24). Re-measured on the twenty-ninth session's code (``benchmarks/gpu_ssd_segments.py --parts
# fused-knobs``, B=8 L=4096 H=32, forward+backward ms): the plan 2.20-2.21; 2 / 3 stages 2.30 / 3.20; 8 warps 3.22;
# spans of 2 at 2 stages and 8 warps 3.34; register caps of 240 down to 192 2.27 to 2.56.
BWD_SPAN = 1
# The chunk-parallel kernels (the fused backward, and the forward scan of the chunk-parallel plan) launch the
# programs of one chunk for every head before those of the next chunk (``program_tile``'s HEADS_INNER), so
# that the heads of a group read their shared B, C tiles from L2 rather than each from memory. Measured on
# the H200 (``benchmarks/gpu_ssd_backward.py --parts heads``, bf16, P=64, N=128, chunk 32, forward+backward
# ms, against every chunk of a head first): one sequence of 64K tokens with 64 heads 10.25-10.31 / 10.69-10.82;
# B=8 L=4096 H=32 2.67-2.69 / 2.65-2.66 (within noise).
HEADS_INNER = True
# With True (and HEADS_INNER), the fused backward sums the heads' dB, dC shares itself: the last program of a
# chunk and group (an atomic count per chunk and group) reads the group's shares back from L2, in a fixed
# order, instead of a separate sum reading them from memory. Slower on the H200 (same command and units):
# 64K tokens with 64 heads 10.72 against 10.31 with one share in flight at a time, 10.40 against 10.32 with
# eight; B=8 L=4096 H=32 2.73 / 2.74 against 2.69 / 2.70. The last program's loop outlasts the sum it saves.
REDUCE_HEADS = False
# Otherwise the shares are added up after the fused backward by one launch for dB and dC
# (``triton_head_sums.py``) rather than two ``torch.sum`` calls. Measured on the H200 (``benchmarks/gpu_ssd_backward.py
# --parts head-sums``, bf16, P=64, N=128, chunk 32, forward+backward ms, two rounds, against torch.sum): B=8 L=4096
# H=32 2.190-2.191 / 2.203-2.205; one sequence with 64 heads, 16K tokens 2.452-2.453 / 2.478-2.479, 64K 9.438-9.440
# / 9.491-9.493 (the sums 0.505 against 0.568 ms in its profile: 2.15 GB read at 4.3 TB/s).
HEAD_SUMS_KERNEL = True
HEAD_SUMS_BLOCK_T, HEAD_SUMS_SB, HEAD_SUMS_WARPS = 8, 8, 2  # tokens and shares per step of a program; its warps
# Where rows are cut into segments (batch rows, not packed sequences), each segment's own sum before the
# passing (the state at its end, the gradient at its start) is one chained product per segment, each
# chunk's operand scaled by its decay to the segment's edge (``triton_segment_sums.py``), rather than the
# state walks' recurrence, which rescales its running sum between the chunks' products. Measured on the H200
# (``benchmarks/gpu_ssd_versions.py``, the commit before against the change in alternating processes, bf16,
# P=64, N=128, forward / forward+backward ms): one sequence of 64K tokens with 64 heads 1.668-1.681 /
# 9.545-9.601 -> 1.639-1.653 / 9.511-9.560; with 32 heads 0.842 / 4.83 -> 0.821 / 4.80.
CHAINED_SEGMENT_SUMS = True
# Tokens per product of the chained segment sums. 64 was slower (the same command with this constant at 64, two
# rounds: forward 1.788-1.789 ms at 64K x 64 against 32's 1.639-1.653; the shared memory of its larger tiles
# leaves 3 programs per SM instead of 4).
SEGMENT_BLOCK_T = 32
# For fp32 inputs, the chunk-parallel backward's programs own a chunk and a group and walk the group's
# heads (``triton_bwd_heads.py``), summing dB, dC in registers, rather than one (chunk, head) each.
# Measured on the H200 (``benchmarks/gpu_ssd_backward.py --parts head-loop-fp32 head-loop``, P=64, N=128,
# forward+backward ms, one head per program against the head loop): fp32 B=2 L=4096 H=32 chunk 64 (fp32's
# chunk) 8.42-8.46 / 5.49, chunk 32 8.55-8.59 / 6.10; B=8 L=4096 chunk 64 29.49-29.51 / 18.05. In bf16
# it is slower (the loop holds B, C, C B^T and the sums across heads: 440 bytes of spills at 4 warps, and
# 8 warps fit one program per SM): B=8 L=4096 H=32 2.626 / 2.774 (4 warps) / 3.355 (8 warps); one sequence
# of 64K tokens with 64 heads 10.26 / 11.12 / 13.23; the Mamba-2 layer at 64K 26.99 / 30.28 (8 warps).
HEAD_LOOP = True
# The forward keeps the state entering every chunk (``h_in``, in the dot dtype: N / Q times x's bytes,
# 4x at N = 128 and chunk 32) for the backward when a gradient will be needed, and the backward then skips
# its own state walk. The chunk-parallel forward writes those states anyway; the walking scan writes them as
# it goes (``STORE_H``). False: the backward recomputes them (less memory held between the passes).
# Measured on the H200 (``benchmarks/gpu_ssd_backward.py``, bf16, P=64, N=128, chunk 32, forward+backward
# ms, kept against recomputed): B=8 L=4096 H=32 2.748 / 3.042; one sequence with 64 heads, 16K tokens
# 3.532 / 3.696, 64K 13.613 / 14.181; the Mamba-2 layer at 64K 30.85 / 32.18.
KEEP_STATES = True
# ... up to this many bytes per call (larger calls recompute them): a bound on what one call holds, e.g.
# 2 GiB for one 64K-token sequence with 64 heads of 64 and N = 128 (kept), 32 GiB at 2^20 tokens with 32
# heads in two rows (recomputed). Over a model the kept states add up layer by layer until the backward.
KEEP_STATES_MAX_BYTES = 4 << 30
# With True, the walking plan's state walks (the forward's segment states, the backward's dstates, and its
# states walk when the forward kept nothing) own STATE_TILE tiles too. Slower on the H200 (forward+backward
# ms, with the states kept and the dstates walk then forming the decay gradient's <g, h>, as it did before
# the fused backward took that term back): one sequence with 64 heads, 16K tokens 3.570 against 3.547, 64K
# 13.793 against 13.612; the Mamba-2 layer at 64K 32.74 against 31.30.
WALKING_PLAN_TILES = False
# The walking scan loads each chunk's x, B and C tiles while the chunk before it is computed, when it stores
# no per-chunk states (a forward without a gradient to come). Nsight Compute had its loads consumed right
# away by the shared-memory stores that stage them for the products (those stores took 27% of its stall
# samples; two programs of 4 warps per SM at 254 registers leave little else to run). Measured on the H200
# (``benchmarks/gpu_ssd_segments.py --parts tiles-ahead``, bf16, P=64, N=128, chunk 32, forward without
# autograd, ms, two runs each): B=8 L=4096 H=32 0.549 -> 0.503-0.506; B=16 L=2048 H=32 0.446 -> 0.390-0.392;
# one sequence with 64 heads, 16K tokens 0.550-0.552 -> 0.510, 64K 2.111-2.117 -> 1.935. With the states
# stored (a gradient to come) it was slower then: forward+backward at 16K / 64K tokens, 64 heads, 2.664-2.670 ->
# 2.698-2.710 and 10.198-10.201 -> 10.381. On the twenty-eighth session's code (whole tiles, one walk where it
# fills the GPU) the storing scan gains too (STORE_H_TILES_AHEAD; the figures under WALK_STATE_STAGES).
TILES_AHEAD = True
STORE_H_TILES_AHEAD = True
# Where every chunk is full (no packed sequences, L a multiple of the chunk, the chunk a power of two) and the
# kernel's P and N tiles cover P and N exactly, its chunk loop loads and stores without element masks
# (``scan.triton_common._load_in`` / ``_store_in``) and Δ and the decay gradient need no zeroing past the chunk's
# end. Offline (``benchmarks/ssd_codegen.py --shape 1 65536 64 64``, sm_90, Triton 3.6, bf16, chunk 32, P=64,
# N=128): the fused backward 2664 -> 2520 instructions and 56 -> 24 bytes of spills; the loops of the walking scan
# 907 -> 830, of the state walk 335 -> 304 (416 -> 355 storing every chunk's state), of the dstates walk 328 -> 282
# (415 -> 354).
WHOLE_TILES = True


@dataclass(frozen=True)
class Plan:
    """Sizes of one call: chunking, segments, tiles and warps."""

    Q: int  # tokens per chunk
    n_chunks: int  # chunks per row (packed: an upper bound, trailing chunks empty)
    seg_chunks: int  # chunks per segment (one program walks a segment)
    n_segs: int
    block_q: int
    block_p: int  # P tile of the forward and state kernels
    block_p_bwd: int  # P tile of the fused backward
    bwd_span: int  # chunks per program of the fused backward (0: it walks the segments, carrying the gradient)
    fwd_span: int  # chunks per program of the forward scan (0: it walks the segments, carrying the state)
    state_block_n: int  # (N, P) tile of the state walks
    state_block_p: int
    state_warps: int
    state_stages: int  # software-pipelining depth of the state walks' loops
    y_off_from_dc: bool  # the fused backward's dy·Y_off from its dC product (``triton_scan_bwd.py``)
    block_n: int
    fwd_warps: int
    bwd_warps: int
    fwd_stages: int  # software-pipelining depth of the segment loops
    store_stages: int  # ... of the walking scan when it stores the per-chunk states (``STORE_H``)
    heads_inner: bool  # chunk-parallel kernels: the heads of a chunk launched together (``HEADS_INNER``)
    bwd_stages: int
    varlen: bool
    scan_regs: int = 0  # register cap of the forward scan (0: the compiler's choice, see ``register_cap``)
    walk_regs: int = 0  # ... of the state walks
    bwd_regs: int = 0  # ... of the fused backward
    head_loop: bool = False  # chunk-parallel backward: one program per (chunk, group) walking its heads
    forms: int = 0  # how the kernels write three expressions for this GPU and Triton (``triton_forms``: FORMS)

    @property
    def tiled_walks(self) -> bool:
        """Whether the state walks own tiles smaller than the whole (N, P) state."""
        return (self.state_block_n, self.state_block_p) != (self.block_n, self.block_p)


def _dot_flags(x: torch.Tensor) -> dict:
    """Operand dtype ``DT`` and input precision ``PREC`` of the kernels' tl.dot.

    16-bit inputs multiply as they are (fp32 accumulation). fp32 inputs need
    products as good as fp32 (plain tf32 would miss fp32 tolerances): on the GPU
    "tf32x3" (each operand split in two tf32 parts, three tensor-core products),
    where Triton has it, else "ieee" (FMA units). Measured on the H200 (B=2, L=4096,
    H=32, P=64, N=128, chunk 64): forward+backward 7.1 ms against 111.6 with "ieee",
    the same errors against the float64 loop (<= 7e-7 relative). On CPU, the
    interpreter computes "ieee", and multiplies bfloat16 blocks wrongly (Triton
    3.9), so there bfloat16 products are formed in fp32.
    """
    if x.dtype == torch.float16:
        return dict(DT=tl.float16, PREC="tf32")
    if x.dtype == torch.bfloat16 and x.device.type != "cpu":
        return dict(DT=tl.bfloat16, PREC="tf32")
    if x.device.type != "cpu" and "tf32x3" in _cuda_option("allowed_dot_input_precisions", ()):
        return dict(DT=tl.float32, PREC="tf32x3")
    return dict(DT=tl.float32, PREC="ieee")


def dot_dtype(x: torch.Tensor) -> torch.dtype:
    """The torch dtype of ``DT``: what the per-chunk states, the state gradients and the gated
    output's gradient are stored in (they are dot operands; on CPU, bfloat16 inputs multiply in
    fp32, so nothing is rounded there)."""
    return {tl.float16: torch.float16, tl.bfloat16: torch.bfloat16}.get(_dot_flags(x)["DT"], torch.float32)


def register_cap(x: torch.Tensor, cap: int = 0) -> dict:
    """``maxnreg=255`` for fp32 inputs on the GPU (where Triton has the option), else nothing;
    ``cap`` > 0: ``maxnreg=cap`` for any dtype on the GPU (a plan's ``scan_regs`` / ``walk_regs`` / ``bwd_regs``).

    Large fp32 kernels (their products three times over with "tf32x3", or unrolled on
    the FMA units with "ieee") got 32 registers from ptxas (CUDA 12.9 and 13.4 alike) under
    the kernels' ``.reqntid``, and kilobytes of spills per thread; an explicit cap of 255
    lets it use the registers (H200, fp32, chunk 32: forward+backward 6.0 ms against 21.8).
    The 16-bit kernels get their registers without it.
    """
    if x.device.type == "cpu" or "maxnreg" not in _cuda_option("__dataclass_fields__", ()):
        return {}
    if cap > 0:
        return {"maxnreg": cap}
    return {"maxnreg": 255} if x.dtype == torch.float32 else {}


@functools.lru_cache(maxsize=None)
def _cuda_option(name: str, default):
    """An attribute of Triton's CUDA compile options class (what this Triton supports)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:  # (a Triton without the CUDA backend)
        return default
    return getattr(CUDAOptions, name, default)


def _pow2(n: int) -> int:
    return max(16, next_pow2(n))


def make_plan(
    x: torch.Tensor, N: int, chunk_size: int, n_seqs: Optional[int], seg_chunks: int = 0,
    fwd_warps: int = 4, bwd_warps: int = 0, fwd_stages: int = 1, bwd_stages: int = 1, block_p_bwd: int = 0,
    bwd_span: int = -1, y_off_from_dc: Optional[bool] = None, fwd_span: int = -1, state_tile: tuple = (),
    state_warps: int = 0, state_stages: int = 0, store_stages: int = 0, heads_inner: Optional[bool] = None,
    scan_regs: int = 0, walk_regs: int = 0, bwd_regs: int = 0, head_loop: Optional[bool] = None,
    block_p: int = 0, fit: bool = True,
) -> Plan:  # fmt: skip
    """Pick the plan; ``seg_chunks`` / ``block_p`` / ``block_p_bwd`` / ``bwd_warps`` / ``state_warps`` /
    ``state_stages`` / ``store_stages`` 0, ``bwd_span`` / ``fwd_span`` -1, ``y_off_from_dc`` / ``heads_inner``
    None and ``state_tile`` () mean "choose for this GPU"; ``scan_regs`` / ``walk_regs`` / ``bwd_regs`` > 0 cap
    the registers of the forward scan, the state walks and the fused backward (``register_cap``; measured
    slower); ``head_loop`` None: the chunk-parallel backward walks each group's heads for fp32 inputs
    (``HEAD_LOOP``). ``fit``: where the kernels' shared memory (``shared_estimate``) would pass the device's,
    run smaller chunks or P tiles (``fit_shared_memory``).

    ``n_seqs`` is the number of packed sequences, or None for a plain batch.
    """
    if fit:
        return fit_shared_memory(
            x, N, chunk_size, block_p, block_p_bwd,
            lambda q, bp, bpb: make_plan(
                x, N, q, n_seqs, seg_chunks, fwd_warps=fwd_warps, bwd_warps=bwd_warps, fwd_stages=fwd_stages,
                bwd_stages=bwd_stages, block_p_bwd=bpb, bwd_span=bwd_span, y_off_from_dc=y_off_from_dc,
                fwd_span=fwd_span, state_tile=state_tile, state_warps=state_warps, state_stages=state_stages,
                store_stages=store_stages, heads_inner=heads_inner, scan_regs=scan_regs, walk_regs=walk_regs,
                bwd_regs=bwd_regs, head_loop=head_loop, block_p=bp, fit=False))  # fmt: skip
    rows, L, H, P = x.shape
    if chunk_size > MAX_CHUNK:
        raise ValueError(f"ssd (triton): argument `chunk_size` must be <= {MAX_CHUNK} for the triton backend, got {chunk_size}")
    block_n = _pow2(N)
    block_p = min(_pow2(P), _pow2(block_p) if block_p > 0 else max(16, 8192 // block_n))
    tile_chunk = TILE_CHUNK[x.element_size()]
    if x.device.type == "cuda" and x.element_size() == 2:
        tile_chunk = min(tile_chunk, GPU_CHUNK_16BIT)  # the fastest chunk there
        if block_p < 64:  # what Triton 3.6 compiles correctly there
            tile_chunk = min(tile_chunk, NARROW_TILE_CHUNK)
    Q = max(1, min(chunk_size, L, tile_chunk))
    n_chunks = cdiv(L, Q) if n_seqs is None else L // Q + n_seqs
    state_n, state_p = state_tile or STATE_TILE
    state_n, state_p = min(block_n, _pow2(state_n)), min(_pow2(P), _pow2(state_p))
    state_programs = rows * H * cdiv(P, state_p) * cdiv(N, state_n)  # per segment
    scan_programs = rows * H * cdiv(P, block_p)  # the walking scan's, per segment
    one_walk = lambda: (  # noqa: E731  (16-bit on the GPU, one segment per row filling it: see WALK_FILL)
        x.device.type == "cuda" and x.element_size() == 2 and walk_fill(scan_programs, sm_count(x.device)) >= WALK_FILL)
    if fwd_span < 0:
        fp32_gpu = FP32_CHUNK_PARALLEL and x.device.type == "cuda" and x.element_size() == 4
        many = state_programs >= STATE_PROGRAMS_PER_SM * sm_count(x.device)
        fwd_span = FWD_SPAN if fp32_gpu or (many and not one_walk()) else 0
    if fwd_span or state_tile or WALKING_PLAN_TILES:
        state_warps, state_stages = state_warps or STATE_WARPS, state_stages or STATE_STAGES
    else:  # the state walks take whole states, like the walking scan
        state_n, state_p = block_n, block_p
        state_warps, state_stages = state_warps or fwd_warps, state_stages or WALK_STATE_STAGES
    if seg_chunks <= 0:  # enough programs to fill the GPU
        if fwd_span:  # (the state walks walk)
            n_segs = cdiv(STATE_PROGRAMS_PER_SM * sm_count(x.device), state_programs)
        elif one_walk():  # (one segment per row fills the GPU)
            n_segs = 1
        else:  # (the scan walks: as many segments as fit in whole waves of its programs)
            n_segs = SEG_PROGRAMS_PER_SM * sm_count(x.device) // scan_programs
        n_segs = max(1, min(n_chunks, n_segs))
        seg_chunks = cdiv(n_chunks, n_segs)
    seg_chunks = min(seg_chunks, n_chunks)
    if block_p_bwd <= 0:  # fp32 tiles take twice the shared memory of 16-bit ones
        block_p_bwd = min(_pow2(P), 32 if x.dtype == torch.float32 else 64)
    if bwd_span < 0:
        bwd_span = BWD_SPAN
    if head_loop is None:
        head_loop = HEAD_LOOP and x.element_size() == 4
    forms = triton_forms.kernel_forms(device_major(x.device))
    if bwd_warps <= 0:  # (Triton 3.0-3.2 crash compiling the 16-bit backward at 8 warps: triton_forms.py)
        eight = bwd_span and Q > 32 and x.element_size() == 2 and forms != triton_forms.OLD_TRITON
        bwd_warps = 8 if eight else 4
    # Measured on the H200 (bf16, whole backward): from the dC product 2.80 ms against 3.11 at Q=32
    # (4 warps); at Q=64 it is slower (3.66 against 2.96 with 8 warps, 4.28 against 3.17 with 4).
    if y_off_from_dc is None:
        y_off_from_dc = _pow2(Q) <= 32
    return Plan(Q, n_chunks, seg_chunks, cdiv(n_chunks, seg_chunks), _pow2(Q), block_p, block_p_bwd,
                min(bwd_span, n_chunks), min(fwd_span, n_chunks), state_n, state_p, state_warps, state_stages,
                y_off_from_dc, block_n, fwd_warps, bwd_warps, fwd_stages, store_stages or STORE_H_STAGES,
                HEADS_INNER if heads_inner is None else heads_inner, bwd_stages, n_seqs is not None, scan_regs,
                walk_regs, bwd_regs, head_loop, forms)  # fmt: skip


# Shared memory. A kernel asking for more shared memory per program than the GPU has does not start
# (Triton's OutOfResources at its first launch). The plans above were chosen on the H200 (227 KiB);
# an A100 has 163 KiB, GPUs of compute capability 8.6 / 8.9 (RTX 3090 / 4090, A10, L4, L40) 99 KiB,
# a V100 96 KiB, a T4 (and the RTX 20xx, compute capability 7.5) 64 KiB.
# ``shared_estimate`` bounds each kernel's shared memory by its tiles' elements times the operand size
# times a factor: above the largest ratio of compiled shared memory to those bytes over the plans of
# ``benchmarks/ssd_shared_memory.py`` (Triton 3.6 and 3.9; P 32-128, N 16-256, chunks 16-64, 16-bit and
# fp32), by kernel, operand size and architecture generation (Hopper's wgmma products stage more than
# mma.sync's; before Ampere, Triton multiplies tiles on the FMA units from whole staged operands). Largest
# ratios seen, sm_90: the forward scan 1.23 (16-bit) / 0.70 (fp32), the fused backward 1.28 / 0.80, the
# state walks 0.88; sm_80 and sm_89: 0.92 / 0.35, 0.98 / 0.57, 0.57; sm_70 and sm_75: 1.51 / 0.99,
# 1.89 / 1.13, 0.47. Datacenter Blackwell (sm_100, B200; its tcgen05 products; 72 plans of
# ``benchmarks/ssd_shared_ratios.py``): with Triton 3.9 the forward scan 0.92 / 1.00, the fused backward
# 1.40 / 0.57, the walks 1.00 / 0.71; with 3.6 and 3.7 the scan 1.23 / 1.00 and the backward 1.40 / 1.43
# (the fp32 head loop stages far more there), the walks the same; the factors cover both;
# consumer Blackwell (sm_120, RTX 5090: mma.sync) stays within Hopper's (1.31 / 0.65, 1.06 / 0.73, 0.59 / 0.63).
# Keys: (kernel, operand bytes, generation): 10 sm_100 / sm_110, 9 Hopper and sm_120 on, 8 Ampere / Ada, 7 Volta /
# Turing (``generation``).
SHARED_FACTOR = {
    ("scan", 2, 10): 1.3, ("scan", 4, 10): 1.1, ("bwd", 2, 10): 1.5, ("bwd", 4, 10): 1.5,
    ("walk", 2, 10): 1.1, ("walk", 4, 10): 0.8,
    ("scan", 2, 9): 1.35, ("scan", 4, 9): 0.8, ("bwd", 2, 9): 1.35, ("bwd", 4, 9): 0.9,
    ("scan", 2, 8): 1.0, ("scan", 4, 8): 0.45, ("bwd", 2, 8): 1.1, ("bwd", 4, 8): 0.65,
    ("scan", 2, 7): 1.6, ("scan", 4, 7): 1.05, ("bwd", 2, 7): 2.0, ("bwd", 4, 7): 1.2,
    ("walk", 2, 9): 1.0, ("walk", 4, 9): 1.0, ("walk", 2, 8): 0.7, ("walk", 4, 8): 0.7,
    ("walk", 2, 7): 0.5, ("walk", 4, 7): 0.5,
}


def generation(major: int) -> int:
    """The ``SHARED_FACTOR`` generation of a compute capability major (0, off the GPU: Ampere's)."""
    if major in (10, 11):
        return 10
    return 9 if major >= 9 else 7 if 0 < major < 8 else 8


def shared_estimate(plan: Plan, esize: int, major: int = 9) -> dict:
    """Estimated shared memory, in bytes, of the plan's largest kernels for operands of ``esize`` bytes
    (2: 16-bit, 4: fp32) on a GPU of compute capability ``major``, by kernel name."""
    Q, bn, bp, bpb = plan.block_q, plan.block_n, plan.block_p, plan.block_p_bwd
    sn, sp, st = plan.state_block_n, plan.state_block_p, max(1, plan.state_stages)
    scan = 2 * Q * bn + bn * bp + Q * bp + Q * Q  # (Q, N) B and C, the (N, P) state, (Q, P) x, (Q, Q) scores
    bwd = 2 * Q * bn + 2 * bn * bpb + 2 * Q * bpb + Q * Q  # ... the state and its gradient, x and dy
    walk = st * max(Q, SEGMENT_BLOCK_T) * (sn + sp) + sn * sp  # pipelined (Q, N) and (Q, P) loads, the state
    gen = generation(major)
    f = lambda kind, elements: int(SHARED_FACTOR[kind, esize, gen] * elements * esize)  # noqa: E731
    return {"_ssd_scan_fwd_kernel": f("scan", scan),
            "_ssd_bwd_heads_kernel" if esize == 4 else "_ssd_bwd_kernel": f("bwd", bwd),
            "_ssd_states_kernel": f("walk", walk)}  # fmt: skip


def fit_shared_memory(x: torch.Tensor, N: int, chunk_size: int, block_p: int, block_p_bwd: int, plan_for) -> Plan:
    """``plan_for(chunk, block_p, block_p_bwd)``, with the chunk or a P tile halved (down to 16) while the
    plan's largest kernel would ask for more shared memory than ``x``'s device has: each step takes the
    halving that shrinks that estimate most (tiles before the chunk where they tie). Raises where even the
    smallest tiles would not fit (a very large state size N)."""
    limit, esize, major = shared_memory(x.device), x.element_size(), device_major(x.device)
    plan = plan_for(chunk_size, block_p, block_p_bwd)
    need = lambda p: max(shared_estimate(p, esize, major).values())  # noqa: E731
    while need(plan) > limit:
        steps = []
        if plan.block_p_bwd > 16:
            steps.append((plan.Q, plan.block_p, plan.block_p_bwd // 2))
        if plan.block_p > 16:
            steps.append((plan.Q, plan.block_p // 2, plan.block_p_bwd))
        if plan.Q > 16:
            steps.append((plan.Q // 2, plan.block_p, plan.block_p_bwd))
        if not steps:
            raise ValueError(
                f"ssd (triton): the kernels for N={N} (state size), P={x.shape[3]} and {x.dtype} inputs need about "
                f"{need(plan) // 1024} KiB of shared memory per program even with the smallest chunk and tiles; "
                f"this GPU has {limit // 1024} KiB. Use backend='torch' for this model.")
        plan = min((plan_for(*s) for s in steps), key=need)  # (min keeps the first of equals: tiles first)
    return plan


def walk_fill(programs: int, sms: int) -> float:
    """How well ``programs`` equally long walks fill the GPU. Within one wave (up to ``WALK_RESIDENT_PER_SM``
    per SM): the share of SMs given a program, since a second program on an SM runs beside the first and
    lengthens nothing. Past one wave: the share of the program slots that their whole waves keep busy."""
    wave = WALK_RESIDENT_PER_SM * sms
    if programs <= wave:
        return min(1.0, programs / sms)
    return programs / (cdiv(programs, wave) * wave)


# With a gradient to come, the walking plan cuts long rows into one wave of its scan programs (this many per SM)
# rather than two (SEG_PROGRAMS_PER_SM), where that wave is at least TRAIN_WAVE_FILL full and each segment keeps at
# least TRAIN_MIN_SEG_CHUNKS chunks: the forward's walks take longer, the backward's fewer segments save more.
# On the H200 (bf16, P=64, N=128, chunk 32, forward / forward+backward ms, two rounds each, plan against half its
# count): one sequence of 64K tokens with 64 heads, 8 segments 1.638 / 9.495-9.503 against 4 segments 1.724-1.728
# / 9.387-9.392; 64K with 32 heads 16 against 8 0.820-0.822 / 4.800 against 0.849-0.850 / 4.716-4.717; 128K with
# 32 heads 16 against 8 1.591-1.594 / 9.448-9.449 against 1.675-1.677 / 9.302-9.303; B=2 L=32K H=32 8 against 4
# 0.809-0.811 / 4.772-4.773 against 0.852-0.853 / 4.719-4.721; 16K with 64 heads 8 against 4 0.433-0.434 /
# 2.463-2.465 against 0.452 / 2.435-2.440. Where half the count leaves a partial wave (32K with 96 heads: 5 against
# 2 segments, 0.73 of a wave) it was slower (7.37-7.39 against 7.93), and at 256 chunks per row the pairs of rounds
# disagreed (B=2 L=8192 H=32: 1.332 / 1.606 against 1.381 / 1.311). The Mamba-2 layer at 64K (three rounds in one
# process): 26.21 / 26.74 / 26.54 ms with 8 segments, 26.07 / 26.32 / 26.46 with 4; with this rule, gpu_layers.py
# measured it at 25.80 and 25.62 ms against attention's 130.47 and 129.13 (5.06x, 5.05x; 4.88x-4.99x over earlier
# calls with the plan's count).
TRAIN_SEG_PROGRAMS_PER_SM = 2
TRAIN_WAVE_FILL = 0.9
TRAIN_MIN_SEG_CHUNKS = 128


def training_seg_chunks(x: torch.Tensor, N: int, chunk_size: int, n_seqs: Optional[int], seg_chunks: int,
                        fwd_span: int, grad: bool) -> int:  # fmt: skip
    """The ``seg_chunks`` a call passes to its plans (the forward's and the backward's alike): as asked, or, where
    the plan is to choose (0), a gradient will be needed and 16-bit rows (not packed sequences) on the GPU walk
    in segments, ``one_wave_seg_chunks`` (0 where that rule keeps the plan's own count). Traced calls
    (``torch.compile``) keep the plan's."""
    if seg_chunks or not grad or n_seqs is not None or x.device.type != "cuda" or x.element_size() != 2:
        return seg_chunks
    if torch.compiler.is_compiling():
        return seg_chunks
    plan = make_plan(x, N, chunk_size, None, 0, fwd_span=fwd_span)
    rows, _, H, P = x.shape
    return one_wave_seg_chunks(plan, rows * H * cdiv(P, plan.block_p), sm_count(x.device))


def one_wave_seg_chunks(plan: Plan, scan_programs: int, sms: int) -> int:
    """Chunks per segment for one wave of the walking scan's ``scan_programs`` (per segment) at
    ``TRAIN_SEG_PROGRAMS_PER_SM``, where ``plan`` walks more segments than that, the wave is at least
    ``TRAIN_WAVE_FILL`` full and segments keep ``TRAIN_MIN_SEG_CHUNKS`` chunks; else 0 (the plan's count)."""
    if plan.fwd_span or plan.n_segs < 2:
        return 0
    wave = TRAIN_SEG_PROGRAMS_PER_SM * sms
    n = wave // scan_programs
    if n < 2 or n >= plan.n_segs or n * scan_programs < TRAIN_WAVE_FILL * wave:
        return 0
    seg = cdiv(plan.n_chunks, n)
    return seg if seg >= TRAIN_MIN_SEG_CHUNKS else 0


def forward_span(x: torch.Tensor, fwd_span: int, grad: bool) -> int:
    """The ``fwd_span`` a call passes to its plans: as asked, or, where the plan is to choose (-1) and no
    gradient will be needed, ``INFERENCE_FWD_SPAN`` for 16-bit inputs (``FWD_SPAN``'s note)."""
    if fwd_span < 0 and not grad and x.element_size() == 2:
        return INFERENCE_FWD_SPAN
    return fwd_span


def varlen_chunk_table(cu_seqlens: torch.Tensor, Q: int, n_chunks: int) -> torch.Tensor:
    """(n_chunks, 4) int64 rows (start, end, seq, flags) for packed sequences.

    Each sequence starts a fresh chunk; flag 1 = opens its sequence, 2 = closes
    it. Chunks past the last real one are empty (start = end = total length).
    Built on the device with static shapes (no host sync).
    """
    cu = cu_seqlens.to(torch.int64)
    S = cu.numel() - 1
    lens = cu[1:] - cu[:-1]
    per_seq = torch.div(lens + Q - 1, Q, rounding_mode="floor")  # chunks of each sequence
    ends = torch.cumsum(per_seq, 0)  # first chunk index after each sequence
    c = torch.arange(n_chunks, device=cu.device)
    seq = torch.searchsorted(ends, c, right=True)  # (n_chunks,), S past the last sequence
    valid = seq < S
    k = seq.clamp(max=S - 1)
    j = c - (ends[k] - per_seq[k])  # index of the chunk inside its sequence
    start = torch.where(valid, cu[k] + j * Q, cu[-1])
    end = torch.where(valid, torch.minimum(start + Q, cu[k + 1]), cu[-1])
    flags = (valid & (j == 0)).long() + 2 * (valid & (j == per_seq[k] - 1)).long()
    return torch.stack([start, end, torch.where(valid, k, 0), flags], dim=1).contiguous()  # (n_chunks, 4)


def _state_like(init: Optional[torch.Tensor], n_seqs: int, H: int, P: int, N: int, plan: Plan, x) -> torch.Tensor:
    """A (S, H, P, N) fp32 buffer every sequence's last chunk overwrites; packed
    sequences may be empty, so there it starts as ``init`` (or zeros)."""
    if not plan.varlen:
        return torch.empty(n_seqs, H, P, N, dtype=torch.float32, device=x.device)
    if init is None:
        return torch.zeros(n_seqs, H, P, N, dtype=torch.float32, device=x.device)
    return init.clone()


def _segment_sums(v, M, edge, out, seg_decay, dt, A, dt_bias, dt_softplus: bool, plan: Plan, sizes: tuple,
                  strides: tuple, backward: bool) -> None:  # fmt: skip
    """Each segment's own state at its end (v = x, M = B, ``edge`` the initial state or None; writes
    ``seg_decay``) or, ``backward``, its own gradient at its start (v = dy, M = C, ``edge`` the final-state
    gradient or None) into ``out`` (rows, n_segs, H, N, P) fp32: one chained product per segment
    (``triton_segment_sums.py``) on the walks' (N, P) tiles, warps and stages, ``SEGMENT_BLOCK_T`` tokens
    per product (fewer in shorter segments)."""
    rows, L, H, P = v.shape
    N = M.shape[3]
    bn, bp = plan.state_block_n, plan.state_block_p
    seg_len = plan.seg_chunks * plan.Q
    bt = min(SEGMENT_BLOCK_T, seg_len & -seg_len)  # blocks that tile the segment where they can
    if bt < 16:  # (tl.dot: K >= 16)
        bt = max(16, min(SEGMENT_BLOCK_T, next_pow2(seg_len)))
    whole = (WHOLE_TILES and not plan.varlen and L % bt == 0 and seg_len % bt == 0 and P % bp == 0
             and N % bn == 0)  # fmt: skip
    grid = (cdiv(P, bp) * cdiv(N, bn), plan.n_segs, rows * H)
    _ssd_segment_sums_kernel[grid](
        v, dt, A, v if dt_bias is None else dt_bias, M, v if edge is None else edge, out, seg_decay, *sizes,
        *strides, SOFTPLUS=dt_softplus, HAS_BIAS=dt_bias is not None, HAS_EDGE=edge is not None, BACKWARD=backward,
        BLOCK_T=bt, BLOCK_P=bp, BLOCK_N=bn, WHOLE=whole, num_warps=plan.state_warps, num_stages=plan.state_stages,
        **_dot_flags(v), **register_cap(v, plan.walk_regs), **LAUNCH,
    )  # fmt: skip


def chains_segments(plan: Plan) -> bool:
    """Whether the segments' own sums (before the passing) are one chained product per segment
    (``triton_segment_sums.py``, ``CHAINED_SEGMENT_SUMS``) rather than the walks' recurrence: batch rows only."""
    return CHAINED_SEGMENT_SUMS and not plan.varlen


def passing(states: torch.Tensor, decay: torch.Tensor, reverse: bool) -> None:
    """Chain segments in place: states (rows, n_segs, H, N, P) fp32, decay (rows, n_segs, H)."""
    rows, n_segs, H, N, P = states.shape
    block = min(1024, next_pow2(P * N))
    grid = (cdiv(P * N, block), rows * H)
    _ssd_passing_kernel[grid](states, decay, n_segs, H, P * N, REVERSE=reverse, BLOCK=block, num_warps=4, **LAUNCH)


def whole_tiles(plan: Plan, L: int, P: int, N: int, block_p: int, block_n: int) -> bool:
    """Whether a kernel with (block_p, block_n) tiles runs its chunk loop on whole tiles (``WHOLE_TILES``)."""
    return (WHOLE_TILES and not plan.varlen and plan.block_q == plan.Q and L % plan.Q == 0 and P % block_p == 0
            and N % block_n == 0)  # fmt: skip


def _launch_args(x, dt, B, plan: Plan):
    """Sizes, strides, and the scan's grid and launch options (the kernels' common arguments)."""
    rows, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    sizes = (L, H, P, N, plan.n_chunks, plan.n_segs, plan.seg_chunks, plan.Q, H // G)
    # x: its own batch / token strides; the (B, L, H, P) tensors the kernels write or take from
    # the caller's gradient (y, dy, dx, z): contiguous
    strides = (x.stride(0), x.stride(1), L * H * P, H * P, dt.stride(0), dt.stride(1), B.stride(0), B.stride(1))
    grid = (cdiv(P, plan.block_p), plan.n_segs, rows * H)
    blocks = dict(BLOCK_Q=plan.block_q, BLOCK_P=plan.block_p, BLOCK_N=plan.block_n,
                  WHOLE=whole_tiles(plan, L, P, N, plan.block_p, plan.block_n), num_warps=plan.fwd_warps,
                  num_stages=plan.fwd_stages, **register_cap(x, plan.scan_regs))  # fmt: skip
    return sizes, strides, grid, blocks


def _state_walk_args(x, N: int, plan: Plan):
    """Grid and launch options of the state walks (states, dstates): one program per (N, P) tile."""
    rows, L, H, P = x.shape
    bn, bp, warps, stages = plan.state_block_n, plan.state_block_p, plan.state_warps, plan.state_stages
    blocks = dict(BLOCK_Q=plan.block_q, BLOCK_P=bp, BLOCK_N=bn, WHOLE=whole_tiles(plan, L, P, N, bp, bn),
                  num_warps=warps, num_stages=stages, **register_cap(x, plan.walk_regs))  # fmt: skip
    return (cdiv(P, bp) * cdiv(N, bn), plan.n_segs, rows * H), blocks


def _spans(sizes: tuple, n_chunks: int, span: int) -> tuple[tuple, int]:
    """The sizes of a chunk-parallel kernel, whose "segments" are spans of ``span`` chunks."""
    n_spans = cdiv(n_chunks, span)
    return (*sizes[:5], n_spans, span, *sizes[7:]), n_spans


def keeps_states(x: torch.Tensor, N: int, plan: Plan, asked: bool) -> bool:
    """Whether the forward keeps the state entering every chunk: when ``asked`` (``KEEP_STATES`` and a
    gradient to come) and the (rows, n_chunks, H, N, P) buffer is at most ``KEEP_STATES_MAX_BYTES``."""
    rows, _, H, P = x.shape
    return asked and rows * plan.n_chunks * H * N * P * dot_dtype(x).itemsize <= KEEP_STATES_MAX_BYTES


def ssd_fwd(
    x, dt, A, B, C, D, z, dt_bias, init, table, n_seqs: int, plan: Plan, dt_softplus: bool, save_pre: bool,
    keep_states: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Forward launches; x, B, C with their last two dimensions contiguous (any batch / token
    strides; B and C alike), dt and z contiguous; ``init`` fp32 (S, H, P, N) or None.

    Returns y (B, L, H, P) in x's dtype, final (S, H, P, N) fp32, the state
    entering each segment (rows, n_segs, H, N, P) fp32 (transposed), the segment decays
    (rows, n_segs, H) fp32, the pre-gate output (empty unless ``save_pre``) and the state
    entering every chunk (rows, n_chunks, H, N, P) in the dot dtype (empty unless ``keep_states`` and
    :func:`keeps_states`).
    """
    rows, L, H, P = x.shape
    N = B.shape[3]
    keep_states = keeps_states(x, N, plan, keep_states)
    sizes, strides, grid, blocks = _launch_args(x, dt, B, plan)
    walk_grid, walk_blocks = _state_walk_args(x, N, plan)
    flags = dict(SOFTPLUS=dt_softplus, HAS_BIAS=dt_bias is not None, HAS_INIT=init is not None,
                 VARLEN=plan.varlen, **_dot_flags(x))  # fmt: skip
    opt = lambda t: x if t is None else t  # noqa: E731  (placeholder pointer, never read)
    several = plan.n_segs > 1
    f32 = dict(dtype=torch.float32, device=x.device)
    # (one segment per row: nothing enters it but the initial state, which the kernels read themselves)
    seg = (torch.empty if several else torch.zeros)(rows, plan.n_segs, H, N, P, **f32)
    seg_decay = (torch.empty if several else torch.zeros)(rows, plan.n_segs, H, **f32)
    if several:
        if chains_segments(plan):
            _segment_sums(x, B, init, seg, seg_decay, dt, A, dt_bias, dt_softplus, plan, sizes, strides, False)
        else:
            _ssd_states_kernel[walk_grid](
                x, dt, A, opt(dt_bias), B, opt(init), opt(table), seg, seg, seg_decay, seg, *sizes, *strides,
                STORE_CHUNKS=False, SEG_IN=False, STORE_FINAL=False, **flags, **walk_blocks, **LAUNCH,
            )  # fmt: skip
        passing(seg, seg_decay, reverse=False)  # seg: now the state entering each segment

    final = _state_like(init, n_seqs, H, P, N, plan, x)
    y = x.new_empty(x.shape)  # contiguous, whatever x's strides
    y_pre = x.new_empty(x.shape) if save_pre else x.new_empty(0)
    h_in = x  # (placeholder pointer when the scan walks and nothing is kept)
    if plan.fwd_span or keep_states:
        h_in = torch.empty(rows, plan.n_chunks, H, N, P, dtype=dot_dtype(x), device=x.device)
    if plan.fwd_span:  # the state entering every chunk, and the final states; then chunks in parallel
        _ssd_states_kernel[walk_grid](
            x, dt, A, opt(dt_bias), B, opt(init), opt(table), h_in, seg, seg_decay, final, *sizes, *strides,
            STORE_CHUNKS=True, SEG_IN=several, STORE_FINAL=True, **flags, **walk_blocks, **LAUNCH,
        )  # fmt: skip
        sizes, n_spans = _spans(sizes, plan.n_chunks, plan.fwd_span)
        grid = (grid[0], grid[2], n_spans) if plan.heads_inner else (grid[0], n_spans, grid[2])
    store_h = keep_states and not plan.fwd_span
    if store_h:
        blocks = blocks | dict(num_stages=plan.store_stages)
    _ssd_scan_fwd_kernel[grid](
        x, dt, A, opt(dt_bias), B, C, opt(D), opt(z), opt(init), opt(table), seg, h_in, y,
        y_pre if save_pre else y, final, *sizes, *strides, HAS_D=D is not None,
        D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None, STORE_PRE=save_pre,
        H_CHUNKS=plan.fwd_span > 0, STORE_H=store_h, HEADS_INNER=plan.fwd_span > 0 and plan.heads_inner,
        TILES_AHEAD=TILES_AHEAD and not plan.fwd_span and (not store_h or STORE_H_TILES_AHEAD), **flags,
        FORMS=plan.forms, **blocks, **LAUNCH,
    )  # fmt: skip
    return y, final, seg, seg_decay, y_pre, h_in if keep_states else x.new_empty(0)


def ssd_bwd(
    dy, dfinal, x, dt, A, B, C, D, dt_bias, init, table, seg_in, seg_decay, n_seqs: int, plan: Plan,
    dt_softplus: bool, h_kept: Optional[torch.Tensor] = None, dx_out: Optional[torch.Tensor] = None,
    dB_out: Optional[torch.Tensor] = None, dC_out: Optional[torch.Tensor] = None,
) -> tuple:  # fmt: skip
    """Backward launches. ``dy``: gradient of the pre-gate output (x's dtype or ``dot_dtype(x)``);
    ``dfinal``: (S, H, P, N) fp32 or None; ``seg_in``, ``seg_decay`` and (if it kept them, else
    None or empty) the per-chunk states ``h_kept`` from :func:`ssd_fwd`.

    Returns dx, ddt (fp32), dA (H,) fp32, dB, dC ((B, L, G, N), in B's and C's dtypes, or fp32),
    dD (fp32, D's shape) or None, d dt_bias (fp32) or None, d initial state (fp32) or None.
    ``dx_out`` (B, L, H, P) in x's dtype with (H, P) contiguous in a token, ``dB_out`` / ``dC_out``
    (B, L, G, N): tensors (e.g. slices of one larger gradient) that dx, dB and dC are written into and
    returned as.
    """
    rows, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    sizes, strides, grid, blocks = _launch_args(x, dt, B, plan)
    walk_grid, walk_blocks = _state_walk_args(x, N, plan)
    base = dict(SOFTPLUS=dt_softplus, HAS_BIAS=dt_bias is not None, VARLEN=plan.varlen, **_dot_flags(x))
    opt = lambda t: x if t is None else t  # noqa: E731
    f32 = dict(dtype=torch.float32, device=x.device)
    several = plan.n_segs > 1

    if h_kept is not None and h_kept.numel():  # the state entering every chunk, kept by the forward
        h_in = h_kept
    else:  # recomputed from the saved segment states
        h_in = torch.empty(rows, plan.n_chunks, H, N, P, dtype=dot_dtype(x), device=x.device)
        _ssd_states_kernel[walk_grid](
            x, dt, A, opt(dt_bias), B, opt(init), opt(table), h_in, seg_in, seg_decay, seg_in, *sizes, *strides,
            STORE_CHUNKS=True, SEG_IN=several, STORE_FINAL=False, HAS_INIT=init is not None, **base,
            **walk_blocks, **LAUNCH,
        )  # fmt: skip
    # Gradient at every segment's end: segment-local sums chained backwards (zero: a row's only segment,
    # which the per-chunk kernels do not read: a placeholder pointer then).
    if several or not plan.bwd_span:
        g_seg = (torch.empty if several else torch.zeros)(rows, plan.n_segs, H, N, P, **f32)
    else:
        g_seg = x
    dinit = _state_like(dfinal, n_seqs, H, P, N, plan, x) if init is not None else None
    dstates = dict(HAS_DFINAL=dfinal is not None, HAS_DINIT=init is not None, **base)
    if several:
        if chains_segments(plan):
            _segment_sums(dy, C, dfinal, g_seg, g_seg, dt, A, dt_bias, dt_softplus, plan, sizes, strides, True)
        else:
            _ssd_dstates_kernel[walk_grid](
                dy, dt, A, opt(dt_bias), C, opt(dfinal), opt(table), g_seg, g_seg, g_seg, *sizes, *strides,
                STORE_CHUNKS=False, SEG_IN=False, **dstates, **walk_blocks, **LAUNCH,
            )  # fmt: skip
        passing(g_seg, seg_decay, reverse=True)
    g_chunk, span = x, plan.bwd_span  # (placeholder pointer when not used)
    if span:  # the gradient at every chunk's end, so that chunks can be handled independently
        g_chunk = torch.empty(rows, plan.n_chunks, H, N, P, dtype=dot_dtype(x), device=x.device)
        _ssd_dstates_kernel[walk_grid](
            dy, dt, A, opt(dt_bias), C, opt(dfinal), opt(table), g_chunk, g_seg, opt(dinit), *sizes, *strides,
            STORE_CHUNKS=True, SEG_IN=several, **dstates, **walk_blocks, **LAUNCH,
        )  # fmt: skip
        sizes, n_spans = _spans(sizes, plan.n_chunks, span)
    else:
        n_spans = plan.n_segs

    n_pb = cdiv(P, plan.block_p_bwd)
    dx = x.new_empty(x.shape) if dx_out is None else dx_out
    ddt = torch.empty(n_pb, *dt.shape, **f32)  # shares of the P blocks
    dA = torch.empty(n_pb, rows * n_spans, H, **f32)
    dD = torch.empty(rows * n_spans, H, P, **f32) if D is not None else None
    if span == 1 and plan.head_loop:  # one program per (chunk, group), the heads' dB, dC summed in registers
        dB, dC = _bwd_heads(x, dt, A, dt_bias, B, C, D, dy, h_in, g_chunk, table, dx, ddt, dA, dD, dB_out, dC_out,
                            plan, base)  # fmt: skip
        return _bwd_sums(dx, ddt, dA, dB, dC, D, dD, dt_bias, dinit)
    share_dtype = torch.float32 if x.dtype == torch.float32 else x.dtype
    shares = torch.empty(2, rows, L, H, n_pb, N, dtype=share_dtype, device=x.device)  # per (head, P block)
    dB_h, dC_h = shares[0], shares[1]
    heads_inner = span > 0 and plan.heads_inner
    outs = dB_out is not None and dC_out is not None
    outs_fit = (dB_out is None and dC_out is None) or (
        outs and dB_out.stride() == dC_out.stride() and dB_out.stride(-1) == 1 and dB_out.stride(-2) == N)
    reduce_heads = REDUCE_HEADS and heads_inner and H // G * n_pb > 1 and outs_fit
    if reduce_heads:
        dB_sum = dB_out if outs else torch.empty(rows, L, G, N, **f32)
        dC_sum = dC_out if outs else torch.empty(rows, L, G, N, **f32)
        count = torch.zeros(rows * plan.n_chunks * G, dtype=torch.int32, device=x.device)
    else:
        dB_sum = dC_sum = count = dB_h  # (placeholders, never touched)
    _ssd_bwd_kernel[(n_pb, rows * H, n_spans) if heads_inner else (n_pb, n_spans, rows * H)](
        x, dt, A, opt(dt_bias), B, C, opt(D), dy, h_in, g_seg, g_chunk, opt(dfinal), opt(table),
        dx, ddt, dB_h, dC_h, dA, opt(dD), opt(dinit), dB_sum, dC_sum, count, *sizes, *strides, dx.stride(0),
        dx.stride(1), dB_sum.stride(0), dB_sum.stride(1), ddt[0].numel(), dA[0].numel(),
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_DFINAL=dfinal is not None,
        HAS_DINIT=init is not None, G_CHUNKS=span > 0, Y_OFF_FROM_DC=plan.y_off_from_dc, HEADS_INNER=heads_inner,
        REDUCE_HEADS=reduce_heads, **base,
        BLOCK_Q=plan.block_q, BLOCK_P=plan.block_p_bwd, BLOCK_N=plan.block_n,
        WHOLE=whole_tiles(plan, L, P, N, plan.block_p_bwd, plan.block_n),
        FORMS=plan.forms, num_warps=plan.bwd_warps,
        num_stages=plan.bwd_stages, **register_cap(x, plan.bwd_regs), **LAUNCH,
    )  # fmt: skip
    # Heads of a group share B and C: sum the shares of their heads and P blocks (in fp32), into the given
    # slices or tensors of B's and C's dtypes directly (one rounding). torch.sum, the fallback, accumulates
    # 16-bit inputs in fp32 too (a sum followed by a cast took 2 x 5 us more at B=8 L=4096 in an H200 profile).
    if reduce_heads:
        dB, dC = dB_sum, dC_sum
    elif HEAD_SUMS_KERNEL and all(o is None or o.stride(-1) == 1 for o in (dB_out, dC_out)):
        dB, dC = _head_sums(shares, G, dB_out, B.dtype, dC_out, C.dtype)
    else:
        dB, dC = [part.view(rows, L, G, H // G * n_pb, N).sum(3, dtype=like.dtype) if out is None  # (B, L, G, N)
                  else torch.sum(part.view(rows, L, G, H // G * n_pb, N), 3, dtype=out.dtype, out=out)
                  for part, out, like in ((dB_h, dB_out, B), (dC_h, dC_out, C))]  # fmt: skip
    return _bwd_sums(dx, ddt, dA, dB, dC, D, dD, dt_bias, dinit)


def _head_sums(shares: torch.Tensor, G: int, dB_out: Optional[torch.Tensor], dB_dtype: torch.dtype,
               dC_out: Optional[torch.Tensor], dC_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """dB, dC (rows, L, G, N) from the fused backward's shares (2, rows, L, H, n_pb, N): sums over the heads
    of each group and the P blocks, in fp32, into ``dB_out`` / ``dC_out`` (any strides with unit stride
    along N) or new tensors of the given dtypes (``triton_head_sums.py``)."""
    _, rows, L, H, n_pb, N = shares.shape
    dB = dB_out if dB_out is not None else shares.new_empty(rows, L, G, N, dtype=dB_dtype)
    dC = dC_out if dC_out is not None else shares.new_empty(rows, L, G, N, dtype=dC_dtype)
    n_tok, S = rows * L * G, H // G * n_pb
    if n_tok:
        _ssd_head_sums_kernel[(cdiv(n_tok, HEAD_SUMS_BLOCK_T), 2)](
            shares, dB, dC, n_tok, L, G, S, shares[0].numel(), *dB.stride()[:3], *dC.stride()[:3],
            N=N, BLOCK_T=HEAD_SUMS_BLOCK_T, SB=min(HEAD_SUMS_SB, next_pow2(S)),
            BLOCK_N=next_pow2(N), num_warps=HEAD_SUMS_WARPS, **LAUNCH,
        )  # fmt: skip
    return dB, dC


def _bwd_sums(dx, ddt, dA, dB, dC, D, dD, dt_bias, dinit) -> tuple:
    """``ssd_bwd``'s results from the fused backward's shares: ddt over the P blocks, dA and dD over the
    P blocks and segments (or chunks), d dt_bias over the batch and the tokens."""
    ddt = ddt[0] if ddt.shape[0] == 1 else ddt.sum(0)
    dD_sum = None
    if D is not None:  # (over the rows first: H x P columns to spread the sums over)
        dD_sum = dD.sum(0) if D.dim() == 2 else dD.sum((0, 2))
    ddt_bias = ddt.sum((0, 1)) if dt_bias is not None else None
    return dx, ddt, dA.sum((0, 1)), dB, dC, dD_sum, ddt_bias, dinit


def _bwd_heads(x, dt, A, dt_bias, B, C, D, dy, h_in, g_chunk, table, dx, ddt, dA, dD, dB_out, dC_out, plan: Plan,
               base: dict) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The fused backward with one program per (chunk, group) walking the group's heads
    (``triton_bwd_heads.py``); writes dx, ddt, dA, dD and returns dB, dC ((B, L, G, N): ``dB_out`` /
    ``dC_out`` when given, else fp32)."""
    rows, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    n_pb = cdiv(P, plan.block_p_bwd)
    f32 = dict(dtype=torch.float32, device=x.device)
    given = dB_out is not None and dC_out is not None
    direct = n_pb == 1 and given and dB_out.stride() == dC_out.stride() and dB_out.stride()[2:] == (N, 1)
    if direct:
        dB, dC = dB_out, dC_out
    else:  # fp32, and with several P blocks one partial sum each
        dB, dC = (torch.empty(n_pb, rows, L, G, N, **f32) for _ in range(2))
    o = dB[0] if dB.dim() == 5 else dB
    opt = lambda t: x if t is None else t  # noqa: E731
    _ssd_bwd_heads_kernel[(plan.n_chunks, rows * G, n_pb)](
        x, dt, A, opt(dt_bias), B, C, opt(D), dy, h_in, g_chunk, opt(table), dx, ddt, dB, dC, dA, opt(dD),
        L, H, P, N, plan.n_chunks, plan.Q, H // G, x.stride(0), x.stride(1), L * H * P, H * P, dt.stride(0),
        dt.stride(1), B.stride(0), B.stride(1), dx.stride(0), dx.stride(1), o.stride(0), o.stride(1),
        o.numel(), ddt[0].numel(), dA[0].numel(),
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, **base,
        BLOCK_Q=plan.block_q, BLOCK_P=plan.block_p_bwd, BLOCK_N=plan.block_n,
        FORMS=plan.forms, num_warps=plan.bwd_warps,
        num_stages=plan.bwd_stages, **register_cap(x, plan.bwd_regs), **LAUNCH,
    )  # fmt: skip
    if direct:
        return dB, dC
    dB, dC = (dB[0], dC[0]) if n_pb == 1 else (dB.sum(0), dC.sum(0))
    if not given:
        return dB, dC
    return dB_out.copy_(dB), dC_out.copy_(dC)
