#!/usr/bin/env bash
# Proves the sdist is complete: build it, unpack it in a temp dir, build a
# wheel from the unpacked tree, install that wheel in a fresh venv and run
# the full test suite from the unpacked tree's tests/ with the venv's pytest.
# Nothing is written to the checkout (the sdist is built from a copy).
# Usage: tools/check-sdist.sh [python]      (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-${PYTHON:-python3}}
work=$(mktemp -d "${TMPDIR:-/tmp}/kqueue_py-sdist-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== venv ($work/venv)"
"$PYTHON" -m venv "$work/venv"
vpy="$work/venv/bin/python"
pip=("$vpy" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip build

echo "== sdist"
# Build from a copy: setuptools writes build/ and *.egg-info next to setup.py.
mkdir "$work/checkout"
tar --exclude=.git --exclude='.venv*' --exclude=build --exclude=dist \
    --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -xf - -C "$work/checkout"
"$vpy" -m build --sdist --outdir "$work/sdist" "$work/checkout" >"$work/sdist.log" 2>&1 \
    || { cat "$work/sdist.log"; exit 1; }
sdist=$(ls "$work"/sdist/kqueue_py-*.tar.gz)
echo "$(basename "$sdist"): $(tar tzf "$sdist" | grep -vc '/$') files"

echo "== wheel from the unpacked sdist"
mkdir "$work/unpacked"
tar xzf "$sdist" -C "$work/unpacked"
src=$(ls -d "$work"/unpacked/kqueue_py-*)
"$vpy" -m build --wheel --outdir "$work/wheel" "$src" >"$work/wheel.log" 2>&1 \
    || { cat "$work/wheel.log"; exit 1; }
wheel=$(ls "$work"/wheel/kqueue_py-*.whl)
echo "$(basename "$wheel")"

echo "== install and test"
# The test group from the sdist's own pyproject.toml.
"${pip[@]}" --group "$src/pyproject.toml:test" "$wheel"
# The tests import the installed wheel (the package's source is in src/,
# never on sys.path).
cd "$src/tests"
"$work/venv/bin/pytest" -q -p no:cacheprovider
