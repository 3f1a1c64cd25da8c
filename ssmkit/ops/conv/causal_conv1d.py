"""Causal depthwise conv1d: the short convolution in front of Mamba's and Mamba-2's scan.

Each channel ``d`` has its own ``K`` taps ``w[d, 0..K-1]`` (``weight``); the
output at time ``t`` sees the current input and the ``K-1`` before it:

    y[b, t, d] = act( bias[d] + sum_{k=0}^{K-1} w[d, k] * x~[b, t + k, d] )

where ``x~`` is the input with its ``K-1``-long left context prepended: zeros,
or ``initial_state``. Tap ``w[d, K-1]`` multiplies the current token, as in
``torch.nn.Conv1d(D, D, K, groups=D, padding=K-1)`` cut to the first ``L``
outputs, so public checkpoints' ``conv1d.weight`` of shape (D, 1, K) is used
as ``weight = conv1d.weight[:, 0]`` (D, K).

The conv state is the last ``K-1`` inputs, sequence-major: (B, K-1, D). Passing
a sequence's final state as the next chunk's ``initial_state`` continues the
convolution exactly; :func:`causal_conv1d_step` advances it one token.

Backends (table ``CONV1D_BACKENDS``): ``"reference"`` is a loop over time in
float64 (the spec); ``"torch"`` is ``F.conv1d`` with ``groups=D`` on the
channels-first view; ``"triton"`` are GPU kernels (``causal_conv1d_triton.py``,
float32/16 and bfloat16 only). All accumulate in float32 at least (float64 inputs
stay float64) and return ``x``'s dtype; the state keeps ``x``'s dtype (it holds
inputs, exactly). The step has its own table, ``CONV1D_STEP_BACKENDS``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange

from ..._checks import check_choice, check_float, check_same_device, check_shape
from .._triton import triton_unavailable_reason
from .._triton import TRITON_DTYPES
from ..backends import OpBackends, always

ACTIVATIONS = (None, "silu")


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (half types accumulate in float32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _activate(y: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    return F.silu(y) if activation == "silu" else y


def _with_context(x: torch.Tensor, initial_state: Optional[torch.Tensor], K: int) -> torch.Tensor:
    """x~ = [initial_state (or zeros), x] along the sequence: (B, K-1+L, D)."""
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], K - 1, x.shape[2])
    return torch.cat([initial_state.to(x.dtype), x], dim=1)  # (B, K-1+L, D)


# -- implementations: (x, weight, bias, initial_state, activation) -> (y, final_state) ------------


def _conv_reference(x, weight, bias, initial_state, activation):
    """The spec: an explicit loop over time in float64."""
    K, L = weight.shape[1], x.shape[1]
    xc = _with_context(x, initial_state, K)  # (B, K-1+L, D)
    x64, w64 = xc.double(), weight.double()
    ys = []
    for t in range(L):
        window = x64[:, t : t + K]  # (B, K, D): inputs t-K+1 .. t
        y_t = torch.einsum("bkd,dk->bd", window, w64)  # (B, D)
        if bias is not None:
            y_t = y_t + bias.double()
        ys.append(_activate(y_t, activation))
    y = torch.stack(ys, dim=1)  # (B, L, D)
    return y.to(x.dtype), xc[:, L:]  # final state: the last K-1 inputs (B, K-1, D)


def _conv_torch(x, weight, bias, initial_state, activation):
    """``F.conv1d`` with one group per channel on the channels-first view."""
    K, L, D = weight.shape[1], x.shape[1], x.shape[2]
    work = _work_dtype(x)
    xc = _with_context(x, initial_state, K)  # (B, K-1+L, D)
    w = rearrange(weight.to(work), "d k -> d 1 k")  # (D, 1, K)
    b = bias.to(work) if bias is not None else None
    y = F.conv1d(rearrange(xc.to(work), "b l d -> b d l"), w, b, groups=D)  # (B, D, L)
    y = rearrange(_activate(y, activation), "b d l -> b l d")  # (B, L, D)
    return y.to(x.dtype), xc[:, L:]  # (B, L, D), (B, K-1, D)


def _conv_triton(x, weight, bias, initial_state, activation):
    """Triton kernels (``causal_conv1d_triton.py``), imported on first use."""
    from .causal_conv1d_triton import causal_conv1d_triton

    return causal_conv1d_triton(x, weight, bias, initial_state, activation)


CONV1D_BACKENDS = OpBackends(
    op="causal_conv1d",
    impls={"reference": _conv_reference, "torch": _conv_torch, "triton": _conv_triton},
    available={"reference": always, "torch": always, "triton": triton_unavailable_reason},
    dtypes={"triton": TRITON_DTYPES},
)


def _step_torch(x_t, state, weight, bias, activation):
    """One token in PyTorch: (y_t (B, D), new_state (B, K-1, D)) in x_t's dtype."""
    work = _work_dtype(x_t)
    window = torch.cat([state.to(x_t.dtype), x_t[:, None]], dim=1)  # (B, K, D)
    y_t = torch.einsum("bkd,dk->bd", window.to(work), weight.to(work))  # (B, D)
    if bias is not None:
        y_t = y_t + bias.to(work)
    return _activate(y_t, activation).to(x_t.dtype), window[:, 1:]  # (B, D), (B, K-1, D)


