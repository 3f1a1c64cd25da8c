#!/usr/bin/env bash
# Create .venv and install ssmkit with its test dependencies.
# On the project's CPU machines this takes the local CPU build of torch 2.13.0;
# set SSMKIT_TORCH to another requirement (e.g. "torch>=2.4") on your own machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${SSMKIT_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
# Triton 3.0 / 3.1 (torch 2.4 / 2.5) misread tensors under its CPU interpreter with numpy 2
# (triton-lang/triton#5387, #9171): the interpreter tests need numpy 1 there.
if .venv/bin/python -c "import sys, triton; sys.exit(tuple(map(int, triton.__version__.split('.')[:2])) >= (3, 2))" 2>/dev/null; then
    .venv/bin/python -m pip install -q "numpy<2"
fi
