"""Causal depthwise conv1d, the "triton" backend: custom ops around the kernels.

    causal_conv1d_triton(x, weight, bias, initial_state, activation) -> (y, final_state)
    causal_conv1d_step_triton(x_t, state, weight, bias, activation) -> (y_t, new_state)

Same contract as ``causal_conv1d.py`` (x (B, L, D), weight (D, K), state (B, K-1, D)
in x's dtype). The forward, backward and one-token update run in Triton
(``causal_conv1d_triton_kernels.py``) and are ``torch.library`` custom ops with a
fake implementation and an autograd formula (``torch.compile(fullgraph=True)``
traces through them; outside compilation, plain tensors take the same functions
through a plain autograd.Function, ``EAGER_FUNCTION``, without the ops' host
time). The final state (the last K-1 inputs) is a slice taken in PyTorch, so its
gradient flows through autograd by itself.
"""

from typing import Optional

import torch
from torch import Tensor

from .._pdl import chain_launch
from .._triton import LAUNCH, cdiv, eager_call, eager_function, next_pow2, sm_count, spread_block, unit_last
from .causal_conv1d_triton_kernels import conv1d_bwd_kernel, conv1d_fwd_kernel, conv1d_step_kernel

_SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)

# Programs per SM along (channel blocks, batch, segments); segments are whole tiles of T rows. H200, the
# Mamba-2 layer's 64K tokens (x a view of the projection, D = 4352, dx written into a view of another):
# backward 0.78 ms at 32 or 64 per SM, 0.85 at 16, 1.01 at 8; channel blocks of 64 or 256 no faster
# (``gpu_conv_steps.py --parts bwd``). Forward, with all three switches below: 0.393-0.395 / 0.401-0.403 /
# 0.410-0.412 ms at 64 / 32 / 16 per SM, against 0.433 for the earlier forward in (64, 128) tiles of (rows,
# channels), which loaded every input row K times; B=8 L=4096 D=2048: 0.092 / 0.097 / 0.096 against 0.106
# (``gpu_conv_steps.py --parts switches``). With two channels per thread (below), the backward: 0.536 ms at 32
# per SM in blocks of 256 channels (4 warps), 0.550-0.555 at 16 or 64; blocks of 128 0.535-0.579, of 512 0.633-0.717.
BWD_PROGRAMS_PER_SM = 32
FWD_PROGRAMS_PER_SM = 64
# Instruction savings in both kernels (``causal_conv1d_triton_kernels.py``). The backward on the H200 at the
# 64K shape above (``gpu_conv_steps.py --parts switches``; ms, 0.816 without the three): row strides as
# compile-time constants (one compiled kernel per distinct row strides of x, dy and dx) 0.737; tiles inside
# the sequence without masks 0.797; the sigmoid from the GPU's approximate instructions (not in the
# interpreter, which has no inline PTX) 0.701; all three 0.636. B=8 L=4096 D=2048: 0.226 -> 0.172.
CONST_STRIDES = True
UNMASKED_INSIDE = True
FAST_SIGMOID = True
# The forward takes only the fast sigmoid (the 64K shape, ms, in two calls): none 0.412-0.415, constant
# strides 0.399-0.402, unmasked 0.401-0.402, fast sigmoid 0.368-0.369, with constant strides 0.376, with
# unmasked tiles 0.397, all three 0.392-0.395; B=8 L=4096 D=2048 0.089 with the fast sigmoid alone.
FWD_CONST_STRIDES = False
FWD_UNMASKED_INSIDE = False
# Adjacent channels per thread (V: each row of a tile is one V-element vector per thread): fewer loads, stores
# and address computations per element. H200, the 64K shape above (``gpu_conv_steps.py --parts lanes``, ms in
# two rounds): forward 0.327-0.328 / 0.317 at V = 2 / 4 against 0.368-0.369 at V = 1 (128 channels per
# program, the earlier default; 0.353-0.354 with 256), backward 0.537 at V = 2 against 0.621-0.622 at V = 1
# (0.614-0.616 with 256 channels; V = 4 takes 193 registers offline); B=8 L=4096 D=2048: forward 0.080 /
# 0.078 against 0.089, backward 0.190-0.192 against 0.194-0.275. Offline (sm_90, ``conv_codegen.py``): the
# forward's loop 25 / 18 / 15 instructions per element at V = 1 / 2 / 4, the backward 96 registers at V = 2.
FWD_LANE_CHANNELS = 4
BWD_LANE_CHANNELS = 2


