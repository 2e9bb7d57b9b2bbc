#!/usr/bin/env bash
# The GPU check: one prepared call on a CUDA machine that builds the extension for the card present,
# runs every CUDA test, measures the card's ceilings, runs every GPU bench and prints one table last.
# It cannot pass by accident: no working CUDA device, an import that fails, an extension not built
# for this card, a failed / skipped / missing CUDA test, an op without a CUDA test, a bench that fails
# or outruns its time -> "GPU CHECK FAILED" and exit 1. Figures that cannot be measured in this tree
# yet (a method not registered, DALI not installed) are listed as OWED, never invented.
#
#   bash benches/gpu_check.sh RESULTS_DIR [COMMIT]
#
# RESULTS_DIR  folder for gpu_check.log (everything printed), <device>.csv (the rows), table.txt and
#              the pytest JUnit reports (pytest_*.xml); if $OUT is set (the device tool) and is another
#              folder, they are copied there too, so `bash benches/gpu_check.sh benches/results/NAME`
#              comes back from the device tool; commit that folder.
# COMMIT       recorded in every row. Without it: $FASTSSL_COMMIT, else the first word of benches/COMMIT
#              (write it before the tree is copied to a machine without .git:
#              `git rev-parse --short HEAD > benches/COMMIT`), else `git rev-parse`; none -> the check stops.
#
# Needs: python3 with torch (CUDA build), triton, numpy, filelock, pytest, ninja, pybind11, and nvcc.
# No pip install: the copied tree is used through PYTHONPATH. DALI is optional (its tests and the
# data bench are then OWED). A deadline caps the whole check at GPU_CHECK_BUDGET_S (450 s, < 8 min):
# every step's timeout is bounded by what is left of it.
#
# Each GPU bench benches/gpu_*.py follows the contract in benches/harness.py's docstring: it gets
# `--out RESULTS_DIR` if its source mentions "--out", and FASTSSL_BENCH_OUT=RESULTS_DIR in any case.
#
# GPU_CHECK_SMOKE=1 (tests/test_gpu_check.py, on a CPU): run every step even without a GPU, to test
# the script's wiring; such a run always ends in GPU CHECK FAILED. There, GPU_CHECK_TESTS (default
# "tests") and GPU_CHECK_BENCHES (default "benches/gpu_*.py") narrow what runs.
set -uo pipefail

