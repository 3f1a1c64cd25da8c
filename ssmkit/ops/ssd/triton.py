"""SSD (Mamba-2) on GPU: Triton kernels behind ``torch.library`` custom ops.

    ssd_triton(x, dt, A, B, C, ...)   the "triton" backend of ``ssmkit.ops.ssd``

Symbols as in ``reference.py``: Δ = softplus?(dt + dt_bias), Ā = exp(Δ A),
h_t = Ā_t h_{t-1} + Δ_t x_t B_t^T, y_t = h_t C_t + D x_t, out = y * silu(z).
The chunked algorithm (``chunked.py``, ``docs/ssd.md``) runs in four stages,
one file each, forward and backward: ``triton_cumsum.py`` (Δ and
cumulative log decays, fused into the others), ``triton_states.py`` /
``triton_states_bwd.py`` (chunk states), ``triton_passing.py`` (passing
states between segments of chunks) and ``triton_scan.py`` /
``triton_scan_bwd.py`` (outputs, and every input gradient; for fp32 inputs
the gradients come from ``triton_bwd_heads.py``, one program per chunk and
group of heads); ``triton_launch.py`` chains them.

Two custom ops, ``ssmkit::ssd_fwd`` and ``ssmkit::ssd_bwd``, with fake
(meta) implementations and autograd registered, so the op composes with
``torch.compile(fullgraph=True)``; outside compilation the same functions run
through a plain ``autograd.Function`` (less host time per call). Matmuls run
on tensor cores with fp32 accumulation (fp32 inputs: full-precision
products); the state is fp32.
Packed variable-length sequences (``cu_seqlens``) restart the state at every
sequence boundary and return one final state per sequence.
"""

from typing import Optional

import torch

from .._triton import eager_call, eager_function, f32
from . import triton_launch
from .triton_launch import dot_dtype, keeps_states, make_plan, ssd_bwd, ssd_fwd, varlen_chunk_table

Tensor = torch.Tensor


def _c(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def _rows(t: Tensor) -> Tensor:
    """t with its last two dimensions contiguous (x (B, L, H, P), B/C (B, L, G, N)); the batch and
    token strides may be anything (a view of the Mamba-2 layer's projection is taken as it is).
    dt stays contiguous: the kernels index its gradient's shares with its strides (and it is small)."""
    return t if t.stride(-1) == 1 and (t.shape[-2] == 1 or t.stride(-2) == t.shape[-1]) else t.contiguous()


def grad_coming(*tensors: Optional[Tensor]) -> bool:
    """Whether a backward will follow: autograd on and some input requiring a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _bc(B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """B and C with their last two dimensions contiguous and the same batch / token strides (the
    kernels take one pair of strides for both), copied only when needed."""
    B, C = _rows(B), _rows(C)
    if B.stride()[:2] != C.stride()[:2]:
        B, C = B.contiguous(), C.contiguous()
    return B, C


def _fwd_impl(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    dt_bias: Optional[Tensor], initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor],
    dt_softplus: bool, chunk_size: int, seg_chunks: int, bwd_span: int, fwd_span: int, save_pre: bool,
    keep_states: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Returns y, final states (S, H, P, N) fp32, and residuals for the backward:
    segment states, segment decays, pre-gate output (empty unless ``save_pre``), the state
    entering every chunk (empty unless ``keep_states``)."""
    n_seqs = x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    plan = make_plan(x, B.shape[3], chunk_size, None if cu_seqlens is None else n_seqs, seg_chunks,
                     fwd_span=fwd_span)  # fmt: skip
    table = None if cu_seqlens is None else varlen_chunk_table(cu_seqlens, plan.Q, plan.n_chunks)
    B, C = _bc(B, C)
    return ssd_fwd(_rows(x), dt.contiguous(), f32(A), B, C, f32(D), _c(z), f32(dt_bias), f32(initial_state),
                   table, n_seqs, plan, dt_softplus, save_pre, keep_states)  # fmt: skip


_ssd_fwd_op = torch.library.custom_op("ssmkit::ssd_fwd", _fwd_impl, mutates_args=())


@_ssd_fwd_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, dt_softplus, chunk_size, seg_chunks, bwd_span,
      fwd_span, save_pre, keep_states):  # fmt: skip
    rows, L, H, P = x.shape
    N = B.shape[3]
    n_seqs = rows if cu_seqlens is None else cu_seqlens.shape[0] - 1
    plan = make_plan(x, N, chunk_size, None if cu_seqlens is None else n_seqs, seg_chunks, fwd_span=fwd_span)
    f32 = dict(dtype=torch.float32, device=x.device)
    return (
        x.new_empty(x.shape),  # contiguous, whatever x's strides (as the kernels write it)
        torch.empty(n_seqs, H, P, N, **f32),
        torch.empty(rows, plan.n_segs, H, N, P, **f32),
        torch.empty(rows, plan.n_segs, H, **f32),
        x.new_empty(x.shape) if save_pre else x.new_empty(0),
        x.new_empty(rows, plan.n_chunks, H, N, P, dtype=dot_dtype(x)) if keeps_states(x, N, plan, keep_states)
        else x.new_empty(0),
    )


