"""Fused decode step of a Mamba-2 block on the CPU: the whole block for one token in one C call
(``mamba2_block_cpu.c``).

At batch 1 the PyTorch step of a Mamba-2 block issues ~35 small tensor ops around its two matrix-vector
products and its SSD step; on a 2-core CPU their per-op cost took more than half of a token's time
(``BENCHMARKS.md``). The C call computes what ``Block.step_pending`` computes for a Mamba-2 mixer without an
MLP: the residual add, RMSNorm, in_proj, the conv step with silu over the (x, B, C) channels, the SSD step
with D (its heads over the threads), the gated RMSNorm or the plain silu(z) gate, out_proj, rounding each
intermediate to the activations' dtype where the PyTorch step does. It has no backward;
``models.backbone.Block`` takes it only without autograd (``ssmkit.layers.mamba2``).
"""

from __future__ import annotations

import ctypes
import math
from typing import Optional

import torch

from .block_library import TYPE_CODES, BlockLibrary, pointer, struct_fields


class Mamba2BlockParams(ctypes.Structure):
    """Mirror of ``m2_params`` in mamba2_block_cpu.c (pointers, int64 sizes, doubles)."""

    _fields_ = struct_fields(
        "res_in pend res_out out norm_w w_in b_in conv_w conv_b conv_in conv_out dt_b A Dv ssm_in ssm_out gnorm_w "
        "w_out b_out",
        "d_model d_inner d_state nheads headdim ngroups d_conv norm_group norm_before_gate res_type act_type nthreads",
        "eps gnorm_eps dt_lo dt_hi",
    )  # fmt: skip


LIBRARY = BlockLibrary(
    "mamba2_block_cpu", ("mamba2_block_cpu.c", "block_cpu.h", "../linear/gemv_cpu.c", "../ssd/ssd_step_cpu.c",
                         "../bf16_cpu.h"), Mamba2BlockParams, "mamba2_block_step", "m2_params_size",
)  # fmt: skip


def mamba2_block_available() -> bool:
    """Whether the fused step is (or can be) built and loaded here."""
    return LIBRARY.available()


def mamba2_block_step_cpu(
    residual: torch.Tensor, pending: Optional[torch.Tensor], norm_weight: torch.Tensor, eps: float,
    in_w: torch.Tensor, in_b: Optional[torch.Tensor], conv_w: torch.Tensor, conv_b: Optional[torch.Tensor],
    conv_state: torch.Tensor, dt_b: torch.Tensor, A: torch.Tensor, D: Optional[torch.Tensor],
    ssm_state: torch.Tensor, gnorm: Optional[tuple[torch.Tensor, float, int, bool]], out_w: torch.Tensor,
    out_b: Optional[torch.Tensor], ngroups: int, dt_limit: tuple[float, float] = (0.0, math.inf),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """One token of a Mamba-2 block, for a caller that has checked the layout (``layers.mamba2``):

    residual (1, d_model) float32 or the activations' dtype; pending (1, d_model) or None; the projections'
    weights (and biases, or None) contiguous in the activations' dtype (float32 or bfloat16), in_proj's rows
    (z, x, B, C, dt); norm_weight, conv_w (conv_dim, K), conv_b, dt_b, A, D (H,) float32 and contiguous;
    conv_state (1, K-1, conv_dim) in the activations' dtype, ssm_state (1, H, P, N) float32, both contiguous;
    gnorm: the gated RMSNorm's (float32 weight (d_inner,), eps, group size, norm_before_gate), or None for
    y * silu(z); Δ = softplus(dt + dt_b) clamped to ``dt_limit``.
    Returns (residual + pending, the block's output (1, d_model), new conv state, new ssm state).
    """
    act = in_w.dtype
    d_model, (_, H, P, N), K = residual.shape[1], ssm_state.shape, conv_w.shape[1]
    res_out = torch.empty_like(residual)
    out = torch.empty(1, d_model, dtype=act)
    conv_out, ssm_out = torch.empty_like(conv_state), torch.empty_like(ssm_state)
    g_w, g_eps, g_size, g_before = gnorm if gnorm is not None else (None, 0.0, H * P, False)
    p = Mamba2BlockParams(*map(pointer, (residual, pending, res_out, out, norm_weight, in_w, in_b, conv_w, conv_b,
                                         conv_state, conv_out, dt_b, A, D, ssm_state, ssm_out, g_w, out_w, out_b)),
                          d_model, H * P, N, H, P, ngroups, K, g_size, int(g_before), TYPE_CODES[residual.dtype],
                          TYPE_CODES[act], torch.get_num_threads(), float(eps), float(g_eps), float(dt_limit[0]),
                          float(dt_limit[1]))  # fmt: skip
    LIBRARY.call(p, "Mamba-2 block step")
    return res_out, out, conv_out, ssm_out


__all__ = ["mamba2_block_step_cpu", "mamba2_block_available", "LIBRARY"]
