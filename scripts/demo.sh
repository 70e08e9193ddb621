#!/usr/bin/env bash
# Execute notebooks/demo.ipynb headless, with real tracked servers: ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/run_demo.py "$@"
