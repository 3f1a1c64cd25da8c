"""SSD Triton: each segment's own contribution to the state (forward) and to the state
gradient (backward), as one product per segment instead of a recurrence over its chunks.

``triton_states.py`` and ``triton_states_bwd.py`` run the chunk recurrence

    h_c = exp(acum_last_c) h_{c-1} + S_c

with the state in registers: every chunk's product must wait for the previous chunk's
state to be scaled. What the passing kernel needs from a segment is only the sum

    h_end = Σ_c exp(R_c) S_c = Σ_{j in segment} exp(R_j) Δ_j x_j B_j^T,

R_j the log decay from token j to the segment's end. Walking the segment backwards,
R accumulates chunk totals from zero, so each chunk adds an independent product to
one accumulator (a matrix product whose inner dimension is the segment's tokens): no
dependent scaling, and the loads and products of consecutive chunks can overlap.
Only differences of chunk-local cumulative sums and sums of chunk totals going away
from the segment's end are exponentiated; once R is very negative the weights
underflow to zero, so its rounding (relative to |R|) never shows.

The backward mirror walks forward in time: the gradient at a segment's start is
Σ_c exp(F_c) Σ_{i in c} exp(acum_i) C_i^T dy_i, F_c the log decay from the segment's
start to chunk c's start.

Packed sequences cut the sums: in the forward a chunk that opens a sequence contributes
its tokens and its sequence's initial state (decayed to the segment's end), and nothing
before it counts; in the backward a chunk that opens a sequence cuts itself and
everything after it, and one that closes a sequence contributes its final-state
gradient (what follows it opens the next sequence, so is cut already).
"""

import triton
import triton.language as tl

from .triton_cumsum import chunk_bounds, chunk_decay, last_of, mask_if, program_tile