def bwd_grads(
    dout: Tensor, dfinal: Optional[Tensor], x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor], initial_state: Optional[Tensor],
    cu_seqlens: Optional[Tensor], seg_in: Tensor, seg_decay: Tensor, y_pre: Optional[Tensor], h_chunks: Tensor,
    dt_softplus: bool, chunk_size: int, seg_chunks: int, bwd_span: int, fwd_span: int,
    dx_out: Optional[Tensor] = None, dB_out: Optional[Tensor] = None, dC_out: Optional[Tensor] = None,
) -> tuple:  # fmt: skip
    """The backward's launches from the forward's inputs and residuals: (dx, ddt, dA, dB, dC, dD, dz,
    d dt_bias, d initial state) as ``triton_launch.ssd_bwd`` returns them (fp32 but dx and dz), with dx,
    dB, dC written into ``dx_out`` / ``dB_out`` / ``dC_out`` when given (``ssd_bwd``; the Mamba-2 layer's
    gradient slices, ``triton_layer.py``)."""
    n_seqs = x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    plan = make_plan(x, B.shape[3], chunk_size, None if cu_seqlens is None else n_seqs, seg_chunks,
                     bwd_span=bwd_span, fwd_span=fwd_span)  # fmt: skip
    table = None if cu_seqlens is None else varlen_chunk_table(cu_seqlens, plan.Q, plan.n_chunks)
    dz = x.new_empty(0)
    if z is None:
        dy = dout.to(x.dtype).contiguous()
    else:  # out = y * silu(z): dy = dout silu(z), dz = dout y silu'(z); dy in the kernels' dot dtype
        zf, g = z.float(), dout.float()  # (on the CPU, where bf16 products are formed in fp32, not rounded)
        sig = torch.sigmoid(zf)
        dy = (g * zf * sig).to(dot_dtype(x)).contiguous()
        dz = (g * y_pre.float() * sig * (1 + zf * (1 - sig))).to(z.dtype)
    B, C = _bc(B, C)
    dx, ddt, dA, dB, dC, dD, ddt_bias, dinit = ssd_bwd(
        dy, f32(dfinal), _rows(x), dt.contiguous(), f32(A), B, C, f32(D), f32(dt_bias), f32(initial_state),
        table, seg_in, seg_decay, n_seqs, plan, dt_softplus, h_chunks, dx_out=dx_out, dB_out=dB_out, dC_out=dC_out,
    )  # fmt: skip
    return dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit


def _bwd_impl(
    dout: Tensor, dfinal: Optional[Tensor], x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor], initial_state: Optional[Tensor],
    cu_seqlens: Optional[Tensor], seg_in: Tensor, seg_decay: Tensor, y_pre: Tensor, h_chunks: Tensor,
    dt_softplus: bool, chunk_size: int, seg_chunks: int, bwd_span: int, fwd_span: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients (dx, ddt, dA, dB, dC, dD, dz, d dt_bias, d initial_state), each in
    its input's dtype; an empty tensor stands for an input that was None."""
    dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit = bwd_grads(
        dout, dfinal, x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, seg_in, seg_decay, y_pre, h_chunks,
        dt_softplus, chunk_size, seg_chunks, bwd_span, fwd_span,
    )  # fmt: skip

    def cast(g: Optional[Tensor], like: Optional[Tensor]) -> Tensor:  # outputs may not alias each other
        return x.new_empty(0) if like is None else g.to(like.dtype)

    return (dx, cast(ddt, dt), cast(dA, A), cast(dB, B), cast(dC, C), cast(dD, D), dz,
            cast(ddt_bias, dt_bias), cast(dinit, initial_state))  # fmt: skip


_ssd_bwd_op = torch.library.custom_op("ssmkit::ssd_bwd", _bwd_impl, mutates_args=())


@_ssd_bwd_op.register_fake
def _(dout, dfinal, x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, seg_in, seg_decay, y_pre, h_chunks,
      dt_softplus, chunk_size, seg_chunks, bwd_span, fwd_span):  # fmt: skip
    like = lambda t: x.new_empty(0) if t is None else t.new_empty(t.shape)  # noqa: E731  (contiguous)
    return (like(x), like(dt), like(A), like(B), like(C), like(D), like(z), like(dt_bias), like(initial_state))


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, dt_softplus, chunk_size, seg_chunks, bwd_span, \
        fwd_span, _, _ = inputs
    _, _, seg_in, seg_decay, y_pre, h_chunks = output
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, seg_in, seg_decay, y_pre,
                          h_chunks)  # fmt: skip
    ctx.options = (dt_softplus, chunk_size, seg_chunks, bwd_span, fwd_span)
    ctx.mark_non_differentiable(seg_in, seg_decay, y_pre, h_chunks)
    ctx.set_materialize_grads(False)  # unused outputs' gradients arrive as None, not zero-filled


