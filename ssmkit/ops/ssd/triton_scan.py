"""SSD Triton stage 4: chunk scan, the outputs (forward).

Per chunk c (``chunked.py`` steps 1 and 4), with `acum` the chunk-local
cumulative log decay and h_{c-1} the state entering the chunk:

    Y_diag[i] = Σ_{j<=i} (C_i · B_j) exp(acum_i - acum_j) Δ_j x_j     intra-chunk, quadratic in Q
    Y_off[i]  = exp(acum_i) h_{c-1} C_i                                 the carried state
    y = Y_diag + Y_off + D x,   out = y * silu(z)

Two modes. Walking (``H_CHUNKS=False``): a program owns one (batch row,
head, block of P) and a segment of chunks, starting from the state entering
the segment (``triton_passing.py``); after each chunk it advances the state
in registers exactly as ``triton_states.py`` does, so no per-chunk state
goes to memory (unless ``STORE_H`` keeps them for the backward), but each
chunk waits for the one before. Chunk-parallel
(``H_CHUNKS``): ``triton_states.py`` has written the state entering every
chunk (and the final states), and a program takes a span of chunks, each
on its own: many more programs, no product in a chain. The
products C B^T, scores @ x, C h^T and (Δ x)^T B run on tensor cores with
fp32 accumulation; a walked state stays fp32, a stored one is in the dot
dtype (both held transposed, see ``triton_states.py``).

Walking, where a chunk closes a sequence the state at its end is that
sequence's final state, and where one opens a sequence the state is reset to
its initial state (or zero); chunk-parallel, the state walk did both.
"""

import triton
import triton.language as tl

from ..scan.triton_common import _load_in, _store_in
from .triton_cumsum import chunk_bounds, chunk_decay, chunk_dt, decay_matrix, decay_of, last_of, mask_if, program_tile
from .triton_forms import inputs_to_state


@triton.jit
def _chunk_tiles(x_row, B_row, C_row, table_ptr, b, c, L, n_chunks, Q, stride_x_l, stride_B_l, offs_q, offs_p, offs_n,
                 mask_p, mask_n, VARLEN: tl.constexpr, WHOLE: tl.constexpr):  # fmt: skip
    """Chunk ``c``'s x (Q, BLOCK_P), B and C (Q, BLOCK_N) tiles as stored (zero past its end); a walk with
    TILES_AHEAD loads them a chunk ahead."""
    start, end, _, _, _ = chunk_bounds(table_ptr, b, c, L, n_chunks, Q, VARLEN)
    t = start + offs_q
    mask_q = t < end
    xv = _load_in(x_row + t[:, None] * stride_x_l + offs_p[None, :], mask_q[:, None] & mask_p[None, :], WHOLE)
    mask_qn = mask_q[:, None] & mask_n[None, :]
    Bv = _load_in(B_row + t[:, None] * stride_B_l + offs_n[None, :], mask_qn, WHOLE)
    Cv = _load_in(C_row + t[:, None] * stride_B_l + offs_n[None, :], mask_qn, WHOLE)
    return xv, Bv, Cv


