"""Helpers shared by the selective scan Triton kernels (forward, backward, decode step).

Symbols as in ``reference.py``. Tiles are 3-D, (T, NP, BLOCK_D): T steps of a
chunk, the NP (N padded to a power of two) states and BLOCK_D channels, with the
channels on the lanes and T, NP inside each thread. ``_row`` picks one step of
such a tile; ``_scan_chunk`` runs the recurrence h_t = Ā_t h_{t-1} + (Δ B u)_t
through the T steps; ``_flat`` gives the flat index vectors every tile is loaded
and stored through.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _row(x, t3, i: tl.constexpr):
    """Row ``i`` of a (T, a, b) float32 tile held in-thread along T -> (1, a, b).

    Integer select-and-sum: with T in registers the compiler folds it into a
    register pick (a float sum of zeros would not fold: -0.0 + 0.0 != -0.0).
    """
    bits = tl.where(t3 == i, x.to(tl.int32, bitcast=True), 0)
    return tl.sum(bits, axis=0, keep_dims=True).to(tl.float32, bitcast=True)


@triton.jit
def _scan_chunk(dA, dBu, h, t3):
    """h_t = Ā_t h_{t-1} + (Δ B u)_t for the T steps of a chunk, from the state h before it.

    Args: dA, dBu (T, NP, BD); h (1, NP, BD); t3 = arange(T) as (T, 1, 1).
    Returns the (T, NP, BD) states. The T steps are unrolled; with T held
    in-thread each step is one fused multiply-add per state.
    """
    T: tl.constexpr = dA.shape[0]
    hs = dBu
    for i in tl.static_range(T):
        h = _row(dA, t3, i) * h + _row(dBu, t3, i)
        hs = tl.where(t3 == i, h, hs)
    return hs


@triton.jit
def _log2(x, FAST: tl.constexpr):
    """log2; ``FAST``: the GPU's approximate instruction (rel. error ~2^-22) instead of a polynomial."""
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    return tl.log2(x)


@triton.jit
def _softplus(x, FAST_LOG: tl.constexpr):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|).

    log1p(e) for e = e^-|x| in (0, 1]: the series e - e^2/2 + e^3/3 below 2^-7 (error
    below e^4/4, i.e. 2^-23 relative), else log(1 + e), whose rounding of 1 + e costs
    at most 2^-24 / 2^-7 = 2^-17 relative. Two special-function operations (exp2, log2).
    """
    e = tl.exp2(-tl.abs(x) * 1.4426950408889634)
    series = e * (1.0 - e * (0.5 - e * 0.3333333333333333))
    lp = tl.where(e < 0.0078125, series, _log2(1.0 + e, FAST_LOG) * 0.6931471805599453)
    return tl.maximum(x, 0.0) + lp


@triton.jit
def _sigmoid(x):
    return tl.fdiv(1.0, 1.0 + tl.exp2(-x * 1.4426950408889634))


@triton.jit
def _flat(R: tl.constexpr, C: tl.constexpr):
    """Row and column of each element of an R x C tile, flattened row-major: two (R*C,) tensors.

    Tiles are loaded and stored through these flat index vectors and reshaped to 3-D
    in registers. A 1-D access has one obvious layout (element i on lane i % 32), so
    with C = 32 each lane owns one channel and keeps all R rows in registers, whatever
    the compiler version's layout heuristics (a 2-D or 3-D access lets it pick which
    axis goes across lanes).
    """
    i = tl.arange(0, R * C)
    return i // C, i % C


@triton.jit
def _bc_offsets(s_l, s_g, T: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, d0, ONE, CH_PER_GROUP,
                GROUP_UNIFORM: tl.constexpr):  # fmt: skip
    """Flat offsets and (step, state) indices of one chunk of B or C inside a sequence: (T*NP,)
    when the block reads one group, else (T*NP*BLOCK_D,) (channel d reads group d // CH_PER_GROUP)."""
    if GROUP_UNIFORM:
        t, n = _flat(T, NP)
        offs = t * s_l + (d0 // CH_PER_GROUP) * s_g + n
    else:
        tn, d = _flat(T * NP, BLOCK_D)
        t = tn // NP
        n = tn % NP
        offs = t * s_l + ((d0 + d) * ONE // CH_PER_GROUP) * s_g + n
    return offs, t, n


@triton.jit
def _bc_tile(v, T: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_UNIFORM: tl.constexpr):
    if GROUP_UNIFORM:
        out = tl.reshape(v, (T, NP, 1))
    else:
        out = tl.reshape(v, (T, NP, BLOCK_D))
    return out.to(tl.float32)


@triton.jit
def _row_at(x, r3, i):
    """Row ``i`` (a run-time index) of a (R, a, b) float32 tile -> (1, a, b)."""
    bits = tl.where(r3 == i, x.to(tl.int32, bitcast=True), 0)
    return tl.sum(bits, axis=0, keep_dims=True).to(tl.float32, bitcast=True)


@triton.jit
def _sum_channels(x, DOT: tl.constexpr):
    """Σ over the channel axis of a (T, NP, BD) float32 tile -> (T, NP, 1).

    ``DOT``: as a matrix product with a ones column on the tensor cores, the
    operand split in two tf32 parts (hi + lo) so the sum keeps float32
    accuracy; else a sum across the lanes (a shuffle tree per value).
    """
    if DOT:
        T: tl.constexpr = x.shape[0]
        NP: tl.constexpr = x.shape[1]
        BD: tl.constexpr = x.shape[2]
        x2 = tl.reshape(x, (T * NP, BD))  # (T*NP, BD)
        hi = (x2.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)  # tf32-exact part
        ones = tl.where(tl.arange(0, 16)[None, :] == 0, 1.0, 0.0) + tl.zeros((BD, 16), dtype=tl.float32)
        r = tl.dot(hi, ones, input_precision="tf32") + tl.dot(x2 - hi, ones, input_precision="tf32")
        out = tl.reshape(tl.sum(r, axis=1), (T, NP, 1))
    else:
        out = tl.sum(x, axis=2, keep_dims=True)
    return out


@triton.jit
def _load_tile(ptr, offs, mask, T: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (T, 1, BLOCK_D) float32 tile from flat offsets (see ``triton_fwd._flat``)."""
    return tl.reshape(tl.load(ptr + offs, mask=mask, other=0.0), (T, 1, BLOCK_D)).to(tl.float32)


@triton.jit
def _m_col3(tB, BLOCK_D: tl.constexpr, d0, DIM):
    """Channel mask of the flat (T*NP*BLOCK_D,) per-channel B/C layout (non-uniform groups)."""
    return d0 + tl.arange(0, tB.shape[0]) % BLOCK_D < DIM
