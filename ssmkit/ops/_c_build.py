"""Build a C kernel of ssmkit into a shared library on first use (the CPU kernels called through ctypes).

* compiler: ``$SSMKIT_CC`` (may carry flags, e.g. ``"gcc-13 -m64"``) or ``cc``;
* compiled, then linked, with the flags the kernel's module gives;
* cached in ``$SSMKIT_CACHE_DIR`` or ``~/.cache/ssmkit``, under a name keyed by a hash of the sources,
  flags, compiler identity and CPU (``-march=native`` depends on it), written atomically (built in a temp
  dir, then ``os.replace``).

A failure anywhere becomes a :class:`CBuildError` whose message says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence


class CBuildError(RuntimeError):
    """The C kernel cannot be built or loaded here; the message says why."""


def _compiler() -> list[str]:
    cmd = shlex.split(os.environ.get("SSMKIT_CC") or "cc")
    if not cmd or shutil.which(cmd[0]) is None:
        raise CBuildError(
            f"no C compiler found (looked for {cmd[0] if cmd else '<empty>'!r}; set $SSMKIT_CC to a C compiler)"
        )
    return cmd


def _cpu_signature() -> str:
    """What -march=native depends on: the machine and its CPU feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _cache_dir() -> Path:
    return Path(os.environ.get("SSMKIT_CACHE_DIR") or Path.home() / ".cache" / "ssmkit")


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CBuildError(f"{what} failed to run ({' '.join(cmd)}): {e}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise CBuildError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def build(stem: str, here: Path, sources: Sequence[str], compile_flags: Sequence[str], link_flags: Sequence[str],
          compiler: Optional[list[str]] = None, cache_dir: Optional[Path] = None) -> Path:  # fmt: skip
    """Compile ``here/<stem>.c`` (which includes the other ``sources``) into the cache, if not there yet;
    return the .so path."""
    cc = compiler if compiler is not None else _compiler()
    if shutil.which(cc[0]) is None:
        raise CBuildError(f"no C compiler found (looked for {cc[0]!r}; set $SSMKIT_CC to a C compiler)")
    cache = Path(cache_dir) if cache_dir is not None else _cache_dir()
    try:
        version = subprocess.run(cc + ["--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CBuildError(f"C compiler {cc[0]!r} does not run: {e}") from e
    key = hashlib.sha256()
    for name in sources:
        key.update((here / name).read_bytes())
    for part in (" ".join(cc), version, " ".join(compile_flags), " ".join(link_flags), _cpu_signature()):
        key.update(part.encode() + b"\0")
    target = cache / f"{stem}-{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    except OSError as e:
        raise CBuildError(f"cannot write the kernel cache {cache} (set $SSMKIT_CACHE_DIR): {e}") from e
    try:
        obj, lib = tmp / f"{stem}.o", tmp / f"{stem}.so"
        _run(cc + list(compile_flags) + ["-c", str(here / f"{stem}.c"), "-o", str(obj)], f"compiling {stem}.c")
        _run(cc + [str(obj), "-o", str(lib)] + list(link_flags), f"linking {stem}.so")
        os.replace(lib, target)  # atomic: readers see no file or the whole file
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def open_library(path: Path, size_entry: str, expected: int, what: str) -> ctypes.CDLL:
    """Load a built kernel and check that its ``size_entry()`` (an ABI version, or the size of the struct it
    takes) is ``expected``; ``what`` names it in the error."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise CBuildError(f"cannot load {path}: {e}") from e
    getattr(lib, size_entry).restype = ctypes.c_int64
    got = getattr(lib, size_entry)()
    if got != expected:
        raise CBuildError(f"{path}: {what} is {got}, this ssmkit expects {expected}")
    return lib


def build_and_load(stem: str, here: Path, sources: Sequence[str], flag_sets: Sequence[tuple[Sequence[str], Sequence[str]]],
                   load: Callable[[Path], ctypes.CDLL]) -> tuple[Optional[ctypes.CDLL], Optional[str]]:  # fmt: skip
    """The kernel built with the first of ``flag_sets`` ((compile flags, link flags)) that builds and loads
    (``load``: open it and declare its entry points), and None; or None and every reason it could not."""
    reasons = []
    for cflags, lflags in flag_sets:
        try:
            return load(build(stem, here, sources, cflags, lflags)), None
        except CBuildError as e:
            reasons.append(str(e))
    return None, "; ".join(reasons)


def cpu_only_reason(device, reason: Callable[[], Optional[str]]) -> Optional[str]:
    """For ``OpBackends``: None where a C kernel can run on ``device`` (a torch.device), else why not: not the
    CPU, or ``reason()`` (None when the kernel builds and loads here; asked only for the CPU)."""
    if device.type != "cpu":
        return f"the C kernel runs on CPU tensors only, not {device.type}"
    return reason()


__all__ = ["CBuildError", "build", "build_and_load", "cpu_only_reason", "open_library"]
