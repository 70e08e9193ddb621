#!/usr/bin/env bash
# Run the test suite: ./scripts/test.sh [pytest options], e.g. ./scripts/test.sh -q -k nasty
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
