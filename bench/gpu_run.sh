#!/usr/bin/env bash
# Step 2 of the GPU bench, run ON the CUDA machine from the repo root, after bench/gpu_prepare.sh filled .whl/
# and .gpu/ on a machine with network and the repo (with those two folders) was copied here. Needs Python 3.12
# with a CUDA build of torch (and accelerate, safetensors, pyyaml, matplotlib, sacrebleu, which most CUDA images
# have); installs the carried wheels into a private folder (the machine's torch and CUDA stay as they are), then
# runs bench/gpu_bench.py. Results: $OUT/gpu_results.md and .json (OUT defaults to /tmp/oloraplus-gpu-out), rewritten after
# every job, so a run stopped early still leaves the finished jobs' numbers. Extra arguments go to gpu_bench.py
# (e.g. --quick, --only TAGS, --budget-s S). Default budget: 480 s of jobs; the whole script fits in 9 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/oloraplus-gpu-out}
SITE=${SITE:-/tmp/oloraplus-site}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
ls .whl/*.whl > /dev/null  # fails (set -e) when gpu_prepare.sh did not run
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
export PYTHONPATH=$SITE:$PWD/src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
# the carried pins must be the ones imported, not the image's own
"$PY" - <<'PY'
import importlib.metadata as md, re
pins = dict(re.match(r"([\w.-]+)==(\S+)", l).groups() for l in open("constraints.txt") if re.match(r"[\w.-]+==", l))
for name in ("transformers", "peft", "datasets", "tokenizers", "bitsandbytes"):
    have = md.version(name)
    assert have == pins[name], f"{name} {have} is imported, constraints.txt pins {pins[name]}"
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" bench/gpu_bench.py --out "$OUT/gpu_results.md" "$@"
