"""SSD (Mamba-2 state space duality): the public op, its backends and the decode step.

    ssd(x, dt, A, B, C, ...)       whole sequences; backend "reference" (float64
                                   loop, the spec), "torch" (chunked algorithm)
                                   or "triton" (GPU kernels, triton*.py)
    ssd_step(state, x, dt, ...)    one token, for decoding (table ``SSD_STEP_BACKENDS``:
                                   "torch", step.py, or "triton", triton_step.py)

Symbols (see ``reference.py``): Δ = softplus?(dt + dt_bias), Ā = exp(Δ A),
h_t = Ā_t h_{t-1} + Δ_t x_t B_t^T, y_t = h_t C_t + D x_t, gated by silu(z).

Every implementation in :data:`SSD_BACKENDS` has the signature
``impl(x, dt, A, B, C, D, z, dt_bias, dt_softplus, chunk_size, initial_state,
cu_seqlens=None) -> (y, final_state)`` and receives validated inputs
(``varlen.py`` adds ``cu_seqlens`` to the backends that loop in Python).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..._checks import (
    check_divisible,
    check_float,
    check_positive_int,
    check_same_device,
    check_shape,
)
from .._triton import TRITON_DTYPES
from ..backends import OpBackends
from .chunked import ssd_chunked
from .reference import ssd_reference
from .step import ssd_step_torch
from .step_c import C_STEP_DTYPES, ssd_step_c, ssd_step_c_unavailable_reason
from .triton_backend import ssd_triton_impl, ssd_triton_unavailable, triton_unavailable
from .varlen import per_sequence

__all__ = ["ssd", "ssd_step", "ssd_reference", "SSD_BACKENDS", "SSD_STEP_BACKENDS"]


def _reference_impl(x, dt, A, B, C, D, z, dt_bias, dt_softplus, chunk_size, initial_state):
    del chunk_size  # the loop over time has no chunks
    return ssd_reference(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, return_final_state=True)


SSD_BACKENDS = OpBackends(
    op="ssd",
    impls={"reference": per_sequence(_reference_impl), "torch": per_sequence(ssd_chunked), "triton": ssd_triton_impl},
    available={"triton": ssd_triton_unavailable},
    auto_order={"cuda": ("triton", "torch"), "cpu": ("torch",)},
    dtypes={"triton": TRITON_DTYPES},
)


def _check_bool(fn: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: argument `{name}` must be a bool, got {type(value).__name__}")


def _check_params(
    fn: str,
    sizes: dict[str, int],
    tensors: dict[str, Optional[torch.Tensor]],
    dt_softplus: object,
) -> None:
    """Checks shared by `ssd` and `ssd_step` once the per-token tensors are sized.

    Checks A, D, dt_bias shapes, float dtypes of all tensors, one device, H
    divisible by G and the dt_softplus flag.
    """
    check_shape(fn, "A", tensors["A"], ("H",), sizes)
    if tensors["D"] is not None:
        check_shape(fn, "D", tensors["D"], [("H",), ("H", "P")], sizes)
    if tensors["dt_bias"] is not None:
        check_shape(fn, "dt_bias", tensors["dt_bias"], ("H",), sizes)
    for name, t in tensors.items():
        if t is not None:
            check_float(fn, name, t)
    check_same_device(fn, tensors)
    check_divisible(fn, "H (heads, x.shape[2])", sizes["H"], "G (groups, B.shape[2])", sizes["G"])
    _check_bool(fn, "dt_softplus", dt_softplus)


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    chunk_size: int = 64,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
    backend: str = "auto",
    cu_seqlens: Optional[torch.Tensor] = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD over whole sequences (differentiable).

    Args:
        x: (B, L, H, P) input per head.
        dt: (B, L, H) step size before bias / softplus.
        A: (H,) scalar decay rate per head (negative for a stable model).
        B, C: (B, L, G, N); head h reads group h // (H // G).
        D: (H,) or (H, P) skip, or None.
        z: (B, L, H, P) gate, y = y * silu(z), or None.
        dt_bias: (H,) or None;  dt' = softplus(dt + dt_bias) if dt_softplus else dt + dt_bias.
        chunk_size: chunk length Q of the chunked algorithm (ignored by "reference"; "triton" may
            run it as smaller chunks, the same function up to rounding: ``docs/ssd.md``).
        initial_state: (B, H, P, N), or (S, H, P, N) with ``cu_seqlens``, or None (zeros).
        return_final_state: also return the state after the last token.
        backend: "auto", "reference", "torch" or "triton".
        cu_seqlens: (S + 1,) int32/int64 cumulative lengths (0, ..., L) of S
            sequences packed in a batch of one (B = 1); each runs from its own
            initial state, no state crosses a boundary. None: one sequence per row.
    Returns:
        y: (B, L, H, P) in x's dtype; with ``return_final_state`` also the
        final state (B, H, P, N) (per sequence (S, H, P, N) with ``cu_seqlens``),
        float32 (float64 for float64 x).
    """
    fn = "ssd"
    sizes: dict[str, int] = {}
    check_shape(fn, "x", x, ("B", "L", "H", "P"), sizes)
    check_shape(fn, "dt", dt, ("B", "L", "H"), sizes)
    check_shape(fn, "B", B, ("B", "L", "G", "N"), sizes)
    check_shape(fn, "C", C, ("B", "L", "G", "N"), sizes)
    if z is not None:
        check_shape(fn, "z", z, ("B", "L", "H", "P"), sizes)
    rows = "B"
    if cu_seqlens is not None:
        sizes["S"] = _check_cu_seqlens(fn, cu_seqlens, x)
        rows = "S"
    if initial_state is not None:
        check_shape(fn, "initial_state", initial_state, (rows, "H", "P", "N"), sizes)
    tensors = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z,
               "dt_bias": dt_bias, "initial_state": initial_state}  # fmt: skip
    _check_params(fn, sizes, tensors, dt_softplus)
    check_positive_int(fn, "chunk_size", chunk_size)
    _check_bool(fn, "return_final_state", return_final_state)
    impl = SSD_BACKENDS.get(backend, x.device, x.dtype)

    if sizes["L"] == 0:  # nothing to scan: empty output, state unchanged
        state_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        shape = (sizes[rows], sizes["H"], sizes["P"], sizes["N"])  # (B, H, P, N)
        if initial_state is None:
            final = torch.zeros(shape, dtype=state_dtype, device=x.device)
        else:
            final = initial_state.to(state_dtype)
        y = x.new_zeros(x.shape)  # (B, 0, H, P)
    else:
        varlen = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
        y, final = impl(x, dt, A, B, C, D, z, dt_bias, dt_softplus, chunk_size, initial_state, **varlen)
    return (y, final) if return_final_state else y


