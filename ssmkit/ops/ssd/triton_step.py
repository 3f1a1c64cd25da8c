"""SSD one-token update (Mamba-2 decoding) in Triton: the "triton" backend of ``ssd_step``.

Symbols as in ``step.py``: Δ = softplus?(dt + dt_bias) (B, H), Ā = exp(Δ A) a scalar per head:

    h' = Ā h + Δ x B^T        (B, H, P, N)
    y  = h' C + D x, then y * silu(z)

One program per (batch, head, block of P rows); the (BLOCK_P, N) state tile is
read once and written once in float32 (decoding is bound by those bytes). A
pure function: the new state is a new tensor. Registered as the custom op
``ssmkit::ssd_step`` with a fake implementation and its autograd formula
(PyTorch, float32).
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
from ..scan.triton_common import _sigmoid, _softplus

_SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def ssd_step_kernel(
    st_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, ns_ptr,
    H, P, HEADS_PER_GROUP, s_xb, s_xh, s_tb, s_Bb, s_Bg, s_Cb, s_Cg, s_zb, s_zh,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_P: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST_MATH: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """Grid (B * H, cdiv(P, BLOCK_P)). state, new state (B, H, P, N) contiguous float32; x, z (B, H, P)
    unit stride along P; dt (B, H); A, bias (H,) float32; B, C (B, G, N); D (H,) or (H, P) float32;
    y (B, H, P) contiguous. ``PDL``: A, D and the bias are loaded before waiting for the kernel before
    (``ssmkit/ops/_pdl.py``)."""
    if PDL:
        release_dependents()
    pid = tl.program_id(0)
    b = (pid // H).to(tl.int64)
    h = pid % H
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, NP)
    mp = p < P
    mpn = mp[:, None] & (n < N)[None, :]
    A = tl.load(A_ptr + h)
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + h * P + p, mask=mp, other=0.0)
        else:
            Dv = tl.load(D_ptr + h)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h)
    if PDL:
        wait_inputs()
    delta = tl.load(dt_ptr + b * s_tb + h).to(tl.float32)
    if HAS_BIAS:
        delta += bias
    if SOFTPLUS:
        delta = _softplus(delta, FAST_MATH)
    decay = tl.exp2(delta * A * 1.4426950408889634)
    g = h // HEADS_PER_GROUP
    Bv = tl.load(B_ptr + b * s_Bb + g * s_Bg + n, mask=n < N, other=0.0).to(tl.float32)  # (NP,)
    Cv = tl.load(C_ptr + b * s_Cb + g * s_Cg + n, mask=n < N, other=0.0).to(tl.float32)
    xv = tl.load(x_ptr + b * s_xb + h * s_xh + p, mask=mp, other=0.0).to(tl.float32)  # (BLOCK_P,)
    off = ((b * H + h) * P + p[:, None]) * N + n[None, :]
    st = tl.load(st_ptr + off, mask=mpn, other=0.0)
    st = decay * st + (delta * xv)[:, None] * Bv[None, :]
    tl.store(ns_ptr + off, st, mask=mpn)
    y = tl.sum(st * Cv[None, :], axis=1)  # (BLOCK_P,)
    if HAS_D:
        y += Dv * xv
    if HAS_Z:
        zz = tl.load(z_ptr + b * s_zb + h * s_zh + p, mask=mp, other=0.0).to(tl.float32)
        y = y * zz * _sigmoid(zz, FAST_MATH)
    tl.store(y_ptr + (b * H + h) * P + p, y.to(y_ptr.dtype.element_ty), mask=mp)


@torch.library.custom_op("ssmkit::ssd_step", mutates_args=())
def _step_op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             z: Optional[Tensor], dt_bias: Optional[Tensor], dt_softplus: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(y (B, H, P) in x's dtype, new state (B, H, P, N) float32)."""
    batch, H, P = x.shape
    N = B.shape[2]
    x, z, B, C = unit_last(x), unit_last(z), unit_last(B), unit_last(C)
    st = state.to(torch.float32).contiguous()
    y = torch.empty((batch, H, P), dtype=x.dtype, device=x.device)
    ns = torch.empty((batch, H, P, N), dtype=torch.float32, device=x.device)
    NP = next_pow2(N)
    bp = spread_block(max(1, min(next_pow2(P), 4096 // NP)), P, batch * H, sm_count(x.device), 8)
    Df, bias, zz = f32(D), f32(dt_bias), z if z is not None else x
    ssd_step_kernel[(batch * H, cdiv(P, bp))](
        st, x, dt, A.to(torch.float32).contiguous(), B, C, Df if Df is not None else st, zz,
        bias if bias is not None else st, y, ns, H, P, H // B.shape[1],
        x.stride(0), x.stride(1), dt.stride(0), B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        zz.stride(0), zz.stride(1),
        N=N, NP=NP, BLOCK_P=bp, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, FAST_MATH=not interpret_mode(),
        num_warps=4, **chain_launch(x.device), **LAUNCH,
    )  # fmt: skip
    return y, ns


@_step_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return x.new_empty(x.shape), x.new_empty((*x.shape, B.shape[2]), dtype=torch.float32)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9])
    ctx.dt_softplus = inputs[9]


def _backward(ctx, dy, dns):
    """Chain rule of the module docstring, in float32."""
    state, x, dt, A, B, C, D, z, dt_bias = ctx.saved_tensors
    f32 = torch.float32
    R = x.shape[1] // B.shape[1]
    raw = dt.to(f32) + (0 if dt_bias is None else dt_bias.to(f32))
    delta = F.softplus(raw) if ctx.dt_softplus else raw  # (B, H)
    xf, h = x.to(f32), state.to(f32)
    Bh = repeat(B.to(f32), "b g n -> b (g r) n", r=R)  # (B, H, N)
    Ch = repeat(C.to(f32), "b g n -> b (g r) n", r=R)
    decay = torch.exp(delta * A.to(f32))  # (B, H)
    new = decay[..., None, None] * h + torch.einsum("bhp,bhn->bhpn", xf * delta[..., None], Bh)
    Dx = 0 if D is None else xf * (D.to(f32)[:, None] if D.dim() == 1 else D.to(f32))
    g = dy.to(f32)
    dz = None
    if z is not None:
        y_pre = torch.einsum("bhpn,bhn->bhp", new, Ch) + Dx
        zf = z.to(f32)
        sz = torch.sigmoid(zf)
        dz = (g * y_pre * sz * (1 + zf * (1 - sz))).to(z.dtype)
        g = g * zf * sz
    dnew = g[..., None] * Ch[:, :, None] + (0 if dns is None else dns.to(f32))  # (B, H, P, N)
    ddecay = (dnew * h).sum((2, 3)) * decay  # ∂L/∂(Δ A): (B, H)
    dxB = torch.einsum("bhpn,bhn->bhp", dnew, Bh)  # Σ_n dh' B
    ddelta = ddecay * A.to(f32) + (dxB * xf).sum(-1)
    dx = dxB * delta[..., None]
    dD = None
    if D is not None:
        dx = dx + g * (D.to(f32)[:, None] if D.dim() == 1 else D.to(f32))
        dD = ((g * xf).sum((0, 2)) if D.dim() == 1 else (g * xf).sum(0)).to(D.dtype)
    draw = ddelta * torch.sigmoid(raw) if ctx.dt_softplus else ddelta
    dB = torch.einsum("bhpn,bhp->bhn", dnew, xf * delta[..., None]).reshape(B.shape[0], B.shape[1], R, -1).sum(2)
    dC = torch.einsum("bhpn,bhp->bhn", new, g).reshape(C.shape[0], C.shape[1], R, -1).sum(2)
    return ((dnew * decay[..., None, None]).to(state.dtype), dx.to(x.dtype), draw.to(dt.dtype),
            (ddecay * delta).sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dD, dz,
            None if dt_bias is None else draw.sum(0).to(dt_bias.dtype), None)  # fmt: skip


_step_op.register_autograd(_backward, setup_context=_setup)


def ssd_step_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """The "triton" implementation of ``ssd_step`` (inputs validated by the caller).

    Args: state (B, H, P, N); x, z (B, H, P); dt (B, H); A, dt_bias (H,); B, C (B, G, N); D (H,) or (H, P).
    Returns: y (B, H, P) in x's dtype, new state (B, H, P, N) float32.
    """
    for name, t in (("state", state), ("x", x), ("dt", dt), ("B", B), ("C", C), ("z", z)):
        if t is not None and t.dtype not in _SUPPORTED:
            raise TypeError(f"ssd_step (backend 'triton'): argument `{name}` must be float32, float16 or bfloat16, "
                            f"got {str(t.dtype).replace('torch.', '')} (use backend 'torch' for float64)")  # fmt: skip
    return _step_op(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))
