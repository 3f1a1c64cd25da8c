#!/usr/bin/env bash
# Prepare mamba_ssm (the GPU benchmarks' baseline) from its PyPI source, on the GPU machine.
#
#   bash benchmarks/gpu_setup_mamba.sh SDIST [DEST] [READY]
#
# SDIST: mamba_ssm-2.3.2.post1.tar.gz, fetched where the registry is reachable, e.g.
#   pip download --no-deps --no-binary :all: mamba-ssm==2.3.2.post1   (or the file URL of its PyPI page;
#   sha256 104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028).
# DEST (default /tmp/mamba): where it is unpacked; MAMBA_SRC=DEST/mamba_ssm-2.3.2.post1 for the benchmarks.
# READY (optional): a file touched when the build ends (the benchmarks' MAMBA_READY), so that the
#   build can run in the background while the correctness checks, which need no mamba_ssm, run.
#
# The SSD comparison imports mamba_ssm's Triton code from the tree and needs no build; the selective
# scan's CUDA extension (selective_scan_cuda) is built in place for sm_90 only (about two minutes on
# 16 cores; setup.py's other architectures are dropped). SCAN_BUILD=0 skips the build.
set -euo pipefail
sdist=$1
dest=${2:-/tmp/mamba}
ready=${3:-}
# Touch READY however the script ends (a failed build leaves the benchmarks timing ssmkit alone).
trap 'if [ -n "$ready" ]; then touch "$ready"; fi' EXIT
mkdir -p "$dest"
tar xzf "$sdist" -C "$dest"
src="$dest/$(basename "$sdist" .tar.gz)"
echo "MAMBA_SRC=$src"
if [ "${SCAN_BUILD:-1}" != 0 ]; then
    # Keep only the sm_90 pair of setup.py's "-gencode" flags.
    python3 - "$src/setup.py" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
pair = re.compile(r'cc_flag\.append\("-gencode"\)\s*\n\s*cc_flag\.append\("arch=compute_(\d+),code=sm_\d+"\)')
text, n = pair.subn(lambda m: m.group(0) if m.group(1) == "90" else "pass", text)
if "arch=compute_90" not in text or n == 0:
    sys.exit(f"{path}: no sm_90 -gencode pair found; this script knows mamba_ssm 2.3.2's setup.py")
open(path, "w").write(text)
EOF
    (cd "$src" && MAMBA_FORCE_BUILD=TRUE MAX_JOBS="${MAX_JOBS:-16}" python3 setup.py build_ext --inplace)
fi
