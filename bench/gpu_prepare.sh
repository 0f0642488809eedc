#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before `bench/gpu_run.sh` is sent to a lent GPU: puts what the
# bench needs and that machine lacks into git-ignored folders that the device tool carries:
#   .whl/  wheels of this project's pins that the machine's image lacks (see ../shared/GPU.md)
#   .gpu/  the Alpaca demo file and SmolLM2's tokenizer (../shared and the model cache do not travel)
# Then: run(command="bash bench/gpu_run.sh", carry=[".whl", ".gpu"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl .gpu/tokenizer
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl transformers==5.23.0 peft==0.21.2 datasets==5.2.0 tokenizers==0.23.3 dill multiprocess nltk
"$PY" -m pip wheel -q --no-deps -w .whl rouge-score==0.1.2
cp ../shared/data/alpaca_en_demo.json .gpu/
model_dir=$("$PY" -c "from oloraplus import models; print(models.resolve_model_path('smollm2-135m'))")
cp "$model_dir"/tokenizer* "$model_dir"/special_tokens_map.json "$model_dir"/chat_template.jinja .gpu/tokenizer/ 2>/dev/null || true
cp "$model_dir"/tokenizer* .gpu/tokenizer/
du -sh .whl .gpu
