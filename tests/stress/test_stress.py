"""Stress tests: signal storms and many threads.

(a) Signal storm: a Python SIGALRM handler fired every millisecond by
    ``signal.setitimer`` while the main thread waits through each of the
    four APIs that share the core's wait loop (``raw.kq_wait``,
    ``KQueue.wait``, ``compat.kqueue.control``, ``KqueueSelector.select``)
    with 20-50 ms timeouts.
    No wait returns early without an event, none overshoots its deadline by
    more than a generous bound, a handler's exception propagates out of the
    wait, and USER events triggered from another thread are never lost.
(b) Threads: 8 threads on one ``KQueue`` registering, triggering, deleting
    and waiting on EV_ONESHOT / EV_DISPATCH user events with unique idents:
    each trigger is delivered exactly once, nothing deadlocks; then
    ``close()`` from another thread wakes every waiter (``ValueError``), and
    ``lib.kqueue_close`` wakes raw waiters (``EBADF``).

Durations by default: a 2 s storm per API and 10 s of 8 threads; set
``KQUEUE_PY_LONG=1`` in the environment to multiply them by 10.
"""
from __future__ import annotations

import collections
import errno
import itertools
import os
import random
import selectors
import signal
import struct
import threading
import time

import pytest

from kqueue_py import KQueue, compat, ffi, lib
from kqueue_py.raw import kq_wait, new_events
from kqueue_py.selectors import KqueueSelector

LONG = os.environ.get("KQUEUE_PY_LONG", "") not in ("", "0")
SCALE = 10 if LONG else 1

USER = lib.EVFILT_USER
EV_ADD, EV_DELETE, EV_ONESHOT, EV_DISPATCH, EV_CLEAR = (
    lib.EV_ADD, lib.EV_DELETE, lib.EV_ONESHOT, lib.EV_DISPATCH, lib.EV_CLEAR)
TRIGGER = lib.NOTE_TRIGGER

#: How late a wait may return (the machine is a small, busy VM).
OVERSHOOT = 0.050
#: How early: never (1 ms of slack for clock granularity).
EARLY = 0.001

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120 * SCALE),
    pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer"),
]


class Boom(Exception):
    pass


class Storm:
    """SIGALRM every millisecond into a Python handler that counts, and
    raises :class:`Boom` once when asked to (on the n-th signal from now)."""

    def __init__(self):
        self.count = 0
        self.raise_at = None

    def handler(self, signum, frame):
        self.count += 1
        if self.raise_at is not None and self.count >= self.raise_at:
            self.raise_at = None
            raise Boom()

    def __enter__(self):
        self.old_handler = signal.signal(signal.SIGALRM, self.handler)
        self.old_timer = signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, self.old_handler)
        if self.old_timer[0] > 0:          # pytest-timeout's alarm, say
            signal.setitimer(signal.ITIMER_REAL, *self.old_timer)


class Triggerer(threading.Thread):
    """Another thread adding and triggering EV_ONESHOT user events with
    unique idents, every few milliseconds, through ``fire(ident)``."""

    def __init__(self, fire, period=0.09):
        super().__init__(daemon=True)
        self.fire = fire
        self.period = period
        self.sent: list[int] = []
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            for ident in itertools.count(1000):
                if self.stop.wait(self.period):
                    return
                self.fire(ident)
                self.sent.append(ident)
        except BaseException as exc:   # pragma: no cover - reported by the test
            self.error = exc


