"""Build and load the C selective-scan kernel (``scan_cpu.c``) on first use.

The kernel is plain C called through ctypes with raw data pointers: no torch
headers, so it compiles in a couple of seconds and does not depend on the
torch ABI. Build:

* compiler: ``$SSMKIT_CC`` (may carry flags, e.g. ``"gcc-13 -m64"``) or ``cc``;
* compile with ``-O3 -ffast-math -march=native`` (``-ffast-math`` is what lets
  gcc call glibc's vector ``exp``/``log1p`` from the ``#pragma omp simd`` loops),
  then link *without* ``-ffast-math``: linking a shared library with it (gcc
  < 13) adds ``crtfastmath.o``, which would set flush-to-zero for the whole
  process at load time;
* cached in ``$SSMKIT_CACHE_DIR`` or ``~/.cache/ssmkit``, under a name keyed by
  a hash of the sources, flags, compiler identity and CPU, written atomically
  (build in a temp dir, then ``os.replace``).

A failure anywhere becomes a :class:`CBuildError` whose message is the reason
reported by ``backend="c"``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

SOURCES = ("scan_cpu.c", "scan_cpu_kernel.h", "scan_cpu_backward.h")
COMPILE_FLAGS = ("-O3", "-ffast-math", "-march=native", "-fopenmp-simd", "-fPIC")
LINK_FLAGS = ("-shared", "-lm", "-lpthread")
_HERE = Path(__file__).resolve().parent


class CBuildError(RuntimeError):
    """The C kernel cannot be built or loaded here; the message says why."""


class ScanParams(ctypes.Structure):
    """Mirror of ``ss_params`` in scan_cpu.c (pointers, then int64 sizes)."""

    _fields_ = [
        (name, ctypes.c_void_p)
        for name in (
            "u", "delta", "A_t", "Bm", "Cm", "Dv", "bias", "z", "h0", "y", "h_last", "ckpt",
            "gy", "gh_last", "gu", "gdelta", "gz", "gh0", "gA", "gD", "gbias", "gB", "gC",
        )
    ] + [
        (name, ctypes.c_int64)
        for name in ("batch", "seqlen", "dim", "dstate", "ngroups", "ckpt_every", "softplus", "nthreads")
    ]


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


def build_library(compiler: Optional[list[str]] = None, cache_dir: Optional[Path] = None) -> Path:
    """Compile ``scan_cpu.c`` into the cache (if not there yet); return the .so path."""
    cc = compiler if compiler is not None else _compiler()
    if shutil.which(cc[0]) is None:
        raise CBuildError(f"no C compiler found (looked for {cc[0]!r}; set $SSMKIT_CC to a C compiler)")
    cache = Path(cache_dir) if cache_dir is not None else _cache_dir()
    try:
        version = subprocess.run(cc + ["--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CBuildError(f"C compiler {cc[0]!r} does not run: {e}") from e
    key = hashlib.sha256()
    for name in SOURCES:
        key.update((_HERE / name).read_bytes())
    for part in (" ".join(cc), version, " ".join(COMPILE_FLAGS), " ".join(LINK_FLAGS), _cpu_signature()):
        key.update(part.encode() + b"\0")
    target = cache / f"scan_cpu-{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    except OSError as e:
        raise CBuildError(f"cannot write the kernel cache {cache} (set $SSMKIT_CACHE_DIR): {e}") from e
    try:
        obj, lib = tmp / "scan_cpu.o", tmp / "scan_cpu.so"
        _run(cc + list(COMPILE_FLAGS) + ["-c", str(_HERE / "scan_cpu.c"), "-o", str(obj)], "compiling scan_cpu.c")
        _run(cc + [str(obj), "-o", str(lib)] + list(LINK_FLAGS), "linking scan_cpu.so")
        os.replace(lib, target)  # atomic: readers see no file or the whole file
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_library(path: Path) -> ctypes.CDLL:
    """Load the built kernel and declare its entry points; check the ABI."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise CBuildError(f"cannot load {path}: {e}") from e
    lib.ss_params_size.restype = ctypes.c_int64
    if lib.ss_params_size() != ctypes.sizeof(ScanParams):
        raise CBuildError(f"{path}: ss_params has {lib.ss_params_size()} bytes, ctypes expects {ctypes.sizeof(ScanParams)}")
    for prec in ("f32", "f64"):
        for entry, restype in (("ss_forward", ctypes.c_int), ("ss_backward", ctypes.c_int), ("num_tasks", ctypes.c_int64)):
            fn = getattr(lib, f"{entry}_{prec}")
            fn.argtypes = [ctypes.POINTER(ScanParams)]
            fn.restype = restype
    return lib


@functools.lru_cache(maxsize=None)
def _cached() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    try:
        return load_library(build_library()), None
    except CBuildError as e:
        return None, str(e)


def get_library() -> ctypes.CDLL:
    """The loaded kernel, built on first use; raises CBuildError with the reason."""
    lib, reason = _cached()
    if lib is None:
        raise CBuildError(reason)
    return lib


def unavailable_reason() -> Optional[str]:
    """None when the kernel is (or can be) built and loaded here, else why not."""
    return _cached()[1]
