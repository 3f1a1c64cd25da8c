"""Selective scan forward in Triton: one fused pass, the state in registers.

Symbols as in ``reference.py``: ``u`` = x, ``delta`` = Δ (before bias /
softplus), ``dt`` = Δ after them, Ā = exp(Δ A) computed here as
``exp2(dt * A2)`` with ``A2 = A log2(e)``, ``h`` = the state:

    h_t = Ā_t h_{t-1} + Δ_t B_t u_t ;  y_t = (C_t · h_t + D u_t) * silu(z_t)

Work split: one program per (batch b, block of ``BLOCK_D`` channels[, segment]).
With N <= 16 each thread owns one channel d and its N states, so the recurrence
runs sequentially in registers, in float32, with no communication between
threads. ``LANES`` = 2 (or 4) spreads each channel's states over that many
adjacent lanes instead (``triton_common._lane_states``): twice the threads for
the same channels, y's sum over the states finished by a shuffle; with
``SHARE_TD`` the two lanes also divide the per-(t, d) work (softplus, gate, D,
y's stores), half the steps each, and swap the Δ they computed. The sequence
is walked in chunks of ``T`` steps: a chunk's inputs are loaded as
(T, ., BLOCK_D * LANES) tiles (channels on the lanes, the T steps in
registers; see ``triton_common._flat``), the per-(t, d) work (softplus, gate)
is done once per tile, and the T steps are unrolled at compile time, so picking
step ``i`` of a tile (``_row``) is a register selection, not arithmetic. The
loads of chunk c + 1 are issued before chunk c is computed (and Δ of chunk c + 1
is computed then, ``DT_AHEAD``).

Segments: when batch x channel blocks give too few programs to keep the GPU
busy, the sequence is cut into segments run in parallel (``LOCAL`` pass: the end
state from a zero start and the Σ Δ of each piece of the segments, ``LOC_K``
pieces per segment; then the full pass starts each segment from the state
carried through the earlier ones' pieces: h <- exp2(A2 Σ Δ) h + h_local). The
local pass only has to cover the segments, so its own grid can be cut finer than
the full pass's (more programs for the pass that has no output to write).

With ``SAVE_STATES`` the state at the start of every ``T * SAVE_K / SAVE_SUB`` steps
is written to ``hsave`` (B, n_saves, D, N) for the backward kernel, which
recomputes the states from there instead of storing (B, L, D, N) (``VEC_SAVE``:
as (channels, N) tiles, 128-bit stores: ``triton_common._store_checkpoint``):
every ``SAVE_K``-th chunk's starting state, or with ``SAVE_SUB`` > 1 (checkpoints
closer than a chunk) also the states ``SAVE_SUB`` - 1 times inside each chunk. The
stores cast to hsave's dtype (float32, or bfloat16 for bfloat16 inputs).

All offsets that can pass 2^31 elements (batch and sequence position times
strides) are computed in int64.
"""

import triton
import triton.language as tl

from .triton_common import (
    _all_steps,
    _bc_offsets,
    _bc_tile,
    _decay,
    _flat,
    _halves,
    _lane_group_sum,
    _lane_states,
    _load_in,
    _row,
    _scan_chunk,
    _sigmoid,
    _softplus,
    _store_checkpoint,
    _swap_pair,
)


@triton.jit
def _delta(x_raw, bias, mask, T: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
           SOFTPLUS: tl.constexpr, FAST_MATH: tl.constexpr, WHOLE: tl.constexpr = False):  # fmt: skip
    """Δ of one chunk from the flat delta tile: (T, 1, BLOCK_D) float32, 0 on padding steps
    (Ā = 1 and Δ B u = 0 there: the state passes through; ``WHOLE``: there are none)."""
    x = tl.reshape(x_raw, (T, 1, BLOCK_D)).to(tl.float32)
    if HAS_BIAS:
        x = x + bias
    if SOFTPLUS:
        x = _softplus(x, FAST_MATH)
    if not WHOLE:
        x = tl.where(tl.reshape(mask, (T, 1, BLOCK_D)), x, 0.0)
    return x


