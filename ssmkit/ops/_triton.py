"""When the Triton kernels can run, and small helpers they share.

Triton kernels run on CUDA tensors, or on CPU tensors when the environment
variable ``TRITON_INTERPRET=1`` was set before ``triton`` was first imported
(the interpreter: slow, for tests). :func:`triton_unavailable_reason` says why
they cannot run on a device (``None`` when they can); it is the availability
check of every ``"triton"`` entry in the ops' backend tables.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Callable, Optional

import torch

# torch.compile evaluates these once while tracing and keeps the result (importlib and
# os.environ are not traceable in every torch version); both are facts of the process.
_constant = getattr(torch.compiler, "assume_constant_result", None) or torch._dynamo.assume_constant_result


@_constant
def interpret_mode() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@_constant
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_unavailable_reason(device: torch.device) -> Optional[str]:
    """``None`` when the Triton kernels can run on ``device``, else the reason they cannot."""
    if not _triton_installed():
        return "the `triton` package is not installed (pip install 'ssmkit[triton]')"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        return _too_old(device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "cpu":
        if interpret_mode():
            return None
        return "Triton kernels run on CUDA tensors (on CPU only under TRITON_INTERPRET=1)"
    return f"Triton kernels do not run on {device.type} tensors"


@_constant
def _too_old(index: int) -> Optional[str]:
    return _too_old_reason(index)


@functools.lru_cache(maxsize=None)
def _too_old_reason(index: int) -> Optional[str]:
    """Triton compiles for NVIDIA GPUs of compute capability 7.0 (Volta) and later; before Ampere (8.0), ssmkit
    takes its kernels from Triton 3.3 on (:data:`MIN_TRITON_BEFORE_AMPERE`)."""
    major, minor = torch.cuda.get_device_capability(index)
    if major < 7:
        return (f"Triton compiles for GPUs of compute capability 7.0 and later; "
                f"{torch.cuda.get_device_name(index)} is {major}.{minor}")
    if major < 8 and triton_version() < MIN_TRITON_BEFORE_AMPERE:
        return (f"ssmkit's Triton kernels need Triton {'.'.join(map(str, MIN_TRITON_BEFORE_AMPERE))} or later on "
                f"GPUs before Ampere (torch 2.7 and later ship it); Triton {triton_version_text()} cannot compile "
                f"their bfloat16 code for compute capability {major}.{minor}")
    return None


# Compiled offline for sm_75 and sm_70 with Triton 3.0 to 3.9 (``benchmarks/triton_versions.py``), every kernel
# of ssmkit with bfloat16 inputs fails in Triton 3.0-3.2 (torch 2.4-2.6): an internal PTX codegen error, or
# map::at. From 3.3 they compile (the SSD's own limit is in ``ssd/triton_backend.py``).
MIN_TRITON_BEFORE_AMPERE = (3, 3)


@functools.lru_cache(maxsize=None)
def triton_version_text() -> str:
    import triton

    return triton.__version__


def triton_version() -> tuple[int, int]:
    """(major, minor) of the installed Triton: (3, 4) for "3.4.0"."""
    parts = triton_version_text().split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


# Launch options every ssmkit kernel passes. Fused multiply-adds on: the kernels' recurrences,
# dot products and polynomials are written for them (speed, and the accuracy the tests hold
# them to); Triton 3.9 warns that its default turns them off in 3.10.
LAUNCH = {"enable_fp_fusion": True}


def sm_count(device: torch.device) -> int:
    """Multiprocessors of ``device`` (1 off the GPU: the launch rules then see a one-SM machine)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


@functools.lru_cache(maxsize=None)
def _shared_memory_of(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    optin = getattr(props, "shared_memory_per_block_optin", 0)  # (where torch has it; else Triton's driver)
    if optin:
        return int(optin)
    import triton

    return int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])


