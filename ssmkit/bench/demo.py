"""End-to-end demo: build each engine, run it, check it against its reference.

For every mixer (S4, S4D, Mamba, Mamba-2, Hyena, attention) at a small size:
run the whole sequence on the backend ``"auto"`` picks, compare with the
float64 reference, replay the sequence one token at a time with ``step`` and
compare, and time the forward pass. Prints a Markdown table and optionally
writes it with the raw numbers as JSON.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..layers.base import Mixer

TOLERANCE = 1e-4  # relative error allowed in float32 against the float64 reference and between step and forward


@dataclass
class DemoRow:
    engine: str          # layer name
    backend: str         # what backend="auto" ran
    params: int          # trainable parameters
    state_bytes: int     # size of the state after the sequence (fixed for SSMs; KV cache for attention)
    forward_ms: float    # median forward time on the demo input
    err_vs_reference: float  # ||y - y_ref|| / ||y_ref|| against the float64 reference
    err_step: float      # same, token-by-token step vs whole-sequence forward

    @property
    def ok(self) -> bool:
        """Both errors within the float32 tolerance the test suite uses (1e-4)."""
        return self.err_vs_reference <= TOLERANCE and self.err_step <= TOLERANCE


def _engines(d_model: int, seq_len: int) -> dict[str, Callable[[], Mixer]]:
    from ..layers.attention import Attention
    from ..layers.hyena import Hyena
    from ..layers.mamba import Mamba
    from ..layers.mamba2 import Mamba2
    from ..layers.s4 import S4
    from ..layers.s4d import S4D

    return {
        "S4 (DPLR, HiPPO-LegS)": lambda: S4(d_model, d_state=32),
        "S4D (diagonal, LegS)": lambda: S4D(d_model, d_state=32),
        "Mamba (selective scan)": lambda: Mamba(d_model, d_state=16),
        "Mamba-2 (SSD)": lambda: Mamba2(d_model, d_state=32, headdim=16, chunk_size=32),
        "Hyena (order 2)": lambda: Hyena(d_model, order=2, max_len=seq_len),
        "Attention (RoPE, KV cache)": lambda: Attention(d_model, n_heads=4, max_seq_len=seq_len),
    }


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _resolved_backend(layer: Mixer, x: torch.Tensor) -> str:
    from ..ops.backends import resolved_backend
    from ..ops.scan import SCAN_BACKENDS
    from ..ops.ssd import SSD_BACKENDS

    table = {"Mamba": SCAN_BACKENDS, "Mamba2": SSD_BACKENDS}.get(type(layer).__name__)
    return resolved_backend(table, x.device) if table is not None else "torch"


@torch.no_grad()
def run_demo(d_model: int = 64, seq_len: int = 256, batch: int = 2, seed: int = 0, progress=print) -> list[DemoRow]:
    """Build, run and check every engine; returns one row per engine."""
    torch.manual_seed(seed)
    x = torch.randn(batch, seq_len, d_model)
    rows = []
    for name, make in _engines(d_model, seq_len).items():
        progress(f"[demo] {name} ...")
        layer = make().eval()
        y, state = layer(x)
        ref = copy.deepcopy(layer).double()
        ref.backend = "reference"
        y_ref, _ = ref(x.double())
        s = layer.init_state(batch, device=x.device, dtype=x.dtype)
        steps = []
        for t in range(seq_len):
            y_t, s = layer.step(x[:, t], s)
            steps.append(y_t)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - t0)
        rows.append(DemoRow(
            engine=name, backend=_resolved_backend(layer, x), params=sum(p.numel() for p in layer.parameters()),
            state_bytes=state.nbytes(), forward_ms=sorted(times)[1] * 1e3,
            err_vs_reference=_rel(y, y_ref), err_step=_rel(torch.stack(steps, 1), y),
        ))
    return rows


def demo_markdown(rows: list[DemoRow], d_model: int, seq_len: int, batch: int) -> str:
    lines = [
        f"ssmkit demo: B={batch}, L={seq_len}, d_model={d_model}, float32, {torch.get_num_threads()} threads",
        "",
        "| engine | backend | params | state | forward | error vs float64 reference | step vs forward | check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.engine} | {r.backend} | {r.params:,} | {r.state_bytes / 1024:.1f} KiB | {r.forward_ms:.2f} ms "
            f"| {r.err_vs_reference:.1e} | {r.err_step:.1e} | {'pass' if r.ok else 'FAIL'} |"
        )
    return "\n".join(lines)


def demo_json(rows: list[DemoRow], path: str) -> None:
    with open(path, "w") as f:
        json.dump([{**asdict(r), "ok": r.ok} for r in rows], f, indent=1)
