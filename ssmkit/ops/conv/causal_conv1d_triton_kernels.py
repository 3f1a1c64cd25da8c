"""Causal depthwise conv1d in Triton: the kernels (forward, backward, one-token update).

Symbols as in ``causal_conv1d.py``: ``x`` (B, L, D) sequence-major, ``w`` (D, K) with
tap K-1 on the current token, ``x~`` = [initial state (B, K-1, D), x]:

    p[t, d] = bias[d] + Σ_k w[d, k] x~[t + k, d]        y = act(p),  act = identity or silu

Backward, with g = ∂L/∂y · act'(p):

    ∂x~[i, d] = Σ_k w[d, k] g[i - k, d]     ∂w[d, k] = Σ_{b,t} g[t, d] x~[t + k, d]     ∂bias = Σ_{b,t} g

Forward tiles are (BLOCK_L, BLOCK_D), channels on the lanes; the backward is one kernel
with the rows of a tile in each thread's registers (``conv1d_bwd_kernel``). Every product
and sum is in float32. Offsets along the sequence are int64 (B * L * D can pass 2^31).
"""

import triton
import triton.language as tl

from ..scan.triton_common import _flat, _row


@triton.jit
def _silu_grad(p):
    """(silu(p), silu'(p)) in float32."""
    s = 1.0 / (1.0 + tl.exp(-p))
    return p * s, s * (1.0 + p * (1.0 - s))


@triton.jit
def _x_tilde(x_row, s_row, t, d, L, DIM, s_xl, s_sl, K: tl.constexpr, HAS_STATE: tl.constexpr):
    """x~[t + K - 1] for a (BLOCK_L,) vector of times t (possibly negative) and (BLOCK_D,) channels:
    the input at time t, or the initial state's row K - 1 + t for t < 0 (zeros without one)."""
    md = (d < DIM)[None, :]
    in_x = (t >= 0) & (t < L)
    v = tl.load(x_row + t.to(tl.int64)[:, None] * s_xl + d[None, :], mask=in_x[:, None] & md, other=0.0)
    v = v.to(tl.float32)
    if HAS_STATE:
        in_s = (t < 0) & (t >= -(K - 1))
        sv = tl.load(s_row + (t + K - 1)[:, None] * s_sl + d[None, :], mask=in_s[:, None] & md, other=0.0)
        v += sv.to(tl.float32)
    return v  # (BLOCK_L, BLOCK_D)


@triton.jit
def _preact(x_row, s_row, w_ptr, b_ptr, t, d, L, DIM, s_xl, s_sl,
            K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr):  # fmt: skip
    """p[t, d] for a (BLOCK_L,) vector of times: (BLOCK_L, BLOCK_D) float32."""
    md = d < DIM
    if HAS_BIAS:
        acc = tl.load(b_ptr + d, mask=md, other=0.0).to(tl.float32)[None, :] + tl.zeros((t.shape[0], d.shape[0]), tl.float32)
    else:
        acc = tl.zeros((t.shape[0], d.shape[0]), tl.float32)
    for k in tl.static_range(K):
        wk = tl.load(w_ptr + d * K + k, mask=md, other=0.0).to(tl.float32)  # (BLOCK_D,)
        acc += wk[None, :] * _x_tilde(x_row, s_row, t + k - (K - 1), d, L, DIM, s_xl, s_sl, K, HAS_STATE)
    return acc


@triton.jit
def conv1d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, s_ptr, y_ptr, L, DIM, s_xb, s_xl, s_sb, s_sl,
    K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(L, BLOCK_L), cdiv(D, BLOCK_D), B). x (B, L, D) unit channel stride; w (D, K)
    contiguous; s (B, K-1, D) unit channel stride; y (B, L, D) contiguous."""
    pid_b = tl.program_id(2).to(tl.int64)
    t = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    p = _preact(x_ptr + pid_b * s_xb, s_ptr + pid_b * s_sb, w_ptr, b_ptr, t, d, L, DIM, s_xl, s_sl,
                K, HAS_BIAS, HAS_STATE)  # fmt: skip
    if SILU:
        p, _ = _silu_grad(p)
    mask = (t < L)[:, None] & (d < DIM)[None, :]
    tl.store(y_ptr + pid_b * L * DIM + t.to(tl.int64)[:, None] * DIM + d[None, :], p.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _shifted(X, Hh, t3, h3, j: tl.constexpr, T: tl.constexpr, HP: tl.constexpr):
    """Rows t + j (j <= 0, a compile-time shift) of the tile X (T, 1, BD) whose HP rows before
    it are Hh (HP, 1, BD): a (T, 1, BD) tile assembled from register picks."""
    out = X
    for t in tl.static_range(T):
        if t + j >= 0:
            out = tl.where(t3 == t, _row(X, t3, t + j), out)
        else:
            out = tl.where(t3 == t, _row(Hh, h3, HP + t + j), out)
    return out


@triton.jit
def _ahead(G, Gn, t3, j: tl.constexpr, T: tl.constexpr):
    """Rows t + j (0 <= j < T) of G (T, 1, BD), continued by the next tile's rows Gn."""
    out = G
    for t in tl.static_range(T):
        if t + j < T:
            out = tl.where(t3 == t, _row(G, t3, t + j), out)
        else:
            out = tl.where(t3 == t, _row(Gn, t3, t + j - T), out)
    return out


