"""Fused decode steps on the CPU: a whole Mamba or Mamba-2 block for one token in one C call
(``mamba_block.py``, ``mamba2_block.py``; their shared build and call in ``block_library.py``)."""

from .block_library import TYPE_CODES
from .mamba2_block import mamba2_block_available, mamba2_block_params, mamba2_block_step_cpu
from .mamba_block import MAX_STATE, mamba_block_available, mamba_block_params, mamba_block_step_cpu

__all__ = ["mamba_block_params", "mamba_block_step_cpu", "mamba_block_available", "mamba2_block_params",
           "mamba2_block_step_cpu", "mamba2_block_available", "TYPE_CODES", "MAX_STATE"]
