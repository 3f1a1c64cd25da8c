"""Selective scan backward in Triton, last launch: the gradients the main kernel leaves as partial sums.

``selective_scan_bwd_kernel`` adds the channel sums of ∂B and ∂C into one float32 buffer (2, B, L, G, N)
and writes ∂A, ∂D and ∂(Δ bias) once per (batch row, segment). One launch turns them into the returned
gradients: ∂B and ∂C cast to their inputs' dtypes (two tensors), and the partial sums of the others added
in a fixed order (deterministic). Where it replaced two casts and three reductions by PyTorch (five
launches), see docs/kernels_gpu_notes_scan.md, twenty-seventh session.
"""

import triton
import triton.language as tl


@triton.jit
def _cast_block(src_ptr, dst_ptr, start, M, BLOCK: tl.constexpr):
    offs = start + tl.arange(0, BLOCK).to(tl.int64)
    m = offs < M
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=m).to(dst_ptr.dtype.element_ty), mask=m)


@triton.jit
def _sum_rows(src_ptr, dst_ptr, start, width, rows, BLOCK: tl.constexpr):
    """dst[start : start + BLOCK] = Σ_r src[r, start : start + BLOCK] for src (rows, width) contiguous."""
    offs = start + tl.arange(0, BLOCK)
    m = offs < width
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    row = src_ptr + offs
    for _ in range(0, rows):
        acc += tl.load(row, mask=m, other=0.0)
        row += width  # (pointer arithmetic: 64-bit)
    tl.store(dst_ptr + offs, acc.to(dst_ptr.dtype.element_ty), mask=m)


@triton.jit
def selective_scan_bwd_sums_kernel(
    dbc_ptr, dB_ptr, dC_ptr, dAp_ptr, dA_ptr, dDp_ptr, dD_ptr, dbp_ptr, dbias_ptr,
    M, DN, DIM, ROWS, n_cast, n_a, n_d,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Grid (2 n_cast + n_a + n_d (HAS_D) + n_d (HAS_BIAS),): programs in that order.

    dbc: (2, M) float32, ∂B's sums then ∂C's; dB, dC: M elements each, in their own dtypes (n_cast =
    cdiv(M, BLOCK) programs each). dAp: (ROWS, DN) float32 partials -> dA (DN,) (n_a = cdiv(DN, BLOCK_R));
    dDp, dbp: (ROWS, DIM) -> dD, dbias (DIM,) (n_d = cdiv(DIM, BLOCK_R) each, where present).
    """
    pid = tl.program_id(0)
    if pid < n_cast:
        _cast_block(dbc_ptr, dB_ptr, pid.to(tl.int64) * BLOCK, M, BLOCK)
    elif pid < 2 * n_cast:
        _cast_block(dbc_ptr + M, dC_ptr, (pid - n_cast).to(tl.int64) * BLOCK, M, BLOCK)
    elif pid < 2 * n_cast + n_a:
        _sum_rows(dAp_ptr, dA_ptr, (pid - 2 * n_cast) * BLOCK_R, DN, ROWS, BLOCK_R)
    else:
        p = pid - 2 * n_cast - n_a
        if HAS_D:
            if p < n_d:
                _sum_rows(dDp_ptr, dD_ptr, p * BLOCK_R, DIM, ROWS, BLOCK_R)
            p -= n_d
        if HAS_BIAS:
            if p >= 0:
                _sum_rows(dbp_ptr, dbias_ptr, p * BLOCK_R, DIM, ROWS, BLOCK_R)
