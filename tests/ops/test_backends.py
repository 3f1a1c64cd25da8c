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
