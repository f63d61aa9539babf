"""The Pythonic queue: kqueue_py.KQueue, Event, Change, KEEP."""
from __future__ import annotations

import errno
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import weakref

import pytest

from kqueue_py import KEEP, Change, Event, KQueue, lib

import helpers as h

READ, WRITE, USER, TIMER = lib.EVFILT_READ, lib.EVFILT_WRITE, lib.EVFILT_USER, lib.EVFILT_TIMER
EV_ADD, EV_DELETE, EV_ENABLE, EV_DISABLE = lib.EV_ADD, lib.EV_DELETE, lib.EV_ENABLE, lib.EV_DISABLE
EV_ONESHOT, EV_CLEAR, EV_DISPATCH, EV_EOF = lib.EV_ONESHOT, lib.EV_CLEAR, lib.EV_DISPATCH, lib.EV_EOF

MAIN_THREAD = threading.current_thread() is threading.main_thread()


@pytest.fixture
def q():
    queue = KQueue()
    yield queue
    queue.close()


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


class Thing:
    """A udata object that can be weakly referenced."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Thing({self.name})"


# --------------------------------------------------------------------------
# Lifecycle.


def test_create_fileno_close_closed():
    q = KQueue()
    fd = q.fileno()
    assert isinstance(fd, int) and fd >= 0
    assert not q.closed
    assert repr(q) == f"<KQueue fd={fd}>"
    q.close()
    assert q.closed
    assert repr(q) == "<KQueue closed>"
    assert not fd_is_open(fd)              # the backend released the descriptor
    q.close()                              # idempotent
    assert q.closed


def test_operations_on_a_closed_queue_raise_value_error():
    q = KQueue()
    q.close()
    for call in (q.fileno, lambda: q.wait(0), lambda: q.wait_tuples(0), lambda: q.wait(0, 0),
                 lambda: q.apply([Change(1, USER)]), lambda: q.add_user(1),
                 lambda: q.trigger(1), q.__enter__):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_context_manager_closes():
    with KQueue() as q:
        fd = q.fileno()
        assert not q.closed
    assert q.closed
    assert not fd_is_open(fd)


def test_context_manager_closes_on_exception():
    with pytest.raises(RuntimeError):
        with KQueue() as q:
            raise RuntimeError
    assert q.closed


def test_descriptor_is_not_inheritable(q):
    assert os.get_inheritable(q.fileno()) is False


def test_descriptor_not_seen_by_exec_child(q):
    fd = q.fileno()
    code = f"import os,sys\ntry:\n os.fstat({fd})\nexcept OSError:\n sys.exit(0)\nsys.exit(1)"
    assert subprocess.run([sys.executable, "-c", code], close_fds=False).returncode == 0


def test_finalizer_closes_the_descriptor():
    q = KQueue()
    fd = q.fileno()
    ref = weakref.ref(q)
    del q
    gc.collect()
    assert ref() is None
    assert not fd_is_open(fd)


def test_max_events_must_be_positive():
    with pytest.raises(ValueError):
        KQueue(max_events=0)


def test_fork_child_sees_closed_queue(q):
    q.add_user(1, udata="x")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if q.closed:
                try:
                    q.wait(0)
                except ValueError:
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not q.closed
    q.trigger(1)
    assert [e.udata for e in q.wait(1)] == ["x"]


# --------------------------------------------------------------------------
# Events.


def test_event_is_a_named_tuple_like(q):
    q.add_user(7, udata="seven")
    q.trigger(7, lib.NOTE_FFCOPY | 0x123)
    (ev,) = q.wait(1)
    assert isinstance(ev, Event) and isinstance(ev, tuple)
    assert ev.ident == 7 and ev.filter == USER
    assert ev.flags & EV_CLEAR
    assert ev.fflags == 0x123
    assert ev.data == 0
    assert ev.udata == "seven"
    assert ev == (7, USER, ev.flags, 0x123, 0, "seven")
    ident, filt, flags, fflags, data, udata = ev
    assert (ident, udata) == (7, "seven")
    assert "ident=7" in repr(ev) and "udata='seven'" in repr(ev)


def test_wait_tuples_is_plain_tuples(q):
    q.add_user(1, udata=[1])
    q.trigger(1)
    (ev,) = q.wait_tuples(1)
    assert type(ev) is tuple and len(ev) == 6
    assert ev[0] == 1 and ev[1] == USER and ev[5] == [1]


def test_wait_timeout_semantics(q):
    t0 = time.monotonic()
    assert q.wait(0) == []
    assert q.wait(0.05) == []
    elapsed = time.monotonic() - t0
    assert 0.045 <= elapsed < 1.0
    assert q.wait_tuples(0.01) == []


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan")])
def test_wait_bad_timeout(q, bad):
    with pytest.raises(ValueError):
        q.wait(bad)


def test_wait_bad_timeout_does_not_lose_pooled_buffer(q):
    q.wait(0)
    pool = list(q._free)
    with pytest.raises(ValueError):
        q.wait(-1)
    assert q._free == pool


def test_wait_none_blocks_until_event(q):
    q.add_user(1)
    threading.Timer(0.05, q.trigger, (1,)).start()
    t0 = time.monotonic()
    assert [e.ident for e in q.wait(None)] == [1]
    assert time.monotonic() - t0 >= 0.04


def test_max_events_per_wait(q):
    for i in range(10):
        q.add_user(i, udata=i)
        q.trigger(i)
    first = q.wait(0, max_events=3)
    assert len(first) == 3
    rest = q.wait(0, max_events=100)
    assert len(rest) == 7
    assert sorted(e.udata for e in first + rest) == list(range(10))
    assert q.wait(0, max_events=0) == []
    with pytest.raises(ValueError):
        q.wait(0, max_events=-1)


@pytest.mark.parametrize("method", ["wait", "wait_tuples"])
@pytest.mark.parametrize("cap,kwargs", [
    (64, {"max_events": 64.0}), (64, {"max_events": 63.0}), (1, {"max_events": True}),
    (64, {"max_events": True}), (64, {"timeout": 0j}), (64, {"timeout": 1j}),
    (64, {"timeout": "0"}), (64, {"max_events": 0.0}),
])
def test_wait_argument_types_checked_even_at_their_defaults(method, cap, kwargs):
    """The type check does not depend on the value: ``max_events`` equal
    to the queue's capacity (64.0 == 64, True == 1) or 0, and a timeout
    equal to 0 (0j), are refused as the other values of their type are --
    ``TypeError``, as the stdlib's ``select.epoll.poll()`` refuses a float
    count or a complex timeout (checked here as the oracle)."""
    import select

    with KQueue(max_events=cap) as q:
        q.add_user(1)
        q.trigger(1)
        kwargs = dict(kwargs)
        timeout = kwargs.pop("timeout", 0)
        with pytest.raises(TypeError):
            getattr(q, method)(timeout, **kwargs)
        # Nothing was taken by the refused call.
        assert [e[0] for e in getattr(q, method)(0)] == [1]
    if hasattr(select, "epoll") and kwargs.get("max_events") is not True:
        # (epoll takes a bool count; kqueue_py refuses bools everywhere.)
        ep = select.epoll()
        try:
            with pytest.raises(TypeError):
                ep.poll(timeout, kwargs.get("max_events", -1))
        finally:
            ep.close()


@pytest.mark.parametrize("timeout", [0, 0.0, False, -0.0])
def test_wait_zero_timeouts_still_poll(q, timeout):
    q.add_user(1, flags=0)      # level-triggered: reported by both calls
    q.trigger(1)
    assert [e.ident for e in q.wait(timeout)] == [1]
    assert [e[0] for e in q.wait_tuples(timeout)] == [1]


def test_more_events_than_default_capacity():
    with KQueue(max_events=4) as q:
        for i in range(200):
            q.add_user(i)
            q.trigger(i)
        assert len(q.wait(0)) == 4
        assert len(q.wait(0, max_events=500)) == 196


def test_reader_writer_events(q, fds):
    r, w = fds.pipe()
    q.add_reader(r, udata="r")
    q.add_writer(w, udata="w")
    evs = {e.udata: e for e in q.wait(1)}
    assert set(evs) == {"w"}
    assert evs["w"].ident == w and evs["w"].filter == WRITE and evs["w"].data > 0
    os.write(w, b"hello")
    evs = {e.udata: e for e in q.wait(1)}
    assert evs["r"].ident == r and evs["r"].filter == READ and evs["r"].data == 5


def test_reader_accepts_objects_with_fileno(q, fds):
    a, b = fds.socketpair()
    q.add_reader(a, udata="a")
    b.send(b"xy")
    (ev,) = q.wait(1)
    assert (ev.ident, ev.filter, ev.data, ev.udata) == (a.fileno(), READ, 2, "a")
    q.remove(a, READ)
    assert q.wait(0) == []


def test_reader_eof(q, fds):
    r, w = fds.pipe()
    q.add_reader(r)
    fds.close(w)
    (ev,) = q.wait(1)
    assert ev.flags & EV_EOF


def test_reader_lowat(q, fds):
    a, b = fds.socketpair()
    q.add_reader(a, lowat=4)
    b.send(b"ab")
    assert q.wait(0.05) == []
    b.send(b"cd")
    assert [e.data for e in q.wait(1)] == [4]


def test_enable_disable_keep_udata(q, fds):
    r, w = fds.pipe()
    q.add_reader(r, udata="keep me")
    os.write(w, b"x")
    q.disable(r, READ)
    assert q.wait(0.02) == []
    q.enable(r, READ)
    assert [e.udata for e in q.wait(1)] == ["keep me"]


def test_remove(q, fds):
    r, w = fds.pipe()
    q.add_reader(r)
    os.write(w, b"x")
    q.remove(r, READ)
    assert q.wait(0.02) == []
    with pytest.raises(FileNotFoundError) as info:
        q.remove(r, READ)
    assert info.value.errno == errno.ENOENT
    assert info.value.change == Change(r, READ, EV_DELETE)


def test_add_timer(q):
    q.add_timer(5, 0.02, udata="tick", oneshot=True)
    t0 = time.monotonic()
    (ev,) = q.wait(2)
    assert time.monotonic() - t0 >= 0.015
    assert (ev.ident, ev.filter, ev.data, ev.udata) == (5, TIMER, 1, "tick")
    assert q.wait(0.05) == []
    q.add_timer(6, 0.005)
    time.sleep(0.05)
    (ev,) = q.wait(1)
    assert ev.ident == 6 and ev.data >= 3   # expirations since last report
    q.remove(6, TIMER)
    with pytest.raises(ValueError):
        q.add_timer(7, -1)
    with pytest.raises(ValueError):
        q.add_timer(7, float("nan"))


def test_add_user_trigger_fflags(q):
    q.add_user(3)
    q.trigger(3, lib.NOTE_FFOR | 0x5)
    q.trigger(3, lib.NOTE_FFOR | 0x10)
    (ev,) = q.wait(1)
    assert ev.fflags == 0x15
    assert q.wait(0) == []      # EV_CLEAR by default


def test_trigger_unknown_user_event(q):
    with pytest.raises(FileNotFoundError):
        q.trigger(99)


@pytest.mark.skipif(not MAIN_THREAD, reason="signals")
def test_add_signal(q):
    got = []
    old = signal.signal(signal.SIGUSR2, lambda *a: got.append(1))
    try:
        q.add_signal(signal.SIGUSR2, udata="usr2")
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)
        evs = q.wait(2)
        assert [(e.ident, e.filter, e.udata) for e in evs] == [(signal.SIGUSR2, lib.EVFILT_SIGNAL, "usr2")]
        assert evs[0].data >= 1
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_add_process(q):
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit(3)"],
                             stdin=subprocess.PIPE)
    try:
        q.add_process(child.pid, udata="child")
        assert q.wait(0) == []
        child.stdin.close()
        (ev,) = q.wait(5)
        assert (ev.ident, ev.filter, ev.udata) == (child.pid, lib.EVFILT_PROC, "child")
        assert ev.fflags & lib.NOTE_EXIT
        assert os.WIFEXITED(ev.data) and os.WEXITSTATUS(ev.data) == 3
    finally:
        child.kill()
        child.wait()


def test_add_vnode(q, tmp_path):
    path = tmp_path / "watched"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        q.add_vnode(fd, lib.NOTE_WRITE | lib.NOTE_DELETE, udata="file")
        assert q.wait(0) == []
        with open(path, "ab") as f:
            f.write(b"more")
        (ev,) = q.wait(2)
        assert (ev.ident, ev.filter, ev.udata) == (fd, lib.EVFILT_VNODE, "file")
        assert ev.fflags & lib.NOTE_WRITE
        path.unlink()
        (ev,) = q.wait(2)
        assert ev.fflags & lib.NOTE_DELETE
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Batches and errors.


def test_apply_batch_plain_tuples_and_changes(q, fds):
    r, w = fds.pipe()
    assert q.apply([Change(r, READ, udata="r"), (1, USER, EV_ADD | EV_CLEAR, 0, 0, "u"),
                    (w, WRITE)]) == []
    os.write(w, b"x")
    q.trigger(1)
    got = sorted((e.filter, e.udata) for e in q.wait(1))
    assert got == sorted([(READ, "r"), (USER, "u"), (WRITE, None)])
    assert q.apply([]) == []


def test_apply_raises_first_error_after_applying_the_whole_batch(q, fds):
    r, w = fds.pipe()
    closed_r, closed_w = fds.pipe()
    fds.close(closed_r)
    batch = [Change(closed_r, READ), Change(2, USER, EV_DELETE), Change(r, READ, udata="ok")]
    with pytest.raises(OSError) as info:
        q.apply(batch)
    assert info.value.errno == errno.EBADF
    assert info.value.change == batch[0]
    os.write(w, b"x")
    assert [e.udata for e in q.wait(1)] == ["ok"]   # the last change was applied


def test_apply_returns_errors_when_asked(q, fds):
    r, w = fds.pipe()
    closed_r, _ = fds.pipe()
    fds.close(closed_r)
    batch = [Change(closed_r, READ), Change(r, READ), Change(2, USER, EV_DELETE),
             Change(1, -99, EV_ADD)]
    errors = q.apply(batch, raise_errors=False)
    assert [(c, type(e), e.errno) for c, e in errors] == [
        (batch[0], OSError, errno.EBADF),
        (batch[2], FileNotFoundError, errno.ENOENT),
        (batch[3], OSError, errno.EINVAL),
    ]
    assert all(e.change is c for c, e in errors)


def test_apply_checks_types_and_ranges(q):
    with pytest.raises(TypeError):
        q.apply([Change("x", USER)])
    with pytest.raises(OverflowError):
        q.apply([Change(-1, USER)])
    with pytest.raises(OverflowError):
        q.apply([Change(1, USER, 1 << 16)])
    with pytest.raises(TypeError):
        q.apply([Change(1.5, USER)])


def test_errors_are_oserror_subclasses_with_errno(q):
    with pytest.raises(OSError) as info:
        q.add_reader(10**6)
    assert info.value.errno == errno.EBADF
    with pytest.raises(FileNotFoundError):
        q.enable(1, USER)


# --------------------------------------------------------------------------
# udata: any Python object, safely.


def test_udata_any_object_identity(q):
    obj = Thing("a")
    q.add_user(1, udata=obj)
    q.trigger(1)
    (ev,) = q.wait(1)
    assert ev.udata is obj


def test_udata_replaced_and_cleared(q):
    q.add_user(1, udata="first")
    q.add_user(1, udata="second")
    q.trigger(1)
    assert [e.udata for e in q.wait(1)] == ["second"]
    q.add_user(1)          # udata=None clears it
    q.trigger(1)
    assert [e.udata for e in q.wait(1)] == [None]


def test_udata_keep(q):
    q.add_user(1, udata="kept")
    q.apply([Change(1, USER, EV_ADD | EV_CLEAR, udata=KEEP)])
    q.trigger(1)
    assert [e.udata for e in q.wait(1)] == ["kept"]
    assert repr(KEEP) == "KEEP"


def test_udata_released_on_delete(q):
    obj = Thing("gone")
    ref = weakref.ref(obj)
    q.add_user(1, udata=obj)
    del obj
    q.remove(1, USER)
    gc.collect()
    assert ref() is None


def test_udata_released_after_oneshot_fires(q):
    obj = Thing("once")
    ref = weakref.ref(obj)
    q.add_user(1, udata=obj, flags=EV_ONESHOT)
    del obj
    q.trigger(1)
    evs = q.wait(1)
    assert evs[0].udata is ref()
    del evs
    gc.collect()
    assert ref() is None


def test_udata_released_on_close():
    q = KQueue()
    obj = Thing("q")
    ref = weakref.ref(obj)
    q.add_user(1, udata=obj)
    del obj
    q.close()
    gc.collect()
    assert ref() is None


def test_udata_released_when_add_fails(q, fds):
    closed_r, _ = fds.pipe()
    fds.close(closed_r)
    obj = Thing("failed")
    ref = weakref.ref(obj)
    with pytest.raises(OSError):
        q.add_reader(closed_r, udata=obj)
    del obj
    gc.collect()
    assert ref() is None


def test_stale_or_foreign_udata_word_never_crashes(q):
    """The C udata word is overwritten behind the queue's back (with a
    value that would be a wild pointer): the event comes back with udata
    None instead of crashing."""
    q.add_user(1, udata=Thing("real"))
    for word in (0xDEADBEEF, 2**64 - 1, 1, 12345678):
        # A change without EV_KEEPUDATA replaces the word (as on FreeBSD).
        h.kevent(q.fileno(), [(1, USER, 0, lib.NOTE_TRIGGER, 0, word)], 0)
        (ev,) = q.wait(1)
        assert ev.udata is None or isinstance(ev.udata, Thing)
    q.remove(1, USER)


def test_event_after_remove_and_readd_does_not_return_old_udata(q, fds):
    r, w = fds.pipe()
    q.add_reader(r, udata="old")
    q.remove(r, READ)
    q.add_reader(r)
    os.write(w, b"x")
    assert [e.udata for e in q.wait(1)] == [None]


# --------------------------------------------------------------------------
# Threads and signals.


def test_close_from_another_thread_wakes_waiters():
    q = KQueue()
    results = []

    def waiter():
        try:
            q.wait(10)
            results.append("returned")
        except ValueError as exc:
            results.append(exc)
        except BaseException as exc:  # pragma: no cover
            results.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    h.wait_blocked_in_kevent(*threads)
    q.close()
    for t in threads:
        t.join(5)
    assert len(results) == 3 and all(isinstance(r, ValueError) for r in results), results


def test_trigger_from_other_threads_wakes_waiter(q):
    q.add_user(1, udata="wake")
    got = []

    def waiter():
        got.extend(q.wait(5))

    t = threading.Thread(target=waiter)
    t.start()
    h.wait_blocked_in_kevent(t)
    q.trigger(1)
    t.join(5)
    assert [e.udata for e in got] == ["wake"]


def test_concurrent_apply_and_wait(q):
    n_threads, per_thread = 4, 200
    seen = []
    stop = threading.Event()

    def producer(base):
        for i in range(per_thread):
            ident = base + i
            q.add_user(ident, udata=("u", ident), flags=EV_ONESHOT)
            q.trigger(ident)

    def consumer():
        while True:
            evs = q.wait(0.05)
            seen.extend(evs)
            if not evs and stop.is_set():
                return

    c = threading.Thread(target=consumer)
    c.start()
    producers = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(n_threads)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    stop.set()
    c.join(10)
    assert sorted(e.ident for e in seen) == sorted(k * 1000 + i for k in range(n_threads)
                                                   for i in range(per_thread))
    assert all(e.udata == ("u", e.ident) for e in seen)
    assert q._objects == {}     # every oneshot's udata was released


# wait() and wait_tuples() are two copies of one loop (kept apart for speed):
# each test below drives both.

def _waiter(q: KQueue, method: str):
    fn = getattr(q, method)
    return lambda *a, **k: [tuple(e) for e in fn(*a, **k)]


@pytest.mark.skipif(not MAIN_THREAD, reason="signal handlers need the main thread")
@pytest.mark.parametrize("method", ["wait", "wait_tuples"])
def test_wait_retries_after_signal_with_remaining_time(q, method):
    wait = _waiter(q, method)
    calls: list = []
    old = signal.signal(signal.SIGALRM, lambda *a: calls.append(time.monotonic()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        t0 = time.monotonic()
        assert wait(1.0) == []
        t1 = time.monotonic()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(calls) == 1
    assert t1 - t0 >= 0.99, f"returned after {t1 - t0:.3f}s, before its 1 s"
    # The rest of the second, not a fresh second counted from the signal.
    assert t1 - calls[0] < 0.9, f"waited {t1 - calls[0]:.3f}s after the signal: timeout restarted"


@pytest.mark.skipif(not MAIN_THREAD, reason="signal handlers need the main thread")
@pytest.mark.parametrize("method", ["wait", "wait_tuples"])
def test_wait_after_signal_returns_what_the_handler_made_ready(q, method):
    """The retried wait returns the event the handler triggered, its udata
    intact, and a oneshot's udata is released once delivered."""
    wait = _waiter(q, method)

    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    q.add_user(7, udata=payload, flags=EV_ONESHOT)
    del payload
    old = signal.signal(signal.SIGALRM, lambda *a: q.trigger(7))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        evs = wait(10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert [(e[0], e[1]) for e in evs] == [(7, USER)] and evs[0][5] is ref()
    del evs
    gc.collect()
    assert ref() is None, "a delivered oneshot's udata is still held"
    assert q._objects == {}


@pytest.mark.skipif(not MAIN_THREAD, reason="signal handlers need the main thread")
@pytest.mark.parametrize("method", ["wait", "wait_tuples"])
def test_wait_signal_handler_exception_propagates(q, method):
    wait = _waiter(q, method)

    class Boom(Exception):
        pass

    def handler(*a):
        raise Boom

    old = signal.signal(signal.SIGALRM, handler)
    try:
        for timeout in (5, None):
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            t0 = time.monotonic()
            with pytest.raises(Boom):
                wait(timeout)
            assert time.monotonic() - t0 < 4.0      # raised, not after the 5 s
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    q.add_user(1)
    q.trigger(1)
    assert [e[0] for e in wait(1)] == [1]      # the queue is still usable


@pytest.mark.parametrize("method", ["wait", "wait_tuples"])
def test_wait_errors(method):
    q = KQueue()
    wait = _waiter(q, method)
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError):
            wait(bad)
    with pytest.raises(ValueError):
        wait(0, max_events=-1)
    with pytest.raises(TypeError):
        wait("1")
    # A closed queue, and one closed by another thread while waiting.
    result: list = []

    def waiter():
        try:
            wait(30)
            result.append("returned")
        except ValueError as exc:
            result.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    h.wait_blocked_in_kevent(t)
    q.close()
    t.join(10)
    assert not t.is_alive() and len(result) == 1 and isinstance(result[0], ValueError), result
    with pytest.raises(ValueError):
        wait(0)


