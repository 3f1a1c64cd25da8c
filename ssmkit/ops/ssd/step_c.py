"""SSD one-token step, the C CPU backend (``ssd_step_cpu.c``; ``ssd_step(backend="c")``).

One pass over the (B, H, P, N) state in place of the PyTorch step's dozen tensor ops over it, for float32 and
bfloat16 activations on the CPU without autograd; a call that autograd has to differentiate runs the PyTorch
step (``step.py``), which computes the same function. Built on first use (``ssmkit/ops/_c_build.py``).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Optional

import torch

from .._c_build import CBuildError, build_and_load, cpu_only_reason, open_library
from .._triton import f32, no_grad_eager_call
from .step import ssd_step_torch

_HERE = Path(__file__).resolve().parent
SOURCES = ("ssd_step_cpu.c", "../bf16_cpu.h")
COMPILE_FLAGS = ("-O3", "-ffast-math", "-march=native", "-fopenmp-simd", "-fPIC")  # (vector exp, as the scan's)
LINK_FLAGS = ("-shared", "-lm")
ABI = 1
MAX_STATE = 1024  # d_state the kernel's stack buffers hold
C_STEP_DTYPES = (torch.float32, torch.bfloat16)


def load_library(path: Path) -> ctypes.CDLL:
    """Load a built kernel, check its ABI and declare its entry point."""
    lib = open_library(path, "ssd_step_abi", ABI, "the kernel's ABI")
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.ssd_step.argtypes = [p] * 10 + [i32, p, i32, i32, i64, i64, i64, i64, i64, p]
    lib.ssd_step.restype = i32
    return lib


@functools.lru_cache(maxsize=None)
def _cached() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    return build_and_load("ssd_step_cpu", _HERE, SOURCES, ((COMPILE_FLAGS, LINK_FLAGS),), load_library)


def ssd_step_c_unavailable_reason(device: torch.device) -> Optional[str]:
    """None when backend "c" can run the step on ``device``, else the reason (for ``OpBackends``)."""
    return cpu_only_reason(device, lambda: _cached()[1])


def _rows_ok(t: torch.Tensor) -> bool:
    """Contiguous within each batch row."""
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def ssd_step_c(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """``ssd_step_torch``'s contract (inputs validated) by the C kernel where it applies: no gradient to track,
    activations in one dtype of ``C_STEP_DTYPES``, each batch row contiguous, d_state up to ``MAX_STATE``,
    plain tensors; otherwise the PyTorch step."""
    acts = [t for t in (x, dt, z, B, C) if t is not None]
    tensors = acts + [t for t in (state, A, D, dt_bias) if t is not None]
    applies = (
        no_grad_eager_call(*tensors)
        and x.dtype in C_STEP_DTYPES and all(t.dtype == x.dtype for t in acts)
        and B.shape[2] <= MAX_STATE and all(_rows_ok(t) for t in acts)
    )  # fmt: skip
    if not applies:
        return ssd_step_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    lib, reason = _cached()
    if lib is None:
        raise CBuildError(reason)
    batch, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    h0, A32, D32, bias32 = f32(state), f32(A), f32(D), f32(dt_bias)
    h1 = torch.empty(batch, H, P, N, dtype=torch.float32)
    y = torch.empty(batch, H, P, dtype=x.dtype)
    rs = (ctypes.c_int64 * 6)(x.stride(0), dt.stride(0), 0 if z is None else z.stride(0), B.stride(0), C.stride(0),
                              y.stride(0))  # fmt: skip
    rc = lib.ssd_step(h0.data_ptr(), h1.data_ptr(), x.data_ptr(), dt.data_ptr(), None if z is None else z.data_ptr(),
                      B.data_ptr(), C.data_ptr(), y.data_ptr(), A32.data_ptr(), None if D32 is None else D32.data_ptr(),
                      int(D is not None and D.dim() == 2), None if bias32 is None else bias32.data_ptr(),
                      int(x.dtype == torch.bfloat16), int(bool(dt_softplus)), batch, H, P, N, G, rs)  # fmt: skip
    if rc != 0:
        raise ValueError(f"ssd_step (backend 'c'): d_state must be <= {MAX_STATE}, got {N}")
    return y, h1


__all__ = ["ssd_step_c", "ssd_step_c_unavailable_reason", "C_STEP_DTYPES"]
