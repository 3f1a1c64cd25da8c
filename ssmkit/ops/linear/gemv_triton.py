"""One row times a weight matrix in Triton: ``x (M, K) @ W (N, K)^T + b`` for a few rows (decoding).

At batch 1 a projection is a matrix-vector product: it reads the weight once and does two flops per
weight, so its time is the weight's bytes over the memory bandwidth plus a launch. cuBLAS runs these
shapes as GEMM tiles: in a CUDA graph on the H200, 2.4-5.4 µs for the four 0.15-4.7 MB projections
of a 130M-parameter Mamba layer, whose bytes alone need 0.04-1.4 µs. Here each program streams
``BLOCK_N`` rows of W in ``BLOCK_K``-wide tiles (128-bit loads along K, where nn.Linear stores it
contiguous), multiplies them elementwise with x's rows and adds into a float32 tile that is summed
along K once at the end: 1.5-2.8 µs for the same four (``benchmarks/gemv_gpu.py``, PDL off). Its first
four weight tiles are all loaded before x (0.1-0.3 µs less than one tile at a time at those shapes), and
with programmatic dependent launch before the kernel that writes x has finished (``ops/_pdl.py``).
"""

import torch
import triton
import triton.language as tl

from .._pdl import chain_launch, release_dependents, wait_inputs
from .._triton import LAUNCH, cdiv, next_pow2, sm_count, spread_block


@triton.jit
def _tile(p, k0, K, m_r, rk, EVEN_K: tl.constexpr):
    """The (rows, BLOCK_K) tile at column k0 of a row-major matrix whose rows ``m_r`` are real (0 outside)."""
    if EVEN_K:
        return tl.load(p + k0, mask=m_r[:, None], other=0.0)
    else:
        return tl.load(p + k0, mask=m_r[:, None] & (k0 + rk < K)[None, :], other=0.0)


@triton.jit
def _mac(acc, x, w):
    """acc (BLOCK_M, BLOCK_N, BLOCK_K) += x (BLOCK_M, BLOCK_K) * w (BLOCK_N, BLOCK_K), in float32."""
    return acc + x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]


@triton.jit
def gemv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, s_xm, s_wn, s_om,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, AHEAD: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(N, BLOCK_N),): out[m, n] = Σ_k x[m, k] W[n, k] (+ b[n]) for m < M <= BLOCK_M, n in the
    program's block. x (M, K) and W (N, K) with unit stride along K; out (M, N) with unit stride along N, in
    its own dtype; products and sums in float32. ``EVEN_K``: K a multiple of BLOCK_K (no mask along K).
    The first ``AHEAD`` (1-4) weight tiles and the bias are loaded before x, all in flight at once; with
    ``PDL`` before waiting for the kernel that writes x (``ssmkit/ops/_pdl.py``)."""
    if PDL:
        release_dependents()
    pid = tl.program_id(0)
    rm = tl.arange(0, BLOCK_M)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_m, m_n = rm < M, rn < N
    xp = x_ptr + rm[:, None] * s_xm + rk[None, :]
    wp = w_ptr + rn[:, None].to(tl.int64) * s_wn + rk[None, :]
    w0 = _tile(wp, 0, K, m_n, rk, EVEN_K)
    if AHEAD > 1:
        w1 = _tile(wp, BLOCK_K, K, m_n, rk, EVEN_K)
    if AHEAD > 2:
        w2 = _tile(wp, 2 * BLOCK_K, K, m_n, rk, EVEN_K)
    if AHEAD > 3:
        w3 = _tile(wp, 3 * BLOCK_K, K, m_n, rk, EVEN_K)
    if HAS_BIAS:
        bias = tl.load(b_ptr + rn, mask=m_n, other=0.0).to(tl.float32)
    if PDL:
        wait_inputs()
    acc = _mac(tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32), _tile(xp, 0, K, m_m, rk, EVEN_K), w0)
    if AHEAD > 1:
        acc = _mac(acc, _tile(xp, BLOCK_K, K, m_m, rk, EVEN_K), w1)
    if AHEAD > 2:
        acc = _mac(acc, _tile(xp, 2 * BLOCK_K, K, m_m, rk, EVEN_K), w2)
    if AHEAD > 3:
        acc = _mac(acc, _tile(xp, 3 * BLOCK_K, K, m_m, rk, EVEN_K), w3)
    for k0 in range(AHEAD * BLOCK_K, K, BLOCK_K):
        acc = _mac(acc, _tile(xp, k0, K, m_m, rk, EVEN_K), _tile(wp, k0, K, m_n, rk, EVEN_K))
    out = tl.sum(acc, axis=2)  # (BLOCK_M, BLOCK_N)
    if HAS_BIAS:
        out += bias[None, :]
    tl.store(out_ptr + rm[:, None] * s_om + rn[None, :], out.to(out_ptr.dtype.element_ty),
             mask=m_m[:, None] & m_n[None, :])  # fmt: skip


def gemv_tiles(K: int, N: int = 0, min_programs: int = 0) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K) for a reduction of length K: the widest of 512, 256, 128 that divides K (else the
    power of two covering K, at most 512), and rows for a tile of 2048 weights (16 per thread at 4 warps).
    On the H200 at one row (``benchmarks/gemv_gpu.py``): 4 x 512 was best or within 0.1 µs of the best at
    K = 1536 and 4096, 8 x 256 at K = 768. Where N rows in such tiles would give fewer than ``min_programs``
    programs (the SMs: a narrow projection such as x_proj, 80-160 rows), the rows per program halve, down to
    one, and the tile widens along K as far as K reaches, so that more SMs stream the weight."""
    if K % 512 == 0:
        bk = 512
    elif K % 256 == 0:
        bk = 256
    elif K % 128 == 0:
        bk = 128
    else:
        bk = min(512, max(16, next_pow2(K)))
    bn = max(1, 2048 // bk)
    narrow = spread_block(bn, N, 1, min_programs, 1)
    return narrow, max(bk, min(bk * (bn // narrow), next_pow2(K)))


def gemv(x, weight, bias=None):
    """x (M, K) @ weight (N, K)^T (+ bias (N,)) -> (M, N) in x's dtype; x and weight with unit stride along K,
    M <= 16 (the caller checks: ``ssmkit.ops.linear.gemv_applies``)."""
    M, K = x.shape
    N = weight.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    bn, bk = gemv_tiles(K, N, sm_count(x.device))
    gemv_kernel[(cdiv(N, bn),)](
        x, weight, bias if bias is not None else weight, out, M, N, K, x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=next_pow2(M), BLOCK_N=bn, BLOCK_K=bk, EVEN_K=K % bk == 0,
        AHEAD=min(4, cdiv(K, bk)), num_warps=4, **chain_launch(x.device), **LAUNCH,
    )  # fmt: skip
    return out
