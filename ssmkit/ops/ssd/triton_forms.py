"""Three SSD kernel expressions in the form each Triton version compiles.

Compiled offline for every GPU generation with Triton 3.0 to 3.9
(``benchmarks/triton_versions.py``), two compiler failures depend on how an
expression is written, not on what it computes:

- Triton 3.0-3.2 (torch 2.4-2.6) abort the whole process ("Failed to emit
  transfer from register to shared") where a Hopper wgmma takes a transposed
  register tile as its first operand: the walking scan's state update
  B^T (w x) and the trace <g, h> as a (P, P) product. They also crash on a
  whole-tile ``tl.sum`` (a reshape) at some tiles, and on the 16-bit fused
  backward at 8 warps (chunks over 32). With those versions
  (:data:`OLD_TRITON_FORMS`) the kernels load B^T from memory as its own
  tile, take <g, h> elementwise and sum axis by axis, and the plan
  (``triton_launch.make_plan``) gives the backward 4 warps.
- Triton 3.6-3.7 (torch 2.10-2.11) fail for Blackwell's sm_100 in their
  tensor-memory layout pass ("parent layout must have at least rank >= 2")
  where a vector made by reductions of tensor-core products is reduced again.
  On GPUs with tensor memory (:func:`tensor_memory_sums`, the kernels'
  ``TMEM_SUMS``) those sums are whole-tile sums of a 2-D tile, which Triton
  3.3-3.9 compile there; elsewhere they stay sums axis by axis (on the H200
  the whole-tile form took ~1% longer, forward+backward).

``SSMKIT_SSD_OLD_TRITON_FORMS=1`` takes the older forms with any Triton (how
the tests run them on a GPU whose Triton is newer).
"""

import os

import triton
import triton.language as tl

from .._triton import triton_version

OLD_TRITON_FORMS = tl.constexpr(triton_version() < (3, 3) or os.environ.get("SSMKIT_SSD_OLD_TRITON_FORMS") == "1")


def tensor_memory_sums(major: int) -> bool:
    """Whether the backward kernels for a GPU of compute capability ``major`` take the whole-tile sums
    (``TMEM_SUMS``): the generations with tensor memory, datacenter Blackwell (10.x) and Thor (11.x)."""
    return major in (10, 11)


@triton.jit
def vector_sum(v, TMEM_SUMS: tl.constexpr):
    """Σ_i v_i of a 1-D tile, as a scalar."""
    if TMEM_SUMS and not OLD_TRITON_FORMS:
        total = tl.sum(v[:, None])
    else:
        total = tl.sum(v, axis=0)
    return total


@triton.jit
def trace_of_product(gd, h_in, offs_p, PREC: tl.constexpr, TMEM_SUMS: tl.constexpr):
    """<g, h> = Σ g ∘ h of two (N, P) tiles in the dot dtype, in fp32. From Triton 3.3 on, as the diagonal of
    the (P, P) product g^T h on tensor cores from the operands the kernel's other products already staged (an
    elementwise product needs both tiles in one register layout: more instructions)."""
    if OLD_TRITON_FORMS:
        total = tl.sum(tl.sum(gd.to(tl.float32) * h_in.to(tl.float32), axis=1), axis=0)
    else:
        gTh = tl.dot(tl.trans(gd), h_in, input_precision=PREC)
        on_diagonal = tl.where(offs_p[:, None] == offs_p[None, :], gTh, 0.0)
        if TMEM_SUMS:
            total = tl.sum(on_diagonal)
        else:
            total = tl.sum(tl.sum(on_diagonal, axis=1), axis=0)
    return total


@triton.jit
def inputs_to_state(Bv, xs, BT_ptrs, BT_mask, DT: tl.constexpr, PREC: tl.constexpr):
    """B^T xs, (BLOCK_N, BLOCK_P) in fp32, of a chunk's B (Q, BLOCK_N) as loaded and its weighted inputs xs
    (Q, BLOCK_P) in the dot dtype; with :data:`OLD_TRITON_FORMS`, B^T is loaded again as an (N, Q) tile from
    ``BT_ptrs`` (an L1 / L2 hit) instead of transposed in registers."""
    if OLD_TRITON_FORMS:
        BT = tl.load(BT_ptrs, mask=BT_mask, other=0.0).to(DT)
        out = tl.dot(BT, xs, input_precision=PREC)
    else:
        out = tl.dot(tl.trans(Bv), xs, input_precision=PREC)
    return out
