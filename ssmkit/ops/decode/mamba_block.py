"""Fused decode step of a Mamba block on the CPU: the whole block for one token in one C call
(``mamba_block_cpu.c``).

At batch 1 the PyTorch step of a Mamba block issues ~40 small tensor ops around its four matrix-vector
products; their per-op cost, not the weights, set the decode rate on a 2-core CPU (``BENCHMARKS.md``). The C
call computes what ``Block.step_pending`` computes for a Mamba mixer without a StateNorm or an MLP: the
residual add, RMSNorm, in_proj, the conv step with silu, x_proj, dt_proj, the scan step with D and the
silu(z) gate, out_proj, rounding each intermediate to the activations' dtype where the PyTorch step does.
It has no backward; ``models.backbone.Block`` takes it only without autograd (``ssmkit.layers.mamba``).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from .block_library import TYPE_CODES, BlockLibrary, pointer, struct_fields

MAX_STATE = 1024  # d_state the scan step's buffers hold


class BlockParams(ctypes.Structure):
    """Mirror of ``mb_params`` in mamba_block_cpu.c (pointers, int64 sizes, eps)."""

    _fields_ = struct_fields(
        "res_in pend res_out out norm_w w_in b_in conv_w conv_b conv_in conv_out w_x w_dt dt_b A Dv ssm_in ssm_out "
        "w_out b_out", "d_model d_inner d_state dt_rank d_conv res_type act_type nthreads", "eps",
    )  # fmt: skip


LIBRARY = BlockLibrary(
    "mamba_block_cpu", ("mamba_block_cpu.c", "block_cpu.h", "../linear/gemv_cpu.c", "../scan/step_cpu.c",
                        "../bf16_cpu.h"), BlockParams, "mamba_block_step", "mb_params_size",
)  # fmt: skip


def mamba_block_available() -> bool:
    """Whether the fused step is (or can be) built and loaded here."""
    return LIBRARY.available()


def mamba_block_params(
    norm_weight: torch.Tensor, eps: float, in_w: torch.Tensor, in_b: Optional[torch.Tensor], conv_w: torch.Tensor,
    conv_b: Optional[torch.Tensor], x_w: torch.Tensor, dt_w: torch.Tensor, dt_b: torch.Tensor, A: torch.Tensor,
    D: torch.Tensor, out_w: torch.Tensor, out_b: Optional[torch.Tensor],
) -> BlockParams:  # fmt: skip
    """The static part of a Mamba block's call, for a caller that has checked the layout (``layers.mamba``) and
    keeps these tensors alive while it uses the result: the projections' weights (and biases, or None)
    contiguous in the activations' dtype (float32 or bfloat16); norm_weight (d_model,), conv_w (d_inner, K),
    conv_b, dt_b (d_inner,), A (d_inner, N), D (d_inner,) float32 and contiguous."""
    d_inner, N = A.shape
    return BlockParams(*map(pointer, (None, None, None, None, norm_weight, in_w, in_b, conv_w, conv_b, None, None, x_w,
                                      dt_w, dt_b, A, D, None, None, out_w, out_b)),
                       norm_weight.shape[0], d_inner, N, dt_w.shape[1], conv_w.shape[1], 0, TYPE_CODES[in_w.dtype], 1,
                       float(eps))  # fmt: skip


def mamba_block_step_cpu(params: BlockParams, residual: torch.Tensor, pending: Optional[torch.Tensor],
                         conv_state: torch.Tensor, ssm_state: torch.Tensor):  # fmt: skip
    """One token of a Mamba block (``params`` from ``mamba_block_params``): residual (1, d_model) float32 or the
    activations' dtype; pending (1, d_model) in the activations' dtype or None; conv_state (1, K-1, d_inner) in
    the activations' dtype, ssm_state (1, d_inner, N) float32; all contiguous.
    Returns (residual + pending, the block's output (1, d_model), new conv state, new ssm state)."""
    return LIBRARY.run_step(params, residual, pending, conv_state, ssm_state, "Mamba block step")


__all__ = ["mamba_block_params", "mamba_block_step_cpu", "mamba_block_available", "MAX_STATE", "LIBRARY"]
