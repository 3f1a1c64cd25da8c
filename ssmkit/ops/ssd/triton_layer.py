"""The Mamba-2 layer between its two projections, on the Triton kernels, as one autograd Function.

    zxbcdt (B, L, 2 d_inner + 2 G N + H) -> z, xBC, dt
    xBC = silu(causal_conv1d(xBC)) -> x (B, L, H, P), B, C (B, L, G, N)
    y, final = ssd(x, dt, -exp(A_log), B, C, D, dt_bias, dt_softplus=True)
    out = gated_rms_norm(y, z)                                          (B, L, d_inner)

Run as separate ops, autograd joins the gradients of the two splits by concatenation: d(x, B, C)
after the SSD backward, and d(z, xBC, dt) after the conv backward. At one 64K-token sequence with
d_model 2048 those two copies took 0.87 ms of a 29 ms layer forward+backward (H200). Here the
backward writes every gradient straight into its slice of one d(zxbcdt) buffer: the SSD kernel
writes dx, and the head sums dB and dC, into the slices of d(xBC); the gated-norm kernel writes dz
and the conv kernel d(xBC) into theirs. The kernels and launch plans are the ops' own
(``conv_fwd`` / ``conv_bwd``, the SSD op's ``_fwd_impl`` / ``bwd_grads``, ``norm_fwd`` / ``norm_bwd``),
so the results equal those of the separate ops. Calls skip the ops' dispatcher, like ``_SSDEager``.

``Mamba2`` takes this path in eager mode for plain tensors when its three ops resolve to "triton",
with the gated RMSNorm, no mask, no initial state and the default Δ limits; otherwise (and under
``torch.compile``, which traces the custom ops) it runs the ops one by one.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..conv.causal_conv1d_triton import conv_bwd, conv_fwd
from ..norm.gated_rms_norm_triton import norm_bwd, norm_fwd
from . import triton_launch
from .triton import _fwd_impl, bwd_grads, grad_coming

Tensor = torch.Tensor


def _split(zxbcdt: Tensor, d_inner: int, H: int) -> tuple[Tensor, Tensor, Tensor]:
    """z (B, L, d_inner), xBC (B, L, conv_dim), dt (B, L, H): views."""
    conv_dim = zxbcdt.shape[-1] - d_inner - H
    return zxbcdt.split([d_inner, conv_dim, H], dim=-1)


def _split_xbc(xBC: Tensor, d_inner: int, P: int, G: int) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, L, H, P), B, C (B, L, G, N): views."""
    b, L, conv_dim = xBC.shape
    GN = (conv_dim - d_inner) // 2
    xs, Bm, Cm = xBC.split([d_inner, GN, GN], dim=-1)
    return xs.unflatten(-1, (d_inner // P, P)), Bm.unflatten(-1, (G, GN // G)), Cm.unflatten(-1, (G, GN // G))


class _Mamba2Inner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, shape, options):
        d_inner, P, G, H = shape
        chunk_size, eps, group_size, norm_before_gate, keep_states, fwd_span, grad = options
        z, xBC_in, dt = _split(zxbcdt, d_inner, H)
        xBC = conv_fwd(xBC_in, conv_weight, conv_bias, None, True)  # (B, L, conv_dim), contiguous
        xs, Bm, Cm = _split_xbc(xBC, d_inner, P, G)
        A = -torch.exp(A_log)
        dt = dt.contiguous()  # (the kernels take dt contiguous; kept for the backward)
        seg_chunks = triton_launch.training_seg_chunks(xs, Bm.shape[-1], chunk_size, None, 0, fwd_span, grad)
        y, final, seg, seg_decay, _, h_kept = _fwd_impl(
            xs, dt, A, Bm, Cm, D, None, dt_bias, None, None, True, chunk_size, seg_chunks, -1, fwd_span, False,
            keep_states,
        )  # (B, L, H, P), (B, H, P, N)
        M = y.shape[0] * y.shape[1]
        out, rstd = norm_fwd(y.view(M, d_inner), z.reshape(M, d_inner), norm_weight, eps, group_size, norm_before_gate)
        ctx.save_for_backward(zxbcdt, xBC, dt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, y, rstd, seg,
                              seg_decay, h_kept)  # fmt: skip
        ctx.shape, ctx.options, ctx.seg_chunks = shape, options, seg_chunks
        ctx.set_materialize_grads(False)
        return out.view(*y.shape[:2], d_inner), final

    @staticmethod
    def backward(ctx, dout, dfinal):
        zxbcdt, xBC, dt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, y, rstd, seg, seg_decay, h_kept = \
            ctx.saved_tensors
        d_inner, P, G, H = ctx.shape
        chunk_size, eps, group_size, norm_before_gate, _, fwd_span, _ = ctx.options
        b, L = zxbcdt.shape[:2]
        M = b * L
        z, xBC_in, _ = _split(zxbcdt, d_inner, H)
        dzxbcdt = torch.empty(zxbcdt.shape, dtype=zxbcdt.dtype, device=zxbcdt.device)  # every slice written below
        dz, dxBC_in, ddt_slot = _split(dzxbcdt, d_inner, H)
        if dout is None:
            dout = torch.zeros(b, L, d_inner, dtype=y.dtype, device=y.device)
        dy, _, dnorm = norm_bwd(dout.reshape(M, d_inner), y.view(M, d_inner), z.reshape(M, d_inner), norm_weight,
                                rstd, group_size, norm_before_gate, dz_out=dz.view(M, d_inner))  # fmt: skip

        xs, Bm, Cm = _split_xbc(xBC, d_inner, P, G)
        dxBC = torch.empty_like(xBC)  # (B, L, conv_dim): dx, dB, dC in their slices
        dxs, dBm, dCm = _split_xbc(dxBC, d_inner, P, G)
        A = -torch.exp(A_log)
        _, ddt, dA, _, _, dD, _, ddt_bias, _ = bwd_grads(
            dy.view(xs.shape), dfinal, xs, dt, A, Bm, Cm, D, None, dt_bias, None, None, seg, seg_decay, None, h_kept,
            True, chunk_size, ctx.seg_chunks, -1, fwd_span, dx_out=dxs, dB_out=dBm, dC_out=dCm,
        )  # fmt: skip
        ddt_slot.copy_(ddt)
        _, dconv_w, dconv_b, _ = conv_bwd(dxBC, xBC_in, conv_weight, conv_bias, None, True, dx_out=dxBC_in)
        dA_log = (dA * A).to(A_log.dtype)  # A = -exp(A_log)
        return (dzxbcdt, dconv_w, dconv_b if conv_bias is not None else None, ddt_bias.to(dt_bias.dtype),
                dA_log, dD.to(D.dtype), dnorm, None, None)  # fmt: skip


def mamba2_inner_triton(
    zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], dt_bias: Tensor, A_log: Tensor, D: Tensor,
    norm_weight: Tensor, *, headdim: int, ngroups: int, chunk_size: int, eps: float, group_size: int,
    norm_before_gate: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Mamba-2 between its projections (module docstring): zxbcdt (B, L, 2 d_inner + 2 G N + H) ->
    (out (B, L, d_inner), final SSM state (B, H, P, N) fp32). conv_weight (conv_dim, K); dt_bias,
    A_log, D (H,) and norm_weight (d_inner,). Inputs are assumed checked by the layer."""
    H = A_log.shape[0]
    d_inner = H * headdim
    grad = grad_coming(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight)
    keep_states = triton_launch.KEEP_STATES and grad
    fwd_span = triton_launch.forward_span(zxbcdt, -1, grad)  # (the SSD's plan; the backward takes the same)
    return _Mamba2Inner.apply(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight,
                              (d_inner, headdim, ngroups, H), (chunk_size, float(eps), group_size, norm_before_gate,
                                                               keep_states, fwd_span, grad))  # fmt: skip


__all__ = ["mamba2_inner_triton"]
