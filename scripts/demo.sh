#!/usr/bin/env bash
# Execute a notebook headless, with real tracked processes, and check nothing is left:
#   ./scripts/demo.sh                                  notebooks/demo.ipynb
#   ./scripts/demo.sh notebooks/load_experiment.ipynb  any notebook (options of
#                                                      scripts/run_demo.py may follow)
set -euo pipefail
here="$(pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    notebook="$1"
    shift
    case "$notebook" in /*) ;; *) [ -e "$notebook" ] || notebook="$here/$notebook" ;; esac
    set -- --notebook "$notebook" "$@"
fi
exec .venv/bin/python scripts/run_demo.py "$@"