def _tiles(K: int, D: int, V: int) -> tuple[int, int, int, int]:
    """Tiles of both kernels: (T rows per register tile, HP rows before it, channels per program, warps).
    T covers the K - 1 rows a tap reaches; V channels per thread, up to 4 warps and 256 channels per program."""
    HP = next_pow2(K - 1)
    bd = min(128 * V, 256, max(32 * V, next_pow2(D)))
    return max(8, HP), HP, bd, bd // (32 * V)


def _segments(L: int, T: int, n_d: int, batch: int, per_sm: int, device: torch.device) -> tuple[int, int]:
    """(rows per segment, a multiple of T; segments) so that about ``per_sm`` programs per SM walk the rows."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    n_tiles = cdiv(L, T)
    n_segs = max(1, min(n_tiles, cdiv(per_sm * sms, n_d * batch)))
    seg_len = cdiv(n_tiles, n_segs) * T
    return seg_len, cdiv(L, seg_len)


def _switches(x: Tensor, D: int, bd: int, const_strides: bool, unmasked: bool, **strides: int) -> dict:
    """The kernels' constexpr switches for this call; ``strides``: the row strides to pass as constants."""
    return (strides if const_strides else {}) | dict(INTERIOR=unmasked and D % bd == 0,
                                                     FAST=FAST_SIGMOID and x.device.type == "cuda")  # fmt: skip


def conv_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], initial_state: Optional[Tensor], silu: bool) -> Tensor:
    """y (B, L, D) in x's dtype (the forward op's function, also called directly by fused layer code)."""
    x, s = unit_last(x), unit_last(initial_state)
    batch, L, D = x.shape
    K = weight.shape[1]
    y = torch.empty((batch, L, D), dtype=x.dtype, device=x.device)
    if L == 0:
        return y
    T, HP, bd, warps = _tiles(K, D, FWD_LANE_CHANNELS)
    seg_len, n_segs = _segments(L, T, cdiv(D, bd), batch, FWD_PROGRAMS_PER_SM, x.device)
    ss = s if s is not None else x
    conv1d_fwd_kernel[(cdiv(D, bd), batch, n_segs)](
        x, weight.contiguous(), bias if bias is not None else weight, ss, y, L, D, seg_len, 1,
        x.stride(0), x.stride(1), ss.stride(0), ss.stride(1), K=K, KP=next_pow2(K), T=T, HP=HP, BLOCK_D=bd,
        HAS_BIAS=bias is not None, HAS_STATE=s is not None, SILU=silu, V=FWD_LANE_CHANNELS, num_warps=warps,
        **_switches(x, D, bd, FWD_CONST_STRIDES, FWD_UNMASKED_INSIDE, S_XL=x.stride(1)), **LAUNCH,
    )  # fmt: skip
    return y


_fwd_op = torch.library.custom_op("ssmkit::causal_conv1d_fwd", conv_fwd, mutates_args=())


@_fwd_op.register_fake
def _(x, weight, bias, initial_state, silu):
    return x.new_empty(x.shape)


