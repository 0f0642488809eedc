#!/usr/bin/env bash
# Run ON the lent GPU machine (from the repo root), after bench/gpu_prepare.sh ran here:
#   run(command="bash bench/gpu_run.sh", carry=[".whl", ".gpu"], timeout_s=540)
# Installs the carried wheels into /tmp/site (the image's torch/CUDA stay), runs the GPU bench and
# copies the results into $OUT. Extra arguments go to gpu_bench.py (e.g. --quick, --only TAGS).
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 bench/gpu_bench.py --out "${OUT:-/tmp}/gpu_results.md" "$@"
status=$?
cp "${OUT:-/tmp}"/gpu_results.* bench/ 2>/dev/null || true
exit $status
