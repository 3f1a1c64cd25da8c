"""Selective scan, the compiled C CPU backend (``backend="c"``).

Wraps ``scan_cpu.c`` (one fused pass over the sequence per (batch, channel
block); no (B, L, D, N) intermediates; states kept every ``CKPT_EVERY`` steps
for the backward, which recomputes each segment) in a
``torch.autograd.Function``. Symbols as in ``reference.py``: ``delta`` = Δ,
Ā = exp(Δ A), h = state.

Math in float32 for float32/float16/bfloat16 inputs (cast back on output),
float64 for float64 inputs. CPU tensors only. Threads: ``torch.get_num_threads()``.
"""

from __future__ import annotations

import logging

import ctypes
from typing import Optional, Union

import torch
from torch.autograd.function import once_differentiable

from .._c_build import cpu_only_reason
from .cpu_c_build import ScanParams, get_library, unavailable_reason
from .reference import state_dtype

CKPT_EVERY = 64  # K: the forward keeps the state every K steps; the backward recomputes K at a time


def c_unavailable_reason(device: torch.device) -> Optional[str]:
    """None when backend "c" can run on ``device``, else the reason (for ``OpBackends``)."""
    return cpu_only_reason(device, unavailable_reason)


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _prep(t: Optional[torch.Tensor], work: torch.dtype) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(work).contiguous()


def _params(**kw) -> ScanParams:
    p = ScanParams()
    for name, value in kw.items():
        setattr(p, name, _ptr(value) if isinstance(value, torch.Tensor) or value is None else value)
    return p


def _prec(work: torch.dtype) -> str:
    return "f64" if work == torch.float64 else "f32"


def _threads(work: torch.dtype, p: ScanParams) -> int:
    """Threads to use: torch's setting, at most one per task of the kernel."""
    tasks = getattr(get_library(), f"num_tasks_{_prec(work)}")(ctypes.byref(p))
    return max(1, min(torch.get_num_threads(), tasks))


def _call(entry: str, work: torch.dtype, p: ScanParams) -> None:
    if not p.nthreads:
        p.nthreads = _threads(work, p)
    if getattr(get_library(), f"{entry}_{_prec(work)}")(ctypes.byref(p)) != 0:
        raise MemoryError(f"selective_scan (backend 'c'): {entry} could not allocate its scratch buffers")


