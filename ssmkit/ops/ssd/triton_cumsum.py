"""SSD Triton stage 1: chunk bounds, step sizes and cumulative log decays.

Every SSD kernel works on chunks of Q = `chunk_size` tokens and starts by
calling these helpers, so this stage is fused into the others (it reads only
Q scalars of `dt` per chunk and head: recomputing beats a round trip through
memory). Symbols as in ``reference.py``, per head h and chunk c:

    Δ_t    = `delta` = softplus(dt_t + dt_bias_h)   (or dt_t + dt_bias_h)
    log Ā_t = Δ_t A_h
    `acum`_i = Σ_{k<=i, k in c} Δ_k A_h        inclusive, chunk-local

Tokens past the chunk's end are masked with Δ = 0 (decay 1, no input), so
`acum` is flat there and its last entry is the whole chunk's log decay.

Chunk table. A chunk covers tokens [start, end) of one sequence. For a batch
of equal-length rows, chunk c of row b is [cQ, min(cQ + Q, L)) and row b is
sequence b. For packed variable-length sequences (``cu_seqlens``, a batch of
one) the wrapper builds an int64 table of rows (start, end, seq, flags), with
flag 1 = the chunk opens its sequence (the state is reset to that sequence's
initial state) and flag 2 = it closes it (its end state is the sequence's
final state); every sequence starts a fresh chunk, so no chunk spans two.
(For a plain batch, where a row opens in its first chunk and closes in its
last, the kernels do the reset and the final store outside their chunk loops.)

The backward of this stage (dΔ -> d dt through the softplus, and the decay
gradient -> dA) is fused into ``triton_scan_bwd.py`` via :func:`dt_grad`.

Whole tiles. Where every chunk is full (no packed sequences, L a multiple of
Q, Q a power of two) and the P and N blocks cover P and N exactly, the
kernels' chunk loops load and store without element masks (``WHOLE``: the
scan's ``triton_common._load_in`` / ``_store_in``), and Δ needs no zeroing
past a chunk's end.
"""

import triton
import triton.language as tl

from ..scan.triton_common import _load_in


@triton.jit
def program_tile(H, P, N, heads_per_group, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                 HEADS_INNER: tl.constexpr = False):
    """Where a program of the grid (cdiv(P, BLOCK_P) * cdiv(N, BLOCK_N), n_segs, batch * H) works, and
    its index vectors: (pid_p, pid_s, b, head, grp, b64, offs_q, offs_p, offs_n, mask_p, mask_n, mask_np,
    offs_np, api_np), with b64 the batch row in int64, offs_np the (BLOCK_N, BLOCK_P) entries of an
    internal (N, P) state and api_np the same entries of a public (P, N) one. The first grid axis
    numbers the (P block, N block) tiles, P blocks first; kernels whose BLOCK_N covers N have one
    N block, and that axis is then their P block. With ``HEADS_INNER`` the grid is (tiles, batch * H,
    n_segs) instead: the GPU then starts the programs of one segment (a chunk, when chunks are handled
    independently) for every head before the next, and the B, C tiles they share come from L2."""
    n_pb = tl.cdiv(P, BLOCK_P)
    pid_p = tl.program_id(0) % n_pb
    pid_n = tl.program_id(0) // n_pb
    if HEADS_INNER:
        pid_s = tl.program_id(2)
        pid_bh = tl.program_id(1)
    else:
        pid_s = tl.program_id(1)
        pid_bh = tl.program_id(2)
    b = pid_bh // H
    head = pid_bh % H
    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_n = offs_n < N
    mask_np = mask_n[:, None] & mask_p[None, :]
    offs_np = offs_n[:, None] * P + offs_p[None, :]
    api_np = offs_n[:, None] + offs_p[None, :] * N
    return (pid_p, pid_s, b, head, head // heads_per_group, b.to(tl.int64), offs_q, offs_p, offs_n, mask_p, mask_n,
            mask_np, offs_np, api_np)  # fmt: skip


@triton.jit
def chunk_bounds(table_ptr, b, c, L, n_chunks, Q, VARLEN: tl.constexpr):
    """Token range, sequence index and open/close flags of chunk ``c``.

    Returns (start, end, seq, opens, closes): int64 scalars start/end/seq and
    bool scalars. ``b`` is the batch row (0 for packed sequences).
    """
    if VARLEN:
        row = table_ptr + c.to(tl.int64) * 4
        start = tl.load(row)
        end = tl.load(row + 1)
        seq = tl.load(row + 2)
        flags = tl.load(row + 3)
        opens = (flags & 1) != 0
        closes = (flags & 2) != 0
    else:
        start = c.to(tl.int64) * Q
        end = tl.minimum(start + Q, L)
        seq = b.to(tl.int64)
        opens = c == 0
        closes = c == n_chunks - 1
    return start, end, seq, opens, closes


