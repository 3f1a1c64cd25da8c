"""Run ssmkit's GPU tests as an older GPU would run them, on the GPU at hand.

Triton lowers a kernel for its GPU's compute capability: on Volta (sm_70: V100) and Turing (sm_75: T4,
RTX 20xx) it has no asynchronous copies, multiplies tiles on the FMA units (Triton 3.6 and 3.9 emit no mma
there) and stages its tiles in shared memory in other layouts and amounts; those GPUs also have less shared
memory per program (V100 96 KiB, T4 64 KiB). None of that is exercised on an
H200, and no such GPU is lent here. This runs it there all the same:

* ``TRITON_OVERRIDE_ARCH=sm70`` / ``sm75`` makes Triton lower every kernel for the older architecture
  (its layouts, its products, its shared memory); the PTX it then emits targets the GPU at hand, which
  runs those instructions (what is not emulated: ptxas's scheduling for the older GPU, and its speed);
* torch reports the emulated GPU's compute capability, SM count, name and shared memory per block, so
  ssmkit plans for it (``ssd/triton_launch.make_plan``, PDL off before Hopper), and Triton's check at a
  kernel's first launch uses the emulated limit, so a kernel that would not start there does not start
  here either (``OutOfResources``).

Everything after ``--`` goes to pytest, run in this process, or, where it starts with a script under
benchmarks/, to that script:

    python3 benchmarks/gpu_emulate.py t4 -- tests/ops/ssd/test_ssd_triton.py -k matches_reference -q
    python3 benchmarks/gpu_emulate.py t4 -- benchmarks/gpu_ssd_shared_memory.py --gpus this --no-time
"""

from __future__ import annotations

import os
import runpy
import sys
import tempfile

# name: (compute capability, SMs, shared memory per block (opt-in), total memory, device name); the GPUs the
# benchmarks plan for (ssd_shared_memory.py, gpu_ssd_shared_memory.py) read their figures from here too
GPUS = {
    "h200": ((9, 0), 132, 232448, 141 * 2**30, "NVIDIA H200"),
    "a100": ((8, 0), 108, 166912, 80 * 2**30, "NVIDIA A100-SXM4-80GB"),
    "rtx4090": ((8, 9), 128, 101376, 24 * 2**30, "NVIDIA GeForce RTX 4090"),
    "a10": ((8, 6), 72, 101376, 24 * 2**30, "NVIDIA A10"),
    "v100": ((7, 0), 80, 98304, 32 * 2**30, "Tesla V100-SXM2-32GB"),
    "t4": ((7, 5), 40, 65536, 15 * 2**30, "Tesla T4"),
    # (Blackwell: planned for and compiled offline by ssd_shared_memory.py; newer than the H200, so not emulated)
    "b200": ((10, 0), 148, 232448, 178 * 2**30, "NVIDIA B200"),
    "rtx5090": ((12, 0), 170, 101376, 32 * 2**30, "NVIDIA GeForce RTX 5090"),
}


class EmulatedProperties:
    """torch's device properties with the emulated GPU's in place of the real one's."""

    def __init__(self, real, gpu: str):
        (major, minor), sms, shared, memory, name = GPUS[gpu]
        self._real = real
        self._own = dict(major=major, minor=minor, multi_processor_count=sms, shared_memory_per_block_optin=shared,
                         total_memory=min(memory, real.total_memory), name=f"{name} (emulated on {real.name})")

    def __getattr__(self, key):
        return self._own[key] if key in self._own else getattr(self._real, key)

    def __repr__(self) -> str:
        return f"EmulatedProperties({self._own})"


def emulate(gpu: str) -> None:
    """From here on, this process's torch and Triton see ``gpu`` (call before any kernel is compiled)."""
    (major, minor), _, shared, _, _ = GPUS[gpu]
    os.environ["TRITON_OVERRIDE_ARCH"] = f"sm{major}{minor}"
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix=f"triton-{gpu}-"))  # (apart from real builds)
    import torch
    import triton

    # Triton's driver reads torch's capability (which reads the properties) for its target, which must stay
    # the GPU at hand (it emits PTX for it): give it the real one.
    real_props = torch.cuda.get_device_properties
    driver = triton.runtime.driver.active
    driver.get_device_capability = lambda device=None: (real_props(device).major, real_props(device).minor)
    torch.cuda.get_device_properties = lambda device=None: EmulatedProperties(real_props(device), gpu)
    torch.cuda.get_device_capability = lambda device=None: (major, minor)

    utils = driver.utils
    real_triton_props = utils.get_device_properties
    utils.get_device_properties = lambda device: real_triton_props(device) | {"max_shared_mem": shared}


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in GPUS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(GPUS)}}} -- PYTEST_ARGS | benchmarks/SCRIPT.py ARGS "
                 f"(got {args[:1]})")
    gpu, rest = args[0], args[1:]
    import torch

    if GPUS[gpu][0] > torch.cuda.get_device_capability(0):
        sys.exit(f"{gpu}: compute capability {GPUS[gpu][0]} is newer than this GPU's "
                 f"{torch.cuda.get_device_capability(0)}, which cannot run code lowered for it")
    emulate(gpu)
    props = torch.cuda.get_device_properties(0)
    print(f"emulating {props.name}: compute capability {props.major}.{props.minor}, {props.multi_processor_count} "
          f"SMs, {props.shared_memory_per_block_optin // 1024} KiB shared memory per block; "
          f"TRITON_OVERRIDE_ARCH={os.environ['TRITON_OVERRIDE_ARCH']}", flush=True)  # fmt: skip
    code = run_tests_or_script(rest)
    print(compiled_summary(os.environ["TRITON_CACHE_DIR"]), flush=True)
    sys.exit(code)


def run_tests_or_script(rest: list) -> int:
    """Run ``rest`` in this process: a script under benchmarks/ with its arguments where it names one, else
    pytest with those arguments; returns the exit status."""
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if rest and rest[0].startswith("benchmarks/") and rest[0].endswith(".py"):
        sys.argv = rest
        sys.path.insert(0, os.path.dirname(os.path.abspath(rest[0])))
        try:
            runpy.run_path(rest[0], run_name="__main__")
            return 0
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
    import pytest

    return pytest.main(rest)


def compiled_summary(cache: str) -> str:
    """What the kernels compiled in this process were lowered to: the evidence the emulation took (no wgmma
    or asynchronous copies before Hopper / Ampere; the older mma shapes), and their largest shared memory."""
    import json

    counts, kernels, shared = {"wgmma": 0, "cp.async": 0, "mma.sync.aligned.m16n8k16": 0,
                               "mma.sync.aligned.m16n8k8": 0, "mma.sync.aligned.m8n8k4": 0}, 0, {}  # fmt: skip
    for root, _, files in os.walk(cache):
        for f in files:
            path = os.path.join(root, f)
            if f.endswith(".ptx"):
                kernels += 1
                text = open(path).read()
                for k in counts:
                    counts[k] += k in text
            elif f.endswith(".json") and not f.startswith("__grp__"):
                meta = json.load(open(path))
                if "shared" in meta:
                    shared[meta["name"]] = max(shared.get(meta["name"], 0), meta["shared"])
    top = sorted(shared.items(), key=lambda kv: -kv[1])[:5]
    return (f"compiled {kernels} kernels; kernels whose PTX holds " + ", ".join(f"{k}: {v}" for k, v in counts.items())
            + "; largest shared memory: " + ", ".join(f"{n} {s // 1024} KiB" for n, s in top))


if __name__ == "__main__":
    main()
