"""The C matrix-vector kernel for one row on the CPU (``gemv_cpu.c``), built on first use.

Built with OpenMP where the compiler has it (rows split across ``torch.get_num_threads()`` threads),
else for one thread. A machine without a C compiler keeps ``F.linear`` (``cpu_gemv_available``).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Optional

import torch

from .._c_build import CBuildError, build, build_and_load, open_library

_HERE = Path(__file__).resolve().parent
SOURCES = ("gemv_cpu.c", "../bf16_cpu.h")
# (compile flags, link flags): with OpenMP, then for one thread where the compiler has no OpenMP
FLAG_SETS = (
    (("-O3", "-march=native", "-fopenmp", "-fPIC"), ("-shared", "-fopenmp")),
    (("-O3", "-march=native", "-fopenmp-simd", "-Wno-unknown-pragmas", "-fPIC"), ("-shared",)),
)
ABI = 1
TYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}
# Products with fewer weights run on one thread: splitting them costs more than it saves (a fork and join
# of the thread team takes a few µs; 2^15 bfloat16 weights stream in ~3 µs on one core).
PARALLEL_MIN_WEIGHTS = 2**15


def load_library(path: Path) -> ctypes.CDLL:
    """Load a built kernel, check its ABI and declare its entry point."""
    lib = open_library(path, "gemv_abi", ABI, "the kernel's ABI")
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.gemv.argtypes = [p, i64, i32, p, i32, p, p, i64, i64, i32]
    lib.gemv.restype = i32
    return lib


def build_library(flag_set: int = 0, compiler: Optional[list[str]] = None, cache_dir: Optional[Path] = None) -> Path:
    """Compile ``gemv_cpu.c`` with ``FLAG_SETS[flag_set]`` into the cache (if not there yet); the .so path."""
    cflags, lflags = FLAG_SETS[flag_set]
    return build("gemv_cpu", _HERE, SOURCES, cflags, lflags, compiler, cache_dir)


@functools.lru_cache(maxsize=None)
def _cached() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    return build_and_load("gemv_cpu", _HERE, SOURCES, FLAG_SETS, load_library)


def cpu_gemv_available() -> bool:
    """Whether the kernel is (or can be) built and loaded here."""
    return _cached()[0] is not None


def gemv_cpu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x (1, K) by the kernel; the caller has checked ``cpu_gemv_applies``."""
    lib, reason = _cached()
    if lib is None:
        raise CBuildError(reason)
    N, K = weight.shape
    code = TYPE_CODES[weight.dtype]
    y = torch.empty(1, N, dtype=weight.dtype)
    threads = 1 if N * K < PARALLEL_MIN_WEIGHTS else torch.get_num_threads()
    rc = lib.gemv(weight.data_ptr(), weight.stride(0), code, x.data_ptr(), TYPE_CODES[x.dtype],
                  None if bias is None else bias.data_ptr(), y.data_ptr(), N, K, threads)  # fmt: skip
    if rc != 0:
        raise MemoryError(f"linear (C kernel): could not allocate a float32 copy of x ({K} values)")
    return y


__all__ = ["gemv_cpu", "cpu_gemv_available", "build_library", "load_library"]