@triton.jit
def softplus(v):
    """log(1 + e^v) without overflow, accurate for very negative v."""
    u = tl.exp(-tl.abs(v))
    w = 1.0 + u
    # log1p(u) = u * log(w) / (w - 1): exact when 1 + u rounds (Goldberg's correction). Where w == 1 the
    # quotient is not taken (0 / 0 there would put a NaN in the unused branch: a warning in the interpreter).
    one = w == 1.0
    log1p_u = tl.where(one, u, u * (tl.log(w) / tl.where(one, 1.0, w - 1.0)))
    return tl.maximum(v, 0.0) + log1p_u


@triton.jit
def chunk_decay(dt_row, t, mask_q, stride_dt_l, bias, A, SOFTPLUS: tl.constexpr, WHOLE: tl.constexpr = False):
    """Δ and the chunk-local cumulative log decay for one head.

    Args:
        dt_row: pointer to dt[b, 0, h];  t: (BLOCK_Q,) int64 token indices;
        mask_q: (BLOCK_Q,) valid tokens;  bias, A: fp32 scalars of this head;
        WHOLE: every token of the chunk valid (module docstring).
    Returns:
        (raw, delta, acum), each (BLOCK_Q,) fp32: raw = dt + dt_bias (the
        softplus argument), delta = Δ (0 where masked), acum = cumsum(Δ A).
    """
    dtv = _load_in(dt_row + t * stride_dt_l, mask_q, WHOLE).to(tl.float32)
    return decay_of(dtv, mask_q, bias, A, SOFTPLUS, WHOLE)


@triton.jit
def chunk_dt(dt_row, table_ptr, b, c, L, n_chunks, Q, stride_dt_l, offs_q, VARLEN: tl.constexpr,
             WHOLE: tl.constexpr = False):  # fmt: skip
    """dt of chunk ``c`` (fp32, 0 past its end), for a walk to load a chunk ahead: the load is
    then in flight while the chunk before is computed (Triton pipelines only the loads that
    feed a product; this one feeds the decays, which every product of the chunk waits for)."""
    start, end, _, _, _ = chunk_bounds(table_ptr, b, c, L, n_chunks, Q, VARLEN)
    t = start + offs_q
    return _load_in(dt_row + t * stride_dt_l, t < end, WHOLE).to(tl.float32)


@triton.jit
def decay_of(dtv, mask_q, bias, A, SOFTPLUS: tl.constexpr, WHOLE: tl.constexpr = False):
    """:func:`chunk_decay` from the chunk's dt already loaded (``chunk_dt``)."""
    raw = dtv + bias
    if SOFTPLUS:
        delta = softplus(raw)
    else:
        delta = raw
    if not WHOLE:
        delta = tl.where(mask_q, delta, 0.0)
    acum = tl.cumsum(delta * A, axis=0)
    return raw, delta, acum


@triton.jit
def last_of(v, offs, BLOCK: tl.constexpr):
    """v[BLOCK - 1] as a scalar (the chunk's total when v is a masked cumsum)."""
    return tl.sum(tl.where(offs == BLOCK - 1, v, 0.0), axis=0)


@triton.jit
def decay_matrix(acum, causal):
    """exp(acum_i - acum_j) where ``causal`` (i >= j), else 0: (BLOCK_Q, BLOCK_Q).

    Only differences of cumulative sums are exponentiated, never a sum itself,
    so a chunk whose log decay reaches -1e4 still gives finite values.
    """
    diff = acum[:, None] - acum[None, :]
    return tl.where(causal, tl.exp(tl.where(causal, diff, 0.0)), 0.0)


@triton.jit
def dt_grad(ddelta, raw, SOFTPLUS: tl.constexpr):
    """d dt from dΔ: through the softplus (its derivative is sigmoid) or identity."""
    if SOFTPLUS:
        return ddelta * tl.sigmoid(raw)
    else:
        return ddelta


@triton.jit
def mask_if(mask, flag):
    """``mask & flag`` for a scalar ``flag``, written as a select (Triton's CPU
    interpreter mistypes a block-and-scalar ``&``)."""
    return tl.where(flag, mask, False)
