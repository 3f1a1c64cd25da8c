"""Which implementation of an op runs: the backend registry.

Each op family (``scan``, ``ssd``, ...) declares an :class:`OpBackends` table:
its implementations by name, a check that says why one cannot run on a
device, and the order ``"auto"`` tries per device type. ``"auto"`` resolves
once per (op, device type, input dtype), is logged on the ``ssmkit.ops`` logger, and can be
queried with :func:`resolved_backend`. An explicit backend that cannot run
raises :class:`BackendUnavailableError` with the reason -- never a silent
fallback.

Backend names: ``"reference"`` (the float64 loop, the spec), ``"torch"``
(portable PyTorch, any device), ``"triton"`` (GPU kernels; on CPU only under
``TRITON_INTERPRET=1``), ``"c"`` (compiled C kernel for CPU, built on first
use with the system C compiler).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch

log = logging.getLogger("ssmkit.ops")

BACKEND_NAMES = ("auto", "reference", "torch", "triton", "c")

# (device) -> None when the backend can run there, else the reason it cannot.
Availability = Callable[[torch.device], Optional[str]]


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run here; the message says why."""


def always(_: torch.device) -> Optional[str]:
    return None


@dataclass(frozen=True, eq=False)  # hashed by identity: one table per op
class OpBackends:
    """The implementations of one op and how ``"auto"`` picks among them."""

    op: str
    impls: Mapping[str, Callable]
    available: Mapping[str, Availability]
    auto_order: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"cuda": ("triton", "torch"), "cpu": ("c", "torch")}
    )
    # backend -> the input dtypes it computes in; backends not listed take every float dtype
    dtypes: Mapping[str, tuple[torch.dtype, ...]] = field(default_factory=dict)

    def resolve(self, backend: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
        """Name of the backend that will run for ``backend`` on ``device`` with ``dtype`` inputs."""
        if backend not in BACKEND_NAMES:
            raise ValueError(
                f"{self.op}: argument `backend` must be one of {list(BACKEND_NAMES)}, got {backend!r}"
            )
        if backend == "auto":
            return _resolve_auto(self, device.type, dtype)
        if backend not in self.impls:
            raise BackendUnavailableError(
                f"{self.op}: backend {backend!r} is not implemented for this op "
                f"(available: {sorted(self.impls)})"
            )
        reason = self.unavailable_reason(backend, device, dtype)
        if reason is not None:
            raise BackendUnavailableError(f"{self.op}: backend {backend!r} cannot run on {device}: {reason}")
        return backend

    def unavailable_reason(self, backend: str, device: torch.device, dtype: Optional[torch.dtype]) -> Optional[str]:
        """Why ``backend`` cannot run on ``device`` with ``dtype`` inputs, or None when it can."""
        allowed = self.dtypes.get(backend)
        if dtype is not None and allowed is not None and dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed)
            return f"it computes {names} inputs, got {str(dtype).replace('torch.', '')}"
        return self.available.get(backend, always)(device)

    def get(self, backend: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> Callable:
        """The implementation function for ``backend`` on ``device`` with ``dtype`` inputs."""
        return self.impls[self.resolve(backend, device, dtype)]


@functools.lru_cache(maxsize=None)
def _resolve_auto(table: OpBackends, device_type: str, dtype: Optional[torch.dtype]) -> str:
    order = table.auto_order.get(device_type, ("torch",))
    reasons = []
    for name in order:
        if name not in table.impls:
            continue
        reason = table.unavailable_reason(name, torch.device(device_type), dtype)
        if reason is None:
            log.info("%s: backend 'auto' on %s (%s) resolved to %r", table.op, device_type, dtype, name)
            if reasons:
                log.info("%s: skipped %s", table.op, "; ".join(reasons))
            return name
        reasons.append(f"{name}: {reason}")
    raise BackendUnavailableError(f"{table.op}: no backend can run on {device_type}: " + "; ".join(reasons))


def resolved_backend(table: OpBackends, device: torch.device | str = "cpu", dtype: Optional[torch.dtype] = None) -> str:
    """What ``backend="auto"`` runs for this op on ``device`` (for reports and logs)."""
    return table.resolve("auto", torch.device(device), dtype)
