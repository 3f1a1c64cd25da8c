"""Gated RMSNorm in Triton: the forward and backward kernels.

Symbols as in ``reference.py``; inputs are viewed as M rows of D channels (M = the
product of the leading dimensions), each row cut into NG = D / GROUP groups:

    gate = silu(z)      x = y * gate (gate first) or y      r = 1 / sqrt(mean_group(x^2) + eps)
    x̂ = x r             out = x̂ w  [* gate when NORM_BEFORE_GATE]

Backward, with ḡ = ∂L/∂(x̂ w) (= dout, or dout * gate when NORM_BEFORE_GATE), per group:

    ∂w = Σ_rows ḡ x̂        ∂x = r (ḡ w - x̂ c),  c = mean_group(ḡ w x̂)
    gate first:   ∂y = ∂x gate,   ∂z = ∂x y silu'(z)
    norm first:   ∂y = ∂x,        ∂z = dout x̂ w silu'(z)

with silu'(z) = σ(z) (1 + z (1 - σ(z))). A program works on tiles of (BLOCK_M rows,
BLOCK_N channels) of one group. When a group fits one tile (NUM_CHUNKS == 1) it
stays in registers; a larger group is walked in NUM_CHUNKS chunks of BLOCK_N
channels twice (first the row sums, then the outputs; the second pass reads
what the first just brought into L2). Every sum and product is in float32; row
offsets are int64 (M * D can pass 2^31).
"""

import triton
import triton.language as tl

from .._pdl import release_dependents, wait_inputs
from ..scan.triton_common import _sigmoid


@triton.jit
def _gate(y, z, HAS_Z: tl.constexpr, FAST: tl.constexpr):
    """(gate, silu'(z)) = (z σ(z), σ(z) (1 + z (1 - σ(z)))) of float32 z; without z both are y (unused).
    ``FAST``: the sigmoid's fast path (``_sigmoid``)."""
    gate = y
    dgate = y
    if HAS_Z:
        s = _sigmoid(z, FAST)
        gate = z * s
        dgate = s * (1.0 + z * (1.0 - s))
    return gate, dgate


@triton.jit
def _grad_in(g, gate, HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):
    """ḡ = ∂L/∂(x̂ w): dout, times the gate when the norm comes first."""
    gbar = g
    if HAS_Z:
        if NORM_BEFORE_GATE:
            gbar = g * gate
    return gbar