class _SelectiveScanC(torch.autograd.Function):
    """(u, delta, A, B, C, D, z, delta_bias, initial_state) -> (y, final_state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus: bool, keep: bool):
        work = state_dtype(u)
        batch, L, dim = u.shape
        N = A.shape[1]
        grouped = B.dim() == 4
        u_w, delta_w, D_w, z_w, bias_w, h0_w = (_prep(t, work) for t in (u, delta, D, z, delta_bias, initial_state))
        B_w = _prep(B if grouped else B[:, :, None], work)  # (B, L, G, N)
        C_w = _prep(C if grouped else C[:, :, None], work)  # (B, L, G, N)
        A_t = A.detach().to(work).t().contiguous()  # (N, D)
        y = torch.empty(batch, L, dim, dtype=work)
        h_last = torch.empty(batch, dim, N, dtype=work)
        ckpt = torch.empty(batch, -(-L // CKPT_EVERY), N, dim, dtype=work) if keep else None  # (B, S, N, D)
        p = _params(
            u=u_w, delta=delta_w, A_t=A_t, Bm=B_w, Cm=C_w, Dv=D_w, bias=bias_w, z=z_w, h0=h0_w,
            y=y, h_last=h_last, ckpt=ckpt, batch=batch, seqlen=L, dim=dim, dstate=N,
            ngroups=B_w.shape[2], ckpt_every=CKPT_EVERY, softplus=int(delta_softplus),
        )
        _call("ss_forward", work, p)
        if keep:
            ctx.save_for_backward(u_w, delta_w, A_t, B_w, C_w, D_w, z_w, bias_w, h0_w, ckpt)
            ctx.meta = (delta_softplus, grouped, work)
            ctx.dtypes = tuple(None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
        ctx.set_materialize_grads(False)
        return y.to(u.dtype), h_last

    @staticmethod
    @once_differentiable
    def backward(ctx, g_y, g_state):
        u_w, delta_w, A_t, B_w, C_w, D_w, z_w, bias_w, h0_w, ckpt = ctx.saved_tensors
        delta_softplus, grouped, work = ctx.meta
        batch, L, dim = u_w.shape
        N, G = A_t.shape[0], B_w.shape[2]
        g_y = torch.zeros_like(u_w) if g_y is None else g_y.to(work).contiguous()
        g_state = None if g_state is None else g_state.to(work).contiguous()
        sizes = dict(batch=batch, seqlen=L, dim=dim, dstate=N, ngroups=G, ckpt_every=CKPT_EVERY)
        threads = _threads(work, _params(**sizes))
        gu, gdelta = torch.empty_like(u_w), torch.empty_like(u_w)
        gz = torch.empty_like(u_w) if z_w is not None else None
        gh0 = torch.empty(batch, dim, N, dtype=work)
        gA = torch.zeros(threads, N, dim, dtype=work)  # per-thread partials
        gD, gbias = torch.zeros(threads, dim, dtype=work), torch.zeros(threads, dim, dtype=work)
        gB = torch.zeros(threads, batch, L, G, N, dtype=work)
        gC = torch.zeros(threads, batch, L, G, N, dtype=work)
        p = _params(
            u=u_w, delta=delta_w, A_t=A_t, Bm=B_w, Cm=C_w, Dv=D_w, bias=bias_w, z=z_w, h0=h0_w, ckpt=ckpt,
            gy=g_y, gh_last=g_state, gu=gu, gdelta=gdelta, gz=gz, gh0=gh0, gA=gA, gD=gD, gbias=gbias,
            gB=gB, gC=gC, softplus=int(delta_softplus), nthreads=threads, **sizes,
        )
        _call("ss_backward", work, p)  # partial t is written by thread t < threads
        gB, gC = gB.sum(0), gC.sum(0)  # (B, L, G, N)
        if not grouped:
            gB, gC = gB[:, :, 0], gC[:, :, 0]  # (B, L, N)
        grads = (
            gu, gdelta, gA.sum(0).t(), gB, gC,
            gD.sum(0) if D_w is not None else None, gz,
            gbias.sum(0) if bias_w is not None else None,
            gh0 if h0_w is not None else None,
        )
        out = tuple(
            None if g is None or not need else g.to(dt)
            for g, need, dt in zip(grads, ctx.needs_input_grad, ctx.dtypes)
        )
        return out + (None, None)


def _all_finite(tensors) -> bool:
    """One cheap pass: a sum is finite when no element is NaN/inf (a finite overflow only costs speed)."""
    sums = [t.detach().sum(dtype=torch.float32) for t in tensors if t is not None]
    return bool(torch.isfinite(torch.stack(sums)).all())


def selective_scan_c(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan with the C kernel; same arguments and results as the reference.

    Args:
        u, delta, z: (B, L, D).  A: (D, N).  B, C: (B, L, N) or (B, L, G, N).
        D, delta_bias: (D,).  initial_state: (B, D, N).  All on CPU.
    Returns:
        y: (B, L, D) in u's dtype [, final state (B, D, N) float32/float64].
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if u.dtype != torch.float64 and not _all_finite((delta, delta_bias, A)):
        # The float32 kernel is compiled with -ffast-math, whose finite-math assumption lets the
        # clamps in its softplus and exp turn a NaN in delta, delta_bias or A into a number (a NaN
        # anywhere else reaches y through a product); such a call runs on the PyTorch path instead.
        logging.getLogger("ssmkit.ops").warning("selective_scan: non-finite input; backend 'c' ran this call "
                                                "on the 'torch' path so that NaN/inf propagate")
        from .chunked import selective_scan_chunked

        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                      return_final_state)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, h = _SelectiveScanC.apply(*tensors, bool(delta_softplus), keep)
    return (y, h) if return_final_state else y
