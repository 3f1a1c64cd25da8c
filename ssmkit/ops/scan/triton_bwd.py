"""Selective scan backward in Triton: recompute the states, sweep the adjoint back in time.

Symbols as in ``triton_fwd.py``. With g_t = ∂L/∂y_t · silu(z_t) (the gradient
reaching C·h + D u), the adjoint of the state runs backwards:

    dh_t = g_t C_t + Ā_{t+1} dh_{t+1}          (dh after the last step: ∂L/∂h_final)

and every input gradient is a sum of local terms, with q_t = Ā_t dh_t (the adjoint carried
into step t - 1, which the sweep computes anyway) times the state before step t:

    ∂Δ_t   = Σ_n A q_t h_{t-1} + u_t Σ_n dh_t B_t
    ∂u_t   = Δ_t Σ_n dh_t B_t + D g_t                 ∂A   = Σ_t Δ_t q_t h_{t-1}
    ∂B_t   = Σ_d dh_t Δ_t u_t    ∂C_t = Σ_d g_t h_t   ∂D   = Σ_t g_t u_t
    ∂z_t   = ∂L/∂y_t (C·h_t + D u_t) silu'(z_t)       ∂h_0 = Ā_1 dh_1

then ∂delta = ∂Δ · sigmoid(delta + bias) under softplus, and ∂bias = Σ_t ∂delta.

Work split as in the forward: one program per (batch, block of channels, sequence
segment), one channel per thread, the N states in registers. The adjoint entering a
segment from the later ones is assembled from their local adjoints
(``triton_bwd_local.py``). The forward saved the state every S = T * K steps
(``hsave``); a program walks its range backwards S steps at a time: pass 1
recomputes the states at the starts of the K chunks of T steps (kept in registers),
pass 2 walks the chunks backwards, recomputing each chunk's T states and sweeping the
adjoint through them; each chunk's inputs are loaded while the chunk after it is being
computed (``triton_common._chunk_loads``), so their latency overlaps work. ∂B, ∂C are
summed over the block's channels (on the GPU a lane reduce-scatter, ``SCATTER``; else a
butterfly of lane shuffles, or a matrix product with ``DOT_REDUCE``) and added atomically
(float32) to (B, L, G, N) buffers; ∂A, ∂D, ∂bias are returned per (batch, segment) and
summed by the caller.
"""

import triton
import triton.language as tl

from .triton_common import (
    _bc_offsets,
    _bc_tile,
    _channel_sum_add,
    _chunk_loads,
    _decay,
    _dn_offsets,
    _dot_states,
    _flat,
    _load_A2,
    _load_checkpoint,
    _load_in,
    _row,
    _row_at,
    _scan_chunk,
    _sigmoid,
    _softplus,
    _store_in,
)


@triton.jit
def _advance(h, t0, L, t3, A2, bias, px, o_x, pu, o_u, pB, o_B, tr, tB, m_col, m_n,
             T: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
             SOFTPLUS: tl.constexpr, FAST_MATH: tl.constexpr, GROUP_UNIFORM: tl.constexpr, n3,
             FMA_EXP: tl.constexpr, WHOLE: tl.constexpr):  # fmt: skip
    """The state after the T steps starting at ``t0`` (row pointers px, pu, pB already there),
    from the state ``h`` before them (``WHOLE``: the steps are all there)."""
    Bt = _bc_tile(_load_in(pB + o_B, (t0 + tB < L) & m_n, WHOLE, None), T, NP, BLOCK_D, GROUP_UNIFORM)
    m_tile = (t0 + tr < L) & m_col
    x = tl.reshape(_load_in(px + o_x, m_tile, WHOLE, None), (T, 1, BLOCK_D)).to(tl.float32)
    u = tl.reshape(_load_in(pu + o_u, m_tile, WHOLE, None), (T, 1, BLOCK_D)).to(tl.float32)
    if HAS_BIAS:
        x = x + bias
    if SOFTPLUS:
        x = _softplus(x, FAST_MATH)
    dt = x
    if not WHOLE:
        dt = tl.where(tl.reshape(m_tile, (T, 1, BLOCK_D)), x, 0.0)
    dA = _decay(dt * A2, n3, FMA_EXP)  # (T, NP, BD)
    return _row(_scan_chunk(dA, dt * u * Bt, h, t3), t3, T - 1)


