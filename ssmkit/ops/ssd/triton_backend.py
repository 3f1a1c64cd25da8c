"""The "triton" entry of the SSD backend table, importable without Triton.

``ssd_triton_impl`` imports the kernels on first use, so that ``import
ssmkit`` never needs Triton; ``triton_unavailable`` says whether they can run
on a device (``ssmkit.ops._triton.triton_unavailable_reason``: on CPU only in
Triton's interpreter, ``TRITON_INTERPRET=1`` set before Triton is first
imported).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from .. import _triton
from .._triton import triton_unavailable_reason


def ssd_triton_impl(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``ssd_triton`` (see ``triton.py``), imported lazily."""
    from .triton import ssd_triton

    return ssd_triton(*args, **kwargs)


def triton_unavailable(device: torch.device) -> Optional[str]:
    """Why the kernels cannot run on ``device``, or None.

    While ``torch.compile`` traces, the check is skipped: it looks for the
    package with ``importlib`` (which Dynamo refuses to trace, breaking a
    ``fullgraph`` capture), and a missing Triton still fails at the first
    launch with an ImportError that names it.
    """
    if torch.compiler.is_compiling():
        return None
    return triton_unavailable_reason(device)


# The oldest Triton that compiles every SSD kernel for a GPU generation (compute capability major: 9 for Hopper
# and later, 7 before Ampere), from compiling each of them offline with Triton 3.0 to 3.9 for sm_90, sm_80, sm_75
# and sm_70 (``benchmarks/triton_versions.py``): on Hopper, Triton 3.0-3.2 (torch 2.4-2.6) abort the whole
# process on the 16-bit fused backward and the packed-sequence forward (LLVM "UNREACHABLE: unsupported
# emitBaseIndexForLayout", "Failed to emit transfer from register to shared"); before Ampere, Triton 3.3
# (torch 2.7) fails on every 16-bit SSD kernel ("PassManager::run failed"). Ampere and Ada compile from 3.0.
SSD_MIN_TRITON = {9: (3, 3), 7: (3, 4)}


def ssd_triton_unavailable(device: torch.device) -> Optional[str]:
    """:func:`triton_unavailable`, and on a GPU whose generation needs a later Triton for the SSD kernels
    (:data:`SSD_MIN_TRITON`), why they cannot run there: ``"auto"`` then takes the PyTorch backend, and
    ``backend="triton"`` raises with this reason instead of a compiler failure (or a crash)."""
    reason = triton_unavailable(device)
    if reason is not None or device.type != "cuda" or torch.compiler.is_compiling():
        return reason
    return _ssd_compiler_reason(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _ssd_compiler_reason(index: int) -> Optional[str]:
    major, minor = torch.cuda.get_device_capability(index)
    need = SSD_MIN_TRITON[9] if major >= 9 else SSD_MIN_TRITON[7] if major < 8 else None
    if need is None or _triton.triton_version() >= need:
        return None
    return (f"the SSD kernels need Triton {'.'.join(map(str, need))} or later on compute capability {major}.{minor} "
            f"(Triton {_triton.triton_version_text()}'s compiler fails on them; upgrade torch, which ships Triton, or use "
            f"backend='torch')")
