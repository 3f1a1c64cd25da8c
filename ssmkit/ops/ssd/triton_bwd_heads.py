"""SSD Triton backward, chunks independent: one program per (chunk, group), looping over the group's heads.

The per-(chunk, head) gradients are those of ``triton_scan_bwd.py`` (symbols and formulas there). What
differs is who sums over the heads of a group, which share B and C. There, every (chunk, head)
program writes its own (Q, N) shares of dB and dC and a second pass adds them up (64 heads at one
64K-token sequence of the Mamba-2 layer: 2 GB written and read again). Here one program owns a chunk
and a group and keeps the sums in registers (fp32) while it walks the group's heads:

    dB = (Σ_h M'_h)^T C + Σ_h e_end,h ∘ (x̃_h g_h^T)      dC = (Σ_h M'_h) B + Σ_h e_in,h ∘ (dy_h h_h^T)

so the two (Q, Q) x (Q, N) products of the intra-chunk terms run once per chunk rather than once per
head, and so does C B^T (the B, C tiles are loaded once). dy h^T serves both dC and dy·Y_off
(``Y_OFF_FROM_DC``). With several P blocks, each writes its partial sums (fp32) to be added afterwards.

The plan takes it for fp32 inputs (``triton_launch.HEAD_LOOP``: about 1.5x faster forward+backward on
the H200). For 16-bit inputs it is slower there: what the loop holds across heads (B, C, C B^T and the
sums) makes the 4-warp program spill, and at 8 warps one program fills an SM, with nothing to run while
its warps wait at the barriers of the products.
"""

import triton
import triton.language as tl

from .triton_cumsum import chunk_bounds, chunk_decay, dt_grad, last_of
from .triton_forms import vector_sum
from .triton_scan_bwd import chunk_head_grads


