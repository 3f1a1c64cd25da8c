"""Causal depthwise conv1d in Triton: the kernels (forward, backward, one-token update).

Symbols as in ``causal_conv1d.py``: ``x`` (B, L, D) sequence-major, ``w`` (D, K) with
tap K-1 on the current token, ``x~`` = [initial state (B, K-1, D), x]:

    p[t, d] = bias[d] + Σ_k w[d, k] x~[t + k, d]        y = act(p),  act = identity or silu

Backward, with g = ∂L/∂y · act'(p):

    ∂x~[i, d] = Σ_k w[d, k] g[i - k, d]     ∂w[d, k] = Σ_{b,t} g[t, d] x~[t + k, d]     ∂bias = Σ_{b,t} g

Forward and backward walk segments of rows with V adjacent channels per thread (one V-element
vector per row) and a tile of T rows in each thread's registers, so the shifted rows are register
picks and x is read once.
They are bound by instruction issue at the Mamba layers' shapes; what saves instructions:
row strides as compile-time constants (rows are immediate offsets from one address),
tiles inside the sequence without masks, and the sigmoid from the GPU's approximate
instructions (``_sigmoid``'s ``FAST``). Every product and sum is in float32. Offsets
along the sequence are int64 (B * L * D can pass 2^31).
"""

import triton
import triton.language as tl

from .._pdl import release_dependents, wait_inputs
from ..scan.triton_common import _row, _sigmoid


