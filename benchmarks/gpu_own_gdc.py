"""Run pytest, or a benchmark script, with the decode kernels calling ssmkit's own ``griddepcontrol`` PTX.

Triton 3.4 gets these (``ssmkit/ops/_pdl.py``: its gdc functions do not compile); later Tritons lower gdc
themselves. On a GPU with a later Triton this forces the inline PTX, so that it can be checked and timed there
(arguments as for ``gpu_emulate.py``, after ``--``):

    python3 benchmarks/gpu_own_gdc.py -- tests/generation/test_graphs.py -k pdl -q
    python3 benchmarks/gpu_own_gdc.py -- benchmarks/gpu_pdl.py --rounds 2 --out $OUT/own

(run from the checkout's root, before anything imports the kernels).
"""

import os
import sys

sys.path.insert(0, ".")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_emulate import run_tests_or_script  # noqa: E402

from ssmkit.ops import _pdl  # noqa: E402

if __name__ == "__main__":
    if not (_pdl._HAS_PDL and _pdl._TRITON_GDC):
        sys.exit(f"nothing to force: this Triton {'lacks PDL' if not _pdl._HAS_PDL else 'already gets the inline PTX'}")
    _pdl.release_dependents, _pdl.wait_inputs = _pdl.own_release_dependents, _pdl.own_wait_inputs
    print("the decode kernels call ssmkit's own griddepcontrol PTX", flush=True)
    sys.exit(run_tests_or_script(sys.argv[1:]))
