"""KQueue.wait called again and again with the same arguments.

On CPython a queue's ``wait`` is a C function bound to the queue's buffer
pool, which serves a poll or a wait for ever with the arguments of the
previous call and hands everything else to the Python method: repeated
calls must behave as first calls do (events, udata release, EINTR, a
close from another thread, fork), and subclasses keep their own wait()."""
from __future__ import annotations

import gc
import os
import signal
import sys
import sysconfig
import threading

import pytest

from kqueue_py import KQueue, lib

from helpers import wait_blocked_in_kevent, wait_until

FAST = sys.implementation.name == "cpython" and not sysconfig.get_config_var("Py_GIL_DISABLED")


@pytest.mark.skipif(not FAST, reason="the C form exists on CPython with the GIL only")
def test_a_queue_waits_in_c_and_the_class_keeps_the_method():
    with KQueue() as q:
        assert type(q.wait).__name__ == "builtin_function_or_method"
        assert q.wait.__doc__ == KQueue.wait.__doc__
        assert KQueue.wait.__qualname__ == "KQueue.wait"    # what the docs show
        q.close()
        assert type(q.wait).__name__ == "method"            # closed: the method, which raises


def test_repeated_waits_return_events_and_udata():
    with KQueue() as q:
        payload = object()
        q.add_user(1, payload)
        for _ in range(5):
            assert q.wait(0) == []
            q.trigger(1)
            [ev] = q.wait(0)
            assert (ev.ident, ev.filter, ev.udata) == (1, lib.EVFILT_USER, payload)
        for _ in range(3):
            q.trigger(1)
            assert [e.udata for e in q.wait(None)] == [payload]
        assert q.wait(0) == []


def test_repeated_waits_release_oneshot_udata():
    import weakref

    class Payload:
        pass

    with KQueue() as q:
        for _ in range(3):
            q.wait(0)                      # the C form serves the next poll
        p = Payload()
        ref = weakref.ref(p)
        q.add_user(2, p, flags=lib.EV_ONESHOT)
        q.trigger(2)
        del p
        [ev] = q.wait(0)
        assert ev.udata is ref()
        del ev
        gc.collect()
        assert ref() is None               # the registration ended with its delivery
        assert q.wait(0) == []


def test_a_subclass_overriding_wait_keeps_its_own():
    class Counting(KQueue):
        calls = 0

        def wait(self, timeout=None, max_events=None):
            Counting.calls += 1
            return super().wait(timeout, max_events)

    with Counting() as q:
        for _ in range(3):
            assert q.wait(0) == []
        assert Counting.calls == 3


def test_close_then_wait_through_a_kept_reference_raises():
    q = KQueue()
    w = q.wait
    assert w(0) == [] and w(0) == []
    q.close()
    with pytest.raises(ValueError, match="closed"):
        w(0)
    with pytest.raises(ValueError, match="closed"):
        q.wait(0)


def test_close_from_another_thread_wakes_a_repeated_wait_forever():
    q = KQueue()
    q.add_user(1)
    q.trigger(1)
    assert len(q.wait(None)) == 1          # wait(None) is prepared now
    got = {}

    def waiter():
        try:
            got["events"] = q.wait(None)
        except ValueError as e:
            got["error"] = e

    t = threading.Thread(target=waiter)
    t.start()
    wait_blocked_in_kevent(t)
    q.close()
    t.join(10)
    assert not t.is_alive()
    assert "closed" in str(got.get("error")), got


def test_threads_waiting_at_once_each_get_their_own_events():
    with KQueue() as q:
        for i in range(1, 5):
            q.add_user(i, i)
        q.add_user(99, "stop")
        got: list[list[object]] = [[] for _ in range(4)]

        def worker(k):
            while True:
                events = q.wait(None, 1)
                got[k] += [e.udata for e in events]
                if any(e.udata == "stop" for e in events):
                    return

        ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        wait_blocked_in_kevent(*ts)
        n = 200
        for j in range(n):
            q.trigger(1 + j % 4)
            assert wait_until(lambda j=j: sum(map(len, got)) == j + 1, timeout=10), j
        for k in range(4):
            q.trigger(99)
            assert wait_until(lambda k=k: sum(not t.is_alive() for t in ts) == k + 1,
                              timeout=10)
        for t in ts:
            t.join(10)
        flat = [u for r in got for u in r]
        assert sorted(u for u in flat if u != "stop") == sorted(1 + j % 4 for j in range(n))
        assert flat.count("stop") == 4


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_repeated_wait_forever_retries_eintr_and_runs_the_handler():
    with KQueue() as q:
        q.add_user(1, "u")
        q.trigger(1)
        assert len(q.wait(None)) == 1
        calls = []

        def handler(signum, frame):
            calls.append(signum)
            if len(calls) == 3:
                q.trigger(1)

        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
            events = q.wait(None)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert [e.udata for e in events] == ["u"] and len(calls) >= 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_finds_the_queue_closed_on_a_repeated_wait():
    q = KQueue()
    try:
        assert q.wait(0) == [] and q.wait(0) == []
        pid = os.fork()
        if pid == 0:   # pragma: no cover - the child
            code = 1
            try:
                q.wait(0)
            except ValueError:
                code = 0
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert q.wait(0) == []             # the parent's queue is untouched
    finally:
        q.close()