def conv_bwd(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], initial_state: Optional[Tensor],
             silu: bool, dx_out: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(dx, dweight, dbias, dinitial_state); dbias / dinitial_state empty when absent (the backward op's
    function). ``dx_out``: a (B, L, D) tensor of x's dtype with unit channel stride that dx is written
    into (and returned), e.g. a slice of a larger gradient."""
    x, s, dy = unit_last(x), unit_last(initial_state), unit_last(dy)
    batch, L, D = x.shape
    K = weight.shape[1]
    w = weight.contiguous()
    T, HP, bd, warps = _tiles(K, D, BWD_LANE_CHANNELS)
    seg_len, n_segs = _segments(L, T, cdiv(D, bd), batch, BWD_PROGRAMS_PER_SM, x.device)
    f32 = torch.float32
    dx = dx_out if dx_out is not None else torch.empty((batch, L, D), dtype=x.dtype, device=x.device)
    dw = torch.empty((batch, n_segs, K, D), dtype=f32, device=x.device)
    db = torch.empty((batch, n_segs, D), dtype=f32, device=x.device)
    gh = torch.zeros((batch, K - 1, D), dtype=f32, device=x.device) if s is not None else dw
    ss = s if s is not None else x
    conv1d_bwd_kernel[(cdiv(D, bd), batch, n_segs)](
        x, w, bias if bias is not None else w, ss, dy, dx, dw, db, gh, L, D, seg_len, 1,
        x.stride(0), x.stride(1), ss.stride(0), ss.stride(1), dy.stride(0), dy.stride(1), dx.stride(0), dx.stride(1),
        K=K, KP=next_pow2(K), T=T, HP=HP, BLOCK_D=bd, HAS_BIAS=bias is not None, HAS_STATE=s is not None,
        SILU=silu, V=BWD_LANE_CHANNELS, num_warps=warps, **LAUNCH,
        **_switches(x, D, bd, CONST_STRIDES, UNMASKED_INSIDE, S_XL=x.stride(1), S_YL=dy.stride(1), S_DXL=dx.stride(1)),
    )  # fmt: skip
    dstate = x.new_empty(0)
    if s is not None:  # ∂x~[i] = Σ_{k <= i} w[k] g[i - k] for the K-1 state rows i (g of rows 0..K-2: gh)
        wf = w.to(f32)
        rows = [sum(wf[:, k] * gh[:, i - k] for k in range(i + 1)) for i in range(K - 1)]
        dstate = torch.stack(rows, dim=1).to(initial_state.dtype)  # (B, K-1, D)
    dbias = db.sum((0, 1)).to(bias.dtype).contiguous() if bias is not None else x.new_empty(0)
    return dx, dw.sum((0, 1)).t().contiguous().to(weight.dtype), dbias, dstate


def _bwd_op_fn(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], initial_state: Optional[Tensor],
               silu: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(dx, dweight, dbias, dinitial_state); dbias / dinitial_state empty when absent."""
    return conv_bwd(dy, x, weight, bias, initial_state, silu)


_bwd_op = torch.library.custom_op("ssmkit::causal_conv1d_bwd", _bwd_op_fn, mutates_args=())


@_bwd_op.register_fake
def _(dy, x, weight, bias, initial_state, silu):
    empty = x.new_empty(0)
    return (x.new_empty(x.shape), weight.new_empty(weight.shape), empty if bias is None else bias.new_empty(bias.shape),
            empty if initial_state is None else initial_state.new_empty(initial_state.shape))  # fmt: skip


def _setup(ctx, inputs, output):
    x, weight, bias, initial_state, silu = inputs
    ctx.save_for_backward(x, weight, bias, initial_state)
    ctx.silu = silu


def _run_backward(ctx, dy, bwd):
    """The forward's input gradients, by ``bwd`` (the backward op or its function); None for absent inputs."""
    x, weight, bias, initial_state = ctx.saved_tensors
    dx, dw, db, ds = bwd(dy, x, weight, bias, initial_state, ctx.silu)
    return dx, dw, None if bias is None else db, None if initial_state is None else ds, None


_fwd_op.register_autograd(lambda ctx, dy: _run_backward(ctx, dy, _bwd_op), setup_context=_setup)

# Outside torch.compile, plain tensors run through _ConvEager (the same functions without the dispatcher:
# ``ops._triton.eager_function``) rather than the custom ops (False: always the ops).
EAGER_FUNCTION = True
_ConvEager = eager_function("_ConvEager", conv_fwd, _setup, lambda ctx, dy: _run_backward(ctx, dy, conv_bwd))


