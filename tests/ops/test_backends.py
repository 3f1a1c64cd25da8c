"""The backend registry: auto resolution by device and dtype, clear errors."""

import pytest
import torch

from ssmkit.ops.backends import BackendUnavailableError, OpBackends


def _table():
    return OpBackends(
        op="toy",
        impls={"reference": lambda: "ref", "torch": lambda: "torch", "triton": lambda: "triton"},
        available={"triton": lambda d: None if d.type == "cpu" else "not here"},
        auto_order={"cpu": ("triton", "torch")},
        dtypes={"triton": (torch.float32, torch.bfloat16)},
    )


def test_auto_skips_a_backend_that_does_not_take_the_dtype():
    table = _table()
    assert table.resolve("auto", torch.device("cpu"), torch.float32) == "triton"
    assert table.resolve("auto", torch.device("cpu"), torch.float64) == "torch"


def test_explicit_backend_with_wrong_dtype_says_why():
    with pytest.raises(BackendUnavailableError, match=r"backend 'triton' cannot run on cpu: it computes float32, bfloat16 inputs, got float64"):
        _table().resolve("triton", torch.device("cpu"), torch.float64)


def test_unknown_and_unimplemented_backends():
    with pytest.raises(ValueError, match=r"argument `backend` must be one of .* got 'gpu'"):
        _table().resolve("gpu", torch.device("cpu"))
    with pytest.raises(BackendUnavailableError, match=r"backend 'c' is not implemented for this op"):
        _table().resolve("c", torch.device("cpu"))


def test_auto_with_nothing_available_lists_the_reasons():
    table = OpBackends(op="toy", impls={"triton": lambda: 0}, available={"triton": lambda d: "no GPU"},
                       auto_order={"cpu": ("triton",)})
    with pytest.raises(BackendUnavailableError, match=r"no backend can run on cpu: triton: no GPU"):
        table.resolve("auto", torch.device("cpu"))


@pytest.mark.parametrize("capability, runs", [((6, 1), False), ((7, 5), True), ((9, 0), True)])
def test_triton_needs_volta_or_later(monkeypatch, capability, runs):
    """Triton compiles for compute capability 7.0 and later: on an older GPU the Triton backend says why it cannot
    run, and ``"auto"`` takes the PyTorch one (a GPU of ``capability`` patched in; no GPU needed)."""
    pytest.importorskip("triton")
    from ssmkit.ops import _triton, backends
    from ssmkit.ops.ssd import SSD_BACKENDS

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    _triton._too_old_reason.cache_clear()  # (both caches hold what this GPU gave; cleared again at the end)
    backends._resolve_auto.cache_clear()
    try:
        reason = _triton.triton_unavailable_reason(torch.device("cuda", 0))
        assert SSD_BACKENDS.resolve("auto", torch.device("cuda"), torch.bfloat16) == ("triton" if runs else "torch")
        if runs:
            assert reason is None
        else:
            assert reason == "Triton compiles for GPUs of compute capability 7.0 and later; Tesla P100-PCIE-16GB is 6.1"
            with pytest.raises(BackendUnavailableError, match=r"backend 'triton' cannot run on cuda:0: .*7\.0.* is 6\.1"):
                SSD_BACKENDS.resolve("triton", torch.device("cuda", 0), torch.bfloat16)
    finally:
        _triton._too_old_reason.cache_clear()
        backends._resolve_auto.cache_clear()


@pytest.mark.parametrize("capability, version, scan_runs, ssd_runs", [
    ((9, 0), "3.2.0", True, True),    # Hopper: Triton 3.0-3.2 compile the SSD in their forms (triton_forms.py)
    ((9, 0), "3.3.1", True, True),
    ((8, 0), "3.0.0", True, True),    # Ampere compiles every kernel from 3.0
    ((7, 5), "3.2.0", False, False),  # before Ampere: no bfloat16 code from Triton 3.0-3.2
    ((7, 5), "3.3.1", True, False),   # ... and no 16-bit SSD kernels from 3.3
    ((7, 0), "3.4.0", True, True),
    ((10, 0), "3.6.0", True, True),   # B200: Triton 3.6 and 3.7 compile the SSD's backward (triton_forms.py)
    ((10, 0), "3.8.0", True, True),
    ((12, 0), "3.6.0", True, True),   # RTX 5090 compiles every kernel
])  # fmt: skip
def test_triton_versions_that_cannot_compile(monkeypatch, capability, version, scan_runs, ssd_runs):
    """Where the installed Triton's compiler fails on ssmkit's kernels for this GPU generation
    (``benchmarks/triton_versions.py``), the Triton backend says why and ``"auto"`` takes the PyTorch one (a GPU
    and a Triton version patched in; no GPU needed)."""
    pytest.importorskip("triton")
    from ssmkit.ops import _triton, backends
    from ssmkit.ops.scan import SCAN_BACKENDS
    from ssmkit.ops.ssd import SSD_BACKENDS, triton_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "a GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(_triton, "triton_version_text", lambda: version)
    caches = (_triton._too_old_reason, triton_backend._ssd_compiler_reason, backends._resolve_auto)
    for cache in caches:  # (they hold what this GPU gave; cleared again at the end)
        cache.cache_clear()
    try:
        cuda = torch.device("cuda")
        assert SCAN_BACKENDS.resolve("auto", cuda, torch.bfloat16) == ("triton" if scan_runs else "torch")
        assert SSD_BACKENDS.resolve("auto", cuda, torch.bfloat16) == ("triton" if ssd_runs else "torch")
        if not ssd_runs:
            with pytest.raises(BackendUnavailableError, match=rf"backend 'triton' cannot run on cuda:0: .*Triton "
                                                              rf"{version}"):  # fmt: skip
                SSD_BACKENDS.resolve("triton", torch.device("cuda", 0), torch.bfloat16)
        if not scan_runs:
            reason = _triton.triton_unavailable_reason(torch.device("cuda", 0))
            assert "3.3 or later" in reason and f"Triton {version} cannot compile their bfloat16 code" in reason
    finally:
        for cache in caches:
            cache.cache_clear()
