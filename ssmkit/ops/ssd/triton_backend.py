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


# Tritons whose compiler fails on SSD kernels for a GPU generation, from compiling every launch offline with
# Triton 3.0 to 3.9 for sm_100, sm_90, sm_80, sm_75 and sm_70 (``benchmarks/triton_versions.py``): (compute
# capability majors, first and last failing Triton, what fails). Hopper with Triton 3.0-3.2 and sm_100 with 3.6-3.7
# compile the kernels in the forms of ``triton_forms.py``; Ampere, Ada (8.x) and consumer Blackwell (12.x) compile
# every kernel with every version.
SSD_FAILING_TRITON = (
    ((7,), (3, 0), (3, 3), "every 16-bit SSD kernel fails ('PassManager::run failed'; before 3.3 also bfloat16 code)"),
)  # fmt: skip


def ssd_triton_unavailable(device: torch.device) -> Optional[str]:
    """:func:`triton_unavailable`, and on a GPU for which the installed Triton's compiler fails on the SSD
    kernels (:data:`SSD_FAILING_TRITON`), why they cannot run there: ``"auto"`` then takes the PyTorch backend, and
    ``backend="triton"`` raises with this reason instead of a compiler failure (or a crash)."""
    reason = triton_unavailable(device)  # (None while torch.compile traces: then so is this)
    if reason is not None or device.type != "cuda" or torch.compiler.is_compiling():
        return reason
    return _ssd_compiler_reason(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _ssd_compiler_reason(index: int) -> Optional[str]:
    major, minor = torch.cuda.get_device_capability(index)
    version = _triton.triton_version()
    for majors, first, last, what in SSD_FAILING_TRITON:
        if major in majors and first <= version <= last:
            return (f"Triton {_triton.triton_version_text()}'s compiler fails on the SSD kernels for compute "
                    f"capability {major}.{minor} (with Tritons {_text(first)} to {_text(last)}, {what}); upgrade "
                    f"torch, which ships Triton, or use backend='torch'")
    return None


def _text(version: tuple) -> str:
    return ".".join(map(str, version))
