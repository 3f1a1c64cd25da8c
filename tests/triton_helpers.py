"""What the Triton kernel test files share: the device they run on and when they are skipped.

Without CUDA the kernels run in Triton's CPU interpreter, which ``conftest.py`` switches on
(``TRITON_INTERPRET=1``) before anything imports ``triton``. Importing this module skips the
importing test file when ``triton`` is not installed.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the `triton` package")

from ssmkit.ops._triton import triton_unavailable_reason  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_REASON = triton_unavailable_reason(torch.device(DEVICE))
requires_triton = pytest.mark.skipif(_REASON is not None, reason=f"Triton kernels cannot run here: {_REASON}")
