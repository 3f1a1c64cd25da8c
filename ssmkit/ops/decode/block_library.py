"""Building, loading and calling a fused CPU decode block's C library: one entry point taking one ctypes struct
of pointers, sizes and constants (``mamba_block.py``, ``mamba2_block.py``)."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Optional

import torch

from .._c_build import CBuildError, build_and_load, open_library

HERE = Path(__file__).resolve().parent
# (compile flags, link flags): -ffast-math for the steps' vector exp (see ops/scan/cpu_c_build.py); OpenMP for the
# projections' (and the Mamba-2 heads') threads, then without it where the compiler lacks it
FLAG_SETS = (
    (("-O3", "-ffast-math", "-march=native", "-fopenmp", "-fPIC"), ("-shared", "-fopenmp", "-lm")),
    (("-O3", "-ffast-math", "-march=native", "-fopenmp-simd", "-Wno-unknown-pragmas", "-fPIC"), ("-shared", "-lm")),
)
TYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}


class BlockLibrary:
    """One block's C library: ``stem`` built from ``sources`` (paths relative to this folder, every file the
    build reads), whose ``entry(const struct *)`` returns 0 or a negative code, and whose ``size_entry()``
    returns sizeof(struct) (checked on load)."""

    def __init__(self, stem: str, sources: tuple[str, ...], struct: type, entry: str, size_entry: str) -> None:
        self.stem, self.sources, self.struct, self.entry, self.size_entry = stem, sources, struct, entry, size_entry

    def load(self, path: Path) -> ctypes.CDLL:
        """Load a built library, check its struct's size and declare its entry point."""
        lib = open_library(path, self.size_entry, ctypes.sizeof(self.struct), f"the size of {self.struct.__name__}")
        fn = getattr(lib, self.entry)
        fn.argtypes = [ctypes.POINTER(self.struct)]
        fn.restype = ctypes.c_int
        return lib

    @functools.cached_property
    def _loaded(self) -> tuple[Optional[ctypes.CDLL], Optional[str]]:
        return build_and_load(self.stem, HERE, self.sources, FLAG_SETS, self.load)

    def cached(self) -> tuple[Optional[ctypes.CDLL], Optional[str]]:
        """(the library, None), or (None, why it cannot be built or loaded here); built on first use."""
        return self._loaded

    def available(self) -> bool:
        return self.cached()[0] is not None

    def call(self, params: ctypes.Structure, what: str) -> None:
        """Run the entry point on ``params``; a failed allocation in it becomes a MemoryError naming ``what``."""
        lib, reason = self.cached()
        if lib is None:
            raise CBuildError(reason)
        if getattr(lib, self.entry)(ctypes.byref(params)) != 0:
            raise MemoryError(f"{what} (C): could not allocate its scratch buffers")

    def run_step(self, template: ctypes.Structure, residual: torch.Tensor, pending: Optional[torch.Tensor],
                 conv_state: torch.Tensor, ssm_state: torch.Tensor, what: str):  # fmt: skip
        """One token through a block whose static fields (weights, sizes, constants) ``template`` holds: a copy of it
        gets this token's buffers (the fields res_in, pend, res_out, out, conv_in, conv_out, ssm_in, ssm_out,
        res_type, nthreads, which every block's struct has) and is run. Returns (residual + pending, the block's
        output (1, d_model) in act_type's dtype, new conv state, new ssm state)."""
        p = type(template).from_buffer_copy(template)  # (a copy per call: two threads may run one layer)
        res_out, conv_out = torch.empty_like(residual), torch.empty_like(conv_state)
        ssm_out = torch.empty_like(ssm_state)
        out = torch.empty(residual.shape, dtype=conv_state.dtype)
        p.res_in, p.pend, p.res_out, p.out = residual.data_ptr(), pointer(pending), res_out.data_ptr(), out.data_ptr()
        p.conv_in, p.conv_out, p.ssm_in, p.ssm_out = (conv_state.data_ptr(), conv_out.data_ptr(), ssm_state.data_ptr(),
                                                      ssm_out.data_ptr())  # fmt: skip
        p.res_type, p.nthreads = TYPE_CODES[residual.dtype], torch.get_num_threads()
        self.call(p, what)
        return res_out, out, conv_out, ssm_out


def pointer(t: Optional[torch.Tensor]) -> Optional[int]:
    """A tensor's data pointer for a struct field (None: NULL)."""
    return None if t is None else t.data_ptr()


def struct_fields(pointers: str, sizes: str, doubles: str) -> list[tuple[str, type]]:
    """ctypes fields in a C struct's order: void pointers, then int64 sizes, then doubles (names space-separated)."""
    return ([(n, ctypes.c_void_p) for n in pointers.split()] + [(n, ctypes.c_int64) for n in sizes.split()]
            + [(n, ctypes.c_double) for n in doubles.split()])  # fmt: skip


__all__ = ["BlockLibrary", "FLAG_SETS", "HERE", "TYPE_CODES", "pointer", "struct_fields"]