def storm_waits(wait, fire, duration):
    """Run ``wait(timeout) -> list of idents`` in a loop under a storm while
    another thread fires events; check timing, then return what was seen."""
    received: list[int] = []
    stats = {"waits": 0, "empty": 0, "max_over": 0.0}
    rng = random.Random(7)
    t = Triggerer(fire)
    with Storm() as storm:
        t.start()
        try:
            end = time.monotonic() + duration
            while time.monotonic() < end:
                timeout = rng.uniform(0.020, 0.050)
                t0 = time.monotonic()
                got = wait(timeout)
                elapsed = time.monotonic() - t0
                stats["waits"] += 1
                received.extend(got)
                assert elapsed <= timeout + OVERSHOOT, (elapsed, timeout)
                if not got:
                    stats["empty"] += 1
                    assert elapsed >= timeout - EARLY, (elapsed, timeout)
                    stats["max_over"] = max(stats["max_over"], elapsed - timeout)
        finally:
            t.stop.set()
            t.join(5)
        assert not t.is_alive()
        assert t.error is None, t.error
        # Whatever is still in flight arrives now.
        deadline = time.monotonic() + 2
        while set(t.sent) - set(received) and time.monotonic() < deadline:
            received.extend(wait(0.05))
        signals = storm.count
    assert signals > 100 * duration * 0.5, signals    # the storm really ran
    assert sorted(received) == sorted(t.sent), "lost or duplicated USER events"
    assert t.sent, "the other thread triggered nothing"
    assert stats["empty"] > 0
    return stats


def boom_propagates(wait, func_name):
    """Arm the handler to raise on a later signal during a long wait: the
    exception comes out of the wait (not swallowed, not delayed)."""
    with Storm() as storm:
        for _attempt in range(5):
            t0 = time.monotonic()
            with pytest.raises(Boom) as info:
                storm.raise_at = storm.count + 5
                wait(2.0)
            elapsed = time.monotonic() - t0
            names = [entry.name for entry in info.traceback]
            if func_name in names:
                break
        else:  # pragma: no cover
            pytest.fail(f"Boom never raised inside {func_name}: {names}")
    assert elapsed < 1.0, elapsed        # raised promptly, the wait was not completed
    # After the exception, the queue still works (checked by callers).


# -- the four APIs, one shared wait loop ---------------------------------------

def _change(kq, ident, filt, flags, fflags=0):
    ch = ffi.new("struct kevent *")
    ch.ident, ch.filter, ch.flags, ch.fflags = ident, filt, flags, fflags
    rc = lib.kevent(kq, ch, 1, ffi.NULL, 0, ffi.NULL)
    assert rc == 0, ffi.errno


class RawAPI:
    """raw.kq_wait on a lib.kqueue() descriptor; USER events."""

    func = "kq_wait"

    def __init__(self):
        self.kq = lib.kqueue()
        self.buf = new_events(16)

    def wait(self, timeout):
        n = kq_wait(self.kq, self.buf, 16, int(timeout * 1000))
        assert n >= 0, ffi.errno
        return [int(self.buf[i].ident) for i in range(n)]

    def fire(self, ident):
        _change(self.kq, ident, USER, EV_ADD | EV_ONESHOT, TRIGGER)

    def close(self):
        lib.kqueue_close(self.kq)


class KQueueAPI:
    """KQueue.wait; USER events with udata."""

    func = "wait"

    def __init__(self):
        self.q = KQueue()

    def wait(self, timeout):
        events = self.q.wait(timeout)
        assert all(e.udata == e.ident for e in events)
        return [e.ident for e in events]

    def fire(self, ident):
        self.q.add_user(ident, udata=ident, flags=EV_ONESHOT)
        self.q.trigger(ident)

    def close(self):
        self.q.close()


class CompatAPI:
    """compat.kqueue.control; USER events."""

    func = "control"

    def __init__(self):
        self.kq = compat.kqueue()

    def wait(self, timeout):
        return [e.ident for e in self.kq.control(None, 16, timeout)]

    def fire(self, ident):
        self.kq.control([compat.kevent(ident, USER, EV_ADD | EV_ONESHOT, TRIGGER)], 0)

    def close(self):
        self.kq.close()


