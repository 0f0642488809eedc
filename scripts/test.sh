#!/usr/bin/env bash
# The test command: installs what it needs (scripts/setup.sh), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OLORAPLUS_PROGRESS=0
exec "${OLORAPLUS_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider "$@"
