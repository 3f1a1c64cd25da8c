"""Programmatic dependent launch (``ssmkit.ops._pdl``): when it is on, and what the decode-chain kernels compile to
with it on.

A kernel launched with PDL may run while the kernel before it still writes: it is correct only if every store,
and every load of something an earlier kernel wrote, comes after its ``griddepcontrol.wait``. The interpreter
cannot show that (it runs with PDL off), so each chain kernel is built here for sm_90 from the arguments its
launcher passes (the launch recorded, PDL forced on) and read: in its PTX ``launch_dependents`` first and every
store after the wait; in its Triton IR, the loads before the wait reading exactly the pointers named (weights,
biases, A, D). On the GPU,
tests/generation/test_graphs.py checks that decoding with PDL on gives the same logits as with it off.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the `triton` package")
from ssmkit.ops import _pdl  # noqa: E402

ON = {"PDL": True, "launch_pdl": True}


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device of compute capability ``major`` as far as ``pdl_enabled`` can tell, outside the interpreter."""

    def make(major: int):
        monkeypatch.setattr(_pdl, "interpret_mode", lambda: False)
        monkeypatch.setattr(_pdl, "_HAS_PDL", True)
        monkeypatch.setattr(_pdl, "_MAJOR", {0: major})
        monkeypatch.setattr(_pdl, "driver_version", lambda: 13000)
        return torch.device("cuda", 0)

    return make


def test_off_on_the_cpu_and_in_the_interpreter():
    assert _pdl.chain_launch(torch.device("cpu")) == {"PDL": False}


@pytest.mark.parametrize("major, env, on", [(9, None, True), (10, None, True), (8, None, False), (9, "0", False),
                                            (9, "1", True)])
def test_on_from_hopper_unless_switched_off(fake_cuda, monkeypatch, major, env, on):
    dev = fake_cuda(major)
    if env is None:
        monkeypatch.delenv("SSMKIT_PDL", raising=False)
    else:
        monkeypatch.setenv("SSMKIT_PDL", env)
    assert _pdl.pdl_enabled(dev) is on
    assert _pdl.chain_launch(dev) == (ON if on else {"PDL": False})


def test_off_where_triton_lacks_it(fake_cuda, monkeypatch):
    dev = fake_cuda(9)
    monkeypatch.setattr(_pdl, "_HAS_PDL", False)
    assert _pdl.chain_launch(dev) == {"PDL": False}


def test_gdc_of_triton_3_4_is_replaced():
    """Triton 3.4's gdc_* functions take ``_builder``, which its code generator no longer passes (no kernel
    calling them compiled: ``benchmarks/triton_versions.py``); ssmkit then emits the instructions itself.
    Later versions take ``_semantic`` and are used as they are."""

    def gdc_3_4(_builder=None):
        pass

    def gdc_3_5(_semantic=None):
        pass

    assert not _pdl.triton_lowers_gdc(gdc_3_4)
    assert _pdl.triton_lowers_gdc(gdc_3_5)


@pytest.mark.parametrize("driver, on", [(12020, False), (12030, True), (0, False)])
def test_off_with_a_driver_before_cuda_12_3(fake_cuda, monkeypatch, driver, on):
    """Graph capture of PDL launches needs a CUDA 12.3 driver; one that cannot be read (0) counts as too old."""
    dev = fake_cuda(9)
    monkeypatch.delenv("SSMKIT_PDL", raising=False)
    monkeypatch.setattr(_pdl, "driver_version", lambda: driver)
    assert _pdl.pdl_enabled(dev) is on


def test_driver_version_is_an_int():
    assert isinstance(_pdl.driver_version(), int) and _pdl.driver_version() >= 0


# -- the kernels, built for sm_90 with PDL on ------------------------------------------------------------------

needs_pdl = pytest.mark.skipif(not _pdl._HAS_PDL, reason="this Triton has no programmatic dependent launch")
# What each kernel loads before its wait: gemv the weight tiles ahead and the bias, add_rms_norm the norm's
# weight, conv1d_step the taps and the bias, the scan and SSD steps A, D and the Δ bias, the gated norm nothing.
AHEAD = {"gemv": ["b_ptr", "w_ptr"], "add_rms_norm": ["w_ptr"], "conv1d_step": ["b_ptr", "w_ptr"],
         "scan_step": ["A_ptr", "D_ptr", "bias_ptr"], "ssd_step": ["A_ptr", "D_ptr", "bias_ptr"],
         "gated_rms_norm_fwd": []}  # fmt: skip


@needs_pdl
@pytest.mark.parametrize("gdc", ["triton", "own"])
def test_chain_kernels_wait_before_reading_and_writing(tmp_path, gdc):
    # (built in a process of its own: here the kernels are the interpreter's, which have no compiled form; with a
    # Triton cache of its own and the repository as its working directory, as tests/ops/test_kernels_compile.py's
    # compiles: started from a working directory that no longer exists, torch's MKL stops the child at import)
    script = pathlib.Path(__file__).with_name("pdl_ptx.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    root = script.parents[2]
    args = ["--own-gdc"] if gdc == "own" else []  # (ssmkit's inline PTX, which Triton 3.4 gets)
    run = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, cwd=root,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(found) == sorted(AHEAD)
    for name, k in found.items():
        assert k["releases"] == 1 and k["waits"] == 1, f"{name}: {k}"
        assert k["release"] < k["wait"], f"{name}: the release comes after the wait"
        assert k["stores_before"] == 0 and k["stores_after"] > 0, f"{name}: a store before the wait: {k}"
        assert k["early_sources"] == AHEAD[name], f"{name}: loads before the wait from {k['early_sources']}"
        assert (k["loads_before"] > 0) == bool(AHEAD[name]), f"{name}: {k['loads_before']} loads before the wait"
        assert k["loads_after"] > 0, f"{name}: nothing loaded after the wait"
