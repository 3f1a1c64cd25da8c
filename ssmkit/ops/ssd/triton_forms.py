"""Three SSD kernel expressions in the form each Triton version compiles.

Compiled offline for every GPU generation with Triton 3.0 to 3.9
(``benchmarks/triton_versions.py``), two compiler failures depend on how an
expression is written, not on what it computes:

- Triton 3.0-3.2 (torch 2.4-2.6) abort the whole process ("Failed to emit
  transfer from register to shared") where a Hopper wgmma takes a transposed
  register tile as its first operand: the walking scan's state update
  B^T (w x) and the trace <g, h> as a (P, P) product. They also crash on a
  whole-tile ``tl.sum`` (a reshape) at some tiles, and on the 16-bit fused
  backward at 8 warps (chunks over 32). In those forms (:data:`OLD_TRITON`)
  the kernels load B^T from memory as its own tile, take <g, h> elementwise
  and sum axis by axis, and the plan (``triton_launch.make_plan``) gives the
  backward 4 warps. On the H200 they cost ~11% of forward+backward.
- Triton 3.6-3.7 (torch 2.10-2.11) fail for Blackwell's sm_100 in their
  tensor-memory layout pass ("parent layout must have at least rank >= 2")
  where a vector made by reductions of tensor-core products is reduced again.
  On GPUs with tensor memory (:data:`TENSOR_MEMORY`) those sums are
  whole-tile sums of a 2-D tile, which Triton 3.3-3.9 compile there;
  elsewhere they stay sums axis by axis (on the H200 the whole-tile form
  took ~1% longer, forward+backward).

The plan (``triton_launch.make_plan``) takes :func:`kernel_forms` of the GPU as ``Plan.forms``, and the
launchers pass it as the kernels' ``FORMS``.
``SSMKIT_SSD_OLD_TRITON_FORMS=1`` takes the older forms on any GPU and with
any Triton (how they were timed and the SSD tests run with them on the H200,
whose Triton is newer).
"""

import functools
import os

import triton
import triton.language as tl

from .._triton import triton_version

PLAIN, OLD_TRITON, TENSOR_MEMORY = 0, 1, 2


def kernel_forms(major: int) -> int:
    """The kernels' ``FORMS`` for a GPU of compute capability ``major`` with the installed Triton:
    :data:`OLD_TRITON` on Hopper with Triton 3.0-3.2, :data:`TENSOR_MEMORY` on datacenter Blackwell (10.x) and
    Thor (11.x), else :data:`PLAIN`."""
    return _forms(major, os.environ.get("SSMKIT_SSD_OLD_TRITON_FORMS") == "1")


@functools.lru_cache(maxsize=None)
def _forms(major: int, old_forced: bool) -> int:
    if old_forced or (major == 9 and triton_version() < (3, 3)):
        return OLD_TRITON
    return TENSOR_MEMORY if major in (10, 11) else PLAIN


@triton.jit
def vector_sum(v, FORMS: tl.constexpr):
    """Σ_i v_i of a 1-D tile, as a scalar."""
    if FORMS == 2:  # (TENSOR_MEMORY)
        total = tl.sum(v[:, None])
    else:
        total = tl.sum(v, axis=0)
    return total


@triton.jit
def trace_of_product(gd, h_in, offs_p, PREC: tl.constexpr, FORMS: tl.constexpr):
    """<g, h> = Σ g ∘ h of two (N, P) tiles in the dot dtype, in fp32: as the diagonal of the (P, P) product
    g^T h on tensor cores from the operands the kernel's other products already staged (an elementwise product
    needs both tiles in one register layout: more instructions), elementwise in the :data:`OLD_TRITON` forms."""
    if FORMS == 1:  # (OLD_TRITON)
        total = tl.sum(tl.sum(gd.to(tl.float32) * h_in.to(tl.float32), axis=1), axis=0)
    else:
        gTh = tl.dot(tl.trans(gd), h_in, input_precision=PREC)
        on_diagonal = tl.where(offs_p[:, None] == offs_p[None, :], gTh, 0.0)
        if FORMS == 2:  # (TENSOR_MEMORY)
            total = tl.sum(on_diagonal)
        else:
            total = tl.sum(tl.sum(on_diagonal, axis=1), axis=0)
    return total


@triton.jit
def inputs_to_state(Bv, xs, BT_ptrs, BT_mask, DT: tl.constexpr, PREC: tl.constexpr, FORMS: tl.constexpr):
    """B^T xs, (BLOCK_N, BLOCK_P) in fp32, of a chunk's B (Q, BLOCK_N) as loaded and its weighted inputs xs
    (Q, BLOCK_P) in the dot dtype; for :data:`OLD_TRITON`, B^T is loaded again as an (N, Q) tile from
    ``BT_ptrs`` (an L1 / L2 hit) instead of transposed in registers."""
    if FORMS == 1:  # (OLD_TRITON)
        BT = tl.load(BT_ptrs, mask=BT_mask, other=0.0).to(DT)
        out = tl.dot(BT, xs, input_precision=PREC)
    else:
        out = tl.dot(tl.trans(Bv), xs, input_precision=PREC)
    return out
