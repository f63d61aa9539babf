"""kq_wait and kq_apply called again with the same arguments.

On CPython they are C functions that serve such a call from the request
prepared by the first one (and hand everything else to the Python
functions): repeated calls must behave exactly as first calls do --
results, errno, EINTR retried with a Python signal handler run in between,
argument errors."""
from __future__ import annotations

import errno
import signal
import sys
import sysconfig
import threading

import pytest

import kqueue_py
from kqueue_py import ffi, kev_change, kq_apply, kq_wait, lib, new_events, raw

from helpers import wait_blocked_in_kevent

USER = lib.EVFILT_USER
TRIGGER = lib.NOTE_TRIGGER

FAST = sys.implementation.name == "cpython" and not sysconfig.get_config_var("Py_GIL_DISABLED")


def _user_queue(make_kq, ident: int = 1) -> int:
    kq = make_kq()
    assert kq_apply(kq, kev_change(ident, USER, lib.EV_ADD | lib.EV_CLEAR, udata=7))
    return kq


@pytest.mark.skipif(not FAST, reason="the C functions exist on CPython with the GIL only")
def test_the_helpers_are_c_functions_with_the_python_docs():
    for fast, py in ((kq_wait, raw._kq_wait_py), (kq_apply, raw._kq_apply_py)):
        assert type(fast).__name__ == "builtin_function_or_method", fast
        assert fast.__doc__ == py.__doc__
        assert fast.__module__ == "kqueue_py.raw"
    assert kqueue_py.kq_wait is kq_wait


def test_repeated_poll_and_trigger_return_what_first_calls_do(make_kq):
    kq = _user_queue(make_kq)
    # EV_KEEPUDATA: a trigger without it sets udata too (as on FreeBSD).
    trig = kev_change(1, USER, lib.EV_KEEPUDATA, fflags=TRIGGER)
    events = new_events(4)
    for _ in range(5):
        assert kq_wait(kq, events, 4, 0) == 0
        assert kq_apply(kq, trig) is True
        assert kq_wait(kq, events, 4, 0) == 1
        assert (events[0].ident, int(ffi.cast("uintptr_t", events[0].udata))) == (1, 7)
    # The same array on another queue, then back: each call waits on its own queue.
    other = _user_queue(make_kq)
    assert kq_apply(other, trig)
    assert kq_wait(kq, events, 4, 0) == 0
    assert kq_wait(other, events, 4, 0) == 1
    assert kq_wait(kq, events, 4, 0) == 0


def test_repeated_wait_on_a_closed_queue_fails_with_ebadf(make_kq):
    kq = int(lib.kqueue())
    events = new_events(4)
    assert kq_wait(kq, events, 4, 0) == 0
    assert kq_wait(kq, events, 4, 0) == 0
    lib.kqueue_close(kq)
    for timeout in (0, 0, -1, -1):
        ffi.errno = 0
        assert kq_wait(kq, events, 4, timeout) == -1
        assert ffi.errno == errno.EBADF


def test_repeated_failing_apply_returns_false_with_errno(make_kq):
    kq = make_kq()
    trig = kev_change(5, USER, 0, fflags=TRIGGER)   # no such registration
    for _ in range(3):
        ffi.errno = 0
        assert kq_apply(kq, trig) is False
        assert ffi.errno == errno.ENOENT


def test_argument_errors_after_cached_calls(make_kq):
    kq = _user_queue(make_kq)
    events = new_events(2)
    assert kq_wait(kq, events, 2, 0) == 0
    assert kq_wait(kq, events, 2, 0) == 0
    with pytest.raises(ValueError, match="at most the 2 events"):
        kq_wait(kq, events, 3, 0)
    with pytest.raises(TypeError):
        kq_wait(kq, [], 2, 0)          # not hashable, not cdata
    with pytest.raises(TypeError):
        kq_wait(kq, events, 2)         # missing timeout_ms
    with pytest.raises(TypeError):
        kq_apply(kq)
    assert kq_wait(kq=kq, events=events, cap=2, timeout_ms=0) == 0
    assert kq_apply(kq, change=kev_change(1, USER, 0, fflags=TRIGGER)) is True
    assert kq_wait(kq, events, 2, 0) == 1


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_repeated_wait_forever_retries_eintr_and_runs_the_handler(make_kq):
    kq = _user_queue(make_kq)
    trig = kev_change(1, USER, 0, fflags=TRIGGER)
    events = new_events(1)
    assert kq_apply(kq, trig)
    assert kq_wait(kq, events, 1, -1) == 1      # the request is prepared now
    calls = []

    def handler(signum, frame):
        calls.append(signum)
        if len(calls) == 3:
            assert kq_apply(kq, trig)

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
        n = kq_wait(kq, events, 1, -1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert n == 1 and len(calls) >= 3


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_repeated_wait_forever_propagates_the_handler_exception(make_kq):
    kq = _user_queue(make_kq)
    events = new_events(1)
    assert kq_apply(kq, kev_change(1, USER, 0, fflags=TRIGGER))
    assert kq_wait(kq, events, 1, -1) == 1

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            kq_wait(kq, events, 1, -1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_the_gil_is_released_while_a_repeated_wait_blocks(make_kq):
    kq = _user_queue(make_kq)
    trig = kev_change(1, USER, 0, fflags=TRIGGER)
    events = new_events(1)
    assert kq_apply(kq, trig)
    assert kq_wait(kq, events, 1, -1) == 1
    got = {}

    def waiter():
        got["n"] = kq_wait(kq, events, 1, -1)

    t = threading.Thread(target=waiter)
    t.start()
    # This thread runs Python while the other one is blocked in the wait:
    # a wait holding the GIL would hang here (the join's timeout says so).
    wait_blocked_in_kevent(t)
    assert kq_apply(kq, trig)
    t.join(10)
    assert not t.is_alive() and got["n"] == 1