def device_major(device: torch.device) -> int:
    """Compute capability major of a CUDA ``device`` (9: Hopper); 0 off the GPU (and where CUDA is absent:
    plans of CUDA tensors made without a GPU, as the tests and the offline compiles make them)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return 0
    return torch.cuda.get_device_capability(device)[0]


def shared_memory(device: torch.device) -> int:
    """Shared memory one program may use on ``device``, in bytes (the opt-in limit per block, which Triton
    checks at a kernel's first launch); unlimited off the GPU (the interpreter has no such limit) and where
    CUDA is absent."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return 1 << 40
    return _shared_memory_of(device.index if device.index is not None else torch.cuda.current_device())


@_constant
def _takes_maxnreg() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions

        return "maxnreg" in CUDAOptions.__dataclass_fields__
    except Exception:  # another backend, or a Triton whose options are laid out otherwise
        return False


def register_cap(n: int) -> dict:
    """Launch options capping a kernel's registers per thread at ``n`` (Triton's ``maxnreg``), so that more
    programs fit on a multiprocessor; empty for ``n`` = 0, in the interpreter, and where Triton lacks it."""
    return {"maxnreg": n} if n and not interpret_mode() and _takes_maxnreg() else {}


# The Triton kernels compute in float32 with float32, float16 or bfloat16 inputs; float64 goes to "torch".
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def eager_call(t: torch.Tensor) -> bool:
    """Whether a call on ``t`` may skip the custom ops' dispatcher (a plain autograd.Function or fused code
    instead): a plain tensor (not fake, meta or another subclass), outside ``torch.compile``."""
    return type(t) is torch.Tensor and not t.is_meta and not torch.compiler.is_compiling()


_RUNS_ON: dict = {}  # device -> whether the Triton kernels run there (a fact of the process)


def no_grad_eager_call(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether a kernel without a backward (Triton's or C's decode kernels) may take a call on ``tensors``: none
    of them (None skipped) has a gradient to track, and the first is a plain tensor outside ``torch.compile``
    (``eager_call``)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False
    return eager_call(tensors[0])


def no_grad_kernel_runs(device: torch.device, *tensors: Optional[torch.Tensor]) -> bool:
    """``no_grad_eager_call(*tensors)``, and the Triton kernels run on ``device`` (``triton_unavailable_reason``,
    asked once per device)."""
    if not no_grad_eager_call(*tensors):
        return False
    if device not in _RUNS_ON:
        _RUNS_ON[device] = triton_unavailable_reason(device) is None
    return _RUNS_ON[device]


def eager_function(name: str, forward: Callable, setup_context: Callable, backward: Callable) -> type:
    """A ``torch.autograd.Function`` computing what a custom op and its registered autograd formula compute,
    for the calls ``eager_call`` admits: ``forward(*inputs)`` is the op's function, ``setup_context(ctx,
    inputs, output)`` and ``backward(ctx, *grads)`` its formula, with the backward op's function called
    directly. Outside ``torch.compile`` this skips the ops' Python dispatch, autograd wrapper and output
    checks: 0.20-0.45 ms of host time per forward+backward of one op, a third of its Python path (the H200's
    host, ``benchmarks/host_overhead.py``), which counts where calls are small enough to be host-bound."""

    def fwd(ctx, *inputs):
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(fwd), "backward": staticmethod(backward)})


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for non-negative ints (grid and tile counts)."""
    return -(-a // b)


def unit_last(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t with unit stride along its last dimension (the kernels' channel axis): a copy only when needed."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t as a contiguous float32 tensor (parameters the kernels read in float32), None stays None."""
    if t is None:
        return None
    if t.dtype == torch.float32 and t.is_contiguous():  # (the usual case: one call instead of three)
        return t.detach()
    return t.detach().to(torch.float32).contiguous()


def spread_block(block: int, n: int, rows: int, programs: int, least: int) -> int:
    """A decode kernel's block along an axis of length ``n`` (a power of two), halved down to ``least`` while its
    grid, cdiv(n, block) * ``rows`` programs, has fewer than ``programs`` (the SMs): at batch 1 a step kernel's
    time is a few dependent loads, so more programs with less each finish sooner."""
    while block > least and cdiv(n, block) * rows < programs:
        block //= 2
    return block


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (tile sizes must be powers of two)."""
    return 1 << max(0, (n - 1).bit_length())