class SelectorAPI:
    """KqueueSelector.select on a pipe: each fire() writes one 4-byte ident."""

    func = "select"

    def __init__(self):
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.sel = KqueueSelector()
        self.sel.register(self.r, selectors.EVENT_READ)
        self.pending = b""

    def wait(self, timeout):
        got = []
        for _key, _mask in self.sel.select(timeout):
            try:
                while True:
                    self.pending += os.read(self.r, 4096)
            except BlockingIOError:
                pass
            whole = len(self.pending) // 4 * 4
            got = [v for (v,) in struct.iter_unpack("I", self.pending[:whole])]
            self.pending = self.pending[whole:]
        return got

    def fire(self, ident):
        os.write(self.w, struct.pack("I", ident))

    def close(self):
        self.sel.close()
        os.close(self.r)
        os.close(self.w)


@pytest.mark.parametrize("api", [RawAPI, KQueueAPI, CompatAPI, SelectorAPI],
                         ids=["raw.kq_wait", "KQueue.wait", "compat.control",
                              "KqueueSelector.select"])
def test_signal_storm(api):
    """The shared wait loop under a storm, through each API: no wait returns
    early or late, no event is lost or doubled, a handler's exception
    propagates and the queue works after it."""
    a = api()
    try:
        storm_waits(a.wait, a.fire, 2.0 * SCALE)
        boom_propagates(a.wait, a.func)
        a.fire(1)
        deadline = time.monotonic() + 2
        got = []
        while not got and time.monotonic() < deadline:
            got = a.wait(1.0)
        assert got == [1]
    finally:
        a.close()


# -- threads ---------------------------------------------------------------

N_PRODUCERS = 4
N_WAITERS = 4


def test_threads_oneshot_dispatch_delivered_exactly_once():
    q = KQueue()
    duration = 10.0 * SCALE
    stop = threading.Event()
    producers_done = threading.Event()
    lock = threading.Lock()
    counts: collections.Counter = collections.Counter()
    triggered: set[int] = set()
    cancelled: set[int] = set()
    dispatch_seen: list[int] = []
    errors: list[BaseException] = []

    def producer(base):
        rng = random.Random(base)
        pending_dispatch: list[int] = []
        try:
            for i in range(10**9):
                if stop.is_set():
                    break
                ident = base + i
                kind = rng.random()
                if kind < 0.45:
                    q.add_user(ident, udata=("oneshot", ident), flags=EV_ONESHOT)
                    with lock:
                        triggered.add(ident)
                    q.trigger(ident)
                elif kind < 0.9:
                    q.add_user(ident, udata=("dispatch", ident), flags=EV_DISPATCH)
                    with lock:
                        triggered.add(ident)
                    q.trigger(ident)
                    pending_dispatch.append(ident)
                else:
                    # Registered and deleted without a trigger: never delivered.
                    q.add_user(ident, flags=rng.choice([EV_ONESHOT, EV_DISPATCH]))
                    with lock:
                        cancelled.add(ident)
                    q.remove(ident, USER)
                # Delete dispatched registrations once they were reported.
                if len(pending_dispatch) > 32:
                    with lock:
                        done = [d for d in pending_dispatch if counts[d]]
                    for d in done:
                        q.remove(d, USER)
                        pending_dispatch.remove(d)
                if i % 64 == 0:
                    time.sleep(0.001)
        except BaseException as exc:
            errors.append(exc)

    def waiter(seed):
        rng = random.Random(seed)
        try:
            while True:
                evs = q.wait(0.02, max_events=rng.randint(1, 8))
                with lock:
                    for e in evs:
                        assert e.filter == USER
                        assert e.udata is None or e.udata[1] == e.ident, e
                        counts[e.ident] += 1
                        if e.flags & EV_DISPATCH:
                            dispatch_seen.append(e.ident)
                if not evs and producers_done.is_set():
                    return
        except BaseException as exc:
            errors.append(exc)

    producers = [threading.Thread(target=producer, args=(10**8 * (k + 1),), daemon=True)
                 for k in range(N_PRODUCERS)]
    waiters = [threading.Thread(target=waiter, args=(k,), daemon=True) for k in range(N_WAITERS)]
    for t in producers + waiters:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in producers:
        t.join(10)
    assert not any(t.is_alive() for t in producers), "producer deadlocked"
    producers_done.set()
    for t in waiters:
        t.join(10)
    assert not any(t.is_alive() for t in waiters), "waiter deadlocked"
    assert not errors, errors[:3]

    assert len(triggered) > 1000, len(triggered)
    dup = {i: c for i, c in counts.items() if c != 1}
    assert not dup, f"delivered more than once: {list(dup.items())[:10]}"
    assert set(counts) == triggered, (
        f"lost: {sorted(triggered - set(counts))[:10]}, "
        f"unexpected: {sorted(set(counts) - triggered)[:10]}")
    assert not cancelled & set(counts)
    assert dispatch_seen

    # close() from another thread wakes every waiter: ValueError.
    outcome: list[object] = []
    started = threading.Barrier(N_WAITERS + 1)

    def blocked_waiter():
        started.wait()
        try:
            q.wait(None)
            outcome.append("returned")
        except ValueError:
            outcome.append("ValueError")
        except BaseException as exc:  # pragma: no cover
            outcome.append(exc)

    blocked = [threading.Thread(target=blocked_waiter, daemon=True) for _ in range(N_WAITERS)]
    for t in blocked:
        t.start()
    started.wait()
    time.sleep(0.1)                      # let them block in kevent()
    closer = threading.Thread(target=q.close)
    closer.start()
    closer.join(5)
    for t in blocked:
        t.join(5)
    assert not any(t.is_alive() for t in blocked + [closer]), "close() did not wake every waiter"
    assert outcome == ["ValueError"] * N_WAITERS, outcome
    assert q.closed


