"""Selective scan (Mamba-1): the public ops and their backend table.

    y = selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, initial_state=None,
                       return_final_state=False, backend="auto")
    y_t, state = selective_scan_step(state, u_t, delta_t, A, B_t, C_t, ...)

Symbols (Gu & Dao 2023): u = x, delta = Δ (Δ = softplus(delta + delta_bias)
if ``delta_softplus`` else delta + delta_bias), Ā = exp(Δ A), h = state:
h_t = Ā_t h_{t-1} + Δ_t B_t u_t ;  y_t = C_t · h_t + D u_t ;  y *= silu(z).

Shapes: u, delta, z (B, L, D); A (D, N); B, C (B, L, N) or grouped
(B, L, G, N), channel d reading group d // (D // G); D, delta_bias (D,);
state (B, D, N), float32 (float64 for float64 inputs).

Backends (``SCAN_BACKENDS``): "reference" (float64 loop, reference.py),
"torch" (chunked PyTorch, chunked.py, any device), "c" (compiled C kernel,
CPU, cpu_c.py), "triton" (GPU kernels, triton*.py; float32/16, bfloat16).
"auto" tries ("c", "torch") on CPU and ("triton", "torch") on CUDA, once per
(device type, input dtype), and logs its choice. ``selective_scan_step``: "torch" (step.py)
or "triton" (triton_step.py), table ``SCAN_STEP_BACKENDS``.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..._checks import check_divisible, check_float, check_same_device, check_shape
from .._triton import triton_unavailable_reason
from .._triton import TRITON_DTYPES
from ..backends import OpBackends
from .chunked import selective_scan_chunked
from .cpu_c import c_unavailable_reason, selective_scan_c
from .reference import selective_scan_reference, state_dtype
from .step import selective_scan_step_impl
from .step_c import C_STEP_DTYPES, selective_scan_step_c, step_c_unavailable_reason
from .triton_backend import selective_scan_triton_impl

__all__ = ["selective_scan", "selective_scan_step", "selective_scan_reference", "SCAN_BACKENDS", "SCAN_STEP_BACKENDS"]

SCAN_BACKENDS = OpBackends(
    op="selective_scan",
    impls={"reference": selective_scan_reference, "torch": selective_scan_chunked, "c": selective_scan_c,
           "triton": selective_scan_triton_impl},
    available={"c": c_unavailable_reason, "triton": triton_unavailable_reason},
    auto_order={"cpu": ("c", "torch"), "cuda": ("triton", "torch")},
    dtypes={"triton": TRITON_DTYPES},
)


def _step_triton(*args, **kwargs):
    from .triton_step import selective_scan_step_triton  # Triton imported on first use

    return selective_scan_step_triton(*args, **kwargs)


SCAN_STEP_BACKENDS = OpBackends(
    op="selective_scan_step",
    impls={"torch": selective_scan_step_impl, "triton": _step_triton, "c": selective_scan_step_c},
    available={"triton": triton_unavailable_reason, "c": step_c_unavailable_reason},
    auto_order={"cpu": ("c", "torch"), "cuda": ("triton", "torch")},
    dtypes={"triton": TRITON_DTYPES, "c": C_STEP_DTYPES},
)


def _check_common(fn: str, args: dict, seq: tuple[str, ...], bc: list[tuple[str, ...]]) -> torch.device:
    """Validate shapes (named dims), float dtypes, devices and groups; ``seq`` is (B, L, D) or (B, D)."""
    sizes: dict[str, int] = {}
    check_shape(fn, "A", args["A"], ("D", "N"), sizes)
    for name in ("u", "delta"):
        x = args[name]
        if isinstance(x, torch.Tensor) and x.dim() == len(seq) == 3 and x.shape[1] == sizes["D"] != x.shape[2]:
            raise ValueError(
                f"{fn}: argument `{name}` expected shape (B, L, D={sizes['D']}), got {tuple(x.shape)} "
                "(this looks like channels-first (B, D, L); ssmkit uses sequence-major (B, L, D))"
            )
        check_shape(fn, name, x, seq, sizes)
    spec_b = check_shape(fn, "B", args["B"], bc, sizes)
    check_shape(fn, "C", args["C"], spec_b, sizes)
    for name, dims in (("z", seq), ("D", ("D",)), ("delta_bias", ("D",)), ("state", ("B", "D", "N")),
                       ("initial_state", ("B", "D", "N"))):
        if args.get(name) is not None:
            check_shape(fn, name, args[name], dims, sizes)
    for name, t in args.items():
        if t is not None:
            check_float(fn, name, t)
    if "G" in sizes:
        check_divisible(fn, "D", sizes["D"], "G", sizes["G"])
    return check_same_device(fn, args)


def selective_scan(
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
    backend: str = "auto",
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan over a whole sequence (differentiable).

    Args:
        u, delta: (B, L, D).  A: (D, N).  B, C: (B, L, N) or (B, L, G, N).
        D, delta_bias: (D,) or None.  z: (B, L, D) or None (no gate).
        delta_softplus: apply softplus to delta + delta_bias.
        initial_state: (B, D, N) or None (zeros).
        return_final_state: also return the state after the last token.
        backend: "auto", "reference", "torch", "c" or "triton" (see module docstring).
    Returns:
        y: (B, L, D) in u's dtype; with ``return_final_state`` also the final
        state (B, D, N) in float32 (float64 for float64 ``u``).
    """
    fn = "selective_scan"
    args = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    device = _check_common(fn, args, ("B", "L", "D"), [("B", "L", "N"), ("B", "L", "G", "N")])
    impl = SCAN_BACKENDS.get(backend, device, u.dtype)  # an unknown backend name raises here
    if u.shape[1] == 0:  # empty sequence: nothing to scan, the state passes through
        state = initial_state if initial_state is not None else u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
        y = u.new_empty(u.shape)
        return (y, state.to(state_dtype(u))) if return_final_state else y
    return impl(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=bool(delta_softplus),
                initial_state=initial_state, return_final_state=return_final_state)


def selective_scan_step(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the selective scan (decoding); pure, fixed cost.

    Args:
        state: (B, D, N).  u, delta, z: (B, D).  A: (D, N).
        B, C: (B, N) or (B, G, N).  D, delta_bias: (D,).
        backend: "auto", "torch", "triton" or "c" (table ``SCAN_STEP_BACKENDS``; "c": no autograd of its own,
            a call that needs it runs the "torch" step).
    Returns:
        y: (B, D) in u's dtype; new_state: (B, D, N) float32 (float64 for float64 ``u``).
    """
    fn = "selective_scan_step"
    args = dict(state=state, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    device = _check_common(fn, args, ("B", "D"), [("B", "N"), ("B", "G", "N")])
    impl = SCAN_STEP_BACKENDS.get(backend, device, u.dtype)
    return impl(state, u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=bool(delta_softplus))
