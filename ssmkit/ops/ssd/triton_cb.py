"""SSD Triton: the chunks' C B^T products, once per (chunk, group).

The intra-chunk scores of every head of a group start from the same (Q, Q)
product (C B^T)_ij = C_i · B_j of the chunk's C and B rows; only the decay
that multiplies them differs by head. The scan and the fused backward can
therefore read it from a (rows, n_chunks, G, BLOCK_Q, BLOCK_Q) fp32 buffer
that this kernel fills once per call (4 KB per chunk and group at Q = 32)
instead of each (head, chunk) program forming it again on its tensor cores
(``CB_IN`` in ``triton_scan.py`` / ``triton_scan_bwd.py``). Rows past a
chunk's end are zero, as the kernels' own masked loads make them.
"""

import triton
import triton.language as tl

from .triton_cumsum import chunk_bounds


@triton.jit
def _ssd_cb_kernel(
    B_ptr, C_ptr, table_ptr, cb_ptr, L, N, n_chunks, Q, G, stride_B_b, stride_B_l,
    VARLEN: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid (n_chunks, batch * G). B, C: (B, L, G, N) (the same strides); cb: (B, n_chunks, G, BLOCK_Q, BLOCK_Q)
    fp32, C_i · B_j of chunk c's tokens i, j (products in the dot dtype DT, fp32 sums)."""
    c = tl.program_id(0)
    b = tl.program_id(1) // G
    grp = tl.program_id(1) % G
    b64 = b.to(tl.int64)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_n = tl.arange(0, BLOCK_N)
    start, end, _, _, _ = chunk_bounds(table_ptr, b, c, L, n_chunks, Q, VARLEN)
    t = start + offs_q
    mask = (t < end)[:, None] & (offs_n < N)[None, :]
    rows = b64 * stride_B_b + t[:, None] * stride_B_l + grp * N + offs_n[None, :]
    Bv = tl.load(B_ptr + rows, mask=mask, other=0.0).to(DT)
    Cv = tl.load(C_ptr + rows, mask=mask, other=0.0).to(DT)
    cb = tl.dot(Cv, tl.trans(Bv), input_precision=PREC)
    at = ((b64 * n_chunks + c) * G + grp) * BLOCK_Q * BLOCK_Q + offs_q[:, None] * BLOCK_Q + offs_q[None, :]
    tl.store(cb_ptr + at, cb)
