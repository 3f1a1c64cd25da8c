"""SSD Triton stage 2: chunk states, gathered per segment.

What chunk c adds to the state at its end (``chunked.py`` step 2), with
`acum` the chunk-local cumulative log decay (``triton_cumsum.py``):

    S_c = Σ_j exp(acum_last - acum_j) Δ_j x_j B_j^T             (P, N)
    h_c = exp(acum_last) h_{c-1} + S_c

A program owns one (batch row, head, block of P) and a *segment* of
`seg_chunks` consecutive chunks, and runs this recurrence over them with the
state in registers (a tensor-core product per chunk). Inside the kernels the
state is held transposed, h^T (N, P), so that both products that touch it,
h_c^T += B^T (w x) and C h^T, need no transpose; internal buffers use that
layout, the public initial/final states are (P, N). Two modes:

- segment states (``STORE_CHUNKS=False``): start from zero and write the
  segment's own contribution to the state at its end, plus the segment's
  total decay (0 when a sequence opens inside it: what came before is cut).
  ``triton_passing.py`` then chains segments.
- chunk states (``STORE_CHUNKS=True``): start from the true state entering
  the segment (``SEG_IN``; without it, a row's only segment starts from its
  initial state or zero) and write the state entering every chunk, h_{c-1},
  in the dot dtype; with ``STORE_FINAL`` also each sequence's final state.
  The chunk-parallel forward (``triton_scan.py``) and the backward read them.

The recurrence is elementwise in (n, p), so a program may own any (N, P)
tile of the state: small tiles give many programs per row, and a row then
needs no segments to fill the GPU.

Where a chunk opens a sequence, the state is reset to that sequence's
initial state (or zero).
"""

import triton
import triton.language as tl

from ..scan.triton_common import _load_in, _store_in
from .triton_cumsum import chunk_bounds, chunk_dt, decay_of, last_of, mask_if, program_tile


@triton.jit
def _ssd_states_kernel(
    x_ptr, dt_ptr, A_ptr, dt_bias_ptr, B_ptr, init_ptr, table_ptr,
    out_ptr, seg_in_ptr, seg_decay_ptr, final_ptr,
    L, H: tl.constexpr, P: tl.constexpr, N: tl.constexpr, n_chunks, n_segs, seg_chunks, Q: tl.constexpr,
    heads_per_group: tl.constexpr,
    stride_x_b, stride_x_l: tl.constexpr, stride_y_b, stride_y_l: tl.constexpr, stride_dt_b, stride_dt_l: tl.constexpr,
    stride_B_b, stride_B_l: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
    VARLEN: tl.constexpr, STORE_CHUNKS: tl.constexpr, SEG_IN: tl.constexpr, STORE_FINAL: tl.constexpr,
    DT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, WHOLE: tl.constexpr = False,
):  # fmt: skip
    """Grid (cdiv(P, BLOCK_P) * cdiv(N, BLOCK_N), n_segs, batch * H); ``WHOLE``: whole tiles (``triton_cumsum``).

    x: (B, L, H, P); dt: (B, L, H); B: (B, L, G, N); init: (S, H, P, N) fp32.
    out: (B, n_segs, H, N, P) fp32 segment states, or with STORE_CHUNKS
    (B, n_chunks, H, N, P) in the dot dtype (DT); seg_in: (B, n_segs, H, N, P) fp32
    (read with STORE_CHUNKS and SEG_IN); seg_decay: (B, n_segs, H) fp32 (written without
    STORE_CHUNKS); final: (S, H, P, N) fp32 (written with STORE_FINAL).
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
    seg_row = (b64 * n_segs + pid_s) * H + head  # row of (B, n_segs, H)

    if STORE_CHUNKS and SEG_IN:
        state = tl.load(seg_in_ptr + seg_row * P * N + offs_np, mask=mask_np, other=0.0)
    else:
        state = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    log_decay = 0.0
    n_opens = (pid_s == 0).to(tl.int32)  # a batch row opens in its first chunk
    if not VARLEN:
        if HAS_INIT:  # (the state entering segment 0 is zero)
            h0 = tl.load(init_ptr + (b64 * H + head) * P * N + api_np, mask=mask_if(mask_np, pid_s == 0), other=0.0)
            state = tl.where(pid_s == 0, h0, state)
    c0 = pid_s * seg_chunks
    dt_next = chunk_dt(dt_row, table_ptr, b, c0, L, n_chunks, Q, stride_dt_l, offs_q, VARLEN, WHOLE)
    for i in range(0, tl.minimum(seg_chunks, n_chunks - c0)):
        c = c0 + i
        dtv = dt_next
        dt_next = chunk_dt(dt_row, table_ptr, b, tl.minimum(c + 1, n_chunks - 1), L, n_chunks, Q, stride_dt_l, offs_q,
                           VARLEN, WHOLE)  # fmt: skip
        start, end, seq, opens, closes = chunk_bounds(table_ptr, b, c, L, n_chunks, Q, VARLEN)
        t = start + offs_q
        mask_q = t < end
        if VARLEN:  # packed sequences open anywhere
            if HAS_INIT:
                h0 = tl.load(init_ptr + (seq * H + head) * P * N + api_np, mask=mask_if(mask_np, opens), other=0.0)
                state = tl.where(opens, h0, state)
            else:
                state = tl.where(opens, 0.0, state)
            n_opens += opens.to(tl.int32)
        if STORE_CHUNKS:
            dst = out_ptr + ((b64 * n_chunks + c) * H + head) * P * N + offs_np
            _store_in(dst, state, mask_np, WHOLE)

        _, delta, acum = decay_of(dtv, mask_q, bias, A, SOFTPLUS, WHOLE)
        acum_last = last_of(acum, offs_q, BLOCK_Q)
        xv = _load_in(x_row + t[:, None] * stride_x_l + offs_p[None, :], mask_q[:, None] & mask_p[None, :],
                       WHOLE)  # (Q, BLOCK_P)
        Bv = _load_in(B_row + t[:, None] * stride_B_l + offs_n[None, :], mask_q[:, None] & mask_n[None, :],
                       WHOLE)  # (Q, BLOCK_N)
        w = delta * tl.exp(acum_last - acum)  # Δ_j exp(acum_last - acum_j)
        xs = (xv.to(tl.float32) * w[:, None]).to(DT)  # (Q, BLOCK_P)
        state = state * tl.exp(acum_last) + tl.dot(tl.trans(Bv.to(DT)), xs, input_precision=PREC)  # (BLOCK_N, BLOCK_P)
        log_decay += acum_last
        if STORE_FINAL and VARLEN:
            tl.store(final_ptr + (seq * H + head) * P * N + api_np, state, mask=mask_if(mask_np, closes))

    if not STORE_CHUNKS:
        tl.store(out_ptr + seg_row * P * N + offs_np, state, mask=mask_np)
        seg_decay = tl.where(n_opens > 0, 0.0, tl.exp(log_decay))
        tl.store(seg_decay_ptr + seg_row, seg_decay, mask=tl.program_id(0) == 0)
    if STORE_FINAL and not VARLEN:  # a batch row closes in its last chunk
        tl.store(final_ptr + (b64 * H + head) * P * N + api_np, state, mask=mask_if(mask_np, pid_s == n_segs - 1))