@pytest.mark.skipif(not FAST, reason="the C form exists on CPython with the GIL only")
def test_dropping_the_queue_closes_it_even_with_its_wait_kept():
    # The C form holds its queue weakly, so that dropping the queue closes
    # it at once, as it always did: a wait kept from it then finds it closed.
    q = KQueue()
    w = q.wait
    assert w(0) == [] and w(0) == []
    del q
    gc.collect()
    with pytest.raises(ValueError, match="closed"):
        w(0)


def test_one_event_decoded_in_c_has_every_field_as_the_method_gives_it():
    big = 2**64 - 3                         # uintptr_t: unsigned, all 64 bits
    with KQueue() as q:
        q.add_user(big, "big")
        q.apply([(7, lib.EVFILT_USER, lib.EV_ADD | lib.EV_CLEAR, 0, 0, None)])
        for _ in range(3):
            assert q.wait(0) == []
        seen = []
        for ident in (big, 7):
            q.trigger(ident, lib.NOTE_FFOR | 0xABCDE)
            [ev] = q.wait(0)                 # the C form's one-event decode
            q.trigger(ident, lib.NOTE_FFOR | 0xABCDE)
            [ref] = KQueue.wait(q, 0)        # the Python method's
            assert tuple(ev) == tuple(ref) and type(ev) is type(ref)
            seen.append(ev)
        assert (seen[0].ident, seen[0].udata, seen[0].fflags & 0xFFFFF) == (big, "big", 0xABCDE)
        assert (seen[1].ident, seen[1].udata) == (7, None)
        assert seen[0].filter == lib.EVFILT_USER < 0


def test_many_events_decoded_in_c_match_the_method_event_for_event():
    """Level-triggered READ registrations stay ready, so the C form and
    the Python method can be asked for the same events in turn: every
    field, udata object and type equal, whatever the count asked."""
    import socket
    pairs = [socket.socketpair() for _ in range(40)]
    try:
        with KQueue() as q:
            marks = [object() for _ in pairs]
            for k, ((a, b), mark) in enumerate(zip(pairs, marks)):
                b.send(b"x" * (k + 1))
                q.add_reader(a.fileno(), mark if k % 3 else None)
            ref = {e.ident: e for e in KQueue.wait(q, 0, 64)}     # the method's
            assert len(ref) == len(pairs)
            for cap in (40, 7, 2):
                for _ in range(3):          # repeated: the C form serves them
                    got = q.wait(0, cap)
                    assert len(got) == cap and len({e.ident for e in got}) == cap
                    for e in got:
                        assert tuple(e) == tuple(ref[e.ident]) and type(e) is type(ref[e.ident])
                        assert e.udata is ref[e.ident].udata
            for k, ((a, _b), mark) in enumerate(zip(pairs, marks)):
                e = ref[a.fileno()]
                assert (e.filter, e.data) == (lib.EVFILT_READ, k + 1)
                assert e.udata is (mark if k % 3 else None)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.skipif(not FAST, reason="the C form exists on CPython with the GIL only")
def test_a_queue_triggers_in_c_and_the_class_keeps_the_method():
    with KQueue() as q:
        assert type(q.trigger).__name__ == "builtin_function_or_method"
        assert q.trigger.__doc__ == KQueue.trigger.__doc__
        q.close()
        assert type(q.trigger).__name__ == "method"


def test_repeated_triggers_behave_as_the_first():
    with KQueue() as q:
        q.add_user(1, "one")
        for _ in range(3):
            q.trigger(1)
            q.trigger(1, 0)
            assert [e.udata for e in q.wait(0)] == ["one"]
        q.trigger(1, lib.NOTE_FFOR | 5)
        [ev] = q.wait(0)
        assert ev.fflags & 0xFFFFFF == 5
        with pytest.raises(TypeError):
            q.trigger(True)                  # a bool is no ident
        with pytest.raises(TypeError):
            q.trigger(1, 2, 3)
        with pytest.raises(FileNotFoundError):
            q.trigger(2)                     # no such user event
        q.trigger(ident=1)
        assert len(q.wait(0)) == 1
        t = q.trigger
        q.close()
        with pytest.raises(ValueError, match="closed"):
            t(1)
        with pytest.raises(ValueError, match="closed"):
            q.trigger(1)


def test_a_subclass_overriding_trigger_keeps_its_own():
    class Counting(KQueue):
        calls = 0

        def trigger(self, ident, fflags=0):
            Counting.calls += 1
            super().trigger(ident, fflags)

    with Counting() as q:
        q.add_user(1)
        for _ in range(3):
            q.trigger(1)
        assert Counting.calls == 3 and len(q.wait(0)) == 1
