"""Run pytest, or a benchmark script, with the decode kernels calling ssmkit's own ``griddepcontrol`` PTX.

Triton 3.4 gets these (``ssmkit/ops/_pdl.py``: its gdc functions do not compile); later Tritons lower gdc
themselves. On a GPU with a later Triton this forces the inline PTX, so that it can be checked and timed there:

    python3 benchmarks/gpu_own_gdc.py -q tests/generation/test_graphs.py -k pdl
    python3 benchmarks/gpu_own_gdc.py --script benchmarks/gpu_pdl.py --out $OUT/own

(run from the checkout's root, before anything imports the kernels).
"""

import runpy
import sys

sys.path.insert(0, ".")
from ssmkit.ops import _pdl  # noqa: E402

if not (_pdl._HAS_PDL and _pdl._TRITON_GDC):
    sys.exit(f"nothing to force: this Triton {'lacks PDL' if not _pdl._HAS_PDL else 'already gets the inline PTX'}")
_pdl.release_dependents, _pdl.wait_inputs = _pdl.own_release_dependents, _pdl.own_wait_inputs
print("the decode kernels call ssmkit's own griddepcontrol PTX", flush=True)
if len(sys.argv) > 1 and sys.argv[1] == "--script":
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    import pytest

    sys.exit(pytest.main(sys.argv[1:]))
