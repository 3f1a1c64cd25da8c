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


def mamba2_block_params(
    norm_weight: torch.Tensor, eps: float, in_w: torch.Tensor, in_b: Optional[torch.Tensor], conv_w: torch.Tensor,
    conv_b: Optional[torch.Tensor], dt_b: torch.Tensor, A: torch.Tensor, D: Optional[torch.Tensor],
    gnorm: Optional[tuple[torch.Tensor, float, int, bool]], out_w: torch.Tensor, out_b: Optional[torch.Tensor],
    headdim: int, d_state: int, ngroups: int, dt_limit: tuple[float, float] = (0.0, math.inf),
) -> Mamba2BlockParams:  # fmt: skip
    """The static part of a Mamba-2 block's call, for a caller that has checked the layout (``layers.mamba2``)
    and keeps these tensors alive while it uses the result: the projections' weights (and biases, or None)
    contiguous in the activations' dtype (float32 or bfloat16), in_proj's rows (z, x, B, C, dt); norm_weight
    (d_model,), conv_w (conv_dim, K), conv_b, dt_b, A, D (H,) float32 and contiguous; gnorm: the gated
    RMSNorm's (float32 weight (d_inner,), eps, group size, norm_before_gate), or None for y * silu(z);
    Δ = softplus(dt + dt_b) clamped to ``dt_limit``."""
    H = A.shape[0]
    g_w, g_eps, g_size, g_before = gnorm if gnorm is not None else (None, 0.0, H * headdim, False)
    return Mamba2BlockParams(*map(pointer, (None, None, None, None, norm_weight, in_w, in_b, conv_w, conv_b, None, None,
                                            dt_b, A, D, None, None, g_w, out_w, out_b)),
                             norm_weight.shape[0], H * headdim, d_state, H, headdim, ngroups, conv_w.shape[1], g_size,
                             int(g_before), 0, TYPE_CODES[in_w.dtype], 1, float(eps), float(g_eps),
                             float(dt_limit[0]), float(dt_limit[1]))  # fmt: skip


def mamba2_block_step_cpu(params: Mamba2BlockParams, residual: torch.Tensor, pending: Optional[torch.Tensor],
                          conv_state: torch.Tensor, ssm_state: torch.Tensor):  # fmt: skip
    """One token of a Mamba-2 block (``params`` from ``mamba2_block_params``): residual (1, d_model) float32 or
    the activations' dtype; pending (1, d_model) in the activations' dtype or None; conv_state (1, K-1,
    conv_dim) in the activations' dtype, ssm_state (1, H, P, N) float32; all contiguous.
    Returns (residual + pending, the block's output (1, d_model), new conv state, new ssm state)."""
    return LIBRARY.run_step(params, residual, pending, conv_state, ssm_state, "Mamba-2 block step")


__all__ = ["mamba2_block_params", "mamba2_block_step_cpu", "mamba2_block_available", "LIBRARY"]
