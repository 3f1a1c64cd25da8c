"""Build and load the C selective-scan kernel (``scan_cpu.c``) on first use.

The kernel is plain C called through ctypes with raw data pointers: no torch
headers, so it compiles in a couple of seconds and does not depend on the
torch ABI. Build:

* compiler, cache and atomic writes: ``ssmkit/ops/_c_build.py``;
* compile with ``-O3 -ffast-math -march=native`` (``-ffast-math`` is what lets
  gcc call glibc's vector ``exp``/``log1p`` from the ``#pragma omp simd`` loops),
  then link *without* ``-ffast-math``: linking a shared library with it (gcc
  < 13) adds ``crtfastmath.o``, which would set flush-to-zero for the whole
  process at load time.

A failure anywhere becomes a :class:`CBuildError` whose message is the reason
reported by ``backend="c"``.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Optional

from .._c_build import CBuildError, build, open_library

SOURCES = ("scan_cpu.c", "scan_cpu_kernel.h", "scan_cpu_backward.h")
COMPILE_FLAGS = ("-O3", "-ffast-math", "-march=native", "-fopenmp-simd", "-fPIC")
LINK_FLAGS = ("-shared", "-lm", "-lpthread")
_HERE = Path(__file__).resolve().parent


class ScanParams(ctypes.Structure):
    """Mirror of ``ss_params`` in scan_cpu.c (pointers, then int64 sizes)."""

    _fields_ = [
        (name, ctypes.c_void_p)
        for name in (
            "u", "delta", "A_t", "Bm", "Cm", "Dv", "bias", "z", "h0", "y", "h_last", "ckpt",
            "gy", "gh_last", "gu", "gdelta", "gz", "gh0", "gA", "gD", "gbias", "gB", "gC",
        )
    ] + [
        (name, ctypes.c_int64)
        for name in ("batch", "seqlen", "dim", "dstate", "ngroups", "ckpt_every", "softplus", "nthreads")
    ]


def build_library(compiler: Optional[list[str]] = None, cache_dir: Optional[Path] = None) -> Path:
    """Compile ``scan_cpu.c`` into the cache (if not there yet); return the .so path."""
    return build("scan_cpu", _HERE, SOURCES, COMPILE_FLAGS, LINK_FLAGS, compiler, cache_dir)


def load_library(path: Path) -> ctypes.CDLL:
    """Load the built kernel and declare its entry points; check the ABI."""
    lib = open_library(path, "ss_params_size", ctypes.sizeof(ScanParams), "the size of ss_params")
    for prec in ("f32", "f64"):
        for entry, restype in (("ss_forward", ctypes.c_int), ("ss_backward", ctypes.c_int), ("num_tasks", ctypes.c_int64)):
            fn = getattr(lib, f"{entry}_{prec}")
            fn.argtypes = [ctypes.POINTER(ScanParams)]
            fn.restype = restype
    return lib


@functools.lru_cache(maxsize=None)
def _cached() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    try:
        return load_library(build_library()), None
    except CBuildError as e:
        return None, str(e)


def get_library() -> ctypes.CDLL:
    """The loaded kernel, built on first use; raises CBuildError with the reason."""
    lib, reason = _cached()
    if lib is None:
        raise CBuildError(reason)
    return lib


def unavailable_reason() -> Optional[str]:
    """None when the kernel is (or can be) built and loaded here, else why not."""
    return _cached()[1]


__all__ = ["CBuildError", "ScanParams", "build_library", "load_library", "get_library", "unavailable_reason"]
