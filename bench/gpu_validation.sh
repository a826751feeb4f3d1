#!/usr/bin/env bash
# One prepared run for a session lent a GPU (written for the H200: torch 2.11+cu130,
# triton 3.6, Python 3.12, no network). From the repository root:
#
#     bash bench/gpu_validation.sh            # device tool: run(command=..., timeout_s=600)
#
# Steps, each with a hard cap (seconds) and the time it is expected to take on an H200
# (estimates made on a CPU machine; the log records the real ones):
#   0 probe  nvidia-smi, versions                                      cap  30, expect ~5
#   1 build  pip install --no-build-isolation --no-deps -e .  (nvcc,
#            sm_90 only) + import check of exvae_fast._C                cap 150, expect 60-120
#   2 tests  python -m pytest tests/ -m gpu natively on the GPU         cap 120, expect 60-120
#   3 epoch  bench/epoch_time.py --quick --device cuda                  cap 180, expect 100-180
#   4 ops    bench/run_ops.py --quick --device cuda (pytest-benchmark)  cap 100, expect 60-100
#   5 plot   bench/plot.py --markdown (PNGs + bench/README.md tables)   cap  15, expect ~10
# Total budget EXVAE_GV_BUDGET (default 500 s; a step gets at most its cap and never eats
# the minimum reserved for the steps after it): with the machine's start (1-2 min) about
# 10 minutes of device time, and the call fits a 600 s timeout.
# A step that fails or hits its cap does not stop the later ones. The epoch and ops steps
# get their own time budget (cap minus a margin) and write their JSON after every
# configuration / at the end, so whatever was measured survives.
#
# Output: bench/results/<device slug>/ (epoch_time-quick-*.json, ops-quick-*.json and .raw.json,
# PNGs, gpu_validation/*.log, gpu_validation/autotune/*.autotune.json: every autotuned
# config's timings), bench/README.md regenerated. When $OUT is set (the device
# tool), $OUT/gpu_validation.log (summary) and $OUT/gpu_validation.tar.gz (those files)
# are refreshed after every step; unpack the archive in the repository root.
#
# Environment: PYTHON (default python3), EXVAE_GV_BUDGET, SKIP_BUILD=1 / SKIP_TESTS=1 /
# SKIP_EPOCH=1 / SKIP_OPS=1, CAP_BUILD / CAP_TESTS / CAP_EPOCH / CAP_OPS (seconds),
# EXVAE_GV_TEST_SERIAL=1 (no pytest-xdist), TORCH_CUDA_ARCH_LIST (default 9.0); for a dry run of the script
# itself on a CPU machine: EXVAE_GV_DEVICE=cpu and extra arguments in EXVAE_GV_TEST_ARGS /
# EXVAE_GV_EPOCH_ARGS / EXVAE_GV_OPS_ARGS (e.g. "-k bench_smoke" / "--models vae
# --size-scale 0.01" / "--max-n 1000"). Wheels carried in .whl/
# (FAISS, pykeops: see bench/README.md) are installed into /tmp/site first.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1

PY=${PYTHON:-python3}
DEVICE=${EXVAE_GV_DEVICE:-cuda}
BUDGET=${EXVAE_GV_BUDGET:-500}
START=$(date +%s)
LOGS=$(mktemp -d /tmp/gpu_validation.XXXXXX)
SUMMARY=$LOGS/gpu_validation.log
SLUG=""
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
# the kernels' autotuners keep every config's timings there (<kernel>.autotune.json): collected below
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/exvae-triton-cache}
unset TRITON_INTERPRET

say() { echo "[gpu_validation +$(( $(date +%s) - START ))s] $*" | tee -a "$SUMMARY"; }

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# cap CAP RESERVE: seconds a step may use: min(CAP, remaining - RESERVE), at least 5
cap() {
    local left=$(( $(remaining) - $2 ))
    local c=$1
    (( left < c )) && c=$left
    (( c < 5 )) && c=5
    echo "$c"
}