# --------------------------------------------------------------------------
# Allocation: wait() allocates nothing per call beyond what it returns.


def _tracemalloc():
    """The tracemalloc module, or a skip: PyPy has none."""
    try:
        import tracemalloc
    except ImportError:
        pytest.skip("tracemalloc is not available on this interpreter")
    return tracemalloc


def _traced_growth(fn, calls: int) -> int:
    tracemalloc = _tracemalloc()
    gc.collect()
    tracemalloc.start()
    try:
        # Warm-up: pools, caches, specializations (CPython 3.9/3.10 keep
        # growing internal caches for the first few hundred calls).
        for _ in range(2000):
            fn()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            fn()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before


def test_wait_returning_nothing_allocates_nothing(q, fds):
    r, w = fds.pipe()
    q.add_reader(r, udata="never")
    assert _traced_growth(lambda: q.wait(0), 10000) < 512
    assert _traced_growth(lambda: q.wait_tuples(0), 10000) < 512


@pytest.mark.slow
def test_wait_returning_the_same_events_does_not_grow(q):
    for i in range(16):
        q.add_user(i, udata=Thing(str(i)), flags=0)   # level-triggered: fires every time
        q.trigger(i)
    assert len(q.wait(0)) == 16
    assert _traced_growth(lambda: q.wait(0), 10000) < 512
    assert _traced_growth(lambda: q.wait_tuples(0, max_events=8), 10000) < 512


