#!/usr/bin/env bash
# The main job on embedded defaults: install, then fine-tune SmolLM2-135M with OLoRA+ offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${OLORAPLUS_VENV:-.venv}/bin/oloraplus" train --config configs/quickstart.yaml --overwrite "$@"