@triton.jit(do_not_specialize=["ONE"])
def selective_scan_bwd_kernel(
    u_ptr, dl_ptr, z_ptr, A_ptr, B_ptr, C_ptr, Dsk_ptr, bias_ptr, hsave_ptr, dy_ptr, dhlast_ptr,
    du_ptr, ddl_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr, qloc_ptr, dts_ptr,
    L, DIM, CH_PER_GROUP, N_SAVES, SEG_LEN, LOC_K, ONE,
    s_ub, s_ul, s_db, s_dl, s_zb, s_zl, s_yb, s_yl,
    s_Bb, s_Bl, s_Bg, s_Cb, s_Cl, s_Cg, s_gb, s_gl,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr, K: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DHLAST: tl.constexpr, GROUP_UNIFORM: tl.constexpr, FAST_MATH: tl.constexpr,
    DOT_REDUCE: tl.constexpr, SCATTER: tl.constexpr, FMA_EXP: tl.constexpr = 0,
    VEC_SAVE: tl.constexpr = False, WHOLE: tl.constexpr = False,
):  # fmt: skip
    """Grid (cdiv(D, BLOCK_D), B, n_segs). Inputs as in the forward kernel, but A (D, N) contiguous in any
    float dtype (A log2(e) is formed here), plus dy (B, L, D) (strides s_yb, s_yl), dhlast (B, D, N) float32,
    and the later segments' local adjoints qloc (B, n_pieces, N, D) and Σ Δ dts (B, n_pieces, D) of the LOC_K
    pieces of each of segments 1, 2, ... (n_pieces = (n_segs - 1) * LOC_K) from ``selective_scan_bwd_local_kernel``.
    Outputs: du, ddl, dz (B, L, D) contiguous; dB, dC (B, L, G, N) float32 accumulators
    (strides s_gb, s_gl, N, 1), zero-filled by the caller; dh0 (B, D, N) (from segment 0);
    per (batch, segment) partial sums dA (B, n_segs, D, N), dD, dbias (B, n_segs, D), float32.
    Program (d-block, b, s) covers the steps [s * SEG_LEN, (s+1) * SEG_LEN); ONE = 1 at run
    time (see the forward kernel). ``SCATTER``: the channel sums of ∂B, ∂C by a reduce-scatter
    across the lanes (``triton_common._channel_sum_add``; GPU only, BLOCK_D = 32 per warp).
    ``WHOLE``: L a multiple of S, D of BLOCK_D and N a power of two: no element masks (each chunk's
    loads take one scalar predicate, for the prefetch before the sequence's first chunk)."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    n_ps = tl.num_programs(2)
    d0 = pid_d * BLOCK_D
    t3 = tl.arange(0, T)[:, None, None]  # (T, 1, 1)
    n3 = tl.arange(0, NP)[None, :, None]  # (1, NP, 1)
    k3 = tl.arange(0, K)[:, None, None]  # (K, 1, 1)
    S: tl.constexpr = T * K
    sn, sc = _flat(NP, BLOCK_D)  # a (NP, BD) state tile, flat
    m_s = (sn < N) & (d0 + sc < DIM)
    o_s = sn * DIM + (d0 + sc) * ONE  # into (N, D)
    A2 = tl.reshape(_load_A2(A_ptr, sn, sc, d0, m_s, N, ONE), (1, NP, BLOCK_D))
    cc = tl.arange(0, BLOCK_D)
    m_c = d0 + cc < DIM
    if HAS_D:
        Dsk = tl.reshape(tl.load(Dsk_ptr + (d0 + cc) * ONE, mask=m_c, other=0.0), (1, 1, BLOCK_D))
    if HAS_BIAS:
        bias = tl.reshape(tl.load(bias_ptr + (d0 + cc) * ONE, mask=m_c, other=0.0), (1, 1, BLOCK_D))
    else:
        bias = tl.zeros((1, 1, BLOCK_D), dtype=tl.float32)  # unused
    o_dn = _dn_offsets(sn, sc, d0, N, ONE)  # into (D, N)
    o_state = pid_b * N * DIM + o_dn  # into (B, D, N)
    q = tl.zeros((1, NP, BLOCK_D), dtype=tl.float32)  # q = Ā_{t+1} dh_{t+1}: the adjoint carried into step t
    if HAS_DHLAST:
        q = tl.reshape(tl.load(dhlast_ptr + o_state, mask=m_s, other=0.0), (1, NP, BLOCK_D))
    n_pc = (n_ps - 1) * LOC_K
    for jj in range(0, (n_ps - 1 - pid_s) * LOC_K):  # carried back through the later segments' pieces
        o_seg = pid_b * n_pc + n_pc - 1 - jj  # the pieces from the last one back
        ds = tl.reshape(tl.load(dts_ptr + o_seg * DIM + (d0 + cc) * ONE, mask=m_c, other=0.0), (1, 1, BLOCK_D))
        ql = tl.reshape(tl.load(qloc_ptr + o_seg * N * DIM + o_s, mask=m_s, other=0.0), (1, NP, BLOCK_D))
        q = tl.exp2(ds * A2) * q + ql
    dA_acc = tl.zeros((1, NP, BLOCK_D), dtype=tl.float32)
    dD_acc = tl.zeros((1, 1, BLOCK_D), dtype=tl.float32)
    dbias_acc = tl.zeros((1, 1, BLOCK_D), dtype=tl.float32)

    tr, tc = _flat(T, BLOCK_D)  # a (T, BD) tile, flat
    m_col = d0 + tc < DIM
    ch = (d0 + tc) * ONE
    o_u = tr * s_ul + ch
    o_x = tr * s_dl + ch
    o_z = tr * s_zl + ch
    o_y = tr * s_yl + ch
    o_o = tr * DIM + ch  # outputs, contiguous (B, L, D)
    o_B, tB, nB = _bc_offsets(s_Bl, s_Bg, T, NP, BLOCK_D, d0, DIM, ONE, CH_PER_GROUP, GROUP_UNIFORM)
    o_C, _, _ = _bc_offsets(s_Cl, s_Cg, T, NP, BLOCK_D, d0, DIM, ONE, CH_PER_GROUP, GROUP_UNIFORM)
    o_G, _, _ = _bc_offsets(s_gl, N, T, NP, BLOCK_D, d0, DIM, ONE, CH_PER_GROUP, GROUP_UNIFORM)
    m_n = nB < N
    g_row = (d0 // CH_PER_GROUP) * N  # the block's group in the (B, L, G, N) accumulators (uniform groups)
    t_begin = pid_s * SEG_LEN
    t_end = tl.minimum(L, t_begin + SEG_LEN)
    first = t_begin // S
    n_segs = tl.cdiv(t_end, S) - first  # checkpoint segments of S steps in this program's range
    # the inputs of the first chunk pass 2 visits (the last of the range), loaded one chunk ahead from then on
    Bn, Cn, zn, xn, un, yn = _chunk_loads(
        (first + n_segs - 1) * S + (K - 1) * T, 0, L, pid_b, B_ptr, C_ptr, z_ptr, dl_ptr, u_ptr, dy_ptr, o_B, o_C,
        o_z, o_x, o_u, o_y, tr, tB, m_col, m_n, s_Bb, s_Bl, s_Cb, s_Cl, s_zb, s_zl, s_db, s_dl, s_ub, s_ul, s_yb, s_yl,
        HAS_Z, True, WHOLE,
    )  # fmt: skip
    for j in range(0, n_segs):
        seg = first + n_segs - 1 - j
        # pass 1: the states at the start of the segment's K chunks
        at = hsave_ptr + (pid_b * N_SAVES + seg) * DIM * N
        h = _load_checkpoint(at, sn, sc, d0, DIM, m_s, N, NP, BLOCK_D, ONE, VEC_SAVE)
        H = tl.zeros((K, NP, BLOCK_D), dtype=tl.float32)
        for kf in tl.static_range(K):
            H = tl.where(k3 == kf, h, H)
            tf = (seg * S + kf * T).to(tl.int64)
            h = _advance(h, tf, L, t3, A2, bias, dl_ptr + pid_b * s_db + tf * s_dl, o_x,
                         u_ptr + pid_b * s_ub + tf * s_ul, o_u, B_ptr + pid_b * s_Bb + tf * s_Bl, o_B, tr, tB,
                         m_col, m_n, T, NP, BLOCK_D, HAS_BIAS, SOFTPLUS, FAST_MATH, GROUP_UNIFORM, n3,
                         FMA_EXP, WHOLE)  # fmt: skip
        # pass 2: the chunks backwards
        for kk in range(0, K):
            kb = K - 1 - kk
            t0 = seg * S + kb * T
            t0_64 = t0.to(tl.int64)
            m_tile = (t0 + tr < L) & m_col  # (T*BD,)
            m_bc = (t0 + tB < L) & m_n  # (m_n also drops channels past DIM: ``_bc_offsets``)
            o_out = pid_b * L * DIM + t0_64 * DIM + o_o  # into the (B, L, D) outputs
            o_g = pid_b * s_gb + t0_64 * s_gl + o_G  # into the (B, L, G, N) accumulators
            Bv, Cv, zv, xv, uv, yv = Bn, Cn, zn, xn, un, yn
            # this chunk's inputs arrived during the previous one; ask for the next chunk's (t0 - T: the
            # chunk before, which after the last chunk of this segment is the first of the next one)
            Bn, Cn, zn, xn, un, yn = _chunk_loads(
                t0 - T, 0, L, pid_b, B_ptr, C_ptr, z_ptr, dl_ptr, u_ptr, dy_ptr, o_B, o_C, o_z, o_x, o_u, o_y, tr, tB,
                m_col, m_n, s_Bb, s_Bl, s_Cb, s_Cl, s_zb, s_zl, s_db, s_dl, s_ub, s_ul, s_yb, s_yl, HAS_Z, True,
                WHOLE,
            )  # fmt: skip
            Bt = _bc_tile(Bv, T, NP, BLOCK_D, GROUP_UNIFORM)
            Ct = _bc_tile(Cv, T, NP, BLOCK_D, GROUP_UNIFORM)
            if HAS_Z:
                zz = tl.reshape(zv, (T, 1, BLOCK_D)).to(tl.float32)
            x = tl.reshape(xv, (T, 1, BLOCK_D)).to(tl.float32)
            u = tl.reshape(uv, (T, 1, BLOCK_D)).to(tl.float32)
            dy = tl.reshape(yv, (T, 1, BLOCK_D)).to(tl.float32)
            mt3 = tl.reshape(m_tile, (T, 1, BLOCK_D))
            if HAS_BIAS:
                x = x + bias
            if SOFTPLUS:
                dt = _softplus(x, FAST_MATH)
            else:
                dt = x
            if not WHOLE:
                dt = tl.where(mt3, dt, 0.0)
            dtu = dt * u  # (T, 1, BD)
            dA = _decay(dt * A2, n3, FMA_EXP)  # Ā: (T, NP, BD)
            dBu = dtu * Bt  # (T, NP, BD)
            h_start = _row_at(H, k3, kb)  # (1, NP, BD)
            hs = _scan_chunk(dA, dBu, h_start, t3)  # (T, NP, BD)
            y = tl.sum(hs * Ct, axis=1, keep_dims=True)  # C · h: (T, 1, BD)
            if HAS_D:
                y = y + Dsk * u
            if HAS_Z:
                sz = _sigmoid(zz, FAST_MATH)
                g = dy * zz * sz
                dz = dy * y * sz * (1.0 + zz * (1.0 - sz))
                _store_in(dz_ptr + o_out, tl.reshape(dz, (T * BLOCK_D,)), m_tile, WHOLE)
            else:
                g = dy
            if HAS_D:
                dD_acc += tl.sum(g * u, axis=0, keep_dims=True)
            if GROUP_UNIFORM:  # Σ_d g_t h_t
                _channel_sum_add(dC_ptr + pid_b * s_gb + t0_64 * s_gl + g_row, hs * g, t0, L, s_gl, N, SCATTER,
                                 DOT_REDUCE, WHOLE)  # fmt: skip
            else:  # the block's channels read different groups: add per channel
                dC = tl.reshape(hs * g, (T * NP * BLOCK_D,))
                tl.atomic_add(dC_ptr + o_g, dC, mask=m_bc, sem="relaxed")
            # The adjoint, backwards through the chunk: dh_t = g_t C_t + q, then the adjoint carried into
            # step t - 1, q = Ā_t dh_t, which times h_{t-1} is dh_t Ā_t h_{t-1}, the term of ∂A and ∂Δ
            # (h_{t-1}: the state entering the chunk, then the chunk's own states).
            gC = g * Ct  # (T, NP, BD)
            DH = gC
            ddA = gC
            for i in tl.static_range(T - 1, -1, -1):
                dh_i = _row(gC, t3, i) + q
                DH = tl.where(t3 == i, dh_i, DH)
                q = _row(dA, t3, i) * dh_i
                if i == 0:
                    h_prev = h_start
                else:
                    h_prev = _row(hs, t3, i - 1)
                ddA_i = q * h_prev
                ddA = tl.where(t3 == i, ddA_i, ddA)
                dA_acc += ddA_i * _row(dt, t3, i)
            ddt = _dot_states(ddA, A2, n3) * 0.6931471805599453
            if GROUP_UNIFORM:  # Σ_d dh_t Δ_t u_t
                _channel_sum_add(dB_ptr + pid_b * s_gb + t0_64 * s_gl + g_row, DH * dtu, t0, L, s_gl, N, SCATTER,
                                 DOT_REDUCE, WHOLE)  # fmt: skip
            else:
                dB = tl.reshape(DH * dtu, (T * NP * BLOCK_D,))
                tl.atomic_add(dB_ptr + o_g, dB, mask=m_bc, sem="relaxed")
            sB = tl.sum(DH * Bt, axis=1, keep_dims=True)  # Σ_n dh_t B_t: (T, 1, BD)
            ddt += sB * u
            du = sB * dt
            if HAS_D:
                du += Dsk * g
            if SOFTPLUS:
                ddt = ddt * _sigmoid(x, FAST_MATH)
            if not WHOLE:
                ddt = tl.where(mt3, ddt, 0.0)
            if HAS_BIAS:
                dbias_acc += tl.sum(ddt, axis=0, keep_dims=True)
            _store_in(du_ptr + o_out, tl.reshape(du, (T * BLOCK_D,)), m_tile, WHOLE)
            _store_in(ddl_ptr + o_out, tl.reshape(ddt, (T * BLOCK_D,)), m_tile, WHOLE)
    if pid_s == 0:
        tl.store(dh0_ptr + o_state, tl.reshape(q, (NP * BLOCK_D,)), mask=m_s)
    o_part = pid_b * n_ps + pid_s
    tl.store(dA_ptr + o_part * N * DIM + o_dn, tl.reshape(dA_acc, (NP * BLOCK_D,)), mask=m_s)
    if HAS_D:
        tl.store(dD_ptr + o_part * DIM + (d0 + cc) * ONE, tl.reshape(dD_acc, (BLOCK_D,)), mask=m_c)
    if HAS_BIAS:
        tl.store(dbias_ptr + o_part * DIM + (d0 + cc) * ONE, tl.reshape(dbias_acc, (BLOCK_D,)), mask=m_c)
