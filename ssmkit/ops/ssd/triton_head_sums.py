"""SSD Triton backward: the heads' dB and dC shares added up, both in one launch.

The fused backward (``triton_scan_bwd.py``) runs one program per (chunk, head, P block) and writes
each program's (Q, N) shares of dB and dC; the heads of a group share B and C, so their gradients
are the sums of the shares over the group's heads and P blocks (S = H / G x n_pb shares per token).
At one 64K-token sequence with 64 heads these are 2 x 1.07 GB of bfloat16 to read: the sum is bound
by memory. Here one program adds BLOCK_T tokens' shares, SB at a time, in float32 and in a fixed
order (deterministic), and stores each sum once in its output's dtype, into a tensor or a slice of
a wider one (the fused layer's d(xBC)).
"""

import triton
import triton.language as tl


@triton.jit
def _ssd_head_sums_kernel(
    src_ptr, dB_ptr, dC_ptr, n_tok, L, G, S, half, s_bb, s_bl, s_bg, s_cb, s_cl, s_cg,
    N: tl.constexpr, BLOCK_T: tl.constexpr, SB: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(n_tok, BLOCK_T), 2); axis 1 picks dB (0) or dC (1).

    src: (2, n_tok, S, N) contiguous, dB's shares then dC's (``half`` elements apart), n_tok = rows x L x G
    tokens in (row, l, g) order. dB, dC: (rows, L, G, N) with unit stride along N and strides s_*b, s_*l, s_*g.
    """
    which = tl.program_id(1)
    tok = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BLOCK_T,) int64
    offs_s = tl.arange(0, SB)
    offs_n = tl.arange(0, BLOCK_N)
    m_tn = (tok < n_tok)[:, None] & (offs_n < N)[None, :]
    src = src_ptr + which.to(tl.int64) * half + tok[:, None, None] * (S * N) + offs_n[None, None, :]
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for k in range(0, S, SB):
        s = k + offs_s
        v = tl.load(src + s[None, :, None] * N, mask=m_tn[:, None, :] & (s < S)[None, :, None], other=0.0)
        acc += tl.sum(v.to(tl.float32), axis=1)
    g = tok % G
    row = tok // G // L
    pos = tok // G % L
    if which == 0:
        out = dB_ptr + (row * s_bb + pos * s_bl + g * s_bg)[:, None] + offs_n[None, :]
        tl.store(out, acc.to(dB_ptr.dtype.element_ty), mask=m_tn)
    else:
        out = dC_ptr + (row * s_cb + pos * s_cl + g * s_cg)[:, None] + offs_n[None, :]
        tl.store(out, acc.to(dC_ptr.dtype.element_ty), mask=m_tn)
