"""Compile a recorded Triton launch for a GPU that is not there, through the JIT's own path.

``compile_launch(fn, args, kw, arch)`` hands ``fn``'s JIT the launch as the launcher made it (for tensors,
stand-ins on the CPU with the same dtype and the same alignment, ints and floats as they were, constexprs and launch
options as keywords), with Triton's active driver replaced by one that only names the target (``sm_<arch>``).
The JIT then specializes the arguments, parses the options and compiles with its bundled ptxas exactly as it
would before a launch, and stops there (``warmup``). Unlike building an ``ASTSource`` by hand, this does not
depend on how a given Triton version spells signatures, constexprs and attributes: the same call works from
Triton 3.0 to 3.9 (``benchmarks/triton_versions.py`` runs it across them). What a launcher sets by the GPU's
generation (programmatic dependent launch, the SSD kernels' ``FORMS``) is set for the target, as on that GPU
(``target_keywords``): the launches were recorded without it.
"""

from __future__ import annotations

import contextlib

import torch
import triton
from triton.backends.compiler import GPUTarget

from ssmkit.ops import _pdl
from ssmkit.ops.ssd.triton_forms import kernel_forms


class TargetOnlyDriver:
    """Stands in for Triton's CUDA driver: one device per target, stream 0; nothing is launched."""

    def __init__(self, arch: int):
        self.target, self.arch = GPUTarget("cuda", arch, 32), arch

    def is_active(self) -> bool:
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return self.arch  # (the JIT keeps its compiled kernels per device: one "device" per target)

    def set_current_device(self, device: int) -> None:
        pass

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda


@contextlib.contextmanager
def target(arch: int):
    """Triton's active driver names ``sm_<arch>`` while the block runs."""
    config = triton.runtime.driver
    before = dict(vars(config))  # (not reset_active(): later Tritons then create the CUDA driver, which needs a GPU)
    config.set_active(TargetOnlyDriver(arch))
    try:
        yield
    finally:
        vars(config).clear()
        vars(config).update(before)


def stand_in(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor of ``t``'s dtype whose address has ``t``'s alignment to 16 bytes (its storage offset's),
    which is all the JIT reads of a pointer argument."""
    offset = t.storage_offset() * t.element_size() % 16
    base = torch.empty(64, dtype=torch.uint8)
    shift = (-base.data_ptr()) % 16 + offset  # (bytes to an address with the same remainder mod 16 as t's)
    return base[shift : shift + 16].view(t.dtype)


def target_keywords(fn, kw: dict, arch: int) -> dict:
    """``kw`` with what the launchers choose by the GPU set for ``sm_<arch>``: programmatic dependent launch as
    ``_pdl.chain_launch`` sets it (on from sm_90 where this Triton has it, else off) and the SSD kernels'
    ``FORMS`` (``triton_forms.kernel_forms``)."""
    names = {p.name for p in fn.params}
    if "PDL" in names:
        on = arch >= 90 and _pdl._HAS_PDL
        kw = dict({k: v for k, v in kw.items() if k != "launch_pdl"}, PDL=on, **({"launch_pdl": True} if on else {}))
    if "FORMS" in names:
        kw = dict(kw, FORMS=kernel_forms(arch // 10))
    return kw


def compile_launch(fn, args: tuple, kw: dict, arch: int = 90):
    """The ``CompiledKernel`` of ``fn[grid](*args, **kw)`` for ``sm_<arch>`` (``asm["cubin"]``, ``asm["ptx"]``,
    ``metadata.shared``, ...). ``args`` / ``kw`` may hold meta tensors."""
    swap = lambda v: stand_in(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
    kw = target_keywords(fn, kw, arch)
    with target(arch):
        return fn.run(*[swap(a) for a in args], grid=(1,), warmup=True, **{k: swap(v) for k, v in kw.items()})