@triton.jit
def _g_rows(x_row, s_row, dy_row, t0, W, bias, ch, m_col, tr, hch, m_hcol, hr, t3, h3, k3, L, s_xl, s_sl, s_yl,
            K: tl.constexpr, T: tl.constexpr, HP: tl.constexpr, BLOCK_D: tl.constexpr,
            HAS_STATE: tl.constexpr, SILU: tl.constexpr):  # fmt: skip
    """g = ∂L/∂y act'(p) for the T rows from t0, with those rows of x~ and the HP rows before them:
    (G, X, Hh) as (T, 1, BD), (T, 1, BD), (HP, 1, BD) float32 tiles (zeros past L)."""
    r = t0 + tr
    X = tl.load(x_row + t0.to(tl.int64) * s_xl + tr * s_xl + ch, mask=(r < L) & m_col, other=0.0)
    X = tl.reshape(X, (T, 1, BLOCK_D)).to(tl.float32)
    rh = t0 - HP + hr  # the rows before the tile: x, or the initial state's row K - 1 + rh
    Hh = tl.load(x_row + (t0 - HP).to(tl.int64) * s_xl + hr * s_xl + hch, mask=(rh >= 0) & m_hcol, other=0.0)
    Hh = Hh.to(tl.float32)
    if HAS_STATE:
        sv = tl.load(s_row + (rh + K - 1) * s_sl + hch, mask=(rh < 0) & (rh >= 1 - K) & m_hcol, other=0.0)
        Hh += sv.to(tl.float32)
    Hh = tl.reshape(Hh, (HP, 1, BLOCK_D))
    dy = tl.load(dy_row + t0.to(tl.int64) * s_yl + tr * s_yl + ch, mask=(r < L) & m_col, other=0.0)
    G = tl.reshape(dy, (T, 1, BLOCK_D)).to(tl.float32)
    if SILU:
        p = bias
        for k in tl.static_range(K):
            p = p + _row(W, k3, k) * _shifted(X, Hh, t3, h3, k - (K - 1), T, HP)
        _, dact = _silu_grad(p)
        G = G * dact
    return G, X, Hh