def _run_backward(ctx, dout, dfinal, bwd) -> tuple:
    """The forward's input gradients, by ``bwd`` (the backward op or its function) from what
    ``_setup_context`` saved; None for inputs that were None."""
    saved = ctx.saved_tensors  # x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, residuals
    D, z, dt_bias, initial_state = saved[5:9]
    if dout is None:
        dout = torch.zeros_like(saved[0])
    dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit = bwd(dout, dfinal, *saved, *ctx.options)
    keep = lambda g, t: None if t is None else g  # noqa: E731
    return (dx, ddt, dA, dB, dC, keep(dD, D), keep(dz, z), keep(ddt_bias, dt_bias), keep(dinit, initial_state),
            None, None, None, None, None, None, None, None)  # fmt: skip


def _backward(ctx, dout, dfinal, *_residual_grads):
    return _run_backward(ctx, dout, dfinal, _ssd_bwd_op)


torch.library.register_autograd("ssmkit::ssd_fwd", _backward, setup_context=_setup_context)


# Outside torch.compile, plain tensors run through _SSDEager rather than the custom ops (False: always the ops).
EAGER_FUNCTION = True


def _eager_backward(ctx, dout, dfinal, *_residual_grads):
    return _run_backward(ctx, dout, dfinal, _bwd_impl)


# The same forward and backward as the custom ops, called without the dispatcher when nothing is being compiled
# (``eager_function``): the ops' host time had made small calls host-bound (one 16K-token sequence with 32 heads:
# 1.6 ms of kernels; 0.4-0.8 ms of host time per forward+backward through the ops on the H200's host).
_SSDEager = eager_function("_SSDEager", _fwd_impl, _setup_context, _eager_backward)


def ssd_triton(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    dt_bias: Optional[Tensor] = None,
    dt_softplus: bool = False,
    chunk_size: int = 64,
    initial_state: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
    *,
    seg_chunks: int = 0,
    bwd_span: int = -1,
    fwd_span: int = -1,
) -> tuple[Tensor, Tensor]:
    """SSD by the Triton kernels (inputs assumed validated by ``ssmkit.ops.ssd.ssd``).

    Args:
        x: (B, L, H, P) float32, float16 or bfloat16;  dt: (B, L, H);  A: (H,);
        B, C: (B, L, G, N);  D: (H,) or (H, P) or None;  z: (B, L, H, P) or None;
        dt_bias: (H,) or None;  chunk_size: Q <= 256 (clipped to L, and to what the kernels
            run: ``triton_launch.make_plan``);
        initial_state: (B, H, P, N), or (S, H, P, N) with ``cu_seqlens``, or None;
        cu_seqlens: (S + 1,) int32/int64 cumulative lengths of S sequences packed
            in a batch of one (x: (1, T, H, P)), or None;
        seg_chunks: chunks per segment (a tuning knob; 0 picks it for the device).
            Results do not depend on it beyond rounding.
        bwd_span: chunks per program of the fused backward, which then reads the
            state gradient of every chunk from memory (0: it walks the segments,
            carrying the gradient in registers; -1: the default).
        fwd_span: chunks per program of the forward scan, which then reads the state
            entering every chunk from memory (0: it walks the segments, carrying the
            state in registers; -1: the default, which for 16-bit inputs without a
            gradient to come walks: ``triton_launch.forward_span``).
    Returns:
        y: (B, L, H, P) in x's dtype; final state (B, H, P, N) or (S, H, P, N), float32.
    """
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(
            f"ssd (triton): argument `x` must have dtype float32, float16 or bfloat16 for the triton backend, "
            f"got {str(x.dtype).replace('torch.', '')} (use backend='torch' or 'reference' for float64)"
        )
    needs_grad = grad_coming(x, dt, A, B, C, D, z, dt_bias, initial_state)
    keep_states = needs_grad and triton_launch.KEEP_STATES
    fwd_span = triton_launch.forward_span(x, fwd_span, needs_grad)
    n_seqs = None if cu_seqlens is None else cu_seqlens.numel() - 1
    seg_chunks = triton_launch.training_seg_chunks(x, B.shape[-1], chunk_size, n_seqs, seg_chunks, fwd_span, needs_grad)
    save_pre = needs_grad and z is not None  # (dz needs the output before the gate)
    # (fake, meta and other subclass tensors keep the ops: their fake implementations and dispatch)
    eager = EAGER_FUNCTION and eager_call(x)
    fwd = _SSDEager.apply if eager else _ssd_fwd_op  # (the same function; see _SSDEager)
    y, final, *_ = fwd(x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, dt_softplus,
                       chunk_size, seg_chunks, bwd_span, fwd_span, save_pre, keep_states)  # fmt: skip
    return y, final


__all__ = ["ssd_triton"]