usage() { echo "usage: bash benches/gpu_check.sh RESULTS_DIR [COMMIT]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 && -n $1 ]] || usage
case $1 in /*) RES=$1 ;; *) RES=$PWD/$1 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$RES" || { echo "gpu_check: cannot create $RES" >&2; exit 2; }
LOG=$RES/gpu_check.log
: > "$LOG"

PY=${PYTHON:-python3}
SMOKE=${GPU_CHECK_SMOKE:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
RESERVE=15                                   # seconds kept for the table at the end
T0=$SECONDS
FAILURES=()
OWED=()

left() { echo $(( BUDGET - (SECONDS - T0) )); }
step() { echo; echo "=== $* ($(( SECONDS - T0 )) s) ==="; }
fail_step() { echo "FAILED: $*"; FAILURES+=("$*"); }

# run_capped CAP_S CMD...: run with a timeout of min(CAP_S, time left - RESERVE); 124 if out of time.
run_capped() {
    local cap=$1 budget_left
    shift
    budget_left=$(( $(left) - RESERVE ))
    (( budget_left < cap )) && cap=$budget_left
    if (( cap < 5 )); then
        echo "OUT OF TIME: not run (the check's ${BUDGET} s budget is spent): $*"
        return 124
    fi
    timeout -k 5 "$cap" "$@"
    local rc=$?
    (( rc == 124 || rc == 137 )) && echo "TIMED OUT after ${cap} s: $*"
    return $rc
}

finish() {  # print the table (if any rows), what is owed, the failures and the verdict
    local verdict
    step "table ($RES)"
    if compgen -G "$RES/*.csv" > /dev/null; then
        timeout 60 "$PY" benches/summary.py "$RES" | tee "$RES/table.txt"
    else
        echo "no rows were recorded"
    fi
    echo
    for o in ${OWED[@]+"${OWED[@]}"}; do echo "OWED: $o"; done
    for f in ${FAILURES[@]+"${FAILURES[@]}"}; do echo "FAILED: $f"; done
    if (( ${#FAILURES[@]} )); then
        verdict="GPU CHECK FAILED (${#FAILURES[@]} failure(s), ${#OWED[@]} owed; $(( SECONDS - T0 )) s; commit ${FASTSSL_COMMIT:-?})"
    else
        verdict="GPU CHECK PASSED (${#OWED[@]} figure(s) owed; $(( SECONDS - T0 )) s; commit $FASTSSL_COMMIT)"
    fi
    echo "$verdict"
    (( ${#FAILURES[@]} == 0 ))
}

stop() {  # a failure after which nothing else can be checked
    fail_step "$*"
    echo
    echo "GPU CHECK FAILED: $*"
    finish
    exit 1
}

main() {
    echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) on ${HOSTNAME:-?}, tree $ROOT, results $RES"

    step "commit"
    local commit=${COMMIT_ARG:-${FASTSSL_COMMIT:-}}
    if [[ -z $commit && -s benches/COMMIT ]]; then commit=$(awk 'NR==1{print $1}' benches/COMMIT); fi
    if [[ -z $commit ]] && commit=$(git rev-parse --short HEAD 2> /dev/null); then
        git diff --quiet HEAD 2> /dev/null || commit=$commit-dirty    # uncommitted changes were checked
    fi
    [[ -n $commit ]] || stop "no commit to record: pass it as the 2nd argument, or write it before copying the tree (git rev-parse --short HEAD > benches/COMMIT)"
    export FASTSSL_COMMIT=$commit
    echo "commit $FASTSSL_COMMIT"

    step "imports from the tree (nothing is installed)"
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
    export PYTHONUNBUFFERED=1
    export TRITON_INTERPRET=0                       # compiled Triton on the GPU, not the interpreter
    export FASTSSL_CACHE=${FASTSSL_CACHE:-/tmp/fastssl-cache}
    export FASTSSL_BENCH_OUT=$RES
    unset FASTSSL_BACKEND FASTSSL_SKIP_CUDA
    if [[ ! -e fastssl/kernels ]]; then              # an ignored symlink in a checkout: absent from a copy
        ln -s ../kernels fastssl/kernels && echo "created the link fastssl/kernels -> ../kernels"
    fi
    run_capped 60 "$PY" -c '
import importlib, sys
mods = ["torch", "triton", "numpy", "filelock", "pytest", "fastssl", "fastssl.kernels", "fastssl.ops",
        "fastssl.models", "fastssl.methods", "fastssl.engine.gradcache", "fastssl.cli.train", "fastssl.train"]
for name in mods:
    try:
        importlib.import_module(name)
    except Exception as e:
        print(f"import {name} failed: {type(e).__name__}: {e}")
        sys.exit(1)
import fastssl, pytest, torch, triton
print(f"python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"triton {triton.__version__}, pytest {pytest.__version__}; fastssl from {fastssl.__file__}")
' || stop "cannot import fastssl and its needs from the tree with $PY (the error is above); this check installs nothing"

    step "CUDA device"
    local probe
    probe=$(run_capped 60 "$PY" benches/check_device.py 2>&1)
    local rc=$?
    echo "$probe"
    local require_cuda=(--require-cuda) device=cuda
    if (( rc != 0 )) && [[ $SMOKE == 1 ]]; then
        fail_step "SMOKE RUN (GPU_CHECK_SMOKE=1): $(echo "$probe" | head -1); the GPU steps run on the CPU, this is no GPU check"
        require_cuda=() device=cpu
    elif (( rc != 0 )); then
        command -v nvidia-smi > /dev/null && nvidia-smi -L 2>&1 | head -3
        stop "$(echo "$probe" | grep -m1 -E 'no CUDA device|wrong|Error' || echo 'the CUDA device probe failed (see above)')"
    else
        local arch
        arch=$(echo "$probe" | sed -n 's/^ARCH=//p')
        [[ $arch =~ ^[0-9]+\.[0-9]+$ ]] || stop "the device probe gave no compute capability (ARCH='$arch')"
        export TORCH_CUDA_ARCH_LIST=$arch           # build for the card present (and only for it)
        echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
    fi

    step "build the extension + python -m fastssl.info ${require_cuda[*]+"${require_cuda[*]}"}"
    run_capped 240 "$PY" -m fastssl.info ${require_cuda[@]+"${require_cuda[@]}"} \
        || stop "the extension fastssl._C is not built for this card (the reason is above)"

    step "CUDA tests (a skipped test is a failure here)"
    local ignore=()
    if ! "$PY" -c "import nvidia.dali" 2> /dev/null; then
        # Their modules run DALI pipelines (fastssl.data's loader); collecting them would be an error.
        # Everything else must collect and run without DALI (tests/test_gpu_check.py checks it).
        for d in tests/data tests/imagenet; do ignore+=("--ignore=$d"); done
        OWED+=("CUDA tests under tests/data and tests/imagenet (nvidia.dali is not installed on this machine)")
    fi
    rm -f "$RES"/pytest_*.xml
    # shellcheck disable=SC2086  # GPU_CHECK_TESTS is a list of paths
    run_capped 240 "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda ${GPU_CHECK_TESTS:-tests} \
        ${ignore[@]+"${ignore[@]}"} \
        --junitxml="$RES/pytest_cuda.xml" || fail_step "pytest -m cuda tests (exit $?)"
    # -m cuda would deselect these: the build test asserts the CUDA part compiled for TORCH_CUDA_ARCH_LIST.
    run_capped 120 "$PY" -m pytest -q -rs -p no:cacheprovider -m "not slow" tests/test_extension.py \
        --junitxml="$RES/pytest_extension.xml" || fail_step "pytest tests/test_extension.py (exit $?)"
    run_capped 60 "$PY" benches/check_cuda_tests.py "$RES/pytest_cuda.xml" "$RES/pytest_extension.xml" \
        || fail_step "CUDA test reports (skips, failures or ops without a CUDA test: listed above)"

    step "ceilings: device-to-device copy (GB/s) and bf16 matmul (TFLOP/s)"
    run_capped 90 "$PY" benches/harness.py ceilings --device "$device" --out "$RES" \
        || fail_step "measuring the ceilings"

    step "GPU benches"
    local b args out_file brc has_dali=1
    "$PY" -c "import nvidia.dali" 2> /dev/null || has_dali=0
    out_file=$(mktemp)
    # shellcheck disable=SC2086  # GPU_CHECK_BENCHES is a glob
    for b in ${GPU_CHECK_BENCHES:-benches/gpu_*.py}; do
        [[ -e $b ]] || continue
        if [[ ${b##*/} == gpu_data.py && $has_dali == 0 ]]; then   # (any spelling of its path)
            OWED+=("$b: the GPU data pipeline rows (nvidia.dali is not installed on this machine)")
            continue
        fi
        args=()
        grep -q -- '"--out"' "$b" && args=(--out "$RES")
        echo "--- $b ${args[*]+"${args[*]}"}"
        run_capped 120 "$PY" "$b" ${args[@]+"${args[@]}"} 2>&1 | tee "$out_file"
        brc=${PIPESTATUS[0]}
        while IFS= read -r line; do OWED+=("$b: ${line#*OWED: }"); done < <(grep -E '^OWED: ' "$out_file")
        (( brc == 0 )) || fail_step "$b (exit $brc)"
    done
    rm -f "$out_file"
    finish
}

COMMIT_ARG=${2:-}
main 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
# The device tool brings back only what is under $OUT: copy the results there when it is another folder.
if [[ -n ${OUT:-} && -d ${OUT:-} && $(cd "$OUT" && pwd) != "$RES" ]]; then
    cp "$RES"/* "$OUT"/ 2> /dev/null
fi
exit "$status"
