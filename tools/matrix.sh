#!/usr/bin/env bash
# The test suite on CPython 3.9-3.13 (pyenv) and PyPy 3 (Debian's pypy3),
# each in its own venv against a wheel built for it.  One abi3 wheel is
# built once and installed on every CPython; PyPy gets its own build.
# Usage: tools/matrix.sh [version ...]   (default: 3.9 3.10 3.11 3.12 3.13 pypy3)
set -uo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.9 3.10 3.11 3.12 3.13 pypy3)

find_python() {
    if [ "$1" = pypy3 ]; then
        command -v pypy3 >/dev/null || { apt-get update -qq && apt-get install -y -qq pypy3 pypy3-venv pypy3-dev >/dev/null; }
        command -v pypy3
        return
    fi
    local root
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    ls -d "$root"/versions/"$1".*/bin/python3 2>/dev/null | sort -V | tail -n 1
}

rm -rf build   # never reuse objects of another build
mkdir -p dist/matrix
wheel=""
summary=()
status=0
for v in "${versions[@]}"; do
    py=$(find_python "$v")
    if [ -z "$py" ]; then
        summary+=("$v: interpreter not found"); status=1; continue
    fi
    venv=".venv-matrix-$v"
    rm -rf "$venv"
    "$py" -m venv "$venv" || { summary+=("$v: venv failed"); status=1; continue; }
    pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
    "${pip[@]}" --upgrade pip setuptools wheel >/dev/null
    "${pip[@]}" -r requirements-test.txt
    if [ "$v" = pypy3 ]; then
        "${pip[@]}" --force-reinstall --no-deps .
    else
        if [ -z "$wheel" ]; then
            "$venv/bin/python" -m pip wheel -q --no-deps -w dist/matrix . || { summary+=("$v: wheel build failed"); status=1; continue; }
            wheel=$(ls -t dist/matrix/kqueue_py-*abi3*.whl | head -n 1)
        fi
        "${pip[@]}" cffi
        "${pip[@]}" --force-reinstall --no-deps "$wheel"
    fi
    log="dist/matrix/test-$v.log"
    "$venv/bin/pytest" -q -p no:cacheprovider >"$log" 2>&1
    rc=$?
    summary+=("$v ($("$venv/bin/python" -c 'import sys;print(sys.implementation.name, sys.version.split()[0])')): $(tail -n 1 "$log")")
    [ $rc -eq 0 ] || status=1
done
printf '%s\n' "${summary[@]}"
exit $status
