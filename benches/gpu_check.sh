#!/usr/bin/env bash
# One prepared check on a CUDA machine (timeouts cap it at 7.5 minutes + install): build the extension (C++ + CUDA), run the CUDA
# tests, run the GPU benches, print a short table last. Results are appended to benches/results/*.csv
# (device name, date, commit); commit them.
#   bash benches/gpu_check.sh            # uses python3 (the machine's torch/triton)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export TRITON_INTERPRET=0                # compiled Triton on the GPU, not the interpreter
export FASTSSL_CACHE=${FASTSSL_CACHE:-/tmp/fastssl-cache}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}   # this card only: faster build
status=0
step() { echo; echo "=== $* ==="; }

step "install (editable, offline)"
$PY -m pip install --quiet --no-deps --no-build-isolation -e . || status=1
step "build + info"
timeout 150 $PY -m fastssl.info || status=1

step "CUDA tests"
timeout 120 $PY -m pytest -q -m cuda tests/ops tests/models tests/test_extension.py \
    $($PY -c "import nvidia.dali" 2>/dev/null && echo tests/data) || status=1

step "benches"
has_dali=$($PY -c "import nvidia.dali" 2>/dev/null && echo 1 || echo 0)
for b in benches/gpu_*.py; do
    if [[ "$b" == *gpu_data.py && $has_dali == 0 ]]; then
        echo "SKIPPED: $b (nvidia-dali-cuda130 is not installed on this machine)"; continue
    fi
    timeout 90 $PY "$b" || { echo "FAILED: $b"; status=1; }
done

step "summary (rows written by this run)"
$PY benches/summary.py --since "$(date -u -d '-10 minutes' +%Y-%m-%dT%H:%M:%SZ)" || status=1
exit $status
