"""GPU: SSD forward and forward+backward against the chunk the kernels run, by head dim and state size.

    python3 benchmarks/gpu_ssd_chunks.py [--out DIR]

The chunk of the SSD kernels changes only rounding, so the launch plan may run a requested
``chunk_size`` as smaller chunks (``triton_launch.make_plan``). This times the op end to end
(custom op, autograd) at B=8, L=4096, width H x P = 2048, bf16 (D, dt_bias, softplus), for
head dims 64 and 128 and state sizes 16, 64 and 128, at chunks 32, 64 and 128, with the
launchers' 16-bit chunk cap lifted so that each chunk runs as asked (this table is what set
``triton_launch.GPU_CHUNK_16BIT`` = 32). Writes
``gpu_ssd_chunks.md`` / ``.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys


sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _gpu_bench import fwd_and_fwdbwd, ssd_chunks_as_asked, table_report  # noqa: E402
from gpu_ssd import ssd_inputs  # noqa: E402

from ssmkit.ops.ssd import ssd  # noqa: E402

SHAPES = ((64, 128), (128, 128), (64, 64), (64, 16))  # (P, N)
CHUNKS = (32, 64, 128)


def run(out_dir: str) -> str:
    rows = []
    with ssd_chunks_as_asked():  # every chunk as asked (by default 16-bit runs chunks of 32 on the GPU)
        for P, N in SHAPES:
            inp = ssd_inputs(8, 4096, H=2048 // P, P=P, N=N)
            for Q in CHUNKS:
                t_f, t_fb = fwd_and_fwdbwd(lambda Q=Q, **k: ssd(**k, dt_softplus=True, chunk_size=Q, backend="triton"), inp)
                rows.append([f"P={P} N={N}", Q, f"{t_f:.3f}", f"{t_fb:.3f}"])
                print(rows[-1], flush=True)
    head = ["B=8 L=4096 H*P=2048 bf16", "chunk", "fwd ms", "fwd+bwd ms"]
    return table_report(out_dir, "gpu_ssd_chunks", "SSD against the chunk", head, rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results"), help="folder for the report")
    print(run(ap.parse_args().out))
