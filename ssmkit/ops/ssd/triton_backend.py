"""The "triton" entry of the SSD backend table, importable without Triton.

``ssd_triton_impl`` imports the kernels on first use, so that ``import
ssmkit`` never needs Triton; ``triton_unavailable`` says whether they can run
on a device (``ssmkit.ops._triton.triton_unavailable_reason``: on CPU only in
Triton's interpreter, ``TRITON_INTERPRET=1`` set before Triton is first
imported).
"""

from __future__ import annotations

from typing import Optional

import torch

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
