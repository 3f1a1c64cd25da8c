"""Helpers shared by the selective scan Triton kernels (forward, backward, decode step).

Symbols as in ``reference.py``. Tiles are 3-D, (T, NP, BLOCK_D): T steps of a
chunk, the NP (N padded to a power of two) states and BLOCK_D channels, with the
channels on the lanes and T, NP inside each thread. ``_row`` picks one step of
such a tile; ``_scan_chunk`` runs the recurrence h_t = Ā_t h_{t-1} + (Δ B u)_t
through the T steps; ``_flat`` gives the flat index vectors every tile is loaded
and stored through.
"""

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


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
def _exp2_fma(x):
    """2^x on the FMA pipe instead of the special-function unit.

    x = j + f with j = round(x) (adding 1.5 * 2^23 rounds in the low mantissa bits) and
    f in [-0.5, 0.5]; 2^f by a degree-5 near-minimax polynomial (relative error 7.5e-8, below
    the 2^-22 of the hardware's ex2.approx); j goes into the exponent field. x is clamped to
    [-125, 126], where that field stays valid: below, 2^-125 ~ 2.4e-38 stands for the decay
    to zero; above, the state has overflowed anyway.
    """
    x = tl.minimum(tl.maximum(x, -125.0), 126.0)
    t = x + 12582912.0
    f = x - (t - 12582912.0)
    p = 0.0013276471735596967 * f + 0.009675541540067611
    p = p * f + 0.055507132760971946
    p = p * f + 0.2402211972007432
    p = p * f + 0.6931469670620409
    p = p * f + 1.0000000716554325
    bits = p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _decay(x, n3, FMA_EXP: tl.constexpr):
    """Ā = 2^x for a (T, NP, BD) tile: states n < FMA_EXP on the FMA pipe (``_exp2_fma``), the
    rest on the special-function unit (n counts a lane's own states where channels span lanes). Each register holds one state (n is known at compile
    time), so each element's unused branch is removed."""
    if FMA_EXP == 0:
        out = tl.exp2(x)
    else:
        out = tl.where(n3 < FMA_EXP, _exp2_fma(x), tl.exp2(x))
    return out


@triton.jit
def _softplus(x, FAST_MATH: tl.constexpr):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|).

    log1p(e) for e = e^-|x| in (0, 1]: the series e - e^2/2 + e^3/3 below 2^-7 (error
    below e^4/4, i.e. 2^-23 relative), else log(1 + e), whose rounding of 1 + e costs
    at most 2^-24 / 2^-7 = 2^-17 relative. Two special-function operations (exp2, log2).
    """
    e = tl.exp2(-tl.abs(x) * 1.4426950408889634)
    series = e * (1.0 - e * (0.5 - e * 0.3333333333333333))
    lp = tl.where(e < 0.0078125, series, _log2(1.0 + e, FAST_MATH) * 0.6931471805599453)
    return tl.maximum(x, 0.0) + lp


@triton.jit
def _sigmoid(x, FAST: tl.constexpr = False):
    """1 / (1 + e^-x). ``FAST`` (GPU only: the interpreter has no inline PTX): the hardware's approximate
    2^x and 1/x with denormals flushed (``ex2.approx.ftz``, ``rcp.approx.ftz``, relative errors ~2^-22),
    4 instructions where Triton's guarded ``exp2`` and division take 11."""
    if FAST:
        e = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x * -1.4426950408889634],
                                      dtype=tl.float32, is_pure=True, pack=1)  # fmt: skip
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [1.0 + e], dtype=tl.float32,
                                         is_pure=True, pack=1)  # fmt: skip
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
def _lane_states(r, c, NH: tl.constexpr, LANES: tl.constexpr):
    """State n and channel (within the block) of the elements of a flat (NH, BD * LANES) state tile
    whose row is ``r`` and column ``c``: the LANES lanes of columns c = LANES d .. LANES d + LANES - 1
    share channel d, lane c holding its states (c % LANES) * NH .. + NH - 1 (LANES = 1: all of them)."""
    return (c % LANES) * NH + r, c // LANES


