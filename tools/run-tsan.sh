#!/usr/bin/env bash
# `make tsan`: the threaded tests on a ThreadSanitizer build of the C backend.
# Usage: tools/run-tsan.sh [python] [pytest args]   (default: the threaded tests)
#
# The backend (csrc/) is built with -fsanitize=thread (KQUEUE_PY_SANITIZE,
# see build_kqueue.py) into its own venv (.venv-tsan).  The interpreter is
# not instrumented, so libtsan is preloaded (it must be initialised before
# the first thread exists, and it intercepts pthread_create, mutexes and the
# atomics' fences for every thread, instrumented or not).  What TSan checks
# is the backend's own code: every plain read/write in csrc/ is instrumented,
# so a field read outside the queue lock without __atomic_* (the unlocked
# "hints" kevent() reads before locking: q_head, ntimers; refs; the signal
# hook's count/prev_index/sig_event_fd) is reported as a data race if another
# thread writes it under the lock.
#
# No suppressions: CPython itself is not instrumented, so TSan sees no
# memory accesses of the interpreter and reports none there (the GIL's
# mutex and condition variable are intercepted, so it knows the ordering
# they give).  If a report ever comes from inside the interpreter, a
# suppressions file (TSAN_OPTIONS=suppressions=...) is the place for it,
# never for csrc/.  Address-space randomisation is switched off for the run
# (setarch -R): TSan's fixed shadow layout does not fit every layout a
# kernel with many mmap random bits hands out ("unexpected memory mapping").
# Any report fails the run (halt_on_error=1, exitcode=66).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
shift || true
VENV=.venv-tsan

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel cffi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --group test
rm -rf build   # never link objects of an earlier, uninstrumented build (nor leave ours)
KQUEUE_PY_SANITIZE=thread \
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir \
    --force-reinstall --no-deps .
rm -rf build

if [ $# -eq 0 ]; then
    # The threaded tests: many threads on one queue, close() waking waiters,
    # cross-thread triggers, signals while other threads wait.
    set -- tests/stress/test_stress.py tests/api/test_raw.py \
        tests/backend/test_queue_descriptor.py tests/api/test_queue.py tests/api/test_compat.py \
        tests/backend/test_user.py tests/backend/test_signal.py tests/api/test_selectors.py \
        tests/backend/test_read_write.py tests/api/test_queue_fast.py tests/api/test_raw_fast.py \
        tests/backend/test_uring.py \
        -k "thread or wake or close or concurren or storm or exactly_once or kq_wait or eintr"
fi

# Reports go to files (pytest captures the process's stderr, and the first
# report ends the process), printed below.
logdir=$(mktemp -d "${TMPDIR:-/tmp}/kqueue_py-tsan.XXXXXX")
trap 'rm -rf "$logdir"' EXIT
set +e
KQUEUE_PY_SANITIZED=1 \
LD_PRELOAD="$(gcc -print-file-name=libtsan.so)" \
TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1:log_path=$logdir/tsan" \
    setarch "$(uname -m)" -R "$VENV/bin/pytest" -p no:cacheprovider "$@"
status=$?
set -e
if compgen -G "$logdir/tsan*" >/dev/null; then
    echo "=== ThreadSanitizer reports"
    cat "$logdir"/tsan*
    [ "$status" -ne 0 ] || status=66
fi
exit "$status"