def _step_triton(x_t, state, weight, bias, activation):
    from .causal_conv1d_triton import causal_conv1d_step_triton

    return causal_conv1d_step_triton(x_t, state, weight, bias, activation)


CONV1D_STEP_BACKENDS = OpBackends(
    op="causal_conv1d_step",
    impls={"torch": _step_torch, "triton": _step_triton},
    available={"torch": always, "triton": triton_unavailable_reason},
    auto_order={"cuda": ("triton", "torch"), "cpu": ("torch",)},
    dtypes={"triton": TRITON_DTYPES},
)


# -- public functions -------------------------------------------------------------------------------


def _check_weight(fn: str, weight: torch.Tensor, sizes: dict[str, int], x: torch.Tensor) -> None:
    """weight must be (D, K); name the two layout mistakes (Conv1d's (D, 1, K), channels-first x)."""
    if isinstance(weight, torch.Tensor) and weight.dim() == 3 and weight.shape[1] == 1:
        raise ValueError(
            f"{fn}: argument `weight` expected shape (D, K), got {tuple(weight.shape)}; a Conv1d weight "
            f"(D, 1, K) is passed as `weight[:, 0]`"
        )
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and x.dim() == 3:
        if weight.shape[0] != x.shape[-1] and weight.shape[0] == x.shape[-2]:
            raise ValueError(
                f"{fn}: argument `x` expected shape (B, L, D={weight.shape[0]}), got {tuple(x.shape)} (this looks "
                f"like channels-first (B, D, L); ssmkit uses sequence-major (B, L, D))"
            )
    check_shape(fn, "weight", weight, ("D", "K"), sizes)
    check_float(fn, "weight", weight)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    return_final_state: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise convolution along the sequence (see the module docstring).

    Args:
        x: (B, L, D) input.
        weight: (D, K) taps; ``weight[:, K-1]`` multiplies the current token.
        bias: (D,) or None.
        initial_state: (B, K-1, D) the K-1 inputs before ``x`` (zeros when None).
        activation: None or ``"silu"``, applied after the bias.
        return_final_state: also return the last K-1 inputs.
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"`` (table ``CONV1D_BACKENDS``).
    Returns:
        y: (B, L, D) in x's dtype, or ``(y, final_state)`` with final_state (B, K-1, D) in x's dtype.
    """
    fn = "causal_conv1d"
    sizes: dict[str, int] = {}
    check_shape(fn, "x", x, ("B", "L", "D"), sizes)
    check_float(fn, "x", x)
    _check_weight(fn, weight, sizes, x)
    sizes["K-1"] = sizes["K"] - 1
    if bias is not None:
        check_shape(fn, "bias", bias, ("D",), sizes)
        check_float(fn, "bias", bias)
    if initial_state is not None:
        check_shape(fn, "initial_state", initial_state, ("B", "K-1", "D"), sizes)
        check_float(fn, "initial_state", initial_state)
    check_choice(fn, "activation", activation, ACTIVATIONS)
    device = check_same_device(fn, {"x": x, "weight": weight, "bias": bias, "initial_state": initial_state})
    impl = CONV1D_BACKENDS.get(backend, device, x.dtype)
    if x.shape[1] == 0:  # empty sequence: nothing to convolve, the state passes through
        y, final = x, _with_context(x, initial_state, weight.shape[1])
    else:
        y, final = impl(x, weight, bias, initial_state, activation)
    return (y, final) if return_final_state else y


def causal_conv1d_step(
    x_t: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of :func:`causal_conv1d`, for decoding.

    Args:
        x_t: (B, D) the new input.
        state: (B, K-1, D) the K-1 previous inputs (oldest first).
        weight: (D, K); bias: (D,) or None; activation: None or ``"silu"``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (table ``CONV1D_STEP_BACKENDS``).
    Returns:
        y_t: (B, D) in x_t's dtype; new_state: (B, K-1, D) in x_t's dtype (a new tensor; ``state`` is untouched).
    """
    fn = "causal_conv1d_step"
    sizes: dict[str, int] = {}
    check_shape(fn, "x_t", x_t, ("B", "D"), sizes)
    check_float(fn, "x_t", x_t)
    _check_weight(fn, weight, sizes, x_t)
    sizes["K-1"] = sizes["K"] - 1
    check_shape(fn, "state", state, ("B", "K-1", "D"), sizes)
    check_float(fn, "state", state)
    if bias is not None:
        check_shape(fn, "bias", bias, ("D",), sizes)
        check_float(fn, "bias", bias)
    check_choice(fn, "activation", activation, ACTIVATIONS)
    device = check_same_device(fn, {"x_t": x_t, "state": state, "weight": weight, "bias": bias})
    return CONV1D_STEP_BACKENDS.get(backend, device, x_t.dtype)(x_t, state, weight, bias, activation)
