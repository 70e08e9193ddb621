#!/usr/bin/env bash
# Run the test suite: ./scripts/test.sh [pytest options], e.g. ./scripts/test.sh -q -k nasty
# Four pytest-xdist workers by default (IPYPROCTRACK_TEST_WORKERS, or -n N on the command
# line, which wins): most tests wait on real kernels and processes, not on a core, so four
# workers on two cores take the run from about 5 min to under 2. --dist worksteal: an idle
# worker takes queued tests from a busy one, so no worker ends a minute after the others.
# Timing-bound (perf) and browser tests run with -n 0: their bounds assume a quiet machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n "${IPYPROCTRACK_TEST_WORKERS:-4}" --dist worksteal "$@"
