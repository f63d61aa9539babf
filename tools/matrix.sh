#!/usr/bin/env bash
# `make matrix`: the test suite on CPython 3.9-3.13 (pyenv) and PyPy 3
# (Debian's pypy3), each against an installed wheel -- noxfile.py does the
# work; this installs what it needs (pypy3, nox in a tool venv) and runs it.
# Usage: tools/matrix.sh [nox args]   e.g. tools/matrix.sh -s tests-3.12
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's PyPy, its venv module and headers (to build the extension).
if ! dpkg -s pypy3 pypy3-venv pypy3-dev >/dev/null 2>&1 && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq pypy3 pypy3-venv pypy3-dev >/dev/null
fi

venv=.venv-nox
[ -x "$venv/bin/nox" ] || {
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip nox
}

mkdir -p dist
log=dist/matrix.log
set +e
"$venv/bin/nox" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# Each interpreter's pytest summary line, then nox's verdict per session.
echo "--- summary (full log: $log)"
grep -E '^nox > (Running session|\* )|^interpreter: |^(=+ )?[0-9]+ (passed|failed|skipped|errors?)\b.* in [0-9.]+s' "$log" |
    sed -E 's/^=+ (.*) =+$/\1/; s/^([0-9]|interpreter)/    \1/' || true
exit "$status"