def test_wait_allocates_only_the_events_it_returns(q):
    """Keep every result: what stays allocated per call is exactly the list,
    its Event tuples and the ints in them that are not CPython's cached
    small ints (EVFILT_USER = -11 is one of those) — nothing else."""
    n = 16
    for i in range(n):
        q.add_user(i, udata=i, flags=0)    # level-triggered: fires every time
        q.trigger(i)
    tracemalloc = _tracemalloc()
    kept: list = [None] * 600             # preallocated: appending costs nothing
    for k in range(50):
        kept[k] = q.wait(0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for k in range(50, 550):
            kept[k] = q.wait(0)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    stats = after.compare_to(before, "filename")
    blocks = sum(st.count_diff for st in stats)
    size = sum(st.size_diff for st in stats)
    last = kept[549]
    uncached = sum(1 for e in last for v in e[:5] if not -5 <= v <= 256)
    per_call_blocks = 2 + n + uncached       # list object + item array + tuples + ints
    assert blocks <= 500 * per_call_blocks + 64, (blocks, per_call_blocks)
    per_call_bytes = sys.getsizeof(last) + sum(
        sys.getsizeof(e) + sum(sys.getsizeof(v) for v in e[:5] if not -5 <= v <= 256)
        for e in last)
    assert size <= 500 * per_call_bytes * 1.2 + 4096, (size, per_call_bytes)


def test_close_after_the_number_was_reused_leaves_the_new_queue_alone(lowest_free):
    q = KQueue()
    num = q.fileno()
    lib.kqueue_close(num)                     # closed behind the object's back
    lowest_free.next_is(num)
    other = KQueue()
    try:
        assert other.fileno() == num          # the number was reused
        q.close()                             # must not close `other`
        other.add_user(1, udata="alive")
        other.trigger(1)
        assert [e.udata for e in other.wait(0)] == ["alive"]
    finally:
        other.close()
