"""Gated RMSNorm, the "triton" backend: custom ops around the kernels.

    gated_rms_norm_triton(y, weight, z, eps, group_size, norm_before_gate) -> out (..., D)

Same contract as ``gated_rms_norm.py``. The inputs are viewed as (M, D) rows
(any row stride; a copy only when the channel stride is not 1). The forward
kernel writes ``out`` and the per-(row, group) rstd in float32; the backward
kernel recomputes the gate and x̂ from y, z and rstd and writes dy, dz and
per-program partial sums of dweight, summed afterwards in a fixed order
(deterministic, no atomics). Both are ``torch.library`` custom ops with a fake
implementation and an autograd formula, so ``torch.compile(fullgraph=True)``
traces through them; outside compilation, plain tensors take the same functions
through a plain autograd.Function (``EAGER_FUNCTION``), without the ops' host time.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .._pdl import chain_launch
from .._triton import LAUNCH, TRITON_DTYPES, cdiv, eager_call, eager_function, next_pow2, unit_last
from .gated_rms_norm_triton_kernels import gated_rms_norm_bwd_kernel, gated_rms_norm_fwd_kernel


@dataclass(frozen=True)
class Tiling:
    """How a kernel tiles the (rows, group channels) plane."""

    tile: int  # elements per (BLOCK_M, BLOCK_N) tile
    per_thread: int  # tile elements per thread: sets num_warps (at most max_warps)
    max_block: int  # a group of up to this many channels (rounded up to a power of two) is one tile wide
    chunk: int  # larger groups are walked in chunks of this many channels
    max_warps: int = 16
    per_sm: int = 4  # backward: programs per SM (each walks a range of rows)
    ahead: bool = False  # backward, groups of one tile: load each tile while the one before is summed


# The backward keeps about twice as many values live per element as the forward and walks groups
# wider than 4096 channels in chunks. Its tiles: on the H200 (benchmarks/gpu_norm.py tiling sweep,
# 65536 rows, bf16, fwd+bwd) 8192-element tiles at 16 per thread beat 4096 at 8 per thread:
# 1.28 vs 1.36 ms at groups of 4096, 2.48 vs 3.55 ms at groups of 512 (ptxas: a few dozen bytes of
# spills with a gate at 4096, which cost less than the halved parallelism per program).
FWD_TILING = Tiling(tile=8192, per_thread=16, max_block=8192, chunk=2048)
BWD_TILING = Tiling(tile=8192, per_thread=16, max_block=4096, chunk=1024)
# Groups of 256 to 1024 channels (rounded up to a power of two) take backward programs of 4 warps, 32 elements
# per thread: several programs per SM, whose loads, row sums and stores overlap one another's. H200, 65536 rows,
# bf16, fwd+bwd ms (``gpu_norm.py --sweep-groups 64 256 1024 2048`` and the sweep of ``gpu_norm.py``), the
# default against these: groups of 256 2.04 -> 1.39, 512 2.37 -> 1.37, 1024 2.19 -> 1.21, 2048 1.83 -> 1.19
# (2048 has since moved to the wide groups' tiling, below); at 64 (1.75 against 1.88) the default stays.
BWD_TILING_NARROW = Tiling(tile=4096, per_thread=32, max_block=4096, chunk=1024)
NARROW_GROUPS = (256, 1024)
# Groups of 2048 and 4096 channels (the Mamba-2 layer's at d_model 2048 and 1024, one group): 8 warps, 32 elements
# per thread, about 8 programs per SM, each tile's loads issued while the tile before is summed (``ahead``).
# H200, 65536 rows, bf16, z and dz slices of wider rows as in the layer, backward kernel ms (``gpu_norm_versions.py``:
# the commit before and this one in alternating processes, two rounds, then ``--tilings``): groups of 4096
# 0.8086-0.8087 -> 0.7017-0.7019, of 2048 0.816 -> 0.714. The same tiling without ``ahead`` 0.973 / 1.015; 16 per
# thread at 8 per SM with ``ahead`` 0.802 / 0.811; 16 per SM 0.709 / 0.706.
BWD_TILING_WIDE = Tiling(tile=8192, per_thread=32, max_block=4096, chunk=1024, per_sm=8, ahead=True)
WIDE_GROUPS = (2048, 4096)
# The gate's sigmoid from the GPU's approximate 2^x and 1/x (``ops/scan/triton_common._sigmoid``; not in the
# interpreter).
FAST_SIGMOID = True


def _plan(group_size: int, t: Tiling) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, NUM_CHUNKS, num_warps) for groups of ``group_size`` channels."""
    bn = next_pow2(group_size)
    chunks = 1
    if bn > t.max_block:
        bn, chunks = t.chunk, cdiv(group_size, t.chunk)
    bm = max(1, t.tile // bn)
    return bm, bn, chunks, max(1, min(t.max_warps, bm * bn // (32 * t.per_thread)))


def bwd_tiling(group_size: int) -> Tiling:
    """The backward's tiling for groups of ``group_size`` channels (by their power-of-two width)."""
    width = next_pow2(group_size)
    if NARROW_GROUPS[0] <= width <= NARROW_GROUPS[1]:
        return BWD_TILING_NARROW
    if WIDE_GROUPS[0] <= width <= WIDE_GROUPS[1]:
        return BWD_TILING_WIDE
    return BWD_TILING


def norm_fwd(y: Tensor, z: Optional[Tensor], weight: Tensor, eps: float, group_size: int,
             norm_before_gate: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """y, z: (M, D) -> out (M, D) in y's dtype, rstd (M, D / group_size) float32 (the forward op's function,
    also called directly by fused layer code)."""
    y, z = unit_last(y), unit_last(z)
    M, D = y.shape
    ng = D // group_size
    out = torch.empty((M, D), dtype=y.dtype, device=y.device)
    rstd = torch.empty((M, ng), dtype=torch.float32, device=y.device)
    if M == 0:
        return out, rstd
    bm, bn, chunks, warps = _plan(group_size, FWD_TILING)
    zz = z if z is not None else y
    gated_rms_norm_fwd_kernel[(cdiv(M, bm), ng)](
        y, zz, weight.contiguous(), out, rstd, M, D, group_size, y.stride(0), zz.stride(0), eps,
        BLOCK_M=bm, BLOCK_N=bn, NUM_CHUNKS=chunks, HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate,
        FAST=FAST_SIGMOID and y.is_cuda, num_warps=warps, **chain_launch(y.device), **LAUNCH,
    )  # fmt: skip
    return out, rstd


_fwd_op = torch.library.custom_op("ssmkit::gated_rms_norm_fwd", norm_fwd, mutates_args=())


@_fwd_op.register_fake
def _(y, z, weight, eps, group_size, norm_before_gate):
    M, D = y.shape
    return y.new_empty((M, D)), y.new_empty((M, D // group_size), dtype=torch.float32)


def norm_bwd(dout: Tensor, y: Tensor, z: Optional[Tensor], weight: Tensor, rstd: Tensor, group_size: int,
             norm_before_gate: bool, dz_out: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(dy (M, D), dz (M, D) or empty when z is None, dweight (D,)) in the dtypes of y, z, weight (the
    backward op's function). ``dz_out``: an (M, D) tensor of z's dtype with unit channel stride that dz is
    written into (and returned), e.g. a slice of a larger gradient."""
    dout, y, z = unit_last(dout), unit_last(y), unit_last(z)
    M, D = y.shape
    ng = D // group_size
    dy = torch.empty((M, D), dtype=y.dtype, device=y.device)
    if z is None:
        dz = y.new_empty(0)
    else:
        dz = dz_out if dz_out is not None else torch.empty((M, D), dtype=z.dtype, device=z.device)
    if M == 0:
        return dy, dz, torch.zeros_like(weight)
    tiling = bwd_tiling(group_size)
    bm, bn, chunks, warps = _plan(group_size, tiling)
    sms = torch.cuda.get_device_properties(y.device).multi_processor_count if y.is_cuda else 2
    tiles = cdiv(M, bm)
    n_split = max(1, min(tiles, cdiv(tiling.per_sm * sms, ng)))
    rows_per_prog = cdiv(tiles, n_split) * bm
    n_split = cdiv(M, rows_per_prog)
    dw_part = torch.empty((n_split, D), dtype=torch.float32, device=y.device)
    zz = z if z is not None else y
    gated_rms_norm_bwd_kernel[(n_split, ng)](
        dout, y, zz, weight.contiguous(), rstd.contiguous(), dy, dz if z is not None else dy, dw_part,
        M, D, group_size, rows_per_prog, dout.stride(0), y.stride(0), zz.stride(0), dz.stride(0) if z is not None else D,
        BLOCK_M=bm, BLOCK_N=bn, NUM_CHUNKS=chunks, HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate,
        FAST=FAST_SIGMOID and y.is_cuda, AHEAD=tiling.ahead and chunks == 1, num_warps=warps, **LAUNCH,
    )  # fmt: skip
    return dy, dz, dw_part.sum(0).to(weight.dtype)


def _bwd_op_fn(dout: Tensor, y: Tensor, z: Optional[Tensor], weight: Tensor, rstd: Tensor, group_size: int,
               norm_before_gate: bool) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(dy (M, D), dz (M, D) or empty when z is None, dweight (D,)) in the dtypes of y, z, weight."""
    return norm_bwd(dout, y, z, weight, rstd, group_size, norm_before_gate)


_bwd_op = torch.library.custom_op("ssmkit::gated_rms_norm_bwd", _bwd_op_fn, mutates_args=())


@_bwd_op.register_fake
def _(dout, y, z, weight, rstd, group_size, norm_before_gate):
    dz = z.new_empty(z.shape) if z is not None else y.new_empty(0)
    return y.new_empty(y.shape), dz, weight.new_empty(weight.shape)


def _setup(ctx, inputs, output):
    y, z, weight, eps, group_size, norm_before_gate = inputs
    ctx.save_for_backward(y, z, weight, output[1])
    ctx.group_size, ctx.norm_before_gate = group_size, norm_before_gate


def _run_backward(ctx, dout, bwd):
    """The forward's input gradients, by ``bwd`` (the backward op or its function); None for absent inputs."""
    y, z, weight, rstd = ctx.saved_tensors
    dy, dz, dw = bwd(dout, y, z, weight, rstd, ctx.group_size, ctx.norm_before_gate)
    return dy, None if z is None else dz, dw, None, None, None


_fwd_op.register_autograd(lambda ctx, dout, _drstd: _run_backward(ctx, dout, _bwd_op), setup_context=_setup)

# Outside torch.compile, plain tensors run through _NormEager (the same functions without the dispatcher:
# ``ops._triton.eager_function``) rather than the custom ops (False: always the ops).
EAGER_FUNCTION = True
_NormEager = eager_function("_NormEager", norm_fwd, _setup,
                            lambda ctx, dout, _drstd: _run_backward(ctx, dout, norm_bwd))  # fmt: skip


def _check_dtypes(y: Tensor, weight: Tensor, z: Optional[Tensor]) -> None:
    for name, t in (("y", y), ("z", z), ("weight", weight)):
        if t is not None and t.dtype not in TRITON_DTYPES:
            raise TypeError(f"gated_rms_norm (backend 'triton'): argument `{name}` must be float32, float16 or "
                            f"bfloat16, got {str(t.dtype).replace('torch.', '')} (use backend 'torch' or "
                            f"'reference' for float64)")  # fmt: skip


def gated_rms_norm_triton(y, weight, z, eps, group_size, norm_before_gate):
    """The "triton" implementation for ``GATED_RMSNORM_BACKENDS``: out (..., D) in y's dtype, inputs validated."""
    _check_dtypes(y, weight, z)
    D = y.shape[-1]
    y2 = y.reshape(-1, D)  # (M, D), a view where the strides allow
    z2 = z.reshape(-1, D) if z is not None else None  # (M, D)
    fwd = _NormEager.apply if EAGER_FUNCTION and eager_call(y2) else _fwd_op
    out, _ = fwd(y2, z2, weight, eps, group_size, norm_before_gate)
    return out.reshape(y.shape)  # (..., D)
