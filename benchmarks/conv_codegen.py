"""Compile the causal conv1d Triton kernels for sm_90 without a GPU and count instructions.

``conv_fwd`` and ``conv_bwd`` (``ssmkit/ops/conv/causal_conv1d_triton.py``) run on *meta* tensors with
their kernels replaced by recorders (``ssd_codegen.Recorder``), so what compiles is what the layers would
launch: the Mamba-2 layer's 64K tokens by default (x a strided view of the 8512-wide projection, D = 4352,
dx written into a view of another; silu, bias), with the GPU's fast sigmoid. Per kernel: registers, spills
and the instruction mix of its loops (``ssd_codegen.describe``).

    python benchmarks/conv_codegen.py                            # the module's settings
    python benchmarks/conv_codegen.py --lanes 1 2 4 --dtype float32 --sass DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ssd_codegen import Recorder, describe  # noqa: E402

from ssmkit.ops.conv import causal_conv1d_triton as conv  # noqa: E402


def report(lanes: int | None, dtype: torch.dtype, L: int, D: int, width: int, sass_dir: str | None) -> None:
    """Compile the forward and backward launches at one setting of channels per thread (None: the module's)."""
    calls: list = []
    switches = conv._switches

    def gpu_switches(x, *args, **kw):  # (meta tensors are not on the GPU: take its fast sigmoid all the same)
        return switches(x, *args, **kw) | {"FAST": conv.FAST_SIGMOID}

    m = dict(device="meta", dtype=dtype)
    x = torch.empty(1, L, width, **m)[..., width - D - 64 : width - 64]
    dx = torch.empty(1, L, width, **m)[..., width - D - 64 : width - 64]
    w, b, dy = torch.empty(D, 4, **m), torch.empty(D, **m), torch.empty(1, L, D, **m)
    patches = [mock.patch.object(conv, "conv1d_fwd_kernel", Recorder(conv.conv1d_fwd_kernel, calls)),
               mock.patch.object(conv, "conv1d_bwd_kernel", Recorder(conv.conv1d_bwd_kernel, calls)),
               mock.patch.object(conv, "_switches", gpu_switches)]  # fmt: skip
    if lanes is not None:
        patches += [mock.patch.object(conv, name, lanes) for name in ("FWD_LANE_CHANNELS", "BWD_LANE_CHANNELS")]
    for p in patches:
        p.start()
    try:
        conv.conv_fwd(x, w, b, None, True)
        conv.conv_bwd(dy, x, w, b, None, True, dx_out=dx)
    finally:
        for p in patches:
            p.stop()
    for fn, grid, args, kw in calls:
        describe(f"[lanes={kw['V']}]", fn, grid, args, kw, sass_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", type=int, nargs="*", default=[None], help="channels per thread (default: the module's)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--shape", type=int, nargs=3, default=[65536, 4352, 8512], metavar=("L", "D", "ROW_WIDTH"))
    ap.add_argument("--sass", default=None, help="folder to write each kernel's SASS to")
    a = ap.parse_args()
    for lanes in a.lanes:
        report(lanes, getattr(torch, a.dtype), *a.shape, a.sass)


if __name__ == "__main__":
    main()
