"""Input validation shared by ops and layers.

Every check raises a ``ValueError`` (shape, value) or ``TypeError`` (dtype,
type) whose message names the argument, what was expected and what was given.
Shapes are described by dimension names, e.g. ``("B", "L", "D")``; a name seen
twice must have the same size everywhere (``sizes`` collects them).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fmt(dims: Sequence[str], sizes: dict[str, int]) -> str:
    return "(" + ", ".join(f"{d}={sizes[d]}" if d in sizes else d for d in dims) + ")"


def check_shape(
    fn: str,
    name: str,
    x: torch.Tensor,
    dims: Sequence[str] | Iterable[Sequence[str]],
    sizes: dict[str, int],
) -> tuple[str, ...]:
    """Check ``x`` against one dimension spec (or one of several); record sizes.

    ``dims`` is a tuple of names like ``("B", "L", "D")`` or a list of such
    tuples (alternatives, e.g. ungrouped or grouped B). Returns the spec that
    matched. ``sizes`` is updated in place with the sizes seen.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: argument `{name}` must be a torch.Tensor, got {type(x).__name__}")
    specs = [tuple(dims)] if isinstance(dims[0], str) else [tuple(d) for d in dims]
    for spec in specs:
        if x.dim() == len(spec) and all(sizes.get(d, s) == s for d, s in zip(spec, x.shape)):
            for d, s in zip(spec, x.shape):
                if d not in sizes:  # not dict.setdefault: torch 2.4's dynamo cannot trace it
                    sizes[d] = s
            return spec
    expected = " or ".join(_fmt(s, sizes) for s in specs)
    hint = ""
    if x.dim() >= 3 and len(specs[0]) >= 3 and specs[0][1] == "L" and x.shape[2] == sizes.get("L"):
        hint = " (this looks like channels-first (B, C, L); ssmkit uses sequence-major (B, L, C))"
    raise ValueError(f"{fn}: argument `{name}` expected shape {expected}, got {tuple(x.shape)}{hint}")


def check_float(fn: str, name: str, x: torch.Tensor, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> None:
    """Raise TypeError unless ``x`` has one of ``dtypes``."""
    if x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{fn}: argument `{name}` must have dtype in ({allowed}), got {str(x.dtype).replace('torch.', '')}")


def check_same_device(fn: str, tensors: dict[str, torch.Tensor | None]) -> torch.device:
    """Raise ValueError unless all given tensors live on one device; return it."""
    device = None
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(
                f"{fn}: argument `{name}` is on {t.device}, expected the device of `{first}` ({device})"
            )
    assert device is not None, "check_same_device needs at least one tensor"
    return device


def check_positive_int(fn: str, name: str, value: object) -> int:
    """Raise unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: argument `{name}` must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{fn}: argument `{name}` must be >= 1, got {value}")
    return value


def check_divisible(fn: str, name: str, value: int, divisor_name: str, divisor: int) -> None:
    """Raise ValueError unless ``divisor`` divides ``value``."""
    if divisor <= 0 or value % divisor != 0:
        raise ValueError(
            f"{fn}: `{name}`={value} must be divisible by `{divisor_name}`={divisor}"
        )


def check_choice(fn: str, name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{fn}: argument `{name}` must be one of {list(choices)}, got {value!r}")
