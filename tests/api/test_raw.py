"""Signals during a wait (EINTR, PEP 475-style retry in kq_wait) and the
raw helpers' (kq_wait/kq_apply) error reporting."""
from __future__ import annotations

import errno
import signal
import threading
import time

import pytest

import kqueue_py
from kqueue_py import ffi, kq_wait, lib, new_events

from helpers import wait_blocked_in_kevent, wait_until

USER, TIMER = lib.EVFILT_USER, lib.EVFILT_TIMER
EV_ADD, EV_CLEAR, EV_ONESHOT = lib.EV_ADD, lib.EV_CLEAR, lib.EV_ONESHOT

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signal handlers need the main thread")


@pytest.fixture
def alarm():
    """Install a SIGALRM handler; restore everything afterwards."""
    old = signal.getsignal(signal.SIGALRM)
    calls = []

    def install(handler=None):
        def h(signum, frame):
            calls.append(time.monotonic())
            if handler is not None:
                handler()
        signal.signal(signal.SIGALRM, h)
        return calls

    yield install
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def test_kq_wait_signal_mid_wait_runs_handler_and_keeps_deadline(kq, alarm):
    calls = alarm()
    events = new_events(8)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    t0 = time.monotonic()
    n = kq_wait(kq, events, 8, 1000)
    t1 = time.monotonic()
    assert n == 0
    assert len(calls) == 1, "the handler did not run"
    assert t1 - t0 >= 0.99, f"kq_wait returned after {t1 - t0:.3f}s, before its 1 s"
    # The rest of the second, not a fresh one counted from the signal.
    assert t1 - calls[0] < 0.9, f"waited {t1 - calls[0]:.3f}s after the signal: timeout restarted"


def test_kq_wait_many_signals_do_not_stretch_the_timeout(kq, alarm):
    calls = alarm()
    events = new_events(8)
    signal.setitimer(signal.ITIMER_REAL, 0.03, 0.03)    # every 30 ms
    t0 = time.monotonic()
    n = kq_wait(kq, events, 8, 300)
    elapsed = time.monotonic() - t0
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert n == 0
    assert len(calls) >= 5
    # A timeout restarted at each signal would never end while they come.
    assert 0.29 <= elapsed < 5.0, f"kq_wait returned after {elapsed:.3f}s"


def test_kq_wait_handler_exception_propagates(kq, alarm):
    class Boom(Exception):
        pass

    def raise_boom():
        raise Boom()

    alarm(raise_boom)
    events = new_events(8)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    t0 = time.monotonic()
    with pytest.raises(Boom):
        kq_wait(kq, events, 8, 2000)
    assert time.monotonic() - t0 < 1.0, "the exception waited for the timeout"


def test_kq_wait_forever_handler_exception_propagates(kq, alarm):
    class Boom(Exception):
        pass

    def raise_boom():
        raise Boom()

    alarm(raise_boom)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    with pytest.raises(Boom):
        kq_wait(kq, new_events(8), 8, -1)


def test_kq_wait_forever_retries_eintr_and_returns_the_event(kq, alarm):
    kq.change((1, USER, EV_ADD | EV_CLEAR, 0, 0, 31))
    # First signal: only the handler runs (retry). Second: trigger the event.
    state = {"n": 0}

    def handler():
        state["n"] += 1
        if state["n"] == 2:
            assert kqueue_py.kq_apply(kq, kqueue_py.kev_change(
                1, USER, lib.EV_KEEPUDATA, fflags=lib.NOTE_TRIGGER))

    calls = alarm(handler)
    events = new_events(8)
    signal.setitimer(signal.ITIMER_REAL, 0.03, 0.03)
    n = kq_wait(kq, events, 8, -1)
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert n == 1
    assert len(calls) >= 2
    assert (events[0].ident, int(ffi.cast("uintptr_t", events[0].udata))) == (1, 31)


def test_kq_wait_retries_eintr_when_handler_makes_a_failing_kevent_call(kq, alarm):
    """The handler runs between kevent() returning EINTR and kq_wait looking
    at the error; a kqueue_py call inside the handler (here one that fails
    with ENOENT) must not turn the interrupted wait into a failure."""
    def handler():
        assert not kqueue_py.kq_apply(kq, kqueue_py.kev_change(999, USER, lib.EV_DELETE))

    calls = alarm(handler)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    t0 = time.monotonic()
    n = kq_wait(kq, new_events(4), 4, 300)
    elapsed = time.monotonic() - t0
    assert len(calls) == 1
    assert n == 0, f"kq_wait returned {n} (errno {ffi.errno}) instead of retrying"
    assert elapsed >= 0.29


def test_raw_kevent_reports_eintr(kq, alarm):
    alarm()
    evs = ffi.new("struct kevent[]", 4)
    ts = ffi.new("struct timespec *")
    ts.tv_sec = 2
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    t0 = time.monotonic()
    ffi.errno = 0
    rc = lib.kevent(kq, ffi.NULL, 0, evs, 4, ts)
    assert time.monotonic() - t0 >= 0.04
    err = ffi.errno
    assert (rc, err) == (-1, errno.EINTR)     # not 0 after the 2 s timeout


def test_kq_wait_returns_events(kq):
    kq.change((1, USER, EV_ADD | EV_CLEAR, lib.NOTE_TRIGGER), (2, USER, EV_ADD | EV_CLEAR, lib.NOTE_TRIGGER))
    events = new_events(8)
    assert kq_wait(kq, events, 8, 1000) == 2
    assert sorted(events[i].ident for i in range(2)) == [1, 2]
    assert kq_wait(kq, events, 8, 0) == 0


def test_kq_wait_timeout_without_events(kq):
    t0 = time.monotonic()
    assert kq_wait(kq, new_events(4), 4, 100) == 0
    assert 0.099 <= time.monotonic() - t0 < 5.0    # a wrong unit would be 100 s


def test_kq_wait_returns_minus_one_with_errno_on_closed_queue():
    kq = lib.kqueue()
    lib.kqueue_close(kq)
    ffi.errno = 0
    assert kq_wait(kq, new_events(4), 4, 100) == -1
    assert ffi.errno == errno.EBADF
    ffi.errno = 0
    assert kq_wait(kq, new_events(4), 4, -1) == -1
    assert ffi.errno == errno.EBADF


def test_kq_wait_fails_with_ebadf_when_queue_closed_by_another_thread():
    kq = lib.kqueue()
    result = {}

    def run():
        result["n"] = kq_wait(kq, new_events(4), 4, -1)
        result["errno"] = ffi.errno

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_blocked_in_kevent(t)
    lib.kqueue_close(kq)
    t.join(2.0)
    assert not t.is_alive()
    assert (result["n"], result["errno"]) == (-1, errno.EBADF)


def test_signal_while_another_thread_waits_does_not_break_its_wait(kq, alarm):
    """A signal handled by the main thread must not make a waiter in another
    thread return early or lose its event."""
    calls = alarm()
    kq.change((1, USER, EV_ADD | EV_CLEAR))
    result = {}

    def run():
        result["n"] = kq_wait(kq, new_events(4), 4, 2000)
        result["t"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_blocked_in_kevent(t)
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    assert wait_until(lambda: len(calls) >= 5, timeout=10.0)   # the main thread took them
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert t.is_alive(), "the waiter returned early"
    wait_blocked_in_kevent(t)               # and waits on
    t_trig = time.monotonic()
    kq.change((1, USER, 0, lib.NOTE_TRIGGER))
    t.join(3.0)
    assert not t.is_alive()
    assert result["n"] == 1
    assert result["t"] >= t_trig
