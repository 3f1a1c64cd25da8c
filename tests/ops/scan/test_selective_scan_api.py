"""Selective scan: input validation, backend selection, and the C kernel's build."""

from __future__ import annotations

import logging

import pytest
import torch

from numerics import randn
from ssmkit.ops.backends import BackendUnavailableError, OpBackends
from ssmkit.ops.scan import SCAN_BACKENDS, selective_scan, selective_scan_step
from ssmkit.ops.scan.cpu_c import c_unavailable_reason
from ssmkit.ops.scan.cpu_c_build import CBuildError, build_library, load_library

BATCH, L, DIM, N = 2, 9, 12, 5


def good(gen) -> dict:
    return dict(
        u=randn(BATCH, L, DIM, gen=gen), delta=randn(BATCH, L, DIM, gen=gen),
        A=-randn(DIM, N, gen=gen).exp(), B=randn(BATCH, L, N, gen=gen), C=randn(BATCH, L, N, gen=gen),
        D=randn(DIM, gen=gen), z=randn(BATCH, L, DIM, gen=gen), delta_bias=randn(DIM, gen=gen),
        initial_state=randn(BATCH, DIM, N, gen=gen),
    )


def test_good_inputs_pass(gen):
    """The valid baseline of every bad-input case below runs on every backend."""
    for backend in ("reference", "torch", "c", "auto"):
        assert selective_scan(**good(gen), backend=backend).shape == (BATCH, L, DIM)