def test_threads_lowlevel_close_wakes_waiters_with_ebadf():
    kq = lib.kqueue()
    assert kq >= 0
    n_waiters = 6
    results: list[tuple[int, int]] = []
    started = threading.Barrier(n_waiters + 1)

    def waiter():
        buf = new_events(4)
        started.wait()
        n = kq_wait(kq, buf, 4, -1)
        results.append((n, ffi.errno if n < 0 else 0))

    # Some traffic first: a user event round-trip through the waiters' queue.
    _change(kq, 5, USER, EV_ADD | EV_CLEAR, TRIGGER)
    buf = new_events(4)
    assert kq_wait(kq, buf, 4, 1000) == 1
    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(n_waiters)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.1)
    closer = threading.Thread(target=lambda: results.append(("close", lib.kqueue_close(kq))))
    closer.start()
    closer.join(5)
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads), "kqueue_close did not wake every waiter"
    assert ("close", 0) in results
    waits = [r for r in results if r[0] != "close"]
    assert waits == [(-1, errno.EBADF)] * n_waiters, waits


def test_threads_lowlevel_storm_of_changes_and_waits(kq):
    """Raw lib: threads adding/triggering/deleting EV_DISPATCH events while
    others wait; every trigger delivered exactly once."""
    duration = 1.0 * SCALE
    stop = threading.Event()
    lock = threading.Lock()
    counts: collections.Counter = collections.Counter()
    sent: list[int] = []
    errors: list[BaseException] = []

    def producer(base):
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                ident = base + i
                _change(kq, ident, USER, EV_ADD | EV_DISPATCH, TRIGGER)
                with lock:
                    sent.append(ident)
        except BaseException as exc:
            errors.append(exc)

    def waiter():
        buf = new_events(8)
        try:
            while True:
                n = kq_wait(kq, buf, 8, 20)
                assert n >= 0, ffi.errno
                with lock:
                    for i in range(n):
                        counts[int(buf[i].ident)] += 1
                if n == 0 and stop.is_set():
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = ([threading.Thread(target=producer, args=(10**6 * (k + 1),), daemon=True) for k in range(2)]
               + [threading.Thread(target=waiter, daemon=True) for _ in range(3)])
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    assert sent
    assert {i: c for i, c in counts.items() if c != 1} == {}
    assert set(counts) == set(sent)
