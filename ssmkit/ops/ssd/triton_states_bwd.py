"""SSD Triton backward of stages 2 and 4: what each segment sends back to its start.

Let g_c = ∂loss/∂h_c, the gradient of the state at the end of chunk c (from
everything after it). The state h_{c-1} entering chunk c reaches the outputs
through Y_off[i] = exp(acum_i) h_{c-1} C_i and the next state through
h_c = exp(acum_last) h_{c-1} + S_c, so going backwards in time

    g_{c-1} = exp(acum_last) g_c + Σ_i exp(acum_i) dy_i C_i^T        (P, N)

where dy is the gradient of the pre-gate output y. Where chunk c closes a
sequence, g_c is that sequence's final-state gradient (nothing later reads
its end state); where it opens one, nothing flows on into the previous
sequence (``triton_scan_bwd.py`` stores the initial-state gradient there).

This kernel runs the recurrence over one segment of chunks, in two modes
(like ``triton_states.py``):

- segment sums (``STORE_CHUNKS=False``): from zero at the segment's end,
  giving the segment's own contribution to the gradient at its start;
  ``triton_passing.py`` then chains segments in reverse.
- chunk gradients (``STORE_CHUNKS=True``): from the true gradient at the
  segment's end (after the passing; ``SEG_IN``, else zero or the final-state
  gradient for a row's only segment), writing g_c for every chunk in the
  dot dtype, and the initial-state gradient where a sequence opens. The
  fused backward (``triton_scan_bwd.py``) then handles every chunk on its
  own, in parallel.

Gradients are held transposed, g^T (N, P), like the states in
``triton_states.py``; as there, a program may own any (N, P) tile.
"""

import triton
import triton.language as tl

from ..scan.triton_common import _load_in, _store_in
from .triton_cumsum import chunk_bounds, chunk_dt, decay_of, last_of, mask_if, program_tile


@triton.jit
def _ssd_dstates_kernel(
    dy_ptr, dt_ptr, A_ptr, dt_bias_ptr, C_ptr, dfinal_ptr, table_ptr, out_ptr, seg_in_ptr, dinit_ptr,
    L, H: tl.constexpr, P: tl.constexpr, N: tl.constexpr, n_chunks, n_segs, seg_chunks, Q: tl.constexpr,
    heads_per_group: tl.constexpr,
    stride_x_b, stride_x_l: tl.constexpr, stride_y_b, stride_y_l: tl.constexpr, stride_dt_b, stride_dt_l: tl.constexpr,
    stride_B_b, stride_B_l: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DFINAL: tl.constexpr, VARLEN: tl.constexpr,
    STORE_CHUNKS: tl.constexpr, SEG_IN: tl.constexpr, HAS_DINIT: tl.constexpr,
    DT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, WHOLE: tl.constexpr = False,
):  # fmt: skip
    """Grid (cdiv(P, BLOCK_P) * cdiv(N, BLOCK_N), n_segs, batch * H); ``WHOLE``: whole tiles (``triton_cumsum``).

    dy: (B, L, H, P) (strides stride_y_*); dt: (B, L, H); C: (B, L, G, N); dfinal: (S, H, P, N) fp32;
    out: (B, n_segs, H, N, P) fp32, each segment's contribution to the
    gradient at its start, or with STORE_CHUNKS (B, n_chunks, H, N, P) in the
    dot dtype (DT), the gradient at every chunk's end; seg_in: (B, n_segs, H, N, P) fp32,
    the gradient at every segment's end (read with STORE_CHUNKS and SEG_IN); dinit:
    (S, H, P, N) fp32 (written with STORE_CHUNKS and HAS_DINIT).
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
    if STORE_CHUNKS and SEG_IN:
        grad = tl.load(seg_in_ptr + seg_row * P * N + offs_np, mask=mask_np, other=0.0)  # g^T
    else:
        grad = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    if not VARLEN:  # a batch row closes in its last chunk
        if HAS_DFINAL:
            last = pid_s == n_segs - 1
            g_final = tl.load(dfinal_ptr + (b64 * H + head) * P * N + api_np, mask=mask_if(mask_np, last), other=0.0)
            grad = tl.where(last, g_final, grad)
    c0 = pid_s * seg_chunks
    n_here = tl.minimum(seg_chunks, n_chunks - c0)
    dt_next = chunk_dt(dt_row, table_ptr, b, c0 + n_here - 1, L, n_chunks, Q, stride_dt_l, offs_q, VARLEN, WHOLE)
    for i in range(0, n_here):
        c = c0 + n_here - 1 - i
        c_after = tl.maximum(c - 1, 0)  # the chunk of the next iteration: its loads are issued now
        dtv = dt_next
        dt_next = chunk_dt(dt_row, table_ptr, b, c_after, L, n_chunks, Q, stride_dt_l, offs_q, VARLEN, WHOLE)
        start, end, seq, opens, closes = chunk_bounds(table_ptr, b, c, L, n_chunks, Q, VARLEN)
        t = start + offs_q
        mask_q = t < end
        if VARLEN:  # packed sequences close anywhere
            if HAS_DFINAL:
                g_final = tl.load(dfinal_ptr + (seq * H + head) * P * N + api_np, mask=mask_if(mask_np, closes), other=0.0)
                grad = tl.where(closes, g_final, grad)
            else:
                grad = tl.where(closes, 0.0, grad)
        if STORE_CHUNKS:
            dst = out_ptr + ((b64 * n_chunks + c) * H + head) * P * N + offs_np
            _store_in(dst, grad, mask_np, WHOLE)
        _, delta, acum = decay_of(dtv, mask_q, bias, A, SOFTPLUS, WHOLE)
        acum_last = last_of(acum, offs_q, BLOCK_Q)
        dyv = _load_in(dy_row + t[:, None] * stride_y_l + offs_p[None, :], mask_q[:, None] & mask_p[None, :],
                        WHOLE)  # (Q, BLOCK_P)
        Cv = _load_in(C_row + t[:, None] * stride_B_l + offs_n[None, :], mask_q[:, None] & mask_n[None, :],
                       WHOLE).to(DT)  # (Q, BLOCK_N)
        dys = (dyv.to(tl.float32) * tl.exp(acum)[:, None]).to(DT)
        grad = grad * tl.exp(acum_last) + tl.dot(tl.trans(Cv), dys, input_precision=PREC)  # (BLOCK_N, BLOCK_P)
        if VARLEN:  # the gradient at a sequence's start is its initial state's; nothing flows further back
            if STORE_CHUNKS and HAS_DINIT:
                tl.store(dinit_ptr + (seq * H + head) * P * N + api_np, grad, mask=mask_if(mask_np, opens))
            grad = tl.where(opens, 0.0, grad)

    if not STORE_CHUNKS:
        tl.store(out_ptr + seg_row * P * N + offs_np, grad, mask=mask_np)
    elif not VARLEN and HAS_DINIT:  # a batch row opens in its first chunk
        tl.store(dinit_ptr + (b64 * H + head) * P * N + api_np, grad, mask=mask_if(mask_np, pid_s == 0))
