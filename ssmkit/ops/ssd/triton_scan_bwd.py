"""SSD Triton backward of stages 1, 2 and 4: every input gradient, chunk by chunk.

Per chunk c and head, with x̃_j = Δ_j x_j, L_ij = exp(acum_i - acum_j) [j <= i],
h = h_{c-1} the state entering the chunk, g = ∂loss/∂h_c the gradient of the
state at its end (``triton_states_bwd.py``) and dy the gradient of the
pre-gate output:

    dx̃_j  = Σ_{i>=j} (C_i·B_j) L_ij dy_i + exp(acum_last - acum_j) g B_j
    dB_j  = Σ_i M'_ij C_i + exp(acum_last - acum_j) g^T x̃_j      M'_ij = (dy_i·x̃_j) L_ij
    dC_i  = Σ_j M'_ij B_j + exp(acum_i) h^T dy_i
    dx    = Δ dx̃ + D dy,   dD = Σ dy x

A program owns one (batch row, head, block of P) and a span of chunks. It
reads h from the per-chunk states that ``triton_states.py`` recomputed, and
g either from the per-chunk gradients that ``triton_states_bwd.py`` stored
(``G_CHUNKS``: chunks are independent, so spans are short and many programs
run side by side) or, walking a segment backwards, from the gradient at the
segment's end (after ``triton_passing.py``) carried in registers in fp32.
It writes its share of dB, dC and d dt: every quantity that sums over P or
over heads is linear in the per-(head, P block) terms, so the shares are
summed afterwards.

Decay gradient (backward of stage 1). With a_t = Δ_t A the log decay of token
t, d a_t collects every path that crosses t: pairs j < t <= i inside the
chunk, the carried state read at i >= t, the chunk's inputs j < t reaching
its end state, and the carried state reaching its end state:

    d a_t = Σ_{i>=t} Σ_{j<t} M_ij + Σ_{i>=t} dy_i·Y_off_i + Σ_{j<t} x̃_j·dx̃^state_j
            + exp(acum_last) <g, h>,                 M_ij = M'_ij (C_i·B_j), j < i

Each term is a sum of the actual cross-boundary contributions (no difference
of large totals, so no cancellation even when decay is strong). The inner
product <g, h> of the last term is the trace of the (P, P) product g^T h.
Then
dΔ_t = x_t·dx̃_t + A d a_t, d dt via the softplus, dA = Σ_t Δ_t d a_t.
"""

import triton
import triton.language as tl

from ..scan.triton_common import _load_in, _store_in
from .triton_cumsum import chunk_bounds, chunk_decay, decay_matrix, dt_grad, last_of, mask_if, program_tile
from .triton_forms import trace_of_product, vector_sum


