"""Programmatic dependent launch (PDL) for the decode step's kernels.

At batch 1 a decode step is a chain of small kernels (per Mamba layer: the residual add and norm, four
projections, the conv step, the scan step), each waiting for the one before: on the H200 each takes ~2 µs in
a CUDA graph, most of it launch and the first loads' latency rather than work. On Hopper and later, a kernel
launched with Triton's ``launch_pdl`` may start while the kernel before it is still running:

* every program first calls ``release_dependents()``, so the kernel after it may be scheduled as soon as all
  of this kernel's programs have started;
* it then loads what no kernel of the step writes (weights, biases, A, D) and only then calls
  ``wait_inputs()``, which returns once the kernel before it has completed and its writes are visible; every
  load of an earlier kernel's output and every store comes after it.

Every program of such a kernel calls ``wait_inputs()``, so its completion implies its predecessor's, and so on
down the chain: a kernel reading the output of any earlier kernel of the step sees it. Without the launch
option both calls do nothing, and a kernel launched without it waits for its predecessor as usual.

``chain_launch(device)`` gives the kernels' launch keywords: the ``PDL`` constexpr and, where it is on, the
launch option. It is on for CUDA devices of compute capability 9.0 and up with a Triton that has both
(3.4 and later) and a driver of CUDA 12.3 or later (which captures such launches in CUDA graphs), unless the
environment variable ``SSMKIT_PDL`` is ``0``; never in Triton's interpreter.
"""

import ctypes
import functools
import inspect
import os

import torch
import triton
import triton.language as tl

from ._triton import interpret_mode


def triton_lowers_gdc(gdc_function) -> bool:
    """Whether a kernel calling Triton's ``gdc_wait`` / ``gdc_launch_dependents`` compiles: they take the code
    generator's ``_semantic`` (Triton 3.5 and later). Triton 3.4 has the ``launch_pdl`` option, but its gdc_*
    functions still take the ``_builder`` its code generator no longer passes, so no kernel calling them compiles
    (``benchmarks/triton_versions.py``); there ssmkit emits the same PTX instructions itself."""
    return "_semantic" in inspect.signature(gdc_function).parameters


try:
    from triton.backends.nvidia.compiler import CUDAOptions
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    _HAS_PDL = "launch_pdl" in CUDAOptions.__dataclass_fields__
    _TRITON_GDC = triton_lowers_gdc(gdc_wait) and triton_lowers_gdc(gdc_launch_dependents)
except Exception:  # an older Triton (or another backend): the kernels are built with PDL off
    _HAS_PDL = _TRITON_GDC = False


@triton.jit
def own_release_dependents():
    """``griddepcontrol.launch_dependents`` as inline PTX (where Triton's own function does not compile)."""
    tl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=tl.int32, is_pure=False,
                              pack=1)  # fmt: skip


@triton.jit
def own_wait_inputs():
    """``griddepcontrol.wait`` as inline PTX (where Triton's own function does not compile)."""
    tl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=tl.int32, is_pure=False, pack=1)


if _HAS_PDL and _TRITON_GDC:

    @triton.jit
    def release_dependents():
        """Lets the next kernel of the stream start once every program of this one has called it."""
        gdc_launch_dependents()

    @triton.jit
    def wait_inputs():
        """Waits until the kernel before has completed and its writes are visible."""
        gdc_wait()

elif _HAS_PDL:
    release_dependents, wait_inputs = own_release_dependents, own_wait_inputs

else:

    @triton.jit
    def release_dependents():
        pass

    @triton.jit
    def wait_inputs():
        pass


_MAJOR: dict = {}  # device index -> compute capability major
MIN_DRIVER = 12030  # CUDA 12.3: programmatic dependent launches inside captured graphs


@functools.lru_cache(maxsize=None)
def driver_version() -> int:
    """The CUDA driver's version (12030 for 12.3), 0 where it cannot be read."""
    try:
        v = ctypes.c_int(0)
        ok = ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(v)) == 0
        return v.value if ok else 0
    except OSError:  # (no libcuda.so.1 by that name: another platform)
        return 0


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with PDL (see the module docstring)."""
    if device.type != "cuda" or not _HAS_PDL or interpret_mode() or os.environ.get("SSMKIT_PDL", "1") == "0":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _MAJOR:
        _MAJOR[index] = torch.cuda.get_device_capability(index)[0]
    return _MAJOR[index] >= 9 and driver_version() >= MIN_DRIVER


def chain_launch(device: torch.device) -> dict:
    """Launch keywords of a decode-chain kernel on ``device``: ``PDL`` for its constexpr, and Triton's
    ``launch_pdl`` where PDL is on."""
    return {"PDL": True, "launch_pdl": True} if pdl_enabled(device) else {"PDL": False}
