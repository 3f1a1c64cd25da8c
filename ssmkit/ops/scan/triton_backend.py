"""The "triton" entry of the selective scan backend table, importable without Triton.

``selective_scan_triton_impl`` imports the kernels on first use, so that
``import ssmkit`` never needs Triton; whether they can run on a device is
``ssmkit.ops._triton.triton_unavailable_reason`` (on CPU only in Triton's
interpreter, ``TRITON_INTERPRET=1`` set before Triton is first imported).
"""

from __future__ import annotations


def selective_scan_triton_impl(*args, **kwargs):
    """``selective_scan_triton`` (see ``triton.py``), imported lazily."""
    from .triton import selective_scan_triton

    return selective_scan_triton(*args, **kwargs)