@torch.library.custom_op("ssmkit::causal_conv1d_step", mutates_args=())
def _step_op(x_t: Tensor, state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool) -> tuple[Tensor, Tensor]:
    """(y_t (B, D), new_state (B, K-1, D)) in x_t's dtype."""
    batch, D = x_t.shape
    K = weight.shape[1]
    x_t, state = unit_last(x_t), unit_last(state)
    y = torch.empty((batch, D), dtype=x_t.dtype, device=x_t.device)
    ns = torch.empty((batch, K - 1, D), dtype=x_t.dtype, device=x_t.device)
    bd = spread_block(min(128, next_pow2(D)), D, batch, sm_count(x_t.device), 32)
    conv1d_step_kernel[(cdiv(D, bd), batch)](
        x_t, state, weight.contiguous(), bias if bias is not None else weight, y, ns, D,
        x_t.stride(0), state.stride(0), state.stride(1) if K > 1 else D,
        K=K, KP=next_pow2(K), BLOCK_D=bd, HAS_BIAS=bias is not None, SILU=silu, **chain_launch(x_t.device), **LAUNCH,
    )  # fmt: skip
    return y, ns


@_step_op.register_fake
def _(x_t, state, weight, bias, silu):
    return x_t.new_empty(x_t.shape), x_t.new_empty((x_t.shape[0], weight.shape[1] - 1, x_t.shape[1]))


def _setup_step(ctx, inputs, output):
    x_t, state, weight, bias, silu = inputs
    ctx.save_for_backward(x_t, state, weight, bias)
    ctx.silu = silu


def _backward_step(ctx, dy, dns):
    """y = act(bias + Σ_k w[k] window[k]) with window = [state, x_t]; new_state = window[1:]."""
    x_t, state, weight, bias = ctx.saved_tensors
    f32 = torch.float32
    window = torch.cat([state.to(f32), x_t.to(f32)[:, None]], dim=1)  # (B, K, D)
    g = dy.to(f32)
    if ctx.silu:
        p = torch.einsum("bkd,dk->bd", window, weight.to(f32))
        if bias is not None:
            p = p + bias.to(f32)
        sg = torch.sigmoid(p)
        g = g * sg * (1 + p * (1 - sg))
    dwin = g[:, None, :] * weight.to(f32).t()[None]  # (B, K, D)
    if dns is not None:
        dwin[:, 1:] += dns.to(f32)
    dw = torch.einsum("bd,bkd->dk", g, window).to(weight.dtype)
    db = None if bias is None else g.sum(0).to(bias.dtype)
    return dwin[:, -1].to(x_t.dtype), dwin[:, :-1].to(state.dtype), dw, db, None


_step_op.register_autograd(_backward_step, setup_context=_setup_step)


def _check_dtype(fn: str, tensors: dict) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype not in _SUPPORTED:
            raise TypeError(f"{fn} (backend 'triton'): argument `{name}` must be float32, float16 or bfloat16, "
                            f"got {str(t.dtype).replace('torch.', '')} (use backend 'torch' or 'reference' for float64)")  # fmt: skip


def causal_conv1d_triton(x, weight, bias, initial_state, activation):
    """The "triton" implementation for ``CONV1D_BACKENDS``: (y, final_state), inputs validated."""
    _check_dtype("causal_conv1d", {"x": x, "weight": weight, "bias": bias, "initial_state": initial_state})
    K, L = weight.shape[1], x.shape[1]
    fwd = _ConvEager.apply if EAGER_FUNCTION and eager_call(x) else _fwd_op
    y = fwd(x, weight, bias, initial_state, activation == "silu")
    if L >= K - 1:  # the last K-1 inputs (a slice: autograd routes its gradient to x)
        final = x[:, L - (K - 1) :].contiguous()
    else:
        init = initial_state if initial_state is not None else x.new_zeros(x.shape[0], K - 1, x.shape[2])
        final = torch.cat([init.to(x.dtype)[:, L:], x], dim=1)
    return y, final


def causal_conv1d_step_triton(x_t, state, weight, bias, activation):
    """One token: (y_t (B, D), new_state (B, K-1, D)), inputs validated."""
    _check_dtype("causal_conv1d_step", {"x_t": x_t, "state": state, "weight": weight, "bias": bias})
    return _step_op(x_t, state.to(x_t.dtype), weight, bias, activation == "silu")
