"""SSD Triton stages 2 and 4 for whole segments: one chained product per segment.

Where a batch row is cut into segments, each segment's own contribution to the
state at its end (forward) or to the gradient at its start (backward) is
needed before ``triton_passing.py`` chains the segments. The walks of
``triton_states.py`` / ``triton_states_bwd.py`` compute it by their
recurrence, which rescales the running sum by each chunk's decay before the
chunk's product is added. Here each chunk's operand carries the decay to the
segment's edge instead, so the products add into one accumulator with nothing
done to it in between (fewer instructions per chunk; ``docs/kernels_gpu_notes_ssd.md``,
thirty-first session):

    forward:  S = Σ_c B_c^T (w_c x_c),    w_{c,j} = Δ_j exp(acum_last_c - acum_{c,j} + λ_c)
    backward: dS = Σ_c C_c^T (v_c dy_c),  v_{c,i} = exp(acum_{c,i} + μ_c)

with λ_c the log decay of the segment's chunks after c (from c's end to the
segment's end) and μ_c that of its chunks before c (from the segment's start
to c's start). So each token's weight is a decay between the token and the
segment's edge, whatever the chunks: the kernel takes the segment's tokens
``BLOCK_T`` at a time (``triton_launch.SEGMENT_BLOCK_T``). Every exponent is <= 0, so nothing overflows; a term decayed below the
dot dtype's range adds nothing, as it would to the recurrence.

Transposed like the walks: S, dS as (N, P). The forward adds the initial state
to segment 0 and writes each segment's total decay (0 for segment 0: nothing
flows into a row's start); the backward adds the final-state gradient to the
last segment. Batch rows only: packed sequences, which may open and close
inside a segment, take the walks.
"""

import triton
import triton.language as tl

from ..scan.triton_common import _load_in
from .triton_cumsum import decay_of, last_of, mask_if, program_tile


@triton.jit
def _ssd_segment_sums_kernel(
    v_ptr, dt_ptr, A_ptr, dt_bias_ptr, M_ptr, edge_ptr, out_ptr, seg_decay_ptr,
    L, H: tl.constexpr, P: tl.constexpr, N: tl.constexpr, n_chunks, n_segs, seg_chunks, Q: tl.constexpr,
    heads_per_group: tl.constexpr,
    stride_x_b, stride_x_l: tl.constexpr, stride_y_b, stride_y_l: tl.constexpr, stride_dt_b, stride_dt_l: tl.constexpr,
    stride_B_b, stride_B_l: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_EDGE: tl.constexpr, BACKWARD: tl.constexpr,
    DT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, WHOLE: tl.constexpr = False,
):  # fmt: skip
    """Grid (cdiv(P, BLOCK_P) * cdiv(N, BLOCK_N), n_segs, batch * H); ``WHOLE``: the segments' tokens come in
    whole blocks of ``BLOCK_T`` and the tiles cover P and N (no element masks).

    Forward: v = x (B, L, H, P) (strides stride_x_*), M = B (B, L, G, N), edge = the initial state
    (B, H, P, N) fp32 (with HAS_EDGE), seg_decay (B, n_segs, H) fp32 written. Backward (``BACKWARD``):
    v = dy (B, L, H, P) (strides stride_y_*), M = C, edge = the final-state gradient (B, H, P, N) fp32.
    dt: (B, L, H); out: (B, n_segs, H, N, P) fp32. Segments of ``seg_chunks`` chunks of Q tokens.
    """
    pid_p, pid_s, b, head, grp, b64, offs_q, offs_p, offs_n, mask_p, mask_n, mask_np, offs_np, api_np = \
        program_tile(H, P, N, heads_per_group, BLOCK_T, BLOCK_P, BLOCK_N)
    A = tl.load(A_ptr + head).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(dt_bias_ptr + head).to(tl.float32)
    if BACKWARD:
        v_row = v_ptr + b64 * stride_y_b + head * P
        stride_v = stride_y_l
    else:
        v_row = v_ptr + b64 * stride_x_b + head * P
        stride_v = stride_x_l
    dt_row = dt_ptr + b64 * stride_dt_b + head
    M_row = M_ptr + b64 * stride_B_b + grp * N

    offs_t = tl.arange(0, BLOCK_T)
    seg_start = pid_s.to(tl.int64) * seg_chunks * Q
    seg_end = tl.minimum(seg_start + seg_chunks * Q, L)
    n_blocks = tl.cdiv(seg_end - seg_start, BLOCK_T)
    acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    log_decay = 0.0  # of the tokens visited so far: from the segment's end (forward) or start (backward)
    # blocks from the segment's start (backward) or end (forward); each block's dt is loaded a block ahead
    if BACKWARD:
        t_next = seg_start + offs_t
    else:
        t_next = seg_start + (n_blocks - 1) * BLOCK_T + offs_t
    dt_next = _load_in(dt_row + t_next * stride_dt_l, t_next < seg_end, WHOLE).to(tl.float32)
    for i in range(0, n_blocks):
        t = t_next
        dtv = dt_next
        if BACKWARD:
            t_next = t + BLOCK_T
        else:
            t_next = t - BLOCK_T
        ahead = (t_next >= seg_start) & (t_next < seg_end)
        dt_next = _load_in(dt_row + t_next * stride_dt_l, ahead, False).to(tl.float32)
        mask_t = t < seg_end
        _, delta, acum = decay_of(dtv, mask_t, bias, A, SOFTPLUS, WHOLE)  # acum: cumsum of Δ A in the block
        total = last_of(acum, offs_t, BLOCK_T)
        vv = _load_in(v_row + t[:, None] * stride_v + offs_p[None, :], mask_t[:, None] & mask_p[None, :],
                      WHOLE)  # (BLOCK_T, BLOCK_P)
        Mv = _load_in(M_row + t[:, None] * stride_B_l + offs_n[None, :], mask_t[:, None] & mask_n[None, :],
                      WHOLE)  # (BLOCK_T, BLOCK_N)
        if BACKWARD:
            w = tl.exp(acum + log_decay)
        else:
            w = delta * tl.exp(total - acum + log_decay)
        vs = (vv.to(tl.float32) * w[:, None]).to(DT)
        acc = tl.dot(tl.trans(Mv.to(DT)), vs, acc=acc, input_precision=PREC)  # (BLOCK_N, BLOCK_P)
        log_decay += total

    if HAS_EDGE:  # the initial state entering segment 0, or the final-state gradient leaving the last one
        if BACKWARD:
            at_edge = pid_s == n_segs - 1
        else:
            at_edge = pid_s == 0
        edge = tl.load(edge_ptr + (b64 * H + head) * P * N + api_np, mask=mask_if(mask_np, at_edge), other=0.0)
        acc += tl.exp(log_decay) * edge
    seg_row = (b64 * n_segs + pid_s) * H + head  # row of (B, n_segs, H)
    tl.store(out_ptr + seg_row * P * N + offs_np, acc, mask=mask_np)
    if not BACKWARD:  # (a row opens in its first segment: nothing flows into it)
        tl.store(seg_decay_ptr + seg_row, tl.where(pid_s == 0, 0.0, tl.exp(log_decay)), mask=tl.program_id(0) == 0)