@triton.jit(do_not_specialize=["ONE"])
def conv1d_bwd_kernel(
    x_ptr, w_ptr, b_ptr, s_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, gh_ptr, L, DIM, SEG_LEN, ONE,
    s_xb, s_xl, s_sb, s_sl, s_yb, s_yl, s_dxb, s_dxl,
    K: tl.constexpr, KP: tl.constexpr, T: tl.constexpr, HP: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    """The whole backward in one pass. Grid (cdiv(D, BLOCK_D), B, n_segs); program (d-block, b, s)
    walks the rows [s SEG_LEN, (s+1) SEG_LEN) backwards T at a time (SEG_LEN a multiple of T),
    one channel per thread and the T rows in its registers, so the shifted rows of x~ and g are
    register picks and the sums over rows stay in the thread:

        g[t] = dy[t] act'(p[t])    dx[t] = Σ_k w[k] g[t + K-1-k]    ∂w[k] += Σ_t g[t] x~[t + k]

    The g of the K - 1 rows after a tile come from the tile processed before it (the segment's
    own first visit computes them for the rows after the segment). Writes dx (B, L, D) in x's
    dtype (strides s_dxb, s_dxl; unit channel stride), per-program partial sums dw (B, n_segs, K, D) and db (B, n_segs, D) float32, and with
    an initial state the g of rows 0..K-2 to gh (B, K-1, D) float32 (for its gradient).
    ONE = 1 at run time: channel offsets are multiplied by it so that each lane keeps one channel
    (see ``ops/scan/triton_fwd.py``)."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    d0 = pid_d * BLOCK_D
    t3 = tl.arange(0, T)[:, None, None]
    h3 = tl.arange(0, HP)[:, None, None]
    k3 = tl.arange(0, KP)[:, None, None]
    tr, tc = _flat(T, BLOCK_D)
    ch = (d0 + tc) * ONE
    m_col = d0 + tc < DIM
    hr, hc = _flat(HP, BLOCK_D)
    hch = (d0 + hc) * ONE
    m_hcol = d0 + hc < DIM
    kr, kc = _flat(KP, BLOCK_D)
    W = tl.load(w_ptr + (d0 + kc) * ONE * K + kr, mask=(kr < K) & (d0 + kc < DIM), other=0.0)
    W = tl.reshape(W, (KP, 1, BLOCK_D)).to(tl.float32)
    cc = tl.arange(0, BLOCK_D)
    m_c = d0 + cc < DIM
    o_c = (d0 + cc) * ONE
    if HAS_BIAS:
        bias = tl.reshape(tl.load(b_ptr + o_c, mask=m_c, other=0.0), (1, 1, BLOCK_D)).to(tl.float32)
    else:
        bias = tl.zeros((1, 1, BLOCK_D), dtype=tl.float32)
    x_row = x_ptr + pid_b * s_xb
    s_row = s_ptr + pid_b * s_sb
    dy_row = dy_ptr + pid_b * s_yb
    dx_row = dx_ptr + pid_b * s_dxb
    seg_start = pid_s * SEG_LEN
    seg_end = tl.minimum(L, seg_start + SEG_LEN)
    Gn, _, _ = _g_rows(x_row, s_row, dy_row, seg_end, W, bias, ch, m_col, tr, hch, m_hcol, hr, t3, h3, k3, L,
                       s_xl, s_sl, s_yl, K, T, HP, BLOCK_D, HAS_STATE, SILU)  # fmt: skip
    DW = tl.zeros((KP, 1, BLOCK_D), dtype=tl.float32)
    DB = tl.zeros((1, 1, BLOCK_D), dtype=tl.float32)
    n_tiles = tl.cdiv(seg_end - seg_start, T)
    for j in range(0, n_tiles):
        t0 = seg_start + (n_tiles - 1 - j) * T
        G, X, Hh = _g_rows(x_row, s_row, dy_row, t0, W, bias, ch, m_col, tr, hch, m_hcol, hr, t3, h3, k3, L,
                           s_xl, s_sl, s_yl, K, T, HP, BLOCK_D, HAS_STATE, SILU)  # fmt: skip
        DB += tl.sum(G, axis=0, keep_dims=True)
        dx = tl.zeros((T, 1, BLOCK_D), dtype=tl.float32)
        for k in tl.static_range(K):
            wk = _row(W, k3, k)
            DW = tl.where(k3 == k, DW + tl.sum(G * _shifted(X, Hh, t3, h3, k - (K - 1), T, HP), axis=0,
                                                keep_dims=True), DW)  # fmt: skip
            dx += wk * _ahead(G, Gn, t3, K - 1 - k, T)
        dx_out = tl.reshape(dx, (T * BLOCK_D,)).to(dx_ptr.dtype.element_ty)
        tl.store(dx_row + t0.to(tl.int64) * s_dxl + tr * s_dxl + ch, dx_out, mask=(t0 + tr < L) & m_col)
        if HAS_STATE:
            if t0 == 0:  # the sequence's first rows: their g also reach the initial state
                tl.store(gh_ptr + pid_b * (K - 1) * DIM + tr * DIM + ch, tl.reshape(G, (T * BLOCK_D,)),
                         mask=(tr < K - 1) & m_col)  # fmt: skip
        Gn = G
    part = pid_b * tl.num_programs(2) + pid_s
    tl.store(dw_ptr + part * K * DIM + kr * DIM + (d0 + kc) * ONE, tl.reshape(DW, (KP * BLOCK_D,)),
             mask=(kr < K) & (d0 + kc < DIM))  # fmt: skip
    tl.store(db_ptr + part * DIM + o_c, tl.reshape(DB, (BLOCK_D,)), mask=m_c)


@triton.jit
def conv1d_step_kernel(
    x_ptr, s_ptr, w_ptr, b_ptr, y_ptr, ns_ptr, DIM, s_xb, s_sb, s_sl,
    K: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(D, BLOCK_D), B). x (B, D); state s (B, K-1, D) -> y (B, D), new state ns
    (B, K-1, D) contiguous = [s[:, 1:], x]."""
    pid_b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = d < DIM
    xt = tl.load(x_ptr + pid_b * s_xb + d, mask=md, other=0.0)
    acc = tl.load(w_ptr + d * K + (K - 1), mask=md, other=0.0).to(tl.float32) * xt.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + d, mask=md, other=0.0).to(tl.float32)
    for j in tl.static_range(K - 1):
        sj = tl.load(s_ptr + pid_b * s_sb + j * s_sl + d, mask=md, other=0.0)
        acc += tl.load(w_ptr + d * K + j, mask=md, other=0.0).to(tl.float32) * sj.to(tl.float32)
        if j > 0:
            tl.store(ns_ptr + pid_b * (K - 1) * DIM + (j - 1) * DIM + d, sj.to(ns_ptr.dtype.element_ty), mask=md)
    if K > 1:
        tl.store(ns_ptr + pid_b * (K - 1) * DIM + (K - 2) * DIM + d, xt.to(ns_ptr.dtype.element_ty), mask=md)
    if SILU:
        acc, _ = _silu_grad(acc)
    tl.store(y_ptr + pid_b * DIM + d, acc.to(y_ptr.dtype.element_ty), mask=md)