@triton.jit
def _sum_shares(dB_ptr, dC_ptr, dB_sum_ptr, dC_sum_ptr, count_ptr, b64, c, grp, t, offs_n, mask_qn, L, H, n_chunks,
                heads_per_group, n_pb, N, stride_sum_b, stride_sum_l, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """Count this program's shares of chunk c in; the program that completes the chunk's group adds up
    every (head, P block) share of the group in a fixed order (so the sums do not depend on which
    program came last) and writes dB, dC. The shares were written moments before by programs running
    side by side (``HEADS_INNER``), so they are read from L2. The barrier orders every thread's share
    stores before the release of the count; the acquire orders the last program's loads after all."""
    tl.debug_barrier()
    n_parts = heads_per_group * n_pb
    done = tl.atomic_add(count_ptr + (b64 * n_chunks + c) * (H // heads_per_group) + grp, 1, sem="acq_rel",
                         scope="gpu")  # fmt: skip
    if done == n_parts - 1:
        first = ((b64 * L + t[:, None]) * H + grp * heads_per_group) * n_pb * N + offs_n[None, :]
        at = b64 * stride_sum_b + t[:, None] * stride_sum_l + grp * N + offs_n[None, :]
        _sum_group(dB_ptr, dB_sum_ptr, first, at, mask_qn, n_parts, N, BLOCK_Q, BLOCK_N)
        _sum_group(dC_ptr, dC_sum_ptr, first, at, mask_qn, n_parts, N, BLOCK_Q, BLOCK_N)


@triton.jit
def _sum_group(src_ptr, dst_ptr, first, at, mask_qn, n_parts, N, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
               UNROLL: tl.constexpr = 8):  # fmt: skip
    """dst[at] = the n_parts (Q, N) shares at src[first + k N], k = 0, 1, ..., added in that order in fp32;
    UNROLL independent loads at a time (each is a round trip to L2)."""
    acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, n_parts, UNROLL):
        for i in tl.static_range(UNROLL):  # (past the last share: the last one again, weighted 0)
            k = tl.minimum(k0 + i, n_parts - 1)
            part = tl.load(src_ptr + first + k * N, mask=mask_qn, other=0.0, cache_modifier=".cg").to(tl.float32)
            acc += tl.where(k0 + i < n_parts, part, 0.0)
    tl.store(dst_ptr + at, acc.to(dst_ptr.dtype.element_ty), mask=mask_qn)


@triton.jit
def chunk_head_grads(xf, dyv, Bv, Cv, CB, h_in, gd, delta, acum, acum_last, A, mask_q, offs_q, offs_p,
                     Y_OFF_FROM_DC: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                     WHOLE: tl.constexpr = False, FORMS: tl.constexpr = 0):  # fmt: skip
    """One chunk and head's share of the backward (module docstring) from its loaded tiles: x (Q, P) fp32, dy
    (Q, P), B, C (Q, N), C B^T (Q, Q) fp32 (or None: formed here), h, g (N, P) in DT, Δ and the chunk-local log
    decays. Returns (e_in, e_end, x̃, dx̃, M', C B^T, dy h^T, d a, dΔ): the decays from the chunk's start to i and
    from j to its end, x̃ = Δ x in DT, dx̃ (Q, P), M'_ij = (dy_i · x̃_j) L_ij, dy h^T (Q, N) with ``Y_OFF_FROM_DC``
    (else a placeholder), the decay gradient d a (0 past the chunk's end; ``WHOLE``: every token is in the chunk)
    and dΔ."""
    causal = offs_q[:, None] >= offs_q[None, :]  # [i, j]: i >= j
    strict = offs_q[:, None] > offs_q[None, :]
    e_in = tl.exp(acum)  # decay from the chunk's start to i
    e_end = tl.exp(acum_last - acum)  # decay from j to the chunk's end
    Lmat = decay_matrix(acum, causal)
    if CB is None:
        CB = tl.dot(Cv, tl.trans(Bv), input_precision=PREC)  # (Q, Q): C_i · B_j
    xt = (xf * delta[:, None]).to(DT)  # x̃ (Q, P)

    dxt_state = e_end[:, None] * tl.dot(Bv, gd, input_precision=PREC)  # (Q, P)
    dxt = tl.dot(tl.trans((CB * Lmat).to(DT)), dyv, input_precision=PREC) + dxt_state
    Mp = tl.dot(dyv, tl.trans(xt), input_precision=PREC) * Lmat  # M'_ij = (dy_i · x̃_j) L_ij
    # dy_i · Y_off_i, Y_off_i = e_in_i h C_i the carried state's output (Q, P). With Y_OFF_FROM_DC, as
    # e_in_i C_i · (h^T dy_i): the (Q, N) product dy h^T also serves dC, and Y_off is never formed.
    if Y_OFF_FROM_DC:
        dyh = tl.dot(dyv, tl.trans(h_in), input_precision=PREC)  # (Q, N)
        y_off_dot = e_in * tl.sum(Cv.to(tl.float32) * dyh, axis=1)
    else:
        dyh = e_in  # (a placeholder, unused: Triton cannot compile a tuple holding None)
        y_off = e_in[:, None] * tl.dot(Cv, h_in, input_precision=PREC)  # carried-state output (Q, P)
        y_off_dot = tl.sum(dyv.to(tl.float32) * y_off, axis=1)  # dy_i · Y_off_i

    # d a_t: sums of the contributions that cross t (see the module docstring).
    M = tl.where(strict, Mp * CB, 0.0)
    before_t = tl.cumsum(M, axis=1) - M  # [i, t] = Σ_{j<t} M_ij
    state_dot = tl.sum(xt.to(tl.float32) * dxt_state, axis=1)  # x̃_j · dx̃^state_j
    da = tl.sum(tl.where(causal, before_t + y_off_dot[:, None], 0.0), axis=0)
    da += tl.cumsum(state_dot, axis=0) - state_dot
    da += tl.exp(acum_last) * trace_of_product(gd, h_in, offs_p, PREC, FORMS)
    if not WHOLE:  # (with whole tiles every token is in the chunk)
        da = tl.where(mask_q, da, 0.0)

    ddelta = tl.sum(xf * dxt, axis=1) + A * da
    return e_in, e_end, xt, dxt, Mp, CB, dyh, da, ddelta


@triton.jit
def _ssd_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, dt_bias_ptr, B_ptr, C_ptr, D_ptr, dy_ptr, hin_ptr, gseg_ptr, gchunk_ptr, dfinal_ptr,
    table_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dinit_ptr, dB_sum_ptr, dC_sum_ptr, count_ptr,
    L, H: tl.constexpr, P: tl.constexpr, N: tl.constexpr, n_chunks, n_segs, seg_chunks, Q: tl.constexpr,
    heads_per_group: tl.constexpr,
    stride_x_b, stride_x_l: tl.constexpr, stride_y_b, stride_y_l: tl.constexpr, stride_dt_b, stride_dt_l: tl.constexpr,
    stride_B_b, stride_B_l: tl.constexpr,
    stride_dx_b, stride_dx_l: tl.constexpr, stride_sum_b, stride_sum_l, share_ddt, share_dA,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr,
    HAS_DFINAL: tl.constexpr, HAS_DINIT: tl.constexpr, VARLEN: tl.constexpr, G_CHUNKS: tl.constexpr,
    Y_OFF_FROM_DC: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, HEADS_INNER: tl.constexpr,
    REDUCE_HEADS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, WHOLE: tl.constexpr = False,
    FORMS: tl.constexpr = 0,
):  # fmt: skip
    """Grid (n_pb = cdiv(P, BLOCK_P), n_segs, batch * H), or with HEADS_INNER (n_pb, batch * H, n_segs);
    ``WHOLE``: whole tiles (``triton_cumsum``); ``FORMS``: how three expressions are written for this GPU and
    Triton (``triton_forms``).

    x, dy, dx: (B, L, H, P), (H, P) contiguous in a token (x: stride_x_*, dy: stride_y_*, dx: stride_dx_*);
    dt: (B, L, H); B, C: (B, L, G, N) (the same strides);
    hin: (B, n_chunks, H, N, P) state entering each chunk (transposed, in the dot dtype DT);
    gseg: (B, n_segs, H, N, P) fp32 gradient at each segment's end, or with G_CHUNKS
    gchunk: (B, n_chunks, H, N, P) gradient at each chunk's end (DT; the final-state and
    initial-state gradients are then handled by ``triton_states_bwd.py``: dfinal, dinit unused);
    dfinal, dinit: (S, H, P, N) fp32; ddt: (n_pb, B, L, H) fp32 shares;
    dB, dC: (B, L, H, n_pb, N) shares; dA: (n_pb, B * n_segs, H) fp32 shares; with REDUCE_HEADS
    also dB_sum, dC_sum: (B, L, G, N) the sums of the shares over each group's heads and P blocks
    (strides stride_sum_*, (G, N) contiguous), and count: (B * n_chunks * G,) int32 zeros;
    dD: (B * n_segs, H, P) fp32 partial sums.
    """
    n_pb = tl.num_programs(0)
    pid_p, pid_s, b, head, grp, b64, offs_q, offs_p, offs_n, mask_p, mask_n, mask_np, offs_np, api_np = \
        program_tile(H, P, N, heads_per_group, BLOCK_Q, BLOCK_P, BLOCK_N, HEADS_INNER)
    A = tl.load(A_ptr + head).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(dt_bias_ptr + head).to(tl.float32)
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + head * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
        else:
            Dv = tl.load(D_ptr + head).to(tl.float32)
    x_row = b64 * stride_x_b + head * P
    y_row = b64 * stride_y_b + head * P  # dy, dx: contiguous (B, L, H, P)
    dt_row = dt_ptr + b64 * stride_dt_b + head
    B_row = b64 * stride_B_b + grp * N
    seg_row = (b64 * n_segs + pid_s) * H + head
    if not G_CHUNKS:
        g = tl.load(gseg_ptr + seg_row * P * N + offs_np, mask=mask_np, other=0.0)  # g^T (N, P)
    if not VARLEN and not G_CHUNKS:  # a batch row closes in its last chunk and opens in chunk 0
        if HAS_DFINAL:
            last = pid_s == n_segs - 1
            g_final = tl.load(dfinal_ptr + (b64 * H + head) * P * N + api_np, mask=mask_if(mask_np, last), other=0.0)
            g = tl.where(last, g_final, g)
    dA_acc = 0.0
    dD_acc = tl.zeros((BLOCK_P,), dtype=tl.float32)

    c0 = pid_s * seg_chunks
    n_here = tl.minimum(seg_chunks, n_chunks - c0)
    for i in range(0, n_here):
        c = c0 + n_here - 1 - i
        start, end, seq, opens, closes = chunk_bounds(table_ptr, b, c, L, n_chunks, Q, VARLEN)
        t = start + offs_q
        mask_q = t < end
        mask_qp = mask_q[:, None] & mask_p[None, :]
        mask_qn = mask_q[:, None] & mask_n[None, :]
        if VARLEN and not G_CHUNKS:  # packed sequences close anywhere
            if HAS_DFINAL:
                g_final = tl.load(dfinal_ptr + (seq * H + head) * P * N + api_np, mask=mask_if(mask_np, closes), other=0.0)
                g = tl.where(closes, g_final, g)
            else:
                g = tl.where(closes, 0.0, g)
        raw, delta, acum = chunk_decay(dt_row, t, mask_q, stride_dt_l, bias, A, SOFTPLUS, WHOLE)
        acum_last = last_of(acum, offs_q, BLOCK_Q)
        io = x_row + t[:, None] * stride_x_l + offs_p[None, :]
        yo = y_row + t[:, None] * stride_y_l + offs_p[None, :]
        bc = B_row + t[:, None] * stride_B_l + offs_n[None, :]
        xf = _load_in(x_ptr + io, mask_qp, WHOLE).to(tl.float32)  # (Q, P)
        dyv = _load_in(dy_ptr + yo, mask_qp, WHOLE).to(DT)
        Bv = _load_in(B_ptr + bc, mask_qn, WHOLE).to(DT)  # (Q, N)
        Cv = _load_in(C_ptr + bc, mask_qn, WHOLE).to(DT)
        at_chunk = ((b64 * n_chunks + c) * H + head) * P * N + offs_np
        h_in = _load_in(hin_ptr + at_chunk, mask_np, WHOLE).to(DT)
        if G_CHUNKS:
            gd = _load_in(gchunk_ptr + at_chunk, mask_np, WHOLE).to(DT)
            g = gd.to(tl.float32)
        else:
            gd = g.to(DT)

        e_in, e_end, xt, dxt, Mp, CB, dyh, da, ddelta = chunk_head_grads(
            xf, dyv, Bv, Cv, None, h_in, gd, delta, acum, acum_last, A, mask_q, offs_q, offs_p, Y_OFF_FROM_DC, DT, PREC,
            WHOLE, FORMS)  # fmt: skip
        ddt_share = ddt_ptr + pid_p.to(tl.int64) * share_ddt + b64 * stride_dt_b + head
        _store_in(ddt_share + t * stride_dt_l, dt_grad(ddelta, raw, SOFTPLUS), mask_q, WHOLE)
        dA_acc += vector_sum(delta * da, FORMS)
        dx = delta[:, None] * dxt
        if HAS_D:
            dyf = dyv.to(tl.float32)
            dx += dyf * Dv
            dD_acc += tl.sum(dyf * xf, axis=0)
        dxo = b64 * stride_dx_b + head * P + t[:, None] * stride_dx_l + offs_p[None, :]
        _store_in(dx_ptr + dxo, dx, mask_qp, WHOLE)

        # This (head, P block)'s share of dB, dC (layout (B, L, H, n_pb, N)).
        dB_h = tl.dot(tl.trans(Mp.to(DT)), Cv, input_precision=PREC)
        dB_h += e_end[:, None] * tl.dot(xt, tl.trans(gd), input_precision=PREC)
        dC_h = tl.dot(Mp.to(DT), Bv, input_precision=PREC)
        if Y_OFF_FROM_DC:
            dC_h += e_in[:, None] * dyh
        else:
            dC_h += e_in[:, None] * tl.dot(dyv, tl.trans(h_in), input_precision=PREC)
        share = (((b64 * L + t[:, None]) * H + head) * n_pb + pid_p) * N + offs_n[None, :]
        _store_in(dB_ptr + share, dB_h, mask_qn, WHOLE)
        _store_in(dC_ptr + share, dC_h, mask_qn, WHOLE)
        if REDUCE_HEADS:  # the last of a chunk's (head, P block) programs in the group sums their shares
            _sum_shares(dB_ptr, dC_ptr, dB_sum_ptr, dC_sum_ptr, count_ptr, b64, c, grp, t, offs_n, mask_qn, L, H,
                        n_chunks, heads_per_group, n_pb, N, stride_sum_b, stride_sum_l, BLOCK_Q, BLOCK_N)

        if not G_CHUNKS:  # gradient at the chunk's start; at a sequence's start it is the initial state's
            dys = (dyv.to(tl.float32) * e_in[:, None]).to(DT)
            g = g * tl.exp(acum_last) + tl.dot(tl.trans(Cv), dys, input_precision=PREC)
            if VARLEN:
                if HAS_DINIT:
                    tl.store(dinit_ptr + (seq * H + head) * P * N + api_np, g, mask=mask_if(mask_np, opens))
                g = tl.where(opens, 0.0, g)
    if not VARLEN and not G_CHUNKS:
        if HAS_DINIT:
            tl.store(dinit_ptr + (b64 * H + head) * P * N + api_np, g, mask=mask_if(mask_np, pid_s == 0))

    tl.store(dA_ptr + pid_p.to(tl.int64) * share_dA + seg_row, dA_acc)
    if HAS_D:
        tl.store(dD_ptr + seg_row * P + offs_p, dD_acc, mask=mask_p)