def _check_cu_seqlens(fn: str, cu_seqlens: object, x: torch.Tensor) -> int:
    """Validate packed-sequence boundaries; return the number of sequences S."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"{fn}: argument `cu_seqlens` must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{fn}: argument `cu_seqlens` must have dtype int32 or int64, got {str(cu_seqlens.dtype).replace('torch.', '')}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"{fn}: argument `cu_seqlens` expected shape (S + 1,) with S >= 1, got {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != x.device:
        raise ValueError(f"{fn}: argument `cu_seqlens` is on {cu_seqlens.device}, expected the device of `x` ({x.device})")
    if x.shape[0] != 1:
        raise ValueError(f"{fn}: with `cu_seqlens`, `x` must hold the packed sequences in a batch of one, got batch {x.shape[0]}")
    if not torch.compiler.is_compiling():  # value checks read the tensor (a host sync)
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != x.shape[1] or any(b < a for a, b in zip(cu[:-1], cu[1:])):
            raise ValueError(
                f"{fn}: argument `cu_seqlens` must rise from 0 to L={x.shape[1]} without decreasing, got {cu}"
            )
    return cu_seqlens.shape[0] - 1


def _ssd_step_triton(*args, **kwargs):
    from .triton_step import ssd_step_triton  # Triton imported on first use

    return ssd_step_triton(*args, **kwargs)


SSD_STEP_BACKENDS = OpBackends(
    op="ssd_step",
    impls={"torch": ssd_step_torch, "triton": _ssd_step_triton, "c": ssd_step_c},
    available={"triton": triton_unavailable, "c": ssd_step_c_unavailable_reason},
    auto_order={"cpu": ("c", "torch"), "cuda": ("triton", "torch")},
    dtypes={"triton": TRITON_DTYPES, "c": C_STEP_DTYPES},
)


def ssd_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of SSD for decoding; a pure function (``state`` is not modified).

    Args:
        state: (B, H, P, N) state before this token (float32 by convention).
        x: (B, H, P);  dt: (B, H);  A: (H,);  B, C: (B, G, N);
        D: (H,) or (H, P) or None;  z: (B, H, P) or None;  dt_bias: (H,) or None.
        backend: "auto", "torch", "triton" or "c" (table ``SSD_STEP_BACKENDS``; "c": no autograd of its own, a
            call that needs it runs the "torch" step).
    Returns:
        y: (B, H, P) in x's dtype; new_state: (B, H, P, N), float32 (float64 for float64 x).
    """
    fn = "ssd_step"
    sizes: dict[str, int] = {}
    check_shape(fn, "x", x, ("B", "H", "P"), sizes)
    check_shape(fn, "dt", dt, ("B", "H"), sizes)
    check_shape(fn, "B", B, ("B", "G", "N"), sizes)
    check_shape(fn, "C", C, ("B", "G", "N"), sizes)
    check_shape(fn, "state", state, ("B", "H", "P", "N"), sizes)
    if z is not None:
        check_shape(fn, "z", z, ("B", "H", "P"), sizes)
    tensors = {"state": state, "x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D,
               "z": z, "dt_bias": dt_bias}  # fmt: skip
    _check_params(fn, sizes, tensors, dt_softplus)
    return SSD_STEP_BACKENDS.get(backend, x.device, x.dtype)(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