@triton.jit(do_not_specialize=["ONE"])
def selective_scan_fwd_kernel(
    u_ptr, dl_ptr, z_ptr, A2_ptr, B_ptr, C_ptr, Dsk_ptr, bias_ptr, h0_ptr,
    y_ptr, hlast_ptr, hsave_ptr, hloc_ptr, dts_ptr,
    L, DIM, CH_PER_GROUP, N_SAVES, SEG_LEN, LOC_K, ONE,
    s_ub, s_ul, s_db, s_dl, s_zb, s_zl, s_yb, s_yl,
    s_Bb, s_Bl, s_Bg, s_Cb, s_Cl, s_Cg,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr, SAVE_K: tl.constexpr,
    SAVE_SUB: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE_STATES: tl.constexpr, GROUP_UNIFORM: tl.constexpr,
    FAST_MATH: tl.constexpr, LOCAL: tl.constexpr, DT_AHEAD: tl.constexpr, FMA_EXP: tl.constexpr = 0,
    VEC_SAVE: tl.constexpr = False, LANES: tl.constexpr = 1, SHARE_TD: tl.constexpr = False,
    WHOLE: tl.constexpr = False,
):  # fmt: skip
    """Grid (cdiv(D, BLOCK_D), B, n_segs). Shapes: u, delta, z, y (B, L, D) with unit channel
    stride; A2 (N, D) = (A log2(e))^T; B, C (B, L, G, N); D, bias (D,); h0, hlast (B, N, D)
    float32; hsave (B, N_SAVES, D, N), hloc (B, n_pieces, N, D), dts (B, n_pieces, D) float32 with
    n_pieces = (n_segs - 1) * LOC_K.

    Program (d-block, b, s) covers the steps [s * SEG_LEN, (s+1) * SEG_LEN). ``LOCAL`` (grid
    (.., n_pieces), SEG_LEN the length of a piece: the segments but the last, whose end state is
    never read, cut into LOC_K pieces each): run the piece from a zero state and write its end state
    to hloc[s] and Σ Δ to dts[s] (Π Ā over the piece = exp2(A2 Σ Δ)); else start from h0 carried
    through the pieces of the earlier segments (LOC_K per segment), and write y (and the
    checkpoints, and hlast from the last segment).

    ONE = 1, passed at run time: channel offsets are multiplied by it so that the compiler
    cannot prove them contiguous and keeps one channel per lane (vectorized loads would put
    several channels on a lane and spread the T steps of a tile over lanes).

    ``WHOLE``: every chunk the loop visits is whole (L and the segments multiples of T) and every
    channel and state exists (D a multiple of BLOCK_D, N a power of two): the loop's loads then have
    one scalar predicate (the prefetch past a program's last chunk is skipped) and its stores none."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    n_segs = tl.num_programs(2)
    d0 = pid_d * BLOCK_D
    NH: tl.constexpr = NP // LANES  # states per lane
    CW: tl.constexpr = BLOCK_D * LANES  # lanes ("columns"): column c holds channel d0 + c // LANES
    t3 = tl.arange(0, T)[:, None, None]  # (T, 1, 1)
    n3 = tl.arange(0, NH)[None, :, None]  # (1, NH, 1)
    sr, scol = _flat(NH, CW)  # a (NH, CW) state tile, flat
    sn, sc = _lane_states(sr, scol, NH, LANES)  # state and channel (in the block) of each element
    m_s = (sn < N) & (d0 + sc < DIM)
    o_s = sn * DIM + (d0 + sc) * ONE  # into (N, D)
    A2 = tl.reshape(tl.load(A2_ptr + o_s, mask=m_s, other=0.0), (1, NH, CW))
    ccol = tl.arange(0, CW)
    cc = ccol // LANES
    m_c = d0 + cc < DIM
    o_c = (d0 + cc) * ONE
    if HAS_D:
        Dsk = tl.reshape(tl.load(Dsk_ptr + o_c, mask=m_c, other=0.0), (1, 1, CW))
    if HAS_BIAS:
        bias = tl.reshape(tl.load(bias_ptr + o_c, mask=m_c, other=0.0), (1, 1, CW))
    else:
        bias = tl.zeros((1, 1, CW), dtype=tl.float32)  # unused
    o_state = pid_b * N * DIM + o_s  # into (B, N, D)
    h = tl.zeros((1, NH, CW), dtype=tl.float32)
    dts = tl.zeros((1, 1, CW), dtype=tl.float32)
    if not LOCAL:
        if HAS_H0:
            h = tl.reshape(tl.load(h0_ptr + o_state, mask=m_s, other=0.0), (1, NH, CW))
        for s2 in range(0, pid_s * LOC_K):  # carry the state through the earlier segments' pieces
            o_seg = pid_b * ((n_segs - 1) * LOC_K) + s2
            ds = tl.reshape(tl.load(dts_ptr + o_seg * DIM + o_c, mask=m_c, other=0.0), (1, 1, CW))
            hl = tl.reshape(tl.load(hloc_ptr + o_seg * N * DIM + o_s, mask=m_s, other=0.0), (1, NH, CW))
            h = tl.exp2(ds * A2) * h + hl

    t_begin = pid_s * SEG_LEN
    t_end = tl.minimum(L, t_begin + SEG_LEN)
    tb64 = t_begin.to(tl.int64)
    # Row pointers of the current chunk (int64 scalars) and in-chunk flat offsets (int32).
    pu = u_ptr + pid_b * s_ub + tb64 * s_ul
    px = dl_ptr + pid_b * s_db + tb64 * s_dl
    pz = z_ptr + pid_b * s_zb + tb64 * s_zl
    py = y_ptr + pid_b * s_yb + tb64 * s_yl
    pB = B_ptr + pid_b * s_Bb + tb64 * s_Bl
    pC = C_ptr + pid_b * s_Cb + tb64 * s_Cl
    tr, tcol = _flat(T, CW)  # a (T, CW) tile, flat
    tc = tcol // LANES
    m_col = d0 + tc < DIM
    ch = (d0 + tc) * ONE
    o_u = tr * s_ul + ch
    # The per-(t, d) work (delta, softplus, gate, y): with SHARE_TD each of a channel's two lanes does it for
    # TO = T / 2 of the steps (lane c for steps (c % 2) * TO ..), else every lane for all T ("owned" tiles).
    TO: tl.constexpr = T // 2 if SHARE_TD else T
    o_r, o_col = _flat(TO, CW)
    o_t = (o_col % 2) * TO + o_r if SHARE_TD else o_r  # the step of each element of an owned tile
    m_ocol = d0 + o_col // LANES < DIM
    och = (d0 + o_col // LANES) * ONE
    o_x = o_t * s_dl + och
    o_z = o_t * s_zl + och
    o_y = o_t * s_yl + och
    odd = tl.reshape((ccol % 2) == 1, (1, 1, CW))  # SHARE_TD: the lane owning the later steps
    o_B, tB, nB = _bc_offsets(s_Bl, s_Bg, T, NP, BLOCK_D, d0, DIM, ONE, CH_PER_GROUP, GROUP_UNIFORM, LANES)
    o_C, _, _ = _bc_offsets(s_Cl, s_Cg, T, NP, BLOCK_D, d0, DIM, ONE, CH_PER_GROUP, GROUP_UNIFORM, LANES)
    m_n = nB < N

    # Software pipelining: the loads of chunk c + 1 are issued before chunk c is computed.
    # (B and C first: the layout pass lets the last-issued loads' layouts win, and the
    # (T, BD)-tile loads must win so that the recurrence stays in registers.)
    B_n = tl.load(pB + o_B, mask=(t_begin + tB < t_end) & m_n, other=0.0)
    if not LOCAL:
        C_n = tl.load(pC + o_C, mask=(t_begin + tB < t_end) & m_n, other=0.0)
        if HAS_Z:
            z_n = tl.load(pz + o_z, mask=(t_begin + o_t < t_end) & m_ocol, other=0.0)
    u_n = tl.load(pu + o_u, mask=(t_begin + tr < t_end) & m_col, other=0.0)
    # DT_AHEAD: Δ is computed one chunk ahead (its softplus is a chain of special-function
    # operations that the chunk's exponentials would wait for), so delta is loaded two ahead.
    m_own = (t_begin + o_t < t_end) & m_ocol
    x_n = tl.load(px + o_x, mask=m_own, other=0.0)
    if DT_AHEAD:
        dt_n = _delta(x_n, bias, m_own, TO, CW, HAS_BIAS, SOFTPLUS, FAST_MATH)
        x_n = tl.load(px + T * s_dl + o_x, mask=(t_begin + T + o_t < t_end) & m_ocol, other=0.0)
    SPAN: tl.constexpr = T * SAVE_K // SAVE_SUB  # steps between checkpoints
    for t0 in range(t_begin, t_end, T):
        if SAVE_STATES:
            if (t0 // T) % SAVE_K == 0:
                at = hsave_ptr + (pid_b * N_SAVES + t0 // SPAN) * DIM * N
                _store_checkpoint(at, h, sn, sc, d0, DIM, m_s, N, NP, BLOCK_D, ONE, VEC_SAVE, LANES)
        m_own = (t0 + o_t < t_end) & m_ocol  # (TO*CW,) (all true with WHOLE)
        Bt = _bc_tile(B_n, T, NP, BLOCK_D, GROUP_UNIFORM, LANES)
        u = tl.reshape(u_n, (T, 1, CW)).to(tl.float32)
        if DT_AHEAD:
            dt = _all_steps(dt_n, odd, SHARE_TD, FAST_MATH)
        else:
            dt = _all_steps(_delta(x_n, bias, m_own, TO, CW, HAS_BIAS, SOFTPLUS, FAST_MATH, WHOLE), odd, SHARE_TD,
                            FAST_MATH)  # fmt: skip
        if not LOCAL:
            Ct = _bc_tile(C_n, T, NP, BLOCK_D, GROUP_UNIFORM, LANES)
            if HAS_Z:
                zz = tl.reshape(z_n, (TO, 1, CW)).to(tl.float32)
        # prefetch chunk c + 1 (WHOLE: whole or absent, one predicate for the tile)
        pB += T * s_Bl
        pu += T * s_ul
        px += T * s_dl
        t_next = t0 + T
        more = t_next < t_end
        B_n = _load_in(pB + o_B, (t_next + tB < t_end) & m_n, WHOLE, more)
        if not LOCAL:
            pC += T * s_Cl
            C_n = _load_in(pC + o_C, (t_next + tB < t_end) & m_n, WHOLE, more)
            if HAS_Z:
                pz += T * s_zl
                z_n = _load_in(pz + o_z, (t_next + o_t < t_end) & m_ocol, WHOLE, more)
        u_n = _load_in(pu + o_u, (t_next + tr < t_end) & m_col, WHOLE, more)
        if DT_AHEAD:
            dt_n = _delta(x_n, bias, (t_next + o_t < t_end) & m_ocol, TO, CW, HAS_BIAS, SOFTPLUS, FAST_MATH, WHOLE)
            x_n = _load_in(px + T * s_dl + o_x, (t_next + T + o_t < t_end) & m_ocol, WHOLE, t_next + T < t_end)
        else:
            x_n = _load_in(px + o_x, (t_next + o_t < t_end) & m_ocol, WHOLE, more)

        dtu = dt * u  # (T, 1, CW)
        dA = _decay(dt * A2, n3, FMA_EXP)  # Ā: (T, NH, CW)
        hs = _scan_chunk(dA, dtu * Bt, h, t3)  # h_t for the T steps: (T, NH, CW)
        h = _row(hs, t3, T - 1)  # (1, NH, CW)
        if SAVE_STATES:  # the checkpoints inside the chunk (SAVE_SUB > 1): the states after steps SPAN - 1, ..
            for j in tl.static_range(1, SAVE_SUB):
                at = hsave_ptr + (pid_b * N_SAVES + t0 // SPAN + j) * DIM * N
                if WHOLE:
                    _store_checkpoint(at, _row(hs, t3, j * SPAN - 1), sn, sc, d0, DIM, m_s, N, NP, BLOCK_D, ONE,
                                      VEC_SAVE, LANES)  # fmt: skip
                elif t0 + j * SPAN < t_end:  # (segments are whole chunks: only L's last chunk can be cut)
                    _store_checkpoint(at, _row(hs, t3, j * SPAN - 1), sn, sc, d0, DIM, m_s, N, NP, BLOCK_D, ONE,
                                      VEC_SAVE, LANES)  # fmt: skip
        if LOCAL:
            dts += tl.sum(dt, axis=0, keep_dims=True)
        else:
            ys = tl.sum(hs * Ct, axis=1, keep_dims=True)  # C · h over a lane's states: (T, 1, CW)
            if SHARE_TD:  # ... and over the channel's two lanes, each getting the sums of its own steps
                lo, hi = _halves(ys)
                ys = tl.where(odd, hi, lo) + _swap_pair(tl.where(odd, lo, hi), FAST_MATH)
                if HAS_D:
                    lo, hi = _halves(u)
                    ys = ys + Dsk * tl.where(odd, hi, lo)
            else:  # ... and over all the channel's lanes
                ys = _lane_group_sum(ys, LANES, FAST_MATH)
                if HAS_D:
                    ys = ys + Dsk * u
            if HAS_Z:
                ys = ys * zz * _sigmoid(zz, FAST_MATH)
            y_out = tl.reshape(ys, (TO * CW,)).to(y_ptr.dtype.element_ty)
            if WHOLE and (SHARE_TD or LANES == 1):
                tl.store(py + o_y, y_out)
            else:
                m_y = m_own if SHARE_TD else m_own & (o_col % LANES == 0)  # (one lane of each channel stores)
                tl.store(py + o_y, y_out, mask=m_y)
            py += T * s_yl
    if LOCAL:  # (the local pass runs on the pieces of all segments but the last, whose end state nothing reads)
        o_seg = pid_b * n_segs + pid_s
        tl.store(hloc_ptr + o_seg * N * DIM + o_s, tl.reshape(h, (NH * CW,)), mask=m_s)
        tl.store(dts_ptr + o_seg * DIM + o_c, tl.reshape(dts, (CW,)), mask=m_c & (ccol % LANES == 0))
    elif pid_s == n_segs - 1:
        tl.store(hlast_ptr + o_state, tl.reshape(h, (NH * CW,)), mask=m_s)
