"""GPU kernel benchmarks, one module per op family, in one process on one GPU.

    python benchmarks/kernels_gpu.py                 # every module found
    python benchmarks/kernels_gpu.py --only gpu_ssd  # one of them
    OUT=results python benchmarks/kernels_gpu.py     # reports go under $OUT

Each module (``gpu_scan.py``: selective scan; ``gpu_ssd.py``: SSD) exposes
``run(out_dir) -> str``, checks its kernels against the float64 reference on
fresh random inputs, times them and returns a Markdown report; this driver
runs the ones asked for and prints their reports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

MODULES = ("gpu_scan", "gpu_ssd", "gpu_norm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=MODULES, default=None, help="modules to run (default: all found)")
    parser.add_argument("--out", default=os.environ.get("OUT", "results"), help="folder for the reports")
    args = parser.parse_args()
    names = args.only or [m for m in MODULES if os.path.exists(os.path.join(os.path.dirname(__file__), m + ".py"))]
    reports = []
    for name in names:
        reports.append(importlib.import_module(name).run(args.out))
    print("\n\n".join(reports))


if __name__ == "__main__":
    main()
