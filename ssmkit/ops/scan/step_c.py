"""Selective scan one-token step, the C CPU backend (``step_cpu.c``; ``selective_scan_step(backend="c")``).

One C call in place of the ~20 small tensor ops of the PyTorch step, for float32 and bfloat16 activations on the
CPU without autograd; a call that autograd has to differentiate runs the PyTorch step (``step.py``), which
computes the same function. Built on first use (``ssmkit/ops/_c_build.py``).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Optional

import torch

from .._c_build import CBuildError, build_and_load, cpu_only_reason, open_library
from .._triton import f32, no_grad_eager_call
from .step import selective_scan_step_impl

_HERE = Path(__file__).resolve().parent
SOURCES = ("step_cpu.c", "../bf16_cpu.h")
COMPILE_FLAGS = ("-O3", "-ffast-math", "-march=native", "-fopenmp-simd", "-fPIC")  # (as scan_cpu.c: vector exp)
LINK_FLAGS = ("-shared", "-lm")
ABI = 1
MAX_STATE = 1024  # d_state the kernel's stack buffers hold
C_STEP_DTYPES = (torch.float32, torch.bfloat16)


def load_library(path: Path) -> ctypes.CDLL:
    """Load a built kernel, check its ABI and declare its entry point."""
    lib = open_library(path, "step_abi", ABI, "the kernel's ABI")
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.ss_step.argtypes = [p] * 11 + [i32, i32, i64, i64, i64, i64, p]
    lib.ss_step.restype = i32
    return lib


@functools.lru_cache(maxsize=None)
def _cached() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    return build_and_load("step_cpu", _HERE, SOURCES, ((COMPILE_FLAGS, LINK_FLAGS),), load_library)


def step_c_unavailable_reason(device: torch.device) -> Optional[str]:
    """None when backend "c" can run the step on ``device``, else the reason (for ``OpBackends``)."""
    return cpu_only_reason(device, lambda: _cached()[1])


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _row_ok(t: Optional[torch.Tensor]) -> bool:
    return t is None or t.stride(-1) == 1


def selective_scan_step_c(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """``selective_scan_step_impl``'s contract (inputs validated) by the C kernel where it applies: no gradient
    to track, activations in one dtype of ``C_STEP_DTYPES``, unit stride along channels and states, d_state up
    to ``MAX_STATE``, plain tensors; otherwise the PyTorch step."""
    acts = [t for t in (u, delta, z, B, C) if t is not None]
    tensors = acts + [t for t in (state, A, D, delta_bias) if t is not None]
    applies = (
        no_grad_eager_call(*tensors)
        and u.dtype in C_STEP_DTYPES and all(t.dtype == u.dtype for t in acts)
        and A.shape[1] <= MAX_STATE and all(_row_ok(t) for t in acts)
    )  # fmt: skip
    if not applies:
        return selective_scan_step_impl(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    lib, reason = _cached()
    if lib is None:
        raise CBuildError(reason)
    batch, dim = u.shape
    N = A.shape[1]
    grouped = B.dim() == 3
    G = B.shape[1] if grouped else 1
    h0, A32, D32, bias32 = f32(state), f32(A), f32(D), f32(delta_bias)
    h1 = torch.empty(batch, dim, N, dtype=torch.float32)
    y = torch.empty(batch, dim, dtype=u.dtype)
    rs = (ctypes.c_int64 * 6)(u.stride(0), delta.stride(0), 0 if z is None else z.stride(0), B.stride(0),
                              C.stride(0), y.stride(0))  # fmt: skip
    if grouped and (B.stride(1) != N or C.stride(1) != N):
        B, C = B.contiguous(), C.contiguous()
        rs[3], rs[4] = B.stride(0), C.stride(0)
    rc = lib.ss_step(h0.data_ptr(), h1.data_ptr(), u.data_ptr(), delta.data_ptr(), _ptr(z), B.data_ptr(), C.data_ptr(),
                     y.data_ptr(), A32.data_ptr(), _ptr(D32), _ptr(bias32), int(u.dtype == torch.bfloat16),
                     int(bool(delta_softplus)), batch, dim, N, G, rs)  # fmt: skip
    if rc == -2:
        raise MemoryError(f"selective_scan_step (backend 'c'): could not allocate {3 * dim} floats of scratch")
    if rc != 0:
        raise ValueError(f"selective_scan_step (backend 'c'): d_state must be <= {MAX_STATE}, got {N}")
    return y, h1


__all__ = ["selective_scan_step_c", "step_c_unavailable_reason", "C_STEP_DTYPES"]
