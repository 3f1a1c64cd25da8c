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