@triton.jit
def _ssd_scan_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, dt_bias_ptr, B_ptr, C_ptr, D_ptr, z_ptr, init_ptr, table_ptr,
    seg_in_ptr, hin_ptr, out_ptr, pre_ptr, final_ptr,
    L, H: tl.constexpr, P: tl.constexpr, N: tl.constexpr, n_chunks, n_segs, seg_chunks, Q: tl.constexpr,
    heads_per_group: tl.constexpr,
    stride_x_b, stride_x_l: tl.constexpr, stride_y_b, stride_y_l: tl.constexpr, stride_dt_b, stride_dt_l: tl.constexpr,
    stride_B_b, stride_B_l: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr,
    HAS_Z: tl.constexpr, STORE_PRE: tl.constexpr, HAS_INIT: tl.constexpr, VARLEN: tl.constexpr,
    H_CHUNKS: tl.constexpr, STORE_H: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, HEADS_INNER: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, TILES_AHEAD: tl.constexpr = False,
    WHOLE: tl.constexpr = False, FORMS: tl.constexpr = 0,
):  # fmt: skip
    """Grid (cdiv(P, BLOCK_P), n_segs, batch * H), or with HEADS_INNER (cdiv(P, BLOCK_P), batch * H, n_segs);
    with H_CHUNKS the segments are spans of ``seg_chunks`` chunks; ``WHOLE``: whole tiles (``triton_cumsum``);
    ``FORMS``: how the state update is written for this GPU and Triton (``triton_forms``).

    x, z, out, pre: (B, L, H, P), (H, P) contiguous in a token; x with its own batch / token strides,
    z, out, pre with stride_y_*; dt: (B, L, H); B, C: (B, L, G, N) (the same strides);
    D: (H,) or (H, P); init, final: (S, H, P, N) fp32;
    seg_in: (B, n_segs, H, N, P) fp32, the (transposed) state entering each segment (walking);
    hin: (B, n_chunks, H, N, P), the state entering each chunk in the dot dtype (read with H_CHUNKS;
    written by the walk with STORE_H, for the backward).
    """
    pid_p, pid_s, b, head, grp, b64, offs_q, offs_p, offs_n, mask_p, mask_n, mask_np, offs_np, api_np = \
        program_tile(H, P, N, heads_per_group, BLOCK_Q, BLOCK_P, BLOCK_N, HEADS_INNER)
    causal = offs_q[:, None] >= offs_q[None, :]  # (Q, Q): i >= j

    A = tl.load(A_ptr + head).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(dt_bias_ptr + head).to(tl.float32)
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + head * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        else:
            Dv = tl.load(D_ptr + head).to(tl.float32)
    x_row = x_ptr + b64 * stride_x_b + head * P
    z_row = z_ptr + b64 * stride_y_b + head * P
    pre_row = pre_ptr + b64 * stride_y_b + head * P
    out_row = out_ptr + b64 * stride_y_b + head * P
    dt_row = dt_ptr + b64 * stride_dt_b + head
    B_row = B_ptr + b64 * stride_B_b + grp * N
    C_row = C_ptr + b64 * stride_B_b + grp * N

    if not H_CHUNKS:
        seg_row = (b64 * n_segs + pid_s) * H + head
        state = tl.load(seg_in_ptr + seg_row * P * N + offs_np, mask=mask_np, other=0.0)  # h^T (BLOCK_N, BLOCK_P)
    if not VARLEN and not H_CHUNKS:  # a batch row opens in chunk 0 and closes in its last chunk
        if HAS_INIT:
            h0 = tl.load(init_ptr + (b64 * H + head) * P * N + api_np, mask=mask_if(mask_np, pid_s == 0), other=0.0)
            state = tl.where(pid_s == 0, h0, state)
    c0 = pid_s * seg_chunks
    if not H_CHUNKS:
        dt_next = chunk_dt(dt_row, table_ptr, b, c0, L, n_chunks, Q, stride_dt_l, offs_q, VARLEN, WHOLE)
        if TILES_AHEAD:
            xv_next, Bv_next, Cv_next = _chunk_tiles(x_row, B_row, C_row, table_ptr, b, c0, L, n_chunks, Q,
                                                     stride_x_l, stride_B_l, offs_q, offs_p, offs_n, mask_p, mask_n,
                                                     VARLEN, WHOLE)  # fmt: skip
    for i in range(0, tl.minimum(seg_chunks, n_chunks - c0)):
        c = c0 + i
        if not H_CHUNKS:  # walking: the next chunk's dt (and with TILES_AHEAD its x, B, C) is loaded ahead
            dtv = dt_next
            dt_next = chunk_dt(dt_row, table_ptr, b, tl.minimum(c + 1, n_chunks - 1), L, n_chunks, Q, stride_dt_l,
                               offs_q, VARLEN, WHOLE)  # fmt: skip
            if TILES_AHEAD:
                xv, Bv, Cv = xv_next, Bv_next.to(DT), Cv_next.to(DT)
                xv_next, Bv_next, Cv_next = _chunk_tiles(x_row, B_row, C_row, table_ptr, b,
                                                         tl.minimum(c + 1, n_chunks - 1), L, n_chunks, Q, stride_x_l,
                                                         stride_B_l, offs_q, offs_p, offs_n, mask_p, mask_n, VARLEN,
                                                         WHOLE)  # fmt: skip
        start, end, seq, opens, closes = chunk_bounds(table_ptr, b, c, L, n_chunks, Q, VARLEN)
        t = start + offs_q
        mask_q = t < end
        if H_CHUNKS:  # (reset where a sequence opens by triton_states.py already)
            at_chunk = ((b64 * n_chunks + c) * H + head) * P * N + offs_np
            state = _load_in(hin_ptr + at_chunk, mask_np, WHOLE)
        elif VARLEN:  # packed sequences open and close anywhere
            if HAS_INIT:
                h0 = tl.load(init_ptr + (seq * H + head) * P * N + api_np, mask=mask_if(mask_np, opens), other=0.0)
                state = tl.where(opens, h0, state)
            else:
                state = tl.where(opens, 0.0, state)
        if STORE_H:  # (walking) kept for the backward, which then skips its state walk
            at_chunk = ((b64 * n_chunks + c) * H + head) * P * N + offs_np
            _store_in(hin_ptr + at_chunk, state, mask_np, WHOLE)

        if H_CHUNKS:  # (chunks are independent: nothing to wait for but the loads)
            _, delta, acum = chunk_decay(dt_row, t, mask_q, stride_dt_l, bias, A, SOFTPLUS, WHOLE)
        else:
            _, delta, acum = decay_of(dtv, mask_q, bias, A, SOFTPLUS, WHOLE)
        acum_last = last_of(acum, offs_q, BLOCK_Q)
        mask_qp = mask_q[:, None] & mask_p[None, :]
        if H_CHUNKS or not TILES_AHEAD:
            xv, Bv, Cv = _chunk_tiles(x_row, B_row, C_row, table_ptr, b, c, L, n_chunks, Q, stride_x_l, stride_B_l,
                                      offs_q, offs_p, offs_n, mask_p, mask_n, VARLEN, WHOLE)  # fmt: skip
            Bv, Cv = Bv.to(DT), Cv.to(DT)

        # Intra-chunk: (C B^T ∘ decay ∘ Δ_j) @ x.
        CB = tl.dot(Cv, tl.trans(Bv), input_precision=PREC)  # (Q, Q)
        scores = CB * decay_matrix(acum, causal) * delta[None, :]
        y = tl.dot(scores.to(DT), xv.to(DT), input_precision=PREC)  # (Q, BLOCK_P)
        # Carried state: exp(acum_i) C_i h^T.
        y += tl.exp(acum)[:, None] * tl.dot(Cv, state.to(DT), input_precision=PREC)
        if HAS_D:
            if D_PER_P:
                y += xv.to(tl.float32) * Dv[None, :]
            else:
                y += xv.to(tl.float32) * Dv
        io = t[:, None] * stride_y_l + offs_p[None, :]
        if STORE_PRE:
            _store_in(pre_row + io, y, mask_qp, WHOLE)
        if HAS_Z:
            zv = _load_in(z_row + io, mask_qp, WHOLE).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        _store_in(out_row + io, y, mask_qp, WHOLE)

        if not H_CHUNKS:  # advance the state to the chunk's end (as in triton_states.py)
            w = delta * tl.exp(acum_last - acum)
            xs = (xv.to(tl.float32) * w[:, None]).to(DT)
            BT_ptrs = B_row + t[None, :] * stride_B_l + offs_n[:, None]
            BT_mask = mask_q[None, :] & mask_n[:, None]
            state = state * tl.exp(acum_last) + inputs_to_state(Bv, xs, BT_ptrs, BT_mask, DT, PREC, FORMS)
            if VARLEN:
                tl.store(final_ptr + (seq * H + head) * P * N + api_np, state, mask=mask_if(mask_np, closes))
    if not VARLEN and not H_CHUNKS:
        tl.store(final_ptr + (b64 * H + head) * P * N + api_np, state, mask=mask_if(mask_np, pid_s == n_segs - 1))
