"""Selective scan, one token (decoding), in Triton: the "triton" backend of ``selective_scan_step``.

Symbols as in ``step.py``: Δ = softplus?(delta + delta_bias), Ā = exp(Δ A), state = h:

    h' = Ā h + Δ B u ;   y = (C · h' + D u) * silu(z)

One program per (batch, block of channels), the (BLOCK_D, N) state tile in
float32 registers: the update is one pass over the state (read h, write h'),
which is what decoding is bound by. A pure function: the new state is a new
tensor. Registered as the custom op ``ssmkit::selective_scan_step`` with a fake
implementation and its autograd formula (PyTorch, float32).
"""

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from einops import repeat
from torch import Tensor

from .._pdl import chain_launch, release_dependents, wait_inputs
from .._triton import LAUNCH, cdiv, f32, interpret_mode, next_pow2, sm_count, spread_block, unit_last
from .triton_common import _sigmoid, _softplus

_SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def scan_step_kernel(
    st_ptr, u_ptr, dl_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, ns_ptr,
    DIM, CH_PER_GROUP, s_ub, s_db, s_zb, s_Bb, s_Bg, s_Cb, s_Cg,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST_MATH: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(D, BLOCK_D), B). state, new state (B, D, N) contiguous float32; u, delta, z (B, D);
    A (D, N) float32; B, C (B, G, N); D, bias (D,) float32; y (B, D). ``PDL``: A, D and the bias are loaded
    before waiting for the kernel before (``ssmkit/ops/_pdl.py``)."""
    if PDL:
        release_dependents()
    pid_b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, NP)
    md = d < DIM
    mdn = md[:, None] & (n < N)[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=mdn, other=0.0)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=md, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=md, other=0.0)
    if PDL:
        wait_inputs()
    x = tl.load(dl_ptr + pid_b * s_db + d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += bias
    if SOFTPLUS:
        x = _softplus(x, FAST_MATH)
    u = tl.load(u_ptr + pid_b * s_ub + d, mask=md, other=0.0).to(tl.float32)
    grp = (d // CH_PER_GROUP)[:, None] * s_Bg + n[None, :]
    Bv = tl.load(B_ptr + pid_b * s_Bb + grp, mask=mdn, other=0.0).to(tl.float32)  # (BD, NP)
    Cv = tl.load(C_ptr + pid_b * s_Cb + (d // CH_PER_GROUP)[:, None] * s_Cg + n[None, :], mask=mdn, other=0.0)
    off = pid_b * DIM * N + d[:, None] * N + n[None, :]
    h = tl.load(st_ptr + off, mask=mdn, other=0.0)
    h = tl.exp2(x[:, None] * A * 1.4426950408889634) * h + (x * u)[:, None] * Bv
    tl.store(ns_ptr + off, h, mask=mdn)
    y = tl.sum(h * Cv.to(tl.float32), axis=1)  # (BD,)
    if HAS_D:
        y += Dv * u
    if HAS_Z:
        zz = tl.load(z_ptr + pid_b * s_zb + d, mask=md, other=0.0).to(tl.float32)
        y = y * zz * _sigmoid(zz, FAST_MATH)
    tl.store(y_ptr + pid_b * DIM + d, y.to(y_ptr.dtype.element_ty), mask=md)


@torch.library.custom_op("ssmkit::selective_scan_step", mutates_args=())
def _step_op(state: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(y (B, D) in u's dtype, new state (B, D, N) float32); B, C (B, N) or (B, G, N)."""
    batch, dim = u.shape
    N = A.shape[1]
    Bg = unit_last(B.unsqueeze(1) if B.dim() == 2 else B)
    Cg = unit_last(C.unsqueeze(1) if C.dim() == 2 else C)
    u, delta, z = unit_last(u), unit_last(delta), unit_last(z)
    st = state.to(torch.float32).contiguous()
    y = torch.empty((batch, dim), dtype=u.dtype, device=u.device)
    ns = torch.empty((batch, dim, N), dtype=torch.float32, device=u.device)
    NP = next_pow2(N)
    bd = spread_block(max(1, min(next_pow2(dim), 2048 // NP)), dim, batch, sm_count(u.device), 8)
    Df, bias = f32(D), f32(delta_bias)
    zz = z if z is not None else u
    scan_step_kernel[(cdiv(dim, bd), batch)](
        st, u, delta, zz, A.to(torch.float32).contiguous(), Bg, Cg, Df if Df is not None else st,
        bias if bias is not None else st, y, ns, dim, dim // Bg.shape[1],
        u.stride(0), delta.stride(0), zz.stride(0), Bg.stride(0), Bg.stride(1), Cg.stride(0), Cg.stride(1),
        N=N, NP=NP, BLOCK_D=bd, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, FAST_MATH=not interpret_mode(), num_warps=4, **chain_launch(u.device), **LAUNCH,
    )  # fmt: skip
    return y, ns


@_step_op.register_fake
def _(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return u.new_empty(u.shape), u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9])
    ctx.delta_softplus = inputs[9]


def _expand(x: Tensor, dim: int) -> Tensor:
    """(B, N) or (B, G, N) -> (B, D, N) float32: channel d reads group d // (D // G)."""
    x = x.to(torch.float32)
    if x.dim() == 2:
        return x[:, None].expand(-1, dim, -1)
    return repeat(x, "b g n -> b (g r) n", r=dim // x.shape[1])


def _group_sum(x: Tensor, like: Tensor) -> Tensor:
    """(B, D, N) -> the shape of B / C: summed over the channels of each group."""
    if like.dim() == 2:
        return x.sum(1).to(like.dtype)
    return x.reshape(x.shape[0], like.shape[1], -1, x.shape[2]).sum(2).to(like.dtype)


def _backward(ctx, dy, dns):
    """Gradients of (y, h') w.r.t. every input, by the chain rule of the module docstring."""
    state, u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    f32, dim = torch.float32, u.shape[1]
    x = delta.to(f32) + (0 if delta_bias is None else delta_bias.to(f32))
    dt = F.softplus(x) if ctx.delta_softplus else x
    uf, h, Af = u.to(f32), state.to(f32), A.to(f32)
    Bx, Cx = _expand(B, dim), _expand(C, dim)
    dA = torch.exp(dt[..., None] * Af)  # (B, D, N)
    new = dA * h + (dt * uf)[..., None] * Bx
    g = dy.to(f32)
    dz = None
    if z is not None:
        y_pre = (new * Cx).sum(-1) + (0 if D is None else D.to(f32) * uf)
        zf = z.to(f32)
        sz = torch.sigmoid(zf)
        dz = (g * y_pre * sz * (1 + zf * (1 - sz))).to(z.dtype)
        g = g * zf * sz
    dnew = g[..., None] * Cx + (0 if dns is None else dns.to(f32))
    ddA = dnew * h * dA  # ∂L/∂(Δ A) per (b, d, n)
    ddt = (ddA * Af).sum(-1) + (dnew * Bx).sum(-1) * uf
    du = (dnew * Bx).sum(-1) * dt + (0 if D is None else D.to(f32) * g)
    ddelta = ddt * torch.sigmoid(x) if ctx.delta_softplus else ddt
    return ((dnew * dA).to(state.dtype), du.to(u.dtype), ddelta.to(delta.dtype), (ddA * dt[..., None]).sum(0).to(A.dtype),
            _group_sum(dnew * (dt * uf)[..., None], B), _group_sum(new * g[..., None], C),
            None if D is None else (g * uf).sum(0).to(D.dtype), dz,
            None if delta_bias is None else ddelta.sum(0).to(delta_bias.dtype), None)  # fmt: skip


_step_op.register_autograd(_backward, setup_context=_setup)


def selective_scan_step_triton(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The "triton" implementation of ``selective_scan_step`` (inputs validated by the caller).

    Args: state (B, D, N); u, delta, z (B, D); A (D, N); B, C (B, N) or (B, G, N); D, delta_bias (D,).
    Returns: y (B, D) in u's dtype, new state (B, D, N) float32.
    """
    for name, t in (("state", state), ("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
        if t is not None and t.dtype not in _SUPPORTED:
            raise TypeError(f"selective_scan_step (backend 'triton'): argument `{name}` must be float32, float16 or "
                            f"bfloat16, got {str(t.dtype).replace('torch.', '')} (use backend 'torch' for float64)")  # fmt: skip
    return _step_op(state, u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
