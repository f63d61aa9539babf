#!/usr/bin/env bash
# Build the C backend with AddressSanitizer + UndefinedBehaviorSanitizer and
# run the whole test suite against that build.  Usage: tools/run-sanitized.sh [python]
#
# The interpreter itself is not instrumented, so the sanitizer runtimes are
# preloaded.  Leak detection is off: CPython keeps memory alive at exit by
# design, which LeakSanitizer would report as noise.  Any ASan or UBSan
# report aborts the run (halt_on_error), so a green run means no reports.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
VENV=.venv-sanitize

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel cffi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --group test
rm -rf build   # never link objects of an earlier, uninstrumented build (nor leave ours)
KQUEUE_PY_SANITIZE=address,undefined \
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir \
    --force-reinstall --no-deps .

rm -rf build
KQUEUE_PY_SANITIZED=1 \
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$VENV/bin/pytest" -p no:cacheprovider "${@:2}"