@triton.jit
def _ssd_seg_states_kernel(
    x_ptr, dt_ptr, A_ptr, dt_bias_ptr, B_ptr, init_ptr, table_ptr, out_ptr, seg_decay_ptr,
    L, H, P, N, n_chunks, n_segs, seg_chunks, Q, heads_per_group,
    stride_x_b, stride_x_l, stride_y_b, stride_y_l, stride_dt_b, stride_dt_l, stride_B_b, stride_B_l,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, VARLEN: tl.constexpr,
    DT: tl.constexpr, PREC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(P, BLOCK_P), n_segs, batch * H).

    x: (B, L, H, P); dt: (B, L, H); B: (B, L, G, N); init: (S, H, P, N) fp32.
    out: (B, n_segs, H, N, P) fp32, what each segment adds to the state at its end
    (transposed, as in ``triton_states.py``); seg_decay: (B, n_segs, H) fp32, the
    segment's total decay, 0 where a sequence opens inside it.
    """
    pid_p, pid_s, b, head, grp, b64, offs_q, offs_p, offs_n, mask_p, mask_n, mask_np, offs_np, api_np = \
        program_tile(H, P, N, heads_per_group, BLOCK_Q, BLOCK_P, BLOCK_N)

    A = tl.load(A_ptr + head).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(dt_bias_ptr + head).to(tl.float32)
    x_row = x_ptr + b64 * stride_x_b + head * P
    dt_row = dt_ptr + b64 * stride_dt_b + head
    B_row = B_ptr + b64 * stride_B_b + grp * N
    seg_row = (b64 * n_segs + pid_s) * H + head

    acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    rest = 0.0  # log decay from the end of the current chunk to the segment's end
    alive = pid_s >= 0  # (packed) no later chunk of the segment opened a sequence
    n_opens = (pid_s == 0).to(tl.int32)  # a batch row opens in its first chunk
    c0 = pid_s * seg_chunks
    n_here = tl.minimum(seg_chunks, n_chunks - c0)
    for i in range(0, n_here):
        c = c0 + n_here - 1 - i
        start, end, seq, opens, closes = chunk_bounds(table_ptr, b, c, L, n_chunks, Q, VARLEN)
        t = start + offs_q
        mask_q = t < end
        if VARLEN:
            mask_q = mask_if(mask_q, alive)
        _, delta, acum = chunk_decay(dt_row, t, mask_q, stride_dt_l, bias, A, SOFTPLUS)
        acum_last = last_of(acum, offs_q, BLOCK_Q)
        xv = tl.load(x_row + t[:, None] * stride_x_l + offs_p[None, :],
                     mask=mask_q[:, None] & mask_p[None, :], other=0.0)  # (Q, BLOCK_P)
        Bv = tl.load(B_row + t[:, None] * stride_B_l + offs_n[None, :],
                     mask=mask_q[:, None] & mask_n[None, :], other=0.0)  # (Q, BLOCK_N)
        w = delta * tl.exp(acum_last - acum + rest)  # Δ_j exp(R_j)
        xs = (xv.to(tl.float32) * w[:, None]).to(DT)
        acc += tl.dot(tl.trans(Bv.to(DT)), xs, input_precision=PREC)  # (BLOCK_N, BLOCK_P)
        rest += acum_last
        if VARLEN:  # the state is reset where a sequence opens: nothing before counts
            if HAS_INIT:
                h0 = tl.load(init_ptr + (seq * H + head) * P * N + api_np, mask=mask_if(mask_np, opens & alive),
                             other=0.0)  # fmt: skip
                acc += h0 * tl.exp(rest)
            n_opens += opens.to(tl.int32)
            alive = alive & (opens == 0)
    if not VARLEN:
        if HAS_INIT:  # (the state entering segment 0 is the row's initial state)
            h0 = tl.load(init_ptr + (b64 * H + head) * P * N + api_np, mask=mask_if(mask_np, pid_s == 0), other=0.0)
            acc += h0 * tl.exp(rest)
    tl.store(out_ptr + seg_row * P * N + offs_np, acc, mask=mask_np)
    seg_decay = tl.where(n_opens > 0, 0.0, tl.exp(rest))
    tl.store(seg_decay_ptr + seg_row, seg_decay, mask=pid_p == 0)


@triton.jit
def _ssd_seg_dstates_kernel(
    dy_ptr, dt_ptr, A_ptr, dt_bias_ptr, C_ptr, dfinal_ptr, table_ptr, out_ptr,
    L, H, P, N, n_chunks, n_segs, seg_chunks, Q, heads_per_group,
    stride_x_b, stride_x_l, stride_y_b, stride_y_l, stride_dt_b, stride_dt_l, stride_B_b, stride_B_l,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DFINAL: tl.constexpr, VARLEN: tl.constexpr,
    DT: tl.constexpr, PREC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(P, BLOCK_P), n_segs, batch * H).

    dy: (B, L, H, P) (strides stride_y_*); dt: (B, L, H); C: (B, L, G, N); dfinal: (S, H, P, N) fp32;
    out: (B, n_segs, H, N, P) fp32, each segment's contribution to the gradient at its start
    (transposed, as in ``triton_states_bwd.py``).
    """
    pid_p, pid_s, b, head, grp, b64, offs_q, offs_p, offs_n, mask_p, mask_n, mask_np, offs_np, api_np = \
        program_tile(H, P, N, heads_per_group, BLOCK_Q, BLOCK_P, BLOCK_N)

    A = tl.load(A_ptr + head).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(dt_bias_ptr + head).to(tl.float32)
    dy_row = dy_ptr + b64 * stride_y_b + head * P
    dt_row = dt_ptr + b64 * stride_dt_b + head
    C_row = C_ptr + b64 * stride_B_b + grp * N
    seg_row = (b64 * n_segs + pid_s) * H + head

    acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    before = 0.0  # log decay from the segment's start to the current chunk's start
    alive = pid_s >= 0  # (packed) no chunk of the segment up to the current one opened a sequence
    c0 = pid_s * seg_chunks
    for i in range(0, tl.minimum(seg_chunks, n_chunks - c0)):
        c = c0 + i
        start, end, seq, opens, closes = chunk_bounds(table_ptr, b, c, L, n_chunks, Q, VARLEN)
        t = start + offs_q
        mask_q = t < end
        if VARLEN:  # a chunk that opens a sequence sends nothing back past its start
            alive = alive & (opens == 0)
            mask_q = mask_if(mask_q, alive)
        _, delta, acum = chunk_decay(dt_row, t, mask_q, stride_dt_l, bias, A, SOFTPLUS)
        acum_last = last_of(acum, offs_q, BLOCK_Q)
        dyv = tl.load(dy_row + t[:, None] * stride_y_l + offs_p[None, :],
                      mask=mask_q[:, None] & mask_p[None, :], other=0.0)  # (Q, BLOCK_P)
        Cv = tl.load(C_row + t[:, None] * stride_B_l + offs_n[None, :],
                     mask=mask_q[:, None] & mask_n[None, :], other=0.0)  # (Q, BLOCK_N)
        dys = (dyv.to(tl.float32) * tl.exp(acum + before)[:, None]).to(DT)
        acc += tl.dot(tl.trans(Cv.to(DT)), dys, input_precision=PREC)  # (BLOCK_N, BLOCK_P)
        before += acum_last
        if VARLEN and HAS_DFINAL:  # the gradient at a sequence's end is its final state's
            g_final = tl.load(dfinal_ptr + (seq * H + head) * P * N + api_np,
                              mask=mask_if(mask_np, closes & alive), other=0.0)  # fmt: skip
            acc += g_final * tl.exp(before)
        # (Nothing after a closing chunk reaches back past it: the next chunk opens a sequence,
        # or is an empty trailing chunk.)
    if not VARLEN:
        if HAS_DFINAL:  # a batch row closes in its last chunk
            last = pid_s == n_segs - 1
            g_final = tl.load(dfinal_ptr + (b64 * H + head) * P * N + api_np, mask=mask_if(mask_np, last), other=0.0)
            acc += g_final * tl.exp(before)
    tl.store(out_ptr + seg_row * P * N + offs_np, acc, mask=mask_np)
