#!/usr/bin/env bash
# Idempotent set-up of the development environment, safe to run on a fresh machine:
#   - creates .venv with python3 (>= 3.11) when it is missing or broken;
#   - installs the project with `pip install -e .[dev,examples]`;
#   - skips the install while the stamp (a hash of pyproject.toml) is current.
# Quiet on success. Works from any directory. Set PYTHON=/path/to/python3.x to choose
# the interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
STAMP="$VENV/.ipyproctrack-setup-stamp"

# Several shells (tests, demo, CI) may run this at once: serialise them on the repo dir.
if command -v flock >/dev/null 2>&1; then
    exec 9<.
    flock 9
fi

python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

find_python() {
    local cand
    for cand in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [ -n "$cand" ] || continue
        command -v "$cand" >/dev/null 2>&1 || continue
        if python_ok "$cand"; then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ] || ! python_ok "$VENV/bin/python"; then
    if ! py="$(find_python)"; then
        echo "setup.sh: need Python >= 3.11 (none of python3, python3.1x qualifies; set PYTHON=...)" >&2
        exit 1
    fi
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
fi

want="$("$VENV/bin/python" - <<'PY'
import hashlib, sys
with open("pyproject.toml", "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
print(f"{digest} py{sys.version_info[0]}.{sys.version_info[1]}")
PY
)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi

log="$(mktemp "${TMPDIR:-/tmp}/ipyproctrack-setup.XXXXXX")"
trap 'rm -f "$log"' EXIT
echo "setup.sh: installing ipyproctrack[dev,examples] into $VENV ..." >&2
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev,examples]' >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup.sh: pip install -e '.[dev,examples]' failed" >&2
    exit 1
fi
printf '%s\n' "$want" >"$STAMP"