@triton.jit
def _load_tile(y_ptr, z_ptr, rows, cols, mask, s_ym, s_zm, HAS_Z: tl.constexpr, FAST: tl.constexpr):
    """(y, gate, silu'(z)) of a (BLOCK_M, BLOCK_N) tile in float32; without z the last two are y (unused)."""
    y = tl.load(y_ptr + rows[:, None] * s_ym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    z = y
    if HAS_Z:
        z = tl.load(z_ptr + rows[:, None] * s_zm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    gate, dgate = _gate(y, z, HAS_Z, FAST)
    return y, gate, dgate


@triton.jit
def _normed_input(y, gate, HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):
    """x, the quantity whose RMS is taken: y * gate (gate first) or y."""
    x = y
    if HAS_Z:
        if not NORM_BEFORE_GATE:
            x = y * gate
    return x


@triton.jit
def _fwd_out(x, gate, rstd, w, HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):
    out = x * rstd[:, None] * w[None, :]
    if HAS_Z:
        if NORM_BEFORE_GATE:
            out = out * gate
    return out


@triton.jit
def gated_rms_norm_fwd_kernel(
    y_ptr, z_ptr, w_ptr, out_ptr, rstd_ptr, M, DIM, GROUP, s_ym, s_zm, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_CHUNKS: tl.constexpr,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, FAST: tl.constexpr = False, PDL: tl.constexpr = False,
):  # fmt: skip
    """Grid (cdiv(M, BLOCK_M), NG). y, z (M, D) with unit channel stride and row strides s_ym, s_zm;
    w (D,); out (M, D) contiguous in y's dtype; rstd (M, NG) float32. ``PDL``: launched early, waiting for
    the kernel before ahead of its first load (``ssmkit/ops/_pdl.py``)."""
    if PDL:
        release_dependents()
        wait_inputs()
    grp = tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # (BLOCK_M,)
    in_rows = rows < M
    c = tl.arange(0, BLOCK_N)
    if NUM_CHUNKS == 1:
        cols = grp * GROUP + c  # (BLOCK_N,) this group's channels
        mask = in_rows[:, None] & (c < GROUP)[None, :]
        y, gate, _ = _load_tile(y_ptr, z_ptr, rows, cols, mask, s_ym, s_zm, HAS_Z, FAST)
        x = _normed_input(y, gate, HAS_Z, NORM_BEFORE_GATE)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / GROUP + eps)  # (BLOCK_M,)
        w = tl.load(w_ptr + cols, mask=c < GROUP, other=0.0).to(tl.float32)
        out = _fwd_out(x, gate, rstd, w, HAS_Z, NORM_BEFORE_GATE)
        tl.store(out_ptr + rows[:, None] * DIM + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        ssq = tl.zeros((BLOCK_M,), tl.float32)
        for k in range(NUM_CHUNKS):  # pass 1: sums of squares
            cc = k * BLOCK_N + c
            mask = in_rows[:, None] & (cc < GROUP)[None, :]
            y, gate, _ = _load_tile(y_ptr, z_ptr, rows, grp * GROUP + cc, mask, s_ym, s_zm, HAS_Z, FAST)
            x = _normed_input(y, gate, HAS_Z, NORM_BEFORE_GATE)
            ssq += tl.sum(x * x, axis=1)
        rstd = tl.rsqrt(ssq / GROUP + eps)
        for k in range(NUM_CHUNKS):  # pass 2: outputs
            cc = k * BLOCK_N + c
            cols = grp * GROUP + cc
            mask = in_rows[:, None] & (cc < GROUP)[None, :]
            y, gate, _ = _load_tile(y_ptr, z_ptr, rows, cols, mask, s_ym, s_zm, HAS_Z, FAST)
            x = _normed_input(y, gate, HAS_Z, NORM_BEFORE_GATE)
            w = tl.load(w_ptr + cols, mask=cc < GROUP, other=0.0).to(tl.float32)
            out = _fwd_out(x, gate, rstd, w, HAS_Z, NORM_BEFORE_GATE)
            tl.store(out_ptr + rows[:, None] * DIM + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows * tl.num_programs(1) + grp, rstd, mask=in_rows)


@triton.jit
def _bwd_terms(dout_ptr, y_ptr, z_ptr, w_ptr, rows, cols, mask, mask_c, rstd, s_om, s_ym, s_zm,
               HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """Everything the backward needs of one tile: (dout, y, gate, silu'(z), w, x̂, ḡ), float32."""
    y, gate, dgate = _load_tile(y_ptr, z_ptr, rows, cols, mask, s_ym, s_zm, HAS_Z, FAST)
    g = tl.load(dout_ptr + rows[:, None] * s_om + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]  # (1, BLOCK_N)
    xhat = _normed_input(y, gate, HAS_Z, NORM_BEFORE_GATE) * rstd
    return g, y, gate, dgate, w, xhat, _grad_in(g, gate, HAS_Z, NORM_BEFORE_GATE)


@triton.jit
def _bwd_store(dy_ptr, dz_ptr, g, y, gate, dgate, w, xhat, gbar, rstd, cmean, rows, cols, mask, DIM, s_dzm,
               HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):  # fmt: skip
    """dy (and dz, rows s_dzm apart) of one tile, given cmean = mean_group(ḡ w x̂) per row (BLOCK_M, 1)."""
    dx = (gbar * w - xhat * cmean) * rstd
    dy = dx
    if HAS_Z:
        if NORM_BEFORE_GATE:
            dz = g * xhat * w * dgate
        else:
            dy = dx * gate
            dz = dx * y * dgate
        tl.store(dz_ptr + rows[:, None] * s_dzm + cols[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask)
    tl.store(dy_ptr + rows[:, None] * DIM + cols[None, :], dy.to(dy_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_rows_ahead(dout_ptr, y_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dz_ptr, dw_row, M, DIM, GROUP, ROWS_PER_PROG,
                    s_om, s_ym, s_zm, s_dzm, row0, grp, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """The backward's rows of one program for a group of one tile, each tile's dout, y, z and rstd loaded
    while the tile before is summed and stored (``Tiling.ahead``)."""
    c = tl.arange(0, BLOCK_N)
    cols = grp * GROUP + c
    mask_c = c < GROUP
    w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]  # (1, BLOCK_N)
    row_end = tl.minimum(row0 + ROWS_PER_PROG, M)
    rows = row0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,) int64
    mask = (rows < row_end)[:, None] & mask_c[None, :]
    g_n = tl.load(dout_ptr + rows[:, None] * s_om + cols[None, :], mask=mask, other=0.0)
    y_n = tl.load(y_ptr + rows[:, None] * s_ym + cols[None, :], mask=mask, other=0.0)
    z_n = y_n
    if HAS_Z:
        z_n = tl.load(z_ptr + rows[:, None] * s_zm + cols[None, :], mask=mask, other=0.0)
    r_n = tl.load(rstd_ptr + rows * tl.num_programs(1) + grp, mask=rows < row_end, other=0.0)
    dw_acc = tl.zeros((BLOCK_N,), tl.float32)
    for i in range(0, ROWS_PER_PROG, BLOCK_M):
        rows = row0 + i + tl.arange(0, BLOCK_M)
        g = g_n.to(tl.float32)
        y = y_n.to(tl.float32)
        zf = z_n.to(tl.float32)
        rstd = r_n[:, None]
        mask = (rows < row_end)[:, None] & mask_c[None, :]
        nxt = rows + BLOCK_M  # the next tile's loads go out before this tile's sums wait on its own
        m_nxt = (nxt < row_end)[:, None] & mask_c[None, :]
        g_n = tl.load(dout_ptr + nxt[:, None] * s_om + cols[None, :], mask=m_nxt, other=0.0)
        y_n = tl.load(y_ptr + nxt[:, None] * s_ym + cols[None, :], mask=m_nxt, other=0.0)
        if HAS_Z:
            z_n = tl.load(z_ptr + nxt[:, None] * s_zm + cols[None, :], mask=m_nxt, other=0.0)
        else:
            z_n = y_n
        r_n = tl.load(rstd_ptr + nxt * tl.num_programs(1) + grp, mask=nxt < row_end, other=0.0)
        gate, dgate = _gate(y, zf, HAS_Z, FAST)
        xhat = _normed_input(y, gate, HAS_Z, NORM_BEFORE_GATE) * rstd
        gbar = _grad_in(g, gate, HAS_Z, NORM_BEFORE_GATE)
        dw_acc += tl.sum(gbar * xhat, axis=0)
        cmean = (tl.sum(gbar * w * xhat, axis=1) / GROUP)[:, None]
        _bwd_store(dy_ptr, dz_ptr, g, y, gate, dgate, w, xhat, gbar, rstd, cmean, rows, cols, mask, DIM, s_dzm,
                   HAS_Z, NORM_BEFORE_GATE)  # fmt: skip
    tl.store(dw_row + c, dw_acc, mask=mask_c)


@triton.jit
def gated_rms_norm_bwd_kernel(
    dout_ptr, y_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dz_ptr, dw_ptr, M, DIM, GROUP, ROWS_PER_PROG,
    s_om, s_ym, s_zm, s_dzm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_CHUNKS: tl.constexpr,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, FAST: tl.constexpr = False, AHEAD: tl.constexpr = False,
):  # fmt: skip
    """Grid (n_split, NG): program (s, k) walks rows [s * ROWS_PER_PROG, (s + 1) * ROWS_PER_PROG) (a
    multiple of BLOCK_M) of group k. dout, y, z (M, D) unit channel stride; rstd (M, NG) float32.
    Writes dy (M, D) contiguous, dz (M, D) with rows s_dzm apart (unit channel stride) and its partial sum of ∂w into row s of dw (n_split, D) float32.
    AHEAD (groups of one tile): each tile's loads are issued while the tile before is summed (``_bwd_rows_ahead``)."""
    grp = tl.program_id(1)
    c = tl.arange(0, BLOCK_N)
    row0 = tl.program_id(0).to(tl.int64) * ROWS_PER_PROG
    dw_row = dw_ptr + tl.program_id(0).to(tl.int64) * DIM + grp * GROUP
    if NUM_CHUNKS == 1 and AHEAD:
        _bwd_rows_ahead(dout_ptr, y_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dz_ptr, dw_row, M, DIM, GROUP, ROWS_PER_PROG,
                        s_om, s_ym, s_zm, s_dzm, row0, grp, BLOCK_M, BLOCK_N, HAS_Z, NORM_BEFORE_GATE, FAST)  # fmt: skip
    elif NUM_CHUNKS == 1:
        cols = grp * GROUP + c
        mask_c = c < GROUP
        dw_acc = tl.zeros((BLOCK_N,), tl.float32)
        for i in range(0, ROWS_PER_PROG, BLOCK_M):
            rows = row0 + i + tl.arange(0, BLOCK_M)  # (BLOCK_M,) int64
            mask = (rows < M)[:, None] & mask_c[None, :]
            rstd = tl.load(rstd_ptr + rows * tl.num_programs(1) + grp, mask=rows < M, other=0.0)[:, None]
            g, y, gate, dgate, w, xhat, gbar = _bwd_terms(dout_ptr, y_ptr, z_ptr, w_ptr, rows, cols, mask, mask_c,
                                                          rstd, s_om, s_ym, s_zm, HAS_Z, NORM_BEFORE_GATE, FAST)  # fmt: skip
            dw_acc += tl.sum(gbar * xhat, axis=0)
            cmean = (tl.sum(gbar * w * xhat, axis=1) / GROUP)[:, None]
            _bwd_store(dy_ptr, dz_ptr, g, y, gate, dgate, w, xhat, gbar, rstd, cmean, rows, cols, mask, DIM, s_dzm,
                       HAS_Z, NORM_BEFORE_GATE)  # fmt: skip
        tl.store(dw_row + c, dw_acc, mask=mask_c)
    else:
        for k in range(NUM_CHUNKS):  # this program's partial ∂w row starts at zero (accumulated below)
            tl.store(dw_row + k * BLOCK_N + c, tl.zeros((BLOCK_N,), tl.float32), mask=k * BLOCK_N + c < GROUP)
        for i in range(0, ROWS_PER_PROG, BLOCK_M):
            rows = row0 + i + tl.arange(0, BLOCK_M)
            rstd = tl.load(rstd_ptr + rows * tl.num_programs(1) + grp, mask=rows < M, other=0.0)[:, None]
            csum = tl.zeros((BLOCK_M,), tl.float32)
            for k in range(NUM_CHUNKS):  # pass 1: c per row
                cc = k * BLOCK_N + c
                mask = (rows < M)[:, None] & (cc < GROUP)[None, :]
                g, y, gate, dgate, w, xhat, gbar = _bwd_terms(dout_ptr, y_ptr, z_ptr, w_ptr, rows, grp * GROUP + cc,
                                                              mask, cc < GROUP, rstd, s_om, s_ym, s_zm, HAS_Z,
                                                              NORM_BEFORE_GATE, FAST)  # fmt: skip
                csum += tl.sum(gbar * w * xhat, axis=1)
            cmean = (csum / GROUP)[:, None]
            for k in range(NUM_CHUNKS):  # pass 2: dy, dz and this tile's ∂w, added to the partial row
                cc = k * BLOCK_N + c
                mask = (rows < M)[:, None] & (cc < GROUP)[None, :]
                g, y, gate, dgate, w, xhat, gbar = _bwd_terms(dout_ptr, y_ptr, z_ptr, w_ptr, rows, grp * GROUP + cc,
                                                              mask, cc < GROUP, rstd, s_om, s_ym, s_zm, HAS_Z,
                                                              NORM_BEFORE_GATE, FAST)  # fmt: skip
                _bwd_store(dy_ptr, dz_ptr, g, y, gate, dgate, w, xhat, gbar, rstd, cmean, rows, grp * GROUP + cc,
                           mask, DIM, s_dzm, HAS_Z, NORM_BEFORE_GATE)  # fmt: skip
                o = dw_row + cc
                tl.store(o, tl.load(o, mask=cc < GROUP, other=0.0) + tl.sum(gbar * xhat, axis=0), mask=cc < GROUP)
