#!/usr/bin/env bash
# Execute a notebook headless (default notebooks/demo.ipynb), with real tracked servers:
#   ./scripts/demo.sh [NOTEBOOK]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/run_demo.py "$@"