@triton.jit
def _ssd_bwd_heads_kernel(
    x_ptr, dt_ptr, A_ptr, dt_bias_ptr, B_ptr, C_ptr, D_ptr, dy_ptr, hin_ptr, gchunk_ptr, table_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr,
    L, H: tl.constexpr, P: tl.constexpr, N: tl.constexpr, n_chunks, Q: tl.constexpr,
    heads_per_group: tl.constexpr,
    stride_x_b, stride_x_l: tl.constexpr, stride_y_b, stride_y_l: tl.constexpr, stride_dt_b, stride_dt_l: tl.constexpr,
    stride_B_b, stride_B_l: tl.constexpr, stride_dx_b, stride_dx_l: tl.constexpr, stride_o_b, stride_o_l, share_o,
    share_ddt, share_dA,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr,
    VARLEN: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, FORMS: tl.constexpr = 0,
):  # fmt: skip
    """Grid (n_chunks, batch * G, n_pb = cdiv(P, BLOCK_P)); ``FORMS`` as for ``_ssd_bwd_kernel``.

    x, dy, dx, dt, B, C, hin, gchunk as for ``_ssd_bwd_kernel`` with ``G_CHUNKS`` (gchunk: the gradient at
    every chunk's end); ddt: (n_pb, B, L, H) fp32 shares; dA: (n_pb, B * n_chunks, H) fp32 shares; dD:
    (B * n_chunks, H, P) fp32 partial sums; dB, dC: (B, L, G, N) with (G, N) contiguous in a token
    (strides stride_o_*), the P block's partial sums at ``pid_p * share_o`` when n_pb > 1.
    """
    c = tl.program_id(0)
    pid_bg = tl.program_id(1)
    pid_p = tl.program_id(2)
    b = pid_bg // (H // heads_per_group)
    grp = pid_bg % (H // heads_per_group)
    b64 = b.to(tl.int64)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_n = offs_n < N
    mask_np = mask_n[:, None] & mask_p[None, :]
    offs_np = offs_n[:, None] * P + offs_p[None, :]

    start, end, _, _, _ = chunk_bounds(table_ptr, b, c, L, n_chunks, Q, VARLEN)
    t = start + offs_q
    mask_q = t < end
    mask_qp = mask_q[:, None] & mask_p[None, :]
    mask_qn = mask_q[:, None] & mask_n[None, :]
    bc = b64 * stride_B_b + grp * N + t[:, None] * stride_B_l + offs_n[None, :]
    Bv = tl.load(B_ptr + bc, mask=mask_qn, other=0.0).to(DT)  # (Q, N)
    Cv = tl.load(C_ptr + bc, mask=mask_qn, other=0.0).to(DT)
    CB = tl.dot(Cv, tl.trans(Bv), input_precision=PREC)  # (Q, Q): C_i · B_j, every head of the group
    dB_acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
    dC_acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
    M_sum = tl.zeros((BLOCK_Q, BLOCK_Q), dtype=tl.float32)
    row = b64 * n_chunks + c  # (batch row, chunk) of the per-chunk buffers

    for k in range(0, heads_per_group):
        head = grp * heads_per_group + k
        A = tl.load(A_ptr + head).to(tl.float32)
        bias = 0.0
        if HAS_BIAS:
            bias = tl.load(dt_bias_ptr + head).to(tl.float32)
        raw, delta, acum = chunk_decay(dt_ptr + b64 * stride_dt_b + head, t, mask_q, stride_dt_l, bias, A, SOFTPLUS)
        acum_last = last_of(acum, offs_q, BLOCK_Q)
        io = b64 * stride_x_b + head * P + t[:, None] * stride_x_l + offs_p[None, :]
        yo = b64 * stride_y_b + head * P + t[:, None] * stride_y_l + offs_p[None, :]
        xf = tl.load(x_ptr + io, mask=mask_qp, other=0.0).to(tl.float32)  # (Q, P)
        dyv = tl.load(dy_ptr + yo, mask=mask_qp, other=0.0).to(DT)
        at_chunk = (row * H + head) * P * N + offs_np
        h_in = tl.load(hin_ptr + at_chunk, mask=mask_np, other=0.0).to(DT)  # (N, P)
        gd = tl.load(gchunk_ptr + at_chunk, mask=mask_np, other=0.0).to(DT)

        e_in, e_end, xt, dxt, Mp, CB, dyh, da, ddelta = chunk_head_grads(
            xf, dyv, Bv, Cv, CB, h_in, gd, delta, acum, acum_last, A, mask_q, offs_q, offs_p, True, DT, PREC,
            FORMS=FORMS)
        ddt_share = ddt_ptr + pid_p.to(tl.int64) * share_ddt + b64 * stride_dt_b + head
        tl.store(ddt_share + t * stride_dt_l, dt_grad(ddelta, raw, SOFTPLUS), mask=mask_q)
        tl.store(dA_ptr + pid_p.to(tl.int64) * share_dA + row * H + head, vector_sum(delta * da, FORMS))
        dx = delta[:, None] * dxt
        if HAS_D:
            dyf = dyv.to(tl.float32)
            if D_PER_P:
                Dv = tl.load(D_ptr + head * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
            else:
                Dv = tl.load(D_ptr + head).to(tl.float32)
            dx += dyf * Dv
            tl.store(dD_ptr + (row * H + head) * P + offs_p, tl.sum(dyf * xf, axis=0), mask=mask_p)
        dxo = b64 * stride_dx_b + head * P + t[:, None] * stride_dx_l + offs_p[None, :]
        tl.store(dx_ptr + dxo, dx.to(dx_ptr.dtype.element_ty), mask=mask_qp)

        M_sum += Mp
        dB_acc += e_end[:, None] * tl.dot(xt, tl.trans(gd), input_precision=PREC)
        dC_acc += e_in[:, None] * dyh

    dB = dB_acc + tl.dot(tl.trans(M_sum.to(DT)), Cv, input_precision=PREC)
    dC = dC_acc + tl.dot(M_sum.to(DT), Bv, input_precision=PREC)
    out = pid_p.to(tl.int64) * share_o + b64 * stride_o_b + t[:, None] * stride_o_l + grp * N + offs_n[None, :]
    tl.store(dB_ptr + out, dB.to(dB_ptr.dtype.element_ty), mask=mask_qn)
    tl.store(dC_ptr + out, dC.to(dC_ptr.dtype.element_ty), mask=mask_qn)
