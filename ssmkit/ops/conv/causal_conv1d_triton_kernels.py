"""Causal depthwise conv1d in Triton: the kernels (forward, backward, one-token update).

Symbols as in ``causal_conv1d.py``: ``x`` (B, L, D) sequence-major, ``w`` (D, K) with
tap K-1 on the current token, ``x~`` = [initial state (B, K-1, D), x]:

    p[t, d] = bias[d] + Σ_k w[d, k] x~[t + k, d]        y = act(p),  act = identity or silu

Backward, with g = ∂L/∂y · act'(p):

    ∂x~[i, d] = Σ_k w[d, k] g[i - k, d]     ∂w[d, k] = Σ_{b,t} g[t, d] x~[t + k, d]     ∂bias = Σ_{b,t} g

Tiles are (BLOCK_L, BLOCK_D), channels on the lanes; every product and sum is in
float32. Offsets along the sequence are int64 (B * L * D can pass 2^31).
"""

from __future__ import annotations

import triton
import triton.language as tl


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
def conv1d_bwd_g_kernel(
    x_ptr, w_ptr, b_ptr, s_ptr, dy_ptr, g_ptr, dw_ptr, db_ptr, L, DIM, TILES_PER_PROG,
    s_xb, s_xl, s_sb, s_sl, s_yb, s_yl,
    K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(D, BLOCK_D), B, n_split): each program walks TILES_PER_PROG tiles of BLOCK_L
    steps. Writes g (B, L, D) float32 and per-program partial sums dw (B, n_split, K, D),
    db (B, n_split, D) float32."""
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = d < DIM
    x_row = x_ptr + pid_b * s_xb
    s_row = s_ptr + pid_b * s_sb
    db_acc = tl.zeros((BLOCK_D,), tl.float32)
    part = (pid_b * tl.num_programs(2) + pid_s) * K * DIM  # into (B, n_split, K, D)
    dw_acc = tl.zeros((BLOCK_D,), tl.float32)
    for k in tl.static_range(K):  # zero this program's partial dw rows (accumulated below)
        tl.store(dw_ptr + part + k * DIM + d, dw_acc, mask=md)
    for i in range(0, TILES_PER_PROG):
        t = (pid_s * TILES_PER_PROG + i) * BLOCK_L + tl.arange(0, BLOCK_L)
        mask = (t < L)[:, None] & md[None, :]
        g = tl.load(dy_ptr + pid_b * s_yb + t.to(tl.int64)[:, None] * s_yl + d[None, :], mask=mask, other=0.0)
        g = g.to(tl.float32)
        if SILU:
            p = _preact(x_row, s_row, w_ptr, b_ptr, t, d, L, DIM, s_xl, s_sl, K, HAS_BIAS, HAS_STATE)
            _, dact = _silu_grad(p)
            g = g * dact
        tl.store(g_ptr + pid_b * L * DIM + t.to(tl.int64)[:, None] * DIM + d[None, :], g, mask=mask)
        db_acc += tl.sum(g, axis=0)
        for k in tl.static_range(K):
            xk = _x_tilde(x_row, s_row, t + k - (K - 1), d, L, DIM, s_xl, s_sl, K, HAS_STATE)
            o = dw_ptr + part + k * DIM + d
            tl.store(o, tl.load(o, mask=md, other=0.0) + tl.sum(g * xk, axis=0), mask=md)
    tl.store(db_ptr + (pid_b * tl.num_programs(2) + pid_s) * DIM + d, db_acc, mask=md)


@triton.jit
def conv1d_bwd_dx_kernel(
    g_ptr, w_ptr, dx_ptr, L, DIM, K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(L, BLOCK_L), cdiv(D, BLOCK_D), B): dx[t] = Σ_k w[k] g[t + K-1-k]; g, dx (B, L, D)."""
    pid_b = tl.program_id(2).to(tl.int64)
    t = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = d < DIM
    g_row = g_ptr + pid_b * L * DIM
    acc = tl.zeros((BLOCK_L, BLOCK_D), tl.float32)
    for k in tl.static_range(K):
        src = t + (K - 1 - k)
        gk = tl.load(g_row + src.to(tl.int64)[:, None] * DIM + d[None, :], mask=(src < L)[:, None] & md[None, :], other=0.0)
        acc += tl.load(w_ptr + d * K + k, mask=md, other=0.0).to(tl.float32)[None, :] * gk
    mask = (t < L)[:, None] & md[None, :]
    tl.store(dx_ptr + pid_b * L * DIM + t.to(tl.int64)[:, None] * DIM + d[None, :], acc.to(dx_ptr.dtype.element_ty), mask=mask)


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
