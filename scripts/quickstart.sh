#!/usr/bin/env bash
# The main job on embedded defaults: install, then train OLoRA (λ=1) and OLoRA+ (λ=1/4, λ=4) on
# SmolLM2-135M with the built-in data, evaluate all three and print the comparison table. Offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${OLORAPLUS_VENV:-.venv}/bin/oloraplus" sweep configs/quickstart_sweep.yaml --output "${1:-runs/quickstart}"