BAD = {  # name -> (change to the good inputs, exception, message pattern)
    "u rank 2": (lambda x, g: dict(u=x["u"][0]), ValueError, r"`u` expected shape \(B, L, D=12\)"),
    "u channels-first": (lambda x, g: dict(u=x["u"].transpose(1, 2)), ValueError, r"`u`.*channels-first"),
    "delta channels-first": (lambda x, g: dict(delta=x["delta"].transpose(1, 2)), ValueError, r"`delta`.*channels-first"),
    "delta other L": (lambda x, g: dict(delta=x["delta"][:, :-1]), ValueError, r"`delta` expected shape \(B=2, L=9, D=12\)"),
    "A rank 1": (lambda x, g: dict(A=x["A"][:, 0]), ValueError, r"`A` expected shape \(D, N\)"),
    "B other N": (lambda x, g: dict(B=x["B"][..., :-1]), ValueError, r"`B` expected shape"),
    "B other batch": (lambda x, g: dict(B=x["B"][:1]), ValueError, r"`B` expected shape"),
    "C grouped, B not": (lambda x, g: dict(C=x["C"][:, :, None]), ValueError, r"`C` expected shape \(B=2, L=9, N=5\)"),
    "D other size": (lambda x, g: dict(D=x["D"][:-1]), ValueError, r"`D` expected shape \(D=12\)"),
    "delta_bias 2-d": (lambda x, g: dict(delta_bias=x["delta_bias"][None]), ValueError, r"`delta_bias` expected"),
    "z other L": (lambda x, g: dict(z=x["z"][:, 1:]), ValueError, r"`z` expected shape"),
    "initial_state (B, N, D)": (lambda x, g: dict(initial_state=x["initial_state"].transpose(1, 2)), ValueError,
                                r"`initial_state` expected shape \(B=2, D=12, N=5\)"),
    "int u": (lambda x, g: dict(u=x["u"].long()), TypeError, r"`u` must have dtype in"),
    "int B": (lambda x, g: dict(B=x["B"].int()), TypeError, r"`B` must have dtype in"),
    "u not a tensor": (lambda x, g: dict(u=x["u"].tolist()), TypeError, r"`u` must be a torch.Tensor"),
    "mixed devices": (lambda x, g: dict(z=x["z"].to("meta")), ValueError, r"`z` is on meta"),
    "D not divisible by G": (lambda x, g: dict(B=randn(BATCH, L, 5, N, gen=g), C=randn(BATCH, L, 5, N, gen=g)),
                             ValueError, r"`D`=12 must be divisible by `G`=5"),
    "unknown backend": (lambda x, g: dict(backend="cuda-magic"), ValueError, r"`backend` must be one of"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_naming_the_argument(case, gen):
    change, exc, pattern = BAD[case]
    x = good(gen)
    with pytest.raises(exc, match=pattern):
        selective_scan(**{**x, **change(x, gen)})


def step_inputs(gen) -> dict:
    x = good(gen)
    return dict(state=x["initial_state"], u=x["u"][:, 0], delta=x["delta"][:, 0], A=x["A"], B=x["B"][:, 0],
                C=x["C"][:, 0], D=x["D"], z=x["z"][:, 0], delta_bias=x["delta_bias"])


STEP_BAD = {
    "u with a time axis": (lambda x, g: dict(u=randn(BATCH, 3, DIM, gen=g)), ValueError, r"`u` expected shape \(B, D=12\)"),
    "state (B, N, D)": (lambda x, g: dict(state=x["state"].transpose(1, 2)), ValueError, r"`state` expected shape"),
    "B other N": (lambda x, g: dict(B=x["B"][:, :-1]), ValueError, r"`B` expected shape"),
    "C grouped, B not": (lambda x, g: dict(C=x["C"][:, None]), ValueError, r"`C` expected shape"),
    "int delta": (lambda x, g: dict(delta=x["delta"].int()), TypeError, r"`delta` must have dtype"),
    "D not divisible by G": (lambda x, g: dict(B=randn(BATCH, 5, N, gen=g), C=randn(BATCH, 5, N, gen=g)),
                             ValueError, r"divisible by `G`=5"),
    "mixed devices": (lambda x, g: dict(state=x["state"].to("meta")), ValueError, r"is on"),
}


@pytest.mark.parametrize("case", list(STEP_BAD))
def test_step_bad_input_raises(case, gen):
    change, exc, pattern = STEP_BAD[case]
    x = step_inputs(gen)
    selective_scan_step(**x)  # the unchanged inputs are valid
    with pytest.raises(exc, match=pattern):
        selective_scan_step(**{**x, **change(x, gen)})


@pytest.mark.parametrize("backend", ["c", "triton"])
def test_explicit_backend_that_cannot_run_raises(backend, gen):
    """Neither kernel runs on meta tensors (whatever TRITON_INTERPRET says): an error with the reason."""
    meta = {k: v.to("meta") for k, v in good(gen).items()}
    with pytest.raises(BackendUnavailableError, match=f"'{backend}' cannot run on meta: .*(tensors|installed)"):
        selective_scan(**meta, backend=backend)


def test_c_reason_for_other_devices():
    assert "CPU tensors only" in c_unavailable_reason(torch.device("meta"))


def test_auto_moves_on_visibly_when_c_is_unavailable(gen, caplog):
    """A table whose "c" cannot run: "auto" picks "torch" and logs why; asking for "c" says why."""
    table = OpBackends("selective_scan", SCAN_BACKENDS.impls, {"c": lambda d: "no C compiler found (test)"},
                       SCAN_BACKENDS.auto_order)
    with caplog.at_level(logging.INFO, logger="ssmkit.ops"):
        assert table.resolve("auto", torch.device("cpu")) == "torch"
    assert "no C compiler found (test)" in caplog.text and "'torch'" in caplog.text
    with pytest.raises(BackendUnavailableError, match="no C compiler found"):
        table.resolve("c", torch.device("cpu"))


def test_build_reports_a_missing_compiler(tmp_path):
    with pytest.raises(CBuildError, match="no C compiler found.*SSMKIT_CC"):
        build_library(compiler=["/nonexistent/ssmkit-cc"], cache_dir=tmp_path)


def test_build_reports_a_failing_compiler(tmp_path):
    with pytest.raises(CBuildError, match="compiling scan_cpu.c failed"):
        build_library(compiler=["false"], cache_dir=tmp_path)
    assert not any(tmp_path.iterdir()), "a failed build left files in the cache"


def test_build_is_cached_and_atomic(tmp_path):
    try:
        path = build_library(cache_dir=tmp_path)
    except CBuildError as e:
        pytest.skip(f"no working C compiler here: {e}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "temp build files left behind"
    mtime = path.stat().st_mtime_ns
    assert build_library(cache_dir=tmp_path) == path and path.stat().st_mtime_ns == mtime, "rebuilt a cached kernel"
    lib = load_library(path)
    assert lib.ss_params_size() > 0
