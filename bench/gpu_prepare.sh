#!/usr/bin/env bash
# Step 1 of the GPU bench, run on a machine WITH network (this checkout), before copying the repo to a CUDA
# machine that may have none. It puts what the bench needs beside the repo, in git-ignored folders:
#   .whl/  wheels of this project's pins (constraints.txt) for Python 3.12 on manylinux x86_64: transformers,
#          peft, datasets (+ dill, multiprocess), tokenizers, rouge-score (+ nltk) and bitsandbytes (--quantize);
#          torch and CUDA are the GPU machine's own
#   .gpu/  the Alpaca demo file and SmolLM2's tokenizer (the models are random-init, built there from a config)
# Then copy the repo with .whl/ and .gpu/ to the CUDA machine and run `bash bench/gpu_run.sh` there
# (bench/README.md, "On a GPU"). Environment: PYTHON (default .venv/bin/python), PY_VERSION (the GPU machine's
# Python, default 3.12), BNB_CUDA (bitsandbytes CUDA libraries to keep, default "130 132": the builds for
# torch +cu130/cu132; "all" keeps the whole 43 MB wheel), DATA (default ../shared/data/alpaca_en_demo.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PY_VERSION=${PY_VERSION:-3.12}
BNB_CUDA=${BNB_CUDA:-130 132}
DATA=${DATA:-../shared/data/alpaca_en_demo.json}

pin() {  # the exact pin of a package in constraints.txt, or fail
  local line
  line=$(grep -i -E "^$1==" constraints.txt | head -n 1)
  if [ -z "$line" ]; then echo "gpu_prepare.sh: $1 has no pin in constraints.txt" >&2; exit 2; fi
  echo "$line"
}

rm -rf .whl .gpu
mkdir -p .whl .gpu/tokenizer
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  "$(pin transformers)" "$(pin peft)" "$(pin datasets)" "$(pin tokenizers)" "$(pin dill)" "$(pin multiprocess)" \
  "$(pin nltk)" "$(pin bitsandbytes)"
"$PY" -m pip wheel -q --no-deps -w .whl "$(pin rouge-score)"  # source-only on the index
"$PY" bench/gpu_slim_wheel.py .whl/bitsandbytes-*.whl $BNB_CUDA

cp "$DATA" .gpu/alpaca_en_demo.json
model_dir=$("$PY" -c "from oloraplus import models; print(models.resolve_model_path('smollm2-135m'))")
cp "$model_dir"/tokenizer* .gpu/tokenizer/
for extra in special_tokens_map.json chat_template.jinja; do
  if [ -f "$model_dir/$extra" ]; then cp "$model_dir/$extra" .gpu/tokenizer/; fi
done
ls .whl
du -sh .whl .gpu