@triton.jit
def _lane_group_sum(x, LANES: tl.constexpr, FAST: tl.constexpr):
    """Σ over the LANES adjacent lanes that share a channel (``_lane_states``) of a (T, 1, BD * LANES)
    float32 tile, the sum in each of them. ``FAST`` (GPU only): butterfly shuffles on the low lane bits."""
    if LANES > 1:
        if FAST:  # LANES = 2 or 4
            x = x + _shfl_xor(x, 1)
            if LANES == 4:
                x = x + _shfl_xor(x, 2)
        else:
            T: tl.constexpr = x.shape[0]
            BD: tl.constexpr = x.shape[2] // LANES
            s = tl.sum(tl.reshape(x, (T, 1, BD, LANES)), axis=3, keep_dims=True)
            x = tl.reshape(tl.broadcast_to(s, (T, 1, BD, LANES)), (T, 1, BD * LANES))
    return x


@triton.jit
def _swap_pair(x, FAST: tl.constexpr):
    """The value of float32 ``x`` (.., .., CW) held by the partner lane, column c ^ 1. ``FAST`` (GPU only): a
    shuffle; else exactly, through the integer sum of the pair's bit patterns less one's own."""
    if FAST:
        out = _shfl_xor(x, 1)
    else:
        R: tl.constexpr = x.shape[0]
        CW: tl.constexpr = x.shape[2]
        bits = x.to(tl.int32, bitcast=True)
        pair = tl.sum(tl.reshape(bits, (R, 1, CW // 2, 2)), axis=3, keep_dims=True)
        out = (tl.reshape(tl.broadcast_to(pair, (R, 1, CW // 2, 2)), (R, 1, CW)) - bits).to(tl.float32, bitcast=True)
    return out


@triton.jit
def _halves(x):
    """The first and second halves of the T steps of a (T, 1, CW) float32 tile, two (T / 2, 1, CW) tiles."""
    T: tl.constexpr = x.shape[0]
    CW: tl.constexpr = x.shape[2]
    x3 = tl.reshape(x, (2, T // 2, CW))
    i2 = tl.arange(0, 2)[:, None, None]
    return tl.reshape(_row(x3, i2, 0), (T // 2, 1, CW)), tl.reshape(_row(x3, i2, 1), (T // 2, 1, CW))


@triton.jit
def _all_steps(own, odd, SHARE: tl.constexpr, FAST: tl.constexpr):
    """(T, 1, CW) from a tile of the steps a lane owns: with ``SHARE`` the (T / 2, 1, CW) tile of the first
    half of the steps (lanes where ``odd`` is false) or of the second (true), completed by the partner's."""
    if SHARE:
        TO: tl.constexpr = own.shape[0]
        CW: tl.constexpr = own.shape[2]
        other = _swap_pair(own, FAST)
        lo = tl.expand_dims(tl.where(odd, other, own), 0)
        hi = tl.expand_dims(tl.where(odd, own, other), 0)
        i2 = tl.arange(0, 2)[:, None, None, None]
        out = tl.reshape(tl.where(i2 == 0, lo, hi), (2 * TO, 1, CW))
    else:
        out = own
    return out


@triton.jit
def _bc_offsets(s_l, s_g, T: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, d0, DIM, ONE, CH_PER_GROUP,
                GROUP_UNIFORM: tl.constexpr, LANES: tl.constexpr = 1):  # fmt: skip
    """Flat offsets and (step, state) indices of one chunk of B or C inside a sequence: (T*NP,)
    when the block reads one group (pairs (t, k), state n of k as ``_lane_states`` places it),
    else (T*NP*BLOCK_D,) (the (T*NH, BLOCK_D*LANES) tile; channel d reads group d // CH_PER_GROUP,
    and channels past DIM get state index NP, so that the callers' mask n < N skips them: their
    group would lie past the tensor's end)."""
    NH: tl.constexpr = NP // LANES
    if GROUP_UNIFORM:
        t, k = _flat(T, NP)
        n = (k % LANES) * NH + k // LANES
        offs = t * s_l + (d0 // CH_PER_GROUP) * s_g + n
    else:
        row, c = _flat(T * NH, BLOCK_D * LANES)
        t = row // NH
        n, d = _lane_states(row % NH, c, NH, LANES)
        offs = t * s_l + ((d0 + d) * ONE // CH_PER_GROUP) * s_g + n
        n = tl.where(d0 + d < DIM, n, NP)
    return offs, t, n


@triton.jit
def _bc_tile(v, T: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_UNIFORM: tl.constexpr,
             LANES: tl.constexpr = 1):  # fmt: skip
    """The raw B or C chunk as a float32 (T, NH, BLOCK_D * LANES) tile (or (T, NP, 1) to broadcast)."""
    NH: tl.constexpr = NP // LANES
    if GROUP_UNIFORM:
        if LANES == 1:
            out = tl.reshape(v, (T, NP, 1))
        else:
            out = tl.reshape(v.to(tl.float32), (T, NH, 1, LANES))
            out = tl.reshape(tl.broadcast_to(out, (T, NH, BLOCK_D, LANES)), (T, NH, BLOCK_D * LANES))
    else:
        out = tl.reshape(v, (T, NH, BLOCK_D * LANES))
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
def _load_in(ptr, mask, WHOLE: tl.constexpr, wanted=None):
    """tl.load(ptr, mask, other=0). With ``WHOLE`` the rows are whole, and whether they exist at all is the
    scalar ``wanted`` (a prefetch past a program's last chunk; None: they do): one predicate for the whole
    tile and no zero-fill, where the element masks cost ~8% of the scan forward's loop instructions (and
    ~3% of the SSD fused backward's, 7-12% of the SSD walks' loops)."""
    if WHOLE and wanted is None:
        v = tl.load(ptr)
    elif WHOLE:  # (``!= 0``: Triton 3.9's interpreter gives the broadcast scalar compare an int32 mask)
        v = tl.load(ptr, mask=tl.broadcast_to(wanted, ptr.shape) != 0)
    else:
        v = tl.load(ptr, mask=mask, other=0.0)
    return v


@triton.jit
def _store_in(ptr, v, mask, WHOLE: tl.constexpr):
    """Store ``v`` in ptr's dtype, under ``mask`` unless every element is known to be in range (``WHOLE``)."""
    v = v.to(ptr.dtype.element_ty)
    if WHOLE:
        tl.store(ptr, v)
    else:
        tl.store(ptr, v, mask=mask)


@triton.jit
def _col(x, n3, i: tl.constexpr):
    """Column ``i`` of a (T, NP, b) float32 tile held in-thread along NP -> (T, 1, b) (a register pick)."""
    bits = tl.where(n3 == i, x.to(tl.int32, bitcast=True), 0)
    return tl.sum(bits, axis=1, keep_dims=True).to(tl.float32, bitcast=True)


@triton.jit
def _dot_states(a, b, n3):
    """Σ_n a b over the state axis of two float32 tiles, (T, NP, BD) or broadcastable to it -> (T, 1, BD).

    As two chains of fused multiply-adds (even and odd n) rather than products and
    a tree of additions: NP + 1 instructions per (t, d) instead of 2 NP - 1.
    """
    NP: tl.constexpr = a.shape[1]
    acc0 = _col(a, n3, 0) * _col(b, n3, 0)
    if NP == 1:
        out = acc0
    else:
        acc1 = _col(a, n3, 1) * _col(b, n3, 1)
        for i in tl.static_range(2, NP, 2):
            acc0 = acc0 + _col(a, n3, i) * _col(b, n3, i)  # contracted to one FFMA
            acc1 = acc1 + _col(a, n3, i + 1) * _col(b, n3, i + 1)
        out = acc0 + acc1
    return out


@triton.jit
def _dn_offsets(sn, sc, d0, N: tl.constexpr, ONE):
    """Offsets of a flat state tile's elements (state ``sn`` of channel d0 + ``sc``, as ``_flat`` or
    ``_lane_states`` give them) in a (D, N) array with each channel's N states contiguous: A, one batch
    row of the (B, D, N) states and their gradients, one checkpoint of ``hsave`` (.., D, N)."""
    return (d0 + sc) * ONE * N + sn


@triton.jit
def _load_A2(A_ptr, sn, sc, d0, mask, N: tl.constexpr, ONE):
    """A log2(e) for a flat state tile, from A (D, N) contiguous in any float dtype, in float32 (the product the
    host would form: Ā = exp(Δ A) = exp2(Δ A2))."""
    A = tl.load(A_ptr + _dn_offsets(sn, sc, d0, N, ONE), mask=mask, other=0.0)
    return A.to(tl.float32) * 1.4426950408889634


@triton.jit
def _store_checkpoint(ptr, h, sn, sc, d0, DIM, mask, N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, ONE,
                      VEC: tl.constexpr, LANES: tl.constexpr = 1):  # fmt: skip
    """Store the (1, NH, BD * LANES) state tile h at one checkpoint of hsave (.., D, N). ``VEC`` (N = NP):
    stored as a (BD * LANES, NH) tile whose rows the compiler knows to be contiguous (lane c's states sit
    at c * NH within the block's), so that it can use 128-bit stores (4x fewer than one per state)."""
    NH: tl.constexpr = NP // LANES
    CW: tl.constexpr = BLOCK_D * LANES
    if VEC:
        c = tl.arange(0, CW)
        offs = d0 * N + c[:, None] * NH + tl.arange(0, NH)[None, :]
        tl.store(ptr + offs, tl.trans(tl.reshape(h, (NH, CW))), mask=(d0 + c // LANES < DIM)[:, None])
    else:
        tl.store(ptr + _dn_offsets(sn, sc, d0, N, ONE), tl.reshape(h, (NH * CW,)), mask=mask)


@triton.jit
def _load_checkpoint(ptr, sn, sc, d0, DIM, mask, N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, ONE,
                     VEC: tl.constexpr):  # fmt: skip
    """The (1, NP, BD) state tile at one checkpoint of hsave (.., D, N) (see ``_store_checkpoint``)."""
    if VEC:
        cc = d0 + tl.arange(0, BLOCK_D)
        offs = cc[:, None] * N + tl.arange(0, NP)[None, :]
        h = tl.reshape(tl.trans(tl.load(ptr + offs, mask=(cc < DIM)[:, None], other=0.0)), (1, NP, BLOCK_D))
    else:
        h = tl.reshape(tl.load(ptr + _dn_offsets(sn, sc, d0, N, ONE), mask=mask, other=0.0),
                       (1, NP, BLOCK_D))  # fmt: skip
    return h.to(tl.float32)


@triton.jit
def _lane_id(like):
    """The lane index (0..31) of the thread holding each element of the int32 tensor ``like``."""
    return tl.inline_asm_elementwise("mov.u32 $0, %laneid;", "=r,r", [like], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _shfl_xor(x, BIT: tl.constexpr):
    """The value of ``x`` held by the lane whose index differs in ``BIT`` (a butterfly shuffle)."""
    bit = tl.full(x.shape, BIT, tl.int32)  # a compile-time constant: ptxas encodes it in the instruction
    return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, $2, 31, -1;", "=r,r,r", [x, bit], dtype=tl.float32,
                                     is_pure=True, pack=1)  # fmt: skip


@triton.jit
def _halve(v, lane, BIT: tl.constexpr):
    """One step of a reduce-scatter across lanes: (V, BD) values per lane -> (V // 2, BD).

    Lanes that differ in ``BIT`` pair up; the lane with the bit set keeps the upper half
    of its V values and the other the lower half; each sends its partner the half the
    partner keeps and adds what it receives. V / 2 shuffles, where a butterfly
    all-reduce of all V values would take V.
    """
    V: tl.constexpr = v.shape[0]
    BD: tl.constexpr = v.shape[1]
    v3 = tl.reshape(v, (2, V // 2, BD))
    i2 = tl.arange(0, 2)[:, None, None]
    lo = tl.reshape(_row(v3, i2, 0), (V // 2, BD))
    hi = tl.reshape(_row(v3, i2, 1), (V // 2, BD))
    up = (lane & BIT) != 0
    return tl.where(up, hi, lo) + _shfl_xor(tl.where(up, lo, hi), BIT)


@triton.jit
def _channel_sum_add(ptr, x, t0, L, s_l, N: tl.constexpr, SCATTER: tl.constexpr, DOT: tl.constexpr,
                     WHOLE: tl.constexpr = False):  # fmt: skip
    """Add Σ_d x over the block's channels of a (T, NP, BD) float32 tile to the (T, N) rows at
    ``ptr`` (row stride ``s_l``, unit stride along N; rows t0 + t >= L are skipped; ``WHOLE``: there
    are none, and N = NP), atomically.

    ``SCATTER`` (GPU only; BD = 32 channels of one warp, one per lane): a reduce-scatter
    across the lanes, after which each lane holds whole sums for T * NP / 32 of the
    (t, n) pairs (or, for fewer pairs than lanes, one lane of each group does): about
    2 instructions per value where the butterfly of ``tl.sum`` takes 10. Else
    ``_sum_channels``.
    """
    T: tl.constexpr = x.shape[0]
    NP: tl.constexpr = x.shape[1]
    BD: tl.constexpr = x.shape[2]
    if SCATTER:
        V: tl.constexpr = T * NP
        v = tl.reshape(x, (V, BD))
        lane = _lane_id(tl.arange(0, BD)[None, :])  # (1, BD)
        if V >= 2:
            v = _halve(v, lane, 16)
        if V >= 4:
            v = _halve(v, lane, 8)
        if V >= 8:
            v = _halve(v, lane, 4)
        if V >= 16:
            v = _halve(v, lane, 2)
        if V >= 32:
            v = _halve(v, lane, 1)
        if V < 32:  # fewer values than lanes: finish the sum over the lane bits left
            v += _shfl_xor(v, 1)
        if V < 16:
            v += _shfl_xor(v, 2)
        if V < 8:
            v += _shfl_xor(v, 4)
        if V < 4:
            v += _shfl_xor(v, 8)
        if V < 2:
            v += _shfl_xor(v, 16)
        if V >= 32:
            R: tl.constexpr = V // 32
            k = lane * R + tl.arange(0, R)[:, None]  # (R, BD): the (t, n) pair of each value
            ok = k >= 0
        else:
            SH: tl.constexpr = 32 // V
            k = lane // SH
            ok = lane % SH == 0
        t = k // NP
        n = k % NP
        if not WHOLE:
            ok = ok & (t0 + t < L) & (n < N)
        tl.atomic_add(ptr + t * s_l + n, v, mask=ok, sem="relaxed")
    else:
        s = tl.reshape(_sum_channels(x, DOT), (T * NP,))
        tt = tl.arange(0, T * NP) // NP
        nn = tl.arange(0, T * NP) % NP
        if WHOLE:
            tl.atomic_add(ptr + tt * s_l + nn, s, sem="relaxed")
        else:
            tl.atomic_add(ptr + tt * s_l + nn, s, mask=(t0 + tt < L) & (nn < N), sem="relaxed")


@triton.jit
def _chunk_loads(t0, lo, hi, pid_b, B_ptr, C_ptr, z_ptr, dl_ptr, u_ptr, dy_ptr, o_B, o_C, o_z, o_x, o_u, o_y, tr, tB,
                 m_col, m_n, s_Bb, s_Bl, s_Cb, s_Cl, s_zb, s_zl, s_db, s_dl, s_ub, s_ul, s_yb, s_yl,
                 HAS_Z: tl.constexpr, WITH_BU: tl.constexpr, WHOLE: tl.constexpr = False):  # fmt: skip
    """The raw (flat, input dtype) B, C, z, delta, u, dy of the T steps from ``t0``, for the
    backward kernels, which issue them a chunk ahead of their use so that their latency
    overlaps work. Rows outside [lo, hi) are not read (0, or with ``WHOLE``, where chunks lie wholly
    inside or outside and every channel and state exists, not defined); z without ``HAS_Z`` and B, u
    without ``WITH_BU`` are placeholders (not loaded)."""
    t64 = t0.to(tl.int64)
    m_bc = (t0 + tB < hi) & (t0 + tB >= lo) & m_n
    m_t = (t0 + tr < hi) & (t0 + tr >= lo) & m_col
    there = (t0 < hi) & (t0 >= lo)
    # B, C before the (T, BD) tiles: the layout pass lets the last-issued loads' layouts win (triton_fwd.py)
    if WITH_BU:
        Bv = _load_in(B_ptr + pid_b * s_Bb + t64 * s_Bl + o_B, m_bc, WHOLE, there)
    Cv = _load_in(C_ptr + pid_b * s_Cb + t64 * s_Cl + o_C, m_bc, WHOLE, there)
    xv = _load_in(dl_ptr + pid_b * s_db + t64 * s_dl + o_x, m_t, WHOLE, there)
    if WITH_BU:
        uv = _load_in(u_ptr + pid_b * s_ub + t64 * s_ul + o_u, m_t, WHOLE, there)
    else:
        Bv = Cv
        uv = xv
    yv = _load_in(dy_ptr + pid_b * s_yb + t64 * s_yl + o_y, m_t, WHOLE, there)
    if HAS_Z:
        zv = _load_in(z_ptr + pid_b * s_zb + t64 * s_zl + o_z, m_t, WHOLE, there)
    else:
        zv = yv
    return Bv, Cv, zv, xv, uv, yv
