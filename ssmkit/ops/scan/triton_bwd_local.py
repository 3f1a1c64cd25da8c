"""Selective scan backward in Triton, first pass over segments: each segment's local adjoint.

With the sequence split into segments run in parallel (``triton_launch.segments``),
the adjoint recurrence dh_t = g_t C_t + Ā_{t+1} dh_{t+1} (which does not involve
the state h) is run backwards through each segment from a zero end condition (in pieces run in
parallel); each piece's q = Ā_first dh_first and Σ Δ over it (Π Ā = exp2(A2 Σ Δ)) let
the second pass (``triton_bwd.py``) start each segment from the exact adjoint
coming back from all later segments. Symbols as in ``triton_bwd.py``.
"""

import triton
import triton.language as tl

from .triton_common import (
    _bc_offsets,
    _bc_tile,
    _chunk_loads,
    _decay,
    _flat,
    _load_A2,
    _row,
    _sigmoid,
    _softplus,
)


@triton.jit(do_not_specialize=["ONE"])
def selective_scan_bwd_local_kernel(
    dl_ptr, z_ptr, A_ptr, C_ptr, bias_ptr, dy_ptr, qloc_ptr, dts_ptr,
    L, DIM, CH_PER_GROUP, SEG_LEN, LOC_K, ONE, s_db, s_dl, s_zb, s_zl, s_yb, s_yl, s_Cb, s_Cl, s_Cg,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, GROUP_UNIFORM: tl.constexpr,
    FAST_MATH: tl.constexpr, FMA_EXP: tl.constexpr = 0, WHOLE: tl.constexpr = False,
):  # fmt: skip
    """Grid (cdiv(D, BLOCK_D), B, (n_segs - 1) * LOC_K), for the LOC_K pieces of SEG_LEN steps of
    each of segments 1, 2, ...: the adjoint each piece sends back to the state before it when nothing
    comes in from after it, q = Ā_first dh_first (the recurrence dh_t = g_t C_t + Ā_{t+1} dh_{t+1}
    does not involve h), and Σ Δ over the piece. Written to qloc (B, n_pieces, N, D) and dts
    (B, n_pieces, D) float32 (piece p of the sequence at p - LOC_K) for ``selective_scan_bwd_kernel``. A (D, N)
    contiguous, as that kernel reads it. ``WHOLE``: L and the pieces multiples of T, D of BLOCK_D and N a power
    of two: no element masks (the prefetch before a piece's first chunk takes one scalar predicate)."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2) + LOC_K  # the piece (segment 0's local adjoint reaches no earlier segment)
    d0 = pid_d * BLOCK_D
    t3 = tl.arange(0, T)[:, None, None]  # (T, 1, 1)
    n3 = tl.arange(0, NP)[None, :, None]  # (1, NP, 1)
    sn, sc = _flat(NP, BLOCK_D)
    m_s = (sn < N) & (d0 + sc < DIM)
    o_s = sn * DIM + (d0 + sc) * ONE
    A2 = tl.reshape(_load_A2(A_ptr, sn, sc, d0, m_s, N, ONE), (1, NP, BLOCK_D))
    cc = tl.arange(0, BLOCK_D)
    m_c = d0 + cc < DIM
    if HAS_BIAS:
        bias = tl.reshape(tl.load(bias_ptr + (d0 + cc) * ONE, mask=m_c, other=0.0), (1, 1, BLOCK_D))
    tr, tc = _flat(T, BLOCK_D)
    m_col = d0 + tc < DIM
    ch = (d0 + tc) * ONE
    o_C, tB, nB = _bc_offsets(s_Cl, s_Cg, T, NP, BLOCK_D, d0, DIM, ONE, CH_PER_GROUP, GROUP_UNIFORM)
    m_n = nB < N
    q = tl.zeros((1, NP, BLOCK_D), dtype=tl.float32)
    dts = tl.zeros((1, 1, BLOCK_D), dtype=tl.float32)
    t_begin = pid_s * SEG_LEN
    t_end = tl.minimum(L, t_begin + SEG_LEN)
    n_chunks = tl.cdiv(t_end - t_begin, T)
    # the chunks backwards, each chunk's inputs loaded while the one after it is computed
    t0 = t_begin + (n_chunks - 1) * T
    o_x, o_y, o_z = tr * s_dl + ch, tr * s_yl + ch, tr * s_zl + ch
    _, Cn, zn, xn, _, gn = _chunk_loads(t0, t_begin, t_end, pid_b, C_ptr, C_ptr, z_ptr, dl_ptr, dl_ptr, dy_ptr, o_C,
                                        o_C, o_z, o_x, o_x, o_y, tr, tB, m_col, m_n, s_Cb, s_Cl, s_Cb, s_Cl, s_zb,
                                        s_zl, s_db, s_dl, s_db, s_dl, s_yb, s_yl, HAS_Z, False, WHOLE)  # fmt: skip
    for kk in range(0, n_chunks):
        t0 = t_begin + (n_chunks - 1 - kk) * T
        m_tile = (t0 + tr < t_end) & m_col
        Cv, xv, gv, zv = Cn, xn, gn, zn
        _, Cn, zn, xn, _, gn = _chunk_loads(t0 - T, t_begin, t_end, pid_b, C_ptr, C_ptr, z_ptr, dl_ptr, dl_ptr,
                                            dy_ptr, o_C, o_C, o_z, o_x, o_x, o_y, tr, tB, m_col, m_n, s_Cb, s_Cl,
                                            s_Cb, s_Cl, s_zb, s_zl, s_db, s_dl, s_db, s_dl, s_yb, s_yl, HAS_Z,
                                            False, WHOLE)  # fmt: skip
        Ct = _bc_tile(Cv, T, NP, BLOCK_D, GROUP_UNIFORM)
        x = tl.reshape(xv, (T, 1, BLOCK_D)).to(tl.float32)
        g = tl.reshape(gv, (T, 1, BLOCK_D)).to(tl.float32)
        if HAS_Z:
            zz = tl.reshape(zv, (T, 1, BLOCK_D)).to(tl.float32)
            g = g * zz * _sigmoid(zz, FAST_MATH)
        if HAS_BIAS:
            x = x + bias
        if SOFTPLUS:
            x = _softplus(x, FAST_MATH)
        if WHOLE:
            dt = x
        else:
            dt = tl.where(tl.reshape(m_tile, (T, 1, BLOCK_D)), x, 0.0)
        dts += tl.sum(dt, axis=0, keep_dims=True)
        dA = _decay(dt * A2, n3, FMA_EXP)  # (T, NP, BD)
        gC = g * Ct
        for i in tl.static_range(T - 1, -1, -1):
            q = _row(dA, t3, i) * (_row(gC, t3, i) + q)
    o_seg = pid_b * tl.num_programs(2) + pid_s - LOC_K
    tl.store(qloc_ptr + o_seg * N * DIM + o_s, tl.reshape(q, (NP * BLOCK_D,)), mask=m_s)
    tl.store(dts_ptr + o_seg * DIM + (d0 + cc) * ONE, tl.reshape(dts, (BLOCK_D,)), mask=m_c)
