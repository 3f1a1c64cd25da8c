"""Shared fixtures: fresh random inputs each run, reproducible per test.

Each run draws a base seed (or takes ``SSMKIT_TEST_SEED``) and prints it in the
report header; every test's generator is seeded from the base seed and the
test's id, so a failure is reproduced with ``SSMKIT_TEST_SEED=<seed> pytest <id>``.
"""

from __future__ import annotations

import os
import random
import zlib

import pytest
import torch

BASE_SEED = int(os.environ.get("SSMKIT_TEST_SEED", random.SystemRandom().randrange(2**31)))

# Without CUDA the Triton kernel tests run in Triton's CPU interpreter, which must be
# switched on before `triton` is first imported (importing ssmkit can import it, through
# torch._dynamo): so here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _patch_triton_interpreter_int_sum() -> None:
    """Triton 3.0/3.1's interpreter (torch 2.4/2.5) sums integer tiles with numpy's default
    accumulator: tl.sum of an int32 tile holds int64 data under an int32 type, and a bitcast to
    float32 after it (scan/triton_common.py ``_row``) doubles the last axis. Cast the sum back
    to its declared dtype, as the compiled kernels sum and as later interpreters do themselves
    (a no-op there)."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    ops = getattr(interpreter, "ReduceOps", None)
    original = getattr(ops, "sum", None)
    if original is None or getattr(original, "_ssmkit_patched", False):
        return

    def _sum(self, input):
        out = original(self, input)
        want = input.handle.data.dtype
        if want.kind in "iu" and out.handle.data.dtype != want:
            out.handle.data = out.handle.data.astype(want)
        return out

    _sum._ssmkit_patched = True
    ops.sum = _sum


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    _patch_triton_interpreter_int_sum()


def pytest_report_header(config):
    return f"ssmkit test seed: SSMKIT_TEST_SEED={BASE_SEED}"


@pytest.fixture
def gen(request) -> torch.Generator:
    """A CPU generator seeded from the run's seed and this test's id."""
    seed = (BASE_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**63
    torch.manual_seed(seed)  # module initialisers use the global generator
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