@triton.jit
def _lane_offsets(R: tl.constexpr, C: tl.constexpr, V: tl.constexpr, d0, ONE):
    """Offsets of an R x C tile of channels d0 .. d0 + C - 1 in which each lane holds V adjacent channels of
    all R rows: (row, channel) as (R * C // V, V) tensors, so that a load or store through them is one
    V-element vector per lane and row; ``tl.reshape(tile, (R, 1, C))`` is the 3-D tile in registers. (As with
    ``scan/triton_common._flat``: channel offsets times the run-time ONE keep the compiler from widening the
    vectors, which would spread a tile's rows across lanes.)"""
    i = tl.arange(0, R * C // V)[:, None]
    return i // (C // V), (d0 + (i % (C // V)) * V) * ONE + tl.arange(0, V)[None, :]


@triton.jit
def _silu_grad(p, FAST: tl.constexpr = False):
    """(silu(p), silu'(p)) in float32 (``FAST``: see ``_sigmoid``)."""
    s = _sigmoid(p, FAST)
    return p * s, s * (1.0 + p * (1.0 - s))


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
def _state_rows(s_row, rh, hch, m_h, s_sl, K: tl.constexpr):
    """The initial state's rows K - 1 + rh for the rows rh < 0 of an x~ tile (zeros elsewhere), float32."""
    sv = tl.load(s_row + (rh + K - 1) * s_sl + hch, mask=(rh < 0) & (rh >= 1 - K) & m_h, other=0.0)
    return sv.to(tl.float32)


@triton.jit
def _g_rows(x_row, s_row, dy_row, t0, W, bias, ch, m_col, tr, hch, m_hcol, hr, t3, h3, k3, L, s_xl, s_sl, s_yl,
            K: tl.constexpr, T: tl.constexpr, HP: tl.constexpr, BLOCK_D: tl.constexpr,
            HAS_STATE: tl.constexpr, SILU: tl.constexpr, MASKED: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """g = ∂L/∂y act'(p) for the T rows from t0, with those rows of x~ and the HP rows before them:
    (G, X, Hh) as (T, 1, BD), (T, 1, BD), (HP, 1, BD) float32 tiles (zeros past L). Not ``MASKED``: the
    caller knows that rows t0 - HP .. t0 + T - 1 lie in the sequence and every channel in D (no masks)."""
    r = t0 + tr
    rh = t0 - HP + hr  # the rows before the tile: x, or the initial state's row K - 1 + rh
    xo = x_row + t0.to(tl.int64) * s_xl + tr * s_xl + ch
    ho = x_row + (t0 - HP).to(tl.int64) * s_xl + hr * s_xl + hch
    yo = dy_row + t0.to(tl.int64) * s_yl + tr * s_yl + ch
    if MASKED:
        X = tl.load(xo, mask=(r < L) & m_col, other=0.0)
        Hh = tl.load(ho, mask=(rh >= 0) & m_hcol, other=0.0).to(tl.float32)
        if HAS_STATE:
            Hh += _state_rows(s_row, rh, hch, m_hcol, s_sl, K)
        dy = tl.load(yo, mask=(r < L) & m_col, other=0.0)
    else:
        X = tl.load(xo)
        Hh = tl.load(ho).to(tl.float32)
        dy = tl.load(yo)
    X = tl.reshape(X, (T, 1, BLOCK_D)).to(tl.float32)
    Hh = tl.reshape(Hh, (HP, 1, BLOCK_D))
    G = tl.reshape(dy, (T, 1, BLOCK_D)).to(tl.float32)
    if SILU:
        p = bias
        for k in tl.static_range(K):
            p = p + _row(W, k3, k) * _shifted(X, Hh, t3, h3, k - (K - 1), T, HP)
        _, dact = _silu_grad(p, FAST)
        G = G * dact
    return G, X, Hh


@triton.jit
def _channel_tiles(w_ptr, b_ptr, d0, DIM, ONE, K: tl.constexpr, KP: tl.constexpr, T: tl.constexpr,
                   HP: tl.constexpr, BLOCK_D: tl.constexpr, V: tl.constexpr, HAS_BIAS: tl.constexpr):  # fmt: skip
    """What both kernels set up for the channels d0 .. d0 + BLOCK_D - 1 (V adjacent ones per lane): index
    tiles (t3, h3, k3) of the T rows, HP rows before them and KP taps; the (row, channel) offsets of a
    (T, BLOCK_D) tile (tr, ch) and of an (HP, BLOCK_D) one (hr, hch) with their channel masks
    (``_lane_offsets``); the taps W (KP, 1, BLOCK_D) and bias (1, 1, BLOCK_D) in float32."""
    t3 = tl.arange(0, T)[:, None, None]
    h3 = tl.arange(0, HP)[:, None, None]
    k3 = tl.arange(0, KP)[:, None, None]
    tr, ch = _lane_offsets(T, BLOCK_D, V, d0, ONE)
    hr, hch = _lane_offsets(HP, BLOCK_D, V, d0, ONE)
    kr, kch = _lane_offsets(KP, BLOCK_D, V, d0, ONE)
    W = tl.load(w_ptr + kch * K + kr, mask=(kr < K) & (kch < DIM), other=0.0)
    W = tl.reshape(W, (KP, 1, BLOCK_D)).to(tl.float32)
    if HAS_BIAS:
        _, cch = _lane_offsets(1, BLOCK_D, V, d0, ONE)
        bias = tl.load(b_ptr + cch, mask=cch < DIM, other=0.0)
        bias = tl.reshape(bias, (1, 1, BLOCK_D)).to(tl.float32)
    else:
        bias = tl.zeros((1, 1, BLOCK_D), dtype=tl.float32)
    return t3, h3, k3, tr, ch, ch < DIM, hr, hch, hch < DIM, W, bias


@triton.jit(do_not_specialize=["ONE"])
def conv1d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, s_ptr, y_ptr, L, DIM, SEG_LEN, ONE, s_xb, s_xl_run, s_sb, s_sl,
    K: tl.constexpr, KP: tl.constexpr, T: tl.constexpr, HP: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
    S_XL: tl.constexpr = 0, INTERIOR: tl.constexpr = False, FAST: tl.constexpr = False, V: tl.constexpr = 1,
):  # fmt: skip
    """The forward. Grid (cdiv(D, BLOCK_D), B, n_segs): program (d-block, b, s)
    walks the rows [s SEG_LEN, (s+1) SEG_LEN) forwards T at a time, V adjacent channels per thread and the
    T rows in its registers; the HP rows before a tile are carried from the tile before it (x is read once).
    y (B, L, D) contiguous. S_XL, INTERIOR, FAST, ONE, V: as in ``conv1d_bwd_kernel``."""
    if S_XL > 0:
        s_xl = S_XL
    else:
        s_xl = s_xl_run
    pid_b = tl.program_id(1).to(tl.int64)
    d0 = tl.program_id(0) * BLOCK_D
    t3, h3, k3, tr, ch, m_col, hr, hch, m_hcol, W, bias = _channel_tiles(w_ptr, b_ptr, d0, DIM, ONE, K, KP, T, HP,
                                                                         BLOCK_D, V, HAS_BIAS)  # fmt: skip
    x_row = x_ptr + pid_b * s_xb
    y_row = y_ptr + pid_b * L * DIM
    seg_start = tl.program_id(2) * SEG_LEN
    seg_end = tl.minimum(L, seg_start + SEG_LEN)
    rh = seg_start - HP + hr  # the HP rows before the segment: x, or the initial state's row K - 1 + rh
    Hh = tl.load(x_row + (seg_start - HP).to(tl.int64) * s_xl + hr * s_xl + hch, mask=(rh >= 0) & m_hcol, other=0.0)
    Hh = Hh.to(tl.float32)
    if HAS_STATE:
        Hh += _state_rows(s_ptr + pid_b * s_sb, rh, hch, m_hcol, s_sl, K)
    Hh = tl.reshape(Hh, (HP, 1, BLOCK_D))
    for j in range(0, tl.cdiv(seg_end - seg_start, T)):
        t0 = seg_start + j * T
        xo = x_row + t0.to(tl.int64) * s_xl + tr * s_xl + ch
        yo = y_row + t0.to(tl.int64) * DIM + tr * DIM + ch
        if INTERIOR:
            inside = t0 + T <= L
        else:
            inside = False
        if inside:
            X = tl.load(xo)
        else:
            X = tl.load(xo, mask=(t0 + tr < L) & m_col, other=0.0)
        X = tl.reshape(X, (T, 1, BLOCK_D)).to(tl.float32)
        p = bias
        for k in tl.static_range(K):
            p = p + _row(W, k3, k) * _shifted(X, Hh, t3, h3, k - (K - 1), T, HP)
        if SILU:
            p, _ = _silu_grad(p, FAST)
        out = tl.reshape(p, (T * BLOCK_D // V, V)).to(y_ptr.dtype.element_ty)
        if inside:
            tl.store(yo, out)
        else:
            tl.store(yo, out, mask=(t0 + tr < L) & m_col)
        for h in tl.static_range(HP):  # the tile's last HP rows come before the next tile
            Hh = tl.where(h3 == h, _row(X, t3, T - HP + h), Hh)


@triton.jit(do_not_specialize=["ONE"])
def conv1d_bwd_kernel(
    x_ptr, w_ptr, b_ptr, s_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, gh_ptr, L, DIM, SEG_LEN, ONE,
    s_xb, s_xl_run, s_sb, s_sl, s_yb, s_yl_run, s_dxb, s_dxl_run,
    K: tl.constexpr, KP: tl.constexpr, T: tl.constexpr, HP: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
    S_XL: tl.constexpr = 0, S_YL: tl.constexpr = 0, S_DXL: tl.constexpr = 0, INTERIOR: tl.constexpr = False,
    FAST: tl.constexpr = False, V: tl.constexpr = 1,
):  # fmt: skip
    """The whole backward in one pass. Grid (cdiv(D, BLOCK_D), B, n_segs); program (d-block, b, s)
    walks the rows [s SEG_LEN, (s+1) SEG_LEN) backwards T at a time (SEG_LEN a multiple of T),
    V adjacent channels per thread and the T rows in its registers, so the shifted rows of x~ and g are
    register picks and the sums over rows stay in the thread:

        g[t] = dy[t] act'(p[t])    dx[t] = Σ_k w[k] g[t + K-1-k]    ∂w[k] += Σ_t g[t] x~[t + k]

    The g of the K - 1 rows after a tile come from the tile processed before it (the segment's
    own first visit computes them for the rows after the segment). Writes dx (B, L, D) in x's
    dtype (strides s_dxb, s_dxl; unit channel stride), per-program partial sums dw (B, n_segs, K, D) and db (B, n_segs, D) float32, and with
    an initial state the g of rows 0..K-2 to gh (B, K-1, D) float32 (for its gradient).
    ONE = 1 at run time: channel offsets are multiplied by it so that each lane keeps its V channels
    (see ``ops/scan/triton_fwd.py``); V: channels per lane (one V-element vector per row).
    S_XL, S_YL, S_DXL > 0: the row strides of x, dy, dx as compile-time constants (then the rows of a tile
    are immediate offsets from one address; s_*_run unused), else s_xl_run, ... at run time.
    INTERIOR: tiles whose rows and halo lie inside the sequence load and store without masks (D a
    multiple of BLOCK_D). FAST: the sigmoid of ``_silu_grad``'s fast path."""
    if S_XL > 0:
        s_xl = S_XL
        s_yl = S_YL
        s_dxl = S_DXL
    else:
        s_xl = s_xl_run
        s_yl = s_yl_run
        s_dxl = s_dxl_run
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    d0 = tl.program_id(0) * BLOCK_D
    t3, h3, k3, tr, ch, m_col, hr, hch, m_hcol, W, bias = _channel_tiles(w_ptr, b_ptr, d0, DIM, ONE, K, KP, T, HP,
                                                                         BLOCK_D, V, HAS_BIAS)  # fmt: skip
    kr, kch = _lane_offsets(KP, BLOCK_D, V, d0, ONE)
    _, cch = _lane_offsets(1, BLOCK_D, V, d0, ONE)
    x_row = x_ptr + pid_b * s_xb
    s_row = s_ptr + pid_b * s_sb
    dy_row = dy_ptr + pid_b * s_yb
    dx_row = dx_ptr + pid_b * s_dxb
    seg_start = pid_s * SEG_LEN
    seg_end = tl.minimum(L, seg_start + SEG_LEN)
    Gn, _, _ = _g_rows(x_row, s_row, dy_row, seg_end, W, bias, ch, m_col, tr, hch, m_hcol, hr, t3, h3, k3, L,
                       s_xl, s_sl, s_yl, K, T, HP, BLOCK_D, HAS_STATE, SILU, True, FAST)  # fmt: skip
    DW = tl.zeros((KP, 1, BLOCK_D), dtype=tl.float32)
    DB = tl.zeros((1, 1, BLOCK_D), dtype=tl.float32)
    n_tiles = tl.cdiv(seg_end - seg_start, T)
    for j in range(0, n_tiles):
        t0 = seg_start + (n_tiles - 1 - j) * T
        if INTERIOR:
            inside = (t0 >= HP) & (t0 + T <= L)
        else:
            inside = False
        if inside:
            G, X, Hh = _g_rows(x_row, s_row, dy_row, t0, W, bias, ch, m_col, tr, hch, m_hcol, hr, t3, h3, k3, L,
                               s_xl, s_sl, s_yl, K, T, HP, BLOCK_D, HAS_STATE, SILU, False, FAST)  # fmt: skip
        else:
            G, X, Hh = _g_rows(x_row, s_row, dy_row, t0, W, bias, ch, m_col, tr, hch, m_hcol, hr, t3, h3, k3, L,
                               s_xl, s_sl, s_yl, K, T, HP, BLOCK_D, HAS_STATE, SILU, True, FAST)  # fmt: skip
        DB += tl.sum(G, axis=0, keep_dims=True)
        dx = tl.zeros((T, 1, BLOCK_D), dtype=tl.float32)
        for k in tl.static_range(K):
            wk = _row(W, k3, k)
            DW = tl.where(k3 == k, DW + tl.sum(G * _shifted(X, Hh, t3, h3, k - (K - 1), T, HP), axis=0,
                                                keep_dims=True), DW)  # fmt: skip
            dx += wk * _ahead(G, Gn, t3, K - 1 - k, T)
        dx_out = tl.reshape(dx, (T * BLOCK_D // V, V)).to(dx_ptr.dtype.element_ty)
        if inside:
            tl.store(dx_row + t0.to(tl.int64) * s_dxl + tr * s_dxl + ch, dx_out)
        else:
            tl.store(dx_row + t0.to(tl.int64) * s_dxl + tr * s_dxl + ch, dx_out, mask=(t0 + tr < L) & m_col)
        if HAS_STATE:
            if t0 == 0:  # the sequence's first rows: their g also reach the initial state
                tl.store(gh_ptr + pid_b * (K - 1) * DIM + tr * DIM + ch, tl.reshape(G, (T * BLOCK_D // V, V)),
                         mask=(tr < K - 1) & m_col)  # fmt: skip
        Gn = G
    part = pid_b * tl.num_programs(2) + pid_s
    tl.store(dw_ptr + part * K * DIM + kr * DIM + kch, tl.reshape(DW, (KP * BLOCK_D // V, V)),
             mask=(kr < K) & (kch < DIM))  # fmt: skip
    tl.store(db_ptr + part * DIM + cch, tl.reshape(DB, (BLOCK_D // V, V)), mask=cch < DIM)


@triton.jit
def conv1d_step_kernel(
    x_ptr, s_ptr, w_ptr, b_ptr, y_ptr, ns_ptr, DIM, s_xb, s_sb, s_sl,
    K: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(D, BLOCK_D), B). x (B, D); state s (B, K-1, D); w (D, K) contiguous; KP = next_pow2(K).
    The window [s[:, 0], ..., s[:, K-2], x] as one (KP, BLOCK_D) tile: y (B, D) = Σ_j w[:, j] window[j] (+ b),
    new state ns (B, K-1, D) contiguous = window[1:]. ``PDL``: w and b are loaded before waiting for the
    kernel before (``ssmkit/ops/_pdl.py``)."""
    if PDL:
        release_dependents()
    pid_b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = d < DIM
    j = tl.arange(0, KP)[:, None]  # (KP, 1): the window's rows
    w = tl.load(w_ptr + d[None, :] * K + j, mask=(j < K) & md[None, :], other=0.0).to(tl.float32)  # (KP, BLOCK_D)
    if HAS_BIAS:
        bias = tl.load(b_ptr + d, mask=md, other=0.0).to(tl.float32)
    if PDL:
        wait_inputs()
    xt = tl.load(x_ptr + pid_b * s_xb + d, mask=md, other=0.0)
    win = tl.load(s_ptr + pid_b * s_sb + j * s_sl + d[None, :], mask=(j < K - 1) & md[None, :], other=0.0)
    win = tl.where(j == K - 1, xt[None, :], win)
    tl.store(ns_ptr + pid_b * (K - 1) * DIM + (j - 1) * DIM + d[None, :], win.to(ns_ptr.dtype.element_ty),
             mask=(j >= 1) & (j < K) & md[None, :])  # fmt: skip
    acc = tl.sum(w * win.to(tl.float32), axis=0)  # (BLOCK_D,)
    if HAS_BIAS:
        acc += bias
    if SILU:
        acc, _ = _silu_grad(acc)
    tl.store(y_ptr + pid_b * DIM + d, acc.to(y_ptr.dtype.element_ty), mask=md)
