#!/usr/bin/env bash
# Proves a built wheel (e.g. from tools/build-wheels.sh) works: installs it in
# a fresh venv per interpreter and runs the full test suite from this
# checkout against it (the package's source is in src/, never on sys.path,
# so the tests import the wheel).  Venvs live in a temp dir.
# Usage: tools/test-wheel.sh WHEEL [python ...]
#        (default: pyenv's newest 3.9 and 3.13, the abi3 floor and the newest)
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] && [ -f "$1" ] || { echo "usage: $0 WHEEL [python ...]" >&2; exit 2; }
wheel=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
shift
pythons=("$@")
if [ ${#pythons[@]} -eq 0 ]; then
    proot=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    for v in 3.9 3.13; do
        py=$(ls -d "$proot"/versions/"$v".*/bin/python3 2>/dev/null | sort -V | tail -n 1)
        [ -n "$py" ] || { echo "no CPython $v under $proot" >&2; exit 2; }
        pythons+=("$py")
    done
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/kqueue_py-test-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT

summary=()
status=0
n=0
for py in "${pythons[@]}"; do
    n=$((n + 1))
    venv="$work/venv$n"
    name=$("$py" -c 'import sys; print(sys.implementation.name, sys.version.split()[0])') || name=$py
    echo "== $name ($py)"
    if ! { "$py" -m venv "$venv" &&
           "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip &&
           "$venv/bin/python" -m pip install -q --disable-pip-version-check \
               --group pyproject.toml:test "$wheel"; }; then
        summary+=("$name: install failed"); status=1; continue
    fi
    # No __pycache__ in the checkout; the venv's pytest, not `python -m pytest`.
    PYTHONDONTWRITEBYTECODE=1 "$venv/bin/pytest" -q -p no:cacheprovider 2>&1 | tee "$work/log$n"
    rc=${PIPESTATUS[0]}
    summary+=("$name: $(tail -n 1 "$work/log$n")")
    [ "$rc" -eq 0 ] || status=1
done
printf '%s\n' "${summary[@]}"
exit $status
