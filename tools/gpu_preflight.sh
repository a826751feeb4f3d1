#!/usr/bin/env bash
# Rehearse a GPU session on a CPU machine, before spending device time.
#
#     bash tools/gpu_preflight.sh          # from the repository root; about 10 minutes
#
# The lent H200 runs the image's own software: torch 2.11.0+cu130, triton 3.6.0, nvcc 13.
# PyPI's torch 2.11.0 for Linux is that very CUDA 13.0 build (with its nvidia-* libraries,
# about 3 GB, downloaded once into $PREFLIGHT_VENV), and it imports and builds extensions
# without a GPU. So this script, on a copy of the working tree (tracked and untracked files
# that git does not ignore, as the device tool carries them):
#   1 venv     torch==2.11.0 + triton 3.6.0 (+ numpy<2: triton 3.6's interpreter breaks on
#              numpy 2) and the test extras
#   2 build    pip install --no-build-isolation -e . as bench/gpu_validation.sh does: a
#              CUDAExtension for sm_90; checks that exvae_fast._C registers the CUDA kernel
#   3 cmake    the stand-alone CMake build with CUDA, and its ctest smoke test
#   4 tests    the whole suite against torch 2.11 / triton 3.6 (kernels in the interpreter)
#   5 dry run  bench/gpu_validation.sh with EXVAE_GV_DEVICE=cpu and small settings
# It stops at the first failing step. What it cannot rehearse: the kernels compiled and run on
# the GPU (the suite compiles them for sm_90 without running them), and timings.
#
# Environment: PREFLIGHT_VENV (default /tmp/exvae-preflight-venv, kept between runs),
# PREFLIGHT_DIR (the copy, default a new temporary directory), PYTHON (default python3),
# CUDA_HOME (else found from nvcc), SKIP_CMAKE=1, SKIP_DRY_RUN=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${PREFLIGHT_VENV:-/tmp/exvae-preflight-venv}
COPY=${PREFLIGHT_DIR:-$(mktemp -d /tmp/exvae-preflight.XXXXXX)}
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-$(nproc)}
unset TRITON_INTERPRET
say() { echo "[gpu_preflight] $*"; }

command -v nvcc >/dev/null || { say "nvcc is not on PATH: the CUDA build cannot be rehearsed"; exit 1; }
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch, triton; assert torch.__version__.startswith("2.11.0") and torch.version.cuda' 2>/dev/null; then
    say "1 venv: $VENV (torch 2.11.0+cu130 from PyPI, about 3 GB)"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "torch==2.11.0" "triton==3.6.0" "numpy<2" \
        "setuptools>=64" wheel
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "numpy<2" pytest "hypothesis>=6.80" pytest-benchmark \
    scipy pillow matplotlib tqdm
"$VENV/bin/python" -c 'import torch, triton; print("[gpu_preflight] torch", torch.__version__, "triton", triton.__version__)'

say "copy of the working tree: $COPY"
git ls-files -z -c -o --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$COPY"
cd "$COPY"

say "2 build: the CUDAExtension for sm_90"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
(cd /tmp && "$VENV/bin/python" -c '
from exvae_fast.ops import _extension
assert _extension.LOAD_ERROR is None, _extension.LOAD_ERROR
assert _extension.has_kernel("cache_update_", "cuda"), "exvae_fast._C has no CUDA kernel"
print("[gpu_preflight] exvae_fast._C loaded with its CUDA kernel")')

if [ "${SKIP_CMAKE:-0}" != 1 ]; then
    say "3 cmake: stand-alone build with CUDA, ctest"
    nvidia=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
    # nvcc names its own toolkit (TOP=...), also when the nvcc on PATH is a wrapper script
    toolkit=${CUDA_HOME:-$(realpath "$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)")}
    nvrtc=$(ls "$nvidia"/lib/libnvrtc.so* | head -n 1)
    # the pip packages hold the CUDA libraries a partial toolkit may lack (nvrtc, cuBLAS)
    cmake -S . -B build/cmake-cuda -DCMAKE_PREFIX_PATH="$("$VENV/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
        -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DCUDA_TOOLKIT_ROOT_DIR="$toolkit" \
        -DCUDA_nvrtc_LIBRARY="$nvrtc" > build-cmake-cuda.log
    cmake --build build/cmake-cuda -j "$MAX_JOBS" >> build-cmake-cuda.log
    LD_LIBRARY_PATH="$nvidia/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        ctest --test-dir build/cmake-cuda --output-on-failure
fi

say "4 tests: the suite under torch 2.11 / triton 3.6"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider

if [ "${SKIP_DRY_RUN:-0}" != 1 ]; then
    say "5 dry run: bench/gpu_validation.sh on the CPU"
    rm -rf bench/results/*/gpu_validation
    PYTHON="$VENV/bin/python" SKIP_BUILD=1 SKIP_TESTS=1 EXVAE_GV_DEVICE=cpu EXVAE_GV_BUDGET=300 \
        EXVAE_GV_EPOCH_ARGS="--models vae --size-scale 0.01 --steps 2 --threads 2" \
        EXVAE_GV_OPS_ARGS="--max-n 1000 --threads 2" bash bench/gpu_validation.sh
    summary=$(ls bench/results/*/gpu_validation/gpu_validation.log)
    if grep -E "step [a-z]+: rc=[1-9]" "$summary"; then
        say "the dry run had failing steps: $summary"
        exit 1
    fi
fi
say "passed: $COPY"