pack() {
    # copy logs beside the results and refresh the archive in $OUT (the tool fetches $OUT)
    [ -n "$SLUG" ] || return 0
    local dest=bench/results/$SLUG/gpu_validation
    mkdir -p "$dest"
    cp "$LOGS"/*.log "$LOGS"/*.xml "$LOGS"/*.json "$dest"/ 2>/dev/null
    # Triton's autotuning timings of every tuned problem key (the file's folder names the key's hash)
    find "$TRITON_CACHE_DIR" -name '*.autotune.json' 2>/dev/null | while read -r f; do
        mkdir -p "$dest/autotune" && cp "$f" "$dest/autotune/$(basename "$(dirname "$f")" | cut -c1-12)-$(basename "$f")"
    done
    if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
        cp "$SUMMARY" "$OUT/gpu_validation.log"
        tar czf "$OUT/gpu_validation.tar.gz" "bench/results/$SLUG" bench/README.md 2>/dev/null
    fi
}

# step NAME CAP RESERVE COMMAND...: run with a hard timeout (SIGINT first, so pytest and the
# bench scripts write what they have), log to $LOGS/NAME.log, record rc and duration
step() {
    local name=$1 c t0 rc
    c=$(cap "$2" "$3")
    shift 3
    say "step $name: start (cap ${c}s): $*"
    t0=$(date +%s)
    STEP_CAP=$c timeout -s INT -k 20 "$c" "$@" > "$LOGS/$name.log" 2>&1
    rc=$?
    say "step $name: rc=$rc in $(( $(date +%s) - t0 ))s$( [ $rc -eq 124 ] && echo ' (hit its cap)')"
    tail -n 15 "$LOGS/$name.log" | sed "s/^/    [$name] /" | tee -a "$SUMMARY" >/dev/null
    pack
    return $rc
}

# -- 0 probe -------------------------------------------------------------------------------
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} && say "installed carried wheels: $(ls .whl)"
fi
say "budget ${BUDGET}s; python: $(command -v "$PY")"
step probe 30 0 bash -c "nvidia-smi; $PY -c 'import sys, torch, triton; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else None); print(\"triton\", triton.__version__)'; nproc; free -g"
SLUG=$($PY -c 'import torch, re; n = torch.cuda.get_device_name(0).lower(); print(re.sub("-+", "-", re.sub("[^a-z0-9]", "-", n)).strip("-"))' 2>/dev/null || echo gpu-unknown)
say "device slug: $SLUG"

# -- 1 build ---------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    # an editable install into the image's Python; should that fail (e.g. a read-only
    # site-packages), the extension is built in place and kernels/ linked as
    # exvae_fast/kernels, so the checkout itself imports completely (PYTHONPATH below)
    step build "${CAP_BUILD:-150}" 320 bash -c "set -o pipefail; { $PY -m pip install --no-build-isolation --no-deps --no-index -v -e . 2>&1 | tail -n 200; } || { echo 'editable install failed: building in place'; $PY setup.py build_ext --inplace 2>&1 | tail -n 100 && ln -sfn ../kernels exvae_fast/kernels; } && $PY -c 'import exvae_fast._C, torch; from exvae_fast.ops import _extension; print(\"exvae_fast._C loaded; cache_update_ CUDA kernel:\", _extension.has_kernel(\"cache_update_\", \"cuda\"))'"
fi
# without an installed package (build skipped or failed) use the checkout itself; with
# exvae_fast/kernels linked to kernels/ (as the build's fallback does) the Triton kernels import too
if ! (cd /tmp && $PY -c 'import exvae_fast' 2>/dev/null); then
    [ -e exvae_fast/kernels ] || ln -sfn ../kernels exvae_fast/kernels
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    say "exvae_fast is not installed: using the checkout through PYTHONPATH (kernels/ linked as exvae_fast/kernels)"
fi
# the bench scripts' own view of the backends (dispatch registry, auto choice on cuda)
$PY bench/common.py info --device "$DEVICE" > "$LOGS/device_info.json" 2> "$LOGS/device_info.log"
SLUG2=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["slug"])' "$LOGS/device_info.json" 2>/dev/null)
[ -n "$SLUG2" ] && SLUG=$SLUG2
$PY bench/common.py backends --device "$DEVICE" 2>&1 | sed 's/^/    /' | tee -a "$SUMMARY"
pack

# -- 2 tests ---------------------------------------------------------------------------------
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    # pytest-xdist (on the H200 image) runs the suite in 8 processes, mostly to overlap the
    # Triton/nvcc compilations; EXVAE_GV_TEST_SERIAL=1 runs it in one
    PARALLEL=""
    if [ "${EXVAE_GV_TEST_SERIAL:-0}" != 1 ] && $PY -c 'import xdist' 2>/dev/null; then
        PARALLEL="-n 8 --dist loadfile"
    fi
    # By default only the tests marked `gpu` (native Triton kernels, the CUDA extension, CUDA
    # training): the others run on CPU in CI. One launch config per kernel (no autotuning:
    # each config is a compile of 5-35 s); the ops step below autotunes.
    # shellcheck disable=SC2086
    EXVAE_TRITON_AUTOTUNE=0 EXVAE_KNN_AUTOTUNE=0 \
    step tests "${CAP_TESTS:-120}" 210 $PY -m pytest tests -q -p no:cacheprovider -o addopts="-ra" --durations=20 \
        --junitxml="$LOGS/junit.xml" $PARALLEL ${EXVAE_GV_TEST_ARGS-"-m gpu"}
fi

# -- 3 epoch ---------------------------------------------------------------------------------
if [ "${SKIP_EPOCH:-0}" != 1 ]; then
    c=$(cap "${CAP_EPOCH:-180}" 70)
    # shellcheck disable=SC2086  (the extra arguments are meant to split)
    step epoch "${CAP_EPOCH:-180}" 70 $PY bench/epoch_time.py --quick --device "$DEVICE" \
        --time-budget $(( c > 60 ? c - 30 : c / 2 )) ${EXVAE_GV_EPOCH_ARGS:-}
fi

# -- 4 ops -----------------------------------------------------------------------------------
if [ "${SKIP_OPS:-0}" != 1 ]; then
    c=$(cap "${CAP_OPS:-100}" 15)
    # shellcheck disable=SC2086
    step ops "${CAP_OPS:-100}" 15 $PY bench/run_ops.py --quick --device "$DEVICE" \
        --time-budget $(( c > 50 ? c - 25 : c / 2 )) ${EXVAE_GV_OPS_ARGS:-}
fi

# -- 5 plot ----------------------------------------------------------------------------------
step plot 15 0 $PY bench/plot.py --markdown
say "done in $(( $(date +%s) - START ))s; results in bench/results/$SLUG/"
ls -la "bench/results/$SLUG" | tee -a "$SUMMARY"
pack
