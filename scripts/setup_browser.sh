#!/usr/bin/env bash
# Idempotent set-up of what the browser tests (tests/browser/) need, on top of setup.sh:
#   - Debian's Chromium at /usr/bin/chromium (`apt-get install chromium`, as root, as CI runs);
#   - the `browser` extra (jupyterlab, notebook 7) in .venv; playwright's Python package comes
#     with the `dev` extra (the tests' types need it).
# Never `playwright install`: its browser download cannot work on this project's machines;
# the tests launch the system Chromium by path. Set IPYPROCTRACK_CHROMIUM to use another one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

CHROMIUM="${IPYPROCTRACK_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup_browser.sh: no Chromium at $CHROMIUM; run as root, or: sudo apt-get install -y chromium" >&2
        exit 1
    fi
    echo "setup_browser.sh: installing chromium with apt-get ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq -o DPkg::Lock::Timeout=600 chromium >/dev/null
    [ -x "$CHROMIUM" ] || { echo "setup_browser.sh: still no Chromium at $CHROMIUM" >&2; exit 1; }
fi

# Same idea as setup.sh's stamp: reinstall only when pyproject.toml changed.
VENV=.venv
STAMP="$VENV/.ipyproctrack-browser-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
log="$(mktemp "${TMPDIR:-/tmp}/ipyproctrack-setup-browser.XXXXXX")"
trap 'rm -f "$log"' EXIT
echo "setup_browser.sh: installing ipyproctrack[dev,browser] into $VENV ..." >&2
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev,browser]' >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup_browser.sh: pip install -e '.[dev,browser]' failed" >&2
    exit 1
fi
printf '%s\n' "$want" >"$STAMP"
