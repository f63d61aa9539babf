"""The queue itself: descriptor properties, pollability, closing, threads,
big changelists, fd close / reuse, fork."""
from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import sys
import threading
import time

import pytest

from kqueue_py import ffi, lib

import helpers as h

READ, WRITE, USER, TIMER = lib.EVFILT_READ, lib.EVFILT_WRITE, lib.EVFILT_USER, lib.EVFILT_TIMER
EV_ADD, EV_DELETE, EV_ENABLE, EV_DISABLE = lib.EV_ADD, lib.EV_DELETE, lib.EV_ENABLE, lib.EV_DISABLE
EV_ONESHOT, EV_CLEAR, EV_DISPATCH, EV_RECEIPT, EV_ERROR = (
    lib.EV_ONESHOT, lib.EV_CLEAR, lib.EV_DISPATCH, lib.EV_RECEIPT, lib.EV_ERROR)
TRIGGER = lib.NOTE_TRIGGER
VNODE = lib.EVFILT_VNODE


# ---------------------------------------------------------------------------
# The descriptor


def test_kqueue_fd_is_close_on_exec(kq):
    assert fcntl.fcntl(kq, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_kqueues_are_distinct_and_independent(make_kq):
    a, b = make_kq(), make_kq()
    assert a != b
    a.change((1, USER, EV_ADD | EV_CLEAR, TRIGGER))
    assert [e.ident for e in a.poll()] == [1]
    assert b.poll() == []


# ---------------------------------------------------------------------------
# Pollability: the kqueue fd reports readable exactly while events are pending


def _readable_select(fd):
    return bool(select.select([fd], [], [], 0)[0])


def _readable_poll(fd):
    p = select.poll()
    p.register(fd, select.POLLIN)
    return any(ev & select.POLLIN for _, ev in p.poll(0))


def _readable_epoll(fd):
    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLIN)
        return any(ev & select.EPOLLIN for _, ev in ep.poll(0))
    finally:
        ep.close()


POLLERS = {"select": _readable_select, "poll": _readable_poll, "epoll": _readable_epoll}


@pytest.fixture(params=list(POLLERS))
def readable(request):
    return POLLERS[request.param]


def test_kqueue_fd_pollable_user_event(kq, readable):
    assert not readable(kq)
    kq.change((1, USER, EV_ADD | EV_CLEAR))
    assert not readable(kq)
    kq.change((1, USER, 0, TRIGGER))
    assert readable(kq)
    assert len(kq.poll()) == 1
    assert not readable(kq), "still readable after the only event was collected"


def test_kqueue_fd_pollable_read_event(kq, fds, readable):
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD))
    assert not readable(kq)
    os.write(w, b"x")
    assert readable(kq)
    os.read(r, 1)
    assert not readable(kq)


def test_kqueue_fd_pollable_write_event(kq, fds, readable):
    r, w = fds.pipe()
    kq.change((w, WRITE, EV_ADD | EV_CLEAR))
    assert readable(kq)
    assert len(kq.poll()) == 1
    assert not readable(kq)


def test_kqueue_fd_pollable_timer_event(kq, readable):
    kq.change((1, TIMER, EV_ADD | EV_ONESHOT, 0, 10))
    assert not readable(kq)
    r, _, _ = select.select([kq], [], [], 2.0)   # blocks until the timer fires
    assert r == [kq]
    assert readable(kq)
    assert len(kq.poll()) == 1
    assert not readable(kq)


def test_kqueue_fd_not_readable_for_disabled_or_dispatched_events(kq, fds, readable):
    r, w = fds.pipe()
    os.write(w, b"x")
    kq.change((r, READ, EV_ADD | EV_DISPATCH), (1, USER, EV_ADD | EV_DISABLE, TRIGGER))
    assert readable(kq)
    assert len(kq.poll()) == 1
    assert not readable(kq)


def test_blocking_select_on_kqueue_fd_wakes_on_cross_thread_trigger(kq):
    kq.change((1, USER, EV_ADD | EV_CLEAR))
    threading.Timer(0.05, lambda: kq.change((1, USER, 0, TRIGGER))).start()
    t0 = time.monotonic()
    r, _, _ = select.select([kq], [], [], 2.0)
    assert r == [kq] and time.monotonic() - t0 < 1.0


def test_kqueue_watched_by_another_kqueue(make_kq):
    inner, outer = make_kq(), make_kq()
    outer.change((inner, READ, EV_ADD, 0, 0, 55))
    assert outer.poll() == []
    inner.change((1, USER, EV_ADD | EV_CLEAR, TRIGGER))
    evs = outer.wait(8, 1.0)
    assert [(e.ident, e.filter, e.udata) for e in evs] == [(inner, READ, 55)]
    assert len(inner.poll()) == 1
    assert outer.wait(8, 0.03) == []


# ---------------------------------------------------------------------------
# Blocking behaviour


def test_kevent_with_nevents_zero_never_blocks_even_with_null_timeout(kq):
    for changes in ((), [(1, USER, EV_ADD)], [(1, USER, EV_DELETE)]):
        t0 = time.monotonic()
        arr, n = h.make_changes(changes)
        rc = lib.kevent(kq, arr if n else ffi.NULL, n, ffi.NULL, 0, ffi.NULL)
        assert rc in (0, -1)
        assert time.monotonic() - t0 < 5.0      # never blocks: only a hang exceeds it


def test_kevent_zero_timeout_polls(kq):
    kq.change((1, TIMER, lib.EV_ADD | lib.EV_ONESHOT, 0, 300))     # the yardstick: 300 ms
    assert kq.poll() == [], "a zero timeout waited for the 300 ms timer"


def test_kevent_timeout_waits_about_that_long(kq):
    t0 = time.monotonic()
    assert kq.wait(8, 0.1) == []
    assert 0.1 - 0.002 <= time.monotonic() - t0 < 5.0    # a wrong unit would be 100 s


def _blocked_waiter(kq, result, timeout=None):
    started = threading.Event()

    def run():
        started.set()
        result.append(h.kevent_raw(kq, (), 4, timeout))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait()
    return t


def test_kqueue_close_wakes_blocked_waiter_with_ebadf():
    kq = lib.kqueue()
    result = []
    t = _blocked_waiter(kq, result)
    h.wait_blocked_in_kevent(t)
    assert result == []
    assert lib.kqueue_close(kq) == 0
    t.join(2.0)
    assert not t.is_alive(), "kqueue_close did not wake the blocked waiter"
    rc, err, _ = result[0]
    assert (rc, err) == (-1, errno.EBADF)


def test_kqueue_close_wakes_every_blocked_waiter():
    kq = lib.kqueue()
    results = [[] for _ in range(4)]
    threads = [_blocked_waiter(kq, r) for r in results]
    h.wait_blocked_in_kevent(*threads)
    assert lib.kqueue_close(kq) == 0
    for t in threads:
        t.join(2.0)
        assert not t.is_alive()
    assert [r[0][:2] for r in results] == [(-1, errno.EBADF)] * 4


def test_kqueue_close_with_pending_events_and_registrations_then_reuse_number(fds, lowest_free):
    r, w = fds.pipe()
    kq = lib.kqueue()
    h.kevent(kq, [(r, READ, EV_ADD), (1, USER, EV_ADD, TRIGGER), (2, TIMER, EV_ADD, 0, 1)])
    os.write(w, b"x")
    assert lib.kqueue_close(kq) == 0
    lowest_free.next_is(kq)
    kq2 = lib.kqueue()
    try:
        assert kq2 == kq
        # A new queue with the same number starts empty.
        assert h.kevent(kq2, (), 8, 0.05) == []
    finally:
        lib.kqueue_close(kq2)


def test_many_threads_waiting_oneshot_user_event_exactly_one_gets_it(kq):
    kq.change((1, USER, EV_ADD | EV_ONESHOT, 0, 0, 77))
    n = 8
    barrier = threading.Barrier(n + 1)
    results = [None] * n

    def waiter(i):
        barrier.wait()
        results[i] = h.kevent_raw(kq, (), 4, 30.0)

    threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    h.wait_blocked_in_kevent(*threads)       # all eight wait for it
    kq.change((1, USER, lib.EV_KEEPUDATA, TRIGGER))
    assert h.wait_until(lambda: any(r is not None for r in results), timeout=10.0)
    # The others wake for a second, level-triggered event that every waiter sees.
    kq.change((2, USER, EV_ADD, TRIGGER, 0, 88))
    for t in threads:
        t.join(3.0)
        assert not t.is_alive()
    assert all(r is not None and r[0] >= 0 for r in results), results
    got = [e for r in results for e in r[2] if e.ident == 1]
    assert [(e.ident, e.udata) for e in got] == [(1, 77)], f"{len(got)} threads got the oneshot event"


def test_many_threads_waiting_level_events_none_blocked_forever(kq, fds):
    """Several waiters, several ready pipes with EV_DISPATCH: each event goes
    to exactly one waiter per re-enable."""
    pipes = [fds.pipe() for _ in range(16)]
    kq.change(*[(r, READ, EV_ADD | EV_DISPATCH) for r, _ in pipes])
    for _, w in pipes:
        os.write(w, b"x")
    got = []
    lock = threading.Lock()

    def waiter():
        while True:
            rc, err, evs = h.kevent_raw(kq, (), 3, 0.2)
            if rc <= 0:
                return
            with lock:
                got.extend(evs)

    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5.0)
        assert not t.is_alive()
    assert sorted(e.ident for e in got) == sorted(r for r, _ in pipes)


# ---------------------------------------------------------------------------
# Big changelists


def test_changelist_of_10000_entries_in_one_call(kq):
    n = 10_000
    kq.change(*[(i, USER, EV_ADD | EV_ONESHOT, TRIGGER, 0, i + 1) for i in range(n)])
    got = []
    while True:
        evs = kq.poll(1000)
        if not evs:
            break
        got.extend(evs)
    assert len(got) == n
    assert sorted(e.ident for e in got) == list(range(n))
    assert all(e.udata == e.ident + 1 for e in got)


def test_changelist_of_10000_receipts_in_one_call(kq):
    n = 10_000
    evs = kq.changes([(i, USER, EV_ADD | EV_RECEIPT, 0, 0, i) for i in range(n)], nevents=n)
    assert len(evs) == n
    assert all(e.flags & EV_ERROR and e.data == 0 for e in evs)
    assert [e.ident for e in evs] == list(range(n))
    kq.change(*[(i, USER, EV_DELETE) for i in range(n)])


def test_changelist_of_10000_timers(kq):
    n = 10_000
    kq.change(*[(i, TIMER, EV_ADD | EV_ONESHOT, 0, 5 + i % 20) for i in range(n)])
    got = set()
    deadline = time.monotonic() + 5
    while len(got) < n and time.monotonic() < deadline:
        for e in kq.wait(1000, 0.2):
            assert e.ident not in got
            got.add(e.ident)
    assert len(got) == n


# ---------------------------------------------------------------------------
# fd close without EV_DELETE, and fd number reuse


def test_fd_closed_without_delete_produces_no_further_events(kq, fds):
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD))
    os.write(w, b"x")
    assert len(kq.wait()) == 1
    fds.close(r)
    assert kq.wait(8, 0.05) == []
    assert not kq.readable()


def test_write_fd_closed_without_delete_produces_no_further_events(kq, fds):
    r, w = fds.pipe()
    kq.change((w, WRITE, EV_ADD))
    assert len(kq.wait()) == 1
    fds.close(w)
    assert kq.wait(8, 0.05) == []


def test_closed_fd_without_dup_produces_no_further_events(kq, fds):
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD), (w, WRITE, EV_ADD))
    fds.close(r)                                  # the reader is gone: the file is released
    assert [e for e in kq.poll() if e.ident == r] == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backend semantics")
def test_dup_kept_registration_is_never_attributed_to_a_reused_number(kq, fds, lowest_free):
    """Linux (documented limitation): a registration belongs to the open file,
    so a dup() kept open after close() keeps it alive in epoll.  Its events
    must never be reported under a new registration of the reused number."""
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD, 0, 0, 1))
    keep = fds.track(os.dup(r))
    fds.close(r)
    lowest_free.next_is(r)
    r2, w2 = fds.pipe()
    assert r2 == r
    kq.change((r2, READ, EV_ADD, 0, 0, 2))
    os.write(w, b"old file")                      # readiness of the dup-kept file
    assert kq.wait(8, 0.05) == []
    os.write(w2, b"abc")
    assert [(e.ident, e.udata, e.data) for e in kq.wait()] == [(r2, 2, 3)]
    fds.close(keep)                               # last reference: registration gone
    os.read(r2, 3)
    assert kq.poll() == []


def test_reused_fd_number_new_add_starts_clean(kq, fds, lowest_free):
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD | EV_DISPATCH, 0, 0, 1))
    os.write(w, b"old data")
    assert [e.udata for e in kq.wait()] == [1]       # now dispatched (disabled)
    fds.close(r)
    fds.close(w)
    lowest_free.next_is(r)
    r2, w2 = fds.pipe()
    assert r2 == r
    kq.change((r2, READ, EV_ADD, 0, 0, 2))          # no error, no stale state
    assert kq.poll() == []                          # the new pipe is empty
    os.write(w2, b"abc")
    for _ in range(2):                              # level-triggered now
        evs = kq.poll()
        assert [(e.ident, e.udata, e.data) for e in evs] == [(r2, 2, 3)]
        assert not evs[0].flags & (EV_DISPATCH | EV_ERROR | lib.EV_EOF)


@pytest.mark.parametrize("reused_by", ["write-end", "read-end"])
def test_reused_fd_number_after_disabled_clear_registration_starts_clean(kq, fds, lowest_free,
                                                                         reused_by):
    r, w = fds.pipe()
    kq.change((w, WRITE, EV_ADD | EV_DISABLE | EV_CLEAR, 0, 0, 1))
    fds.close(w)
    if reused_by == "write-end":
        fds.close(r)
        lowest_free.next_is(r)                  # the new pipe takes r's and w's numbers
    else:
        lowest_free.next_is(w)                  # r stays open: the new read end gets w's number
    r2, w2 = fds.pipe()
    target = w2 if reused_by == "write-end" else r2
    assert target == w
    kq.change((target, READ if target == r2 else WRITE, EV_ADD, 0, 0, 2))
    if target == w2:
        evs = kq.poll()
        assert [(e.ident, e.filter, e.udata) for e in evs] == [(w2, WRITE, 2)]
        assert len(kq.poll()) == 1                  # not EV_CLEAR any more
    else:
        assert kq.poll() == []
        os.write(w2, b"z")
        assert [(e.ident, e.udata) for e in kq.poll()] == [(r2, 2)]


def test_reused_fd_number_without_readd_reports_nothing(kq, fds, lowest_free):
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD, 0, 0, 1))
    fds.close(r)
    fds.close(w)
    lowest_free.next_is(r)
    r2, w2 = fds.pipe()
    assert r2 == r
    os.write(w2, b"x")
    evs = kq.wait(8, 0.05)
    assert evs == [], f"a stale registration reported the new file: {evs}"


def test_delete_after_close_is_an_error_not_a_crash(kq, fds):
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD))
    fds.close(r)
    rc, err, _ = h.kevent_raw(kq, [(r, READ, EV_DELETE)], 0, None)
    assert rc == -1 and err in (errno.EBADF, errno.ENOENT)


def test_socket_closed_without_delete_then_number_reused_by_socket(kq, fds, lowest_free):
    a, b = fds.socketpair()
    num = a.fileno()
    kq.change((num, READ, EV_ADD | EV_CLEAR, 0, 0, 1), (num, WRITE, EV_ADD | EV_ONESHOT, 0, 0, 1))
    b.send(b"x")
    kq.wait()
    a.close()
    lowest_free.next_is(num)
    c, d = fds.socketpair()
    assert c.fileno() == num
    kq.change((num, READ, EV_ADD, 0, 0, 2), (num, WRITE, EV_ADD, 0, 0, 3))
    evs = kq.poll()
    assert [(e.filter, e.udata) for e in evs] == [(WRITE, 3)]
    d.send(b"hello")
    for _ in range(2):
        evs = kq.poll()
        assert sorted((e.filter, e.udata, e.data if e.filter == READ else 0) for e in evs) == \
            sorted([(READ, 2, 5), (WRITE, 3, 0)])


# ---------------------------------------------------------------------------
# fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_kqueue_not_inherited_by_fork_child_and_parent_unaffected(kq, fds):
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD), (1, USER, EV_ADD | EV_CLEAR))
    pid = os.fork()
    if pid == 0:   # child
        code = 0
        try:
            evs = ffi.new("struct kevent[]", 1)
            ts = ffi.new("struct timespec *")
            rc = lib.kevent(kq, ffi.NULL, 0, evs, 1, ts)
            if rc != -1 or ffi.errno != errno.EBADF:
                code = 2
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "kevent on an inherited kqueue did not fail with EBADF"
    os.write(w, b"x")
    kq.change((1, USER, 0, TRIGGER))
    evs = kq.wait()
    assert sorted((e.ident, e.filter) for e in evs) == sorted([(r, READ), (1, USER)])


# ---------------------------------------------------------------------------
# A queue's own descriptor as FreeBSD has it (kqueue_register, kqueue_kqfilter,
# filt_kqueue in sys/kern/kern_event.c)


def test_read_on_a_queue_reports_its_pending_events(make_kq):
    """``filt_kqueue``: ``kn->kn_data = kq->kq_count;`` -- READ on a queue's
    descriptor carries the number of events pending in it."""
    inner, outer = make_kq(), make_kq()
    inner.change(*[(i, USER, EV_ADD | EV_CLEAR) for i in (1, 2, 3)])
    outer.change((inner, READ, EV_ADD))
    inner.change((1, USER, 0, TRIGGER), (2, USER, 0, TRIGGER))
    assert [(e.ident, e.data) for e in outer.wait(8, 1.0)] == [(inner, 2)]
    inner.change((3, USER, 0, TRIGGER))
    assert [e.data for e in outer.poll()] == [3]
    assert len(inner.poll()) == 3
    assert outer.poll() == []


def test_read_on_a_queue_counts_fired_timers(make_kq):
    """Timers fire into the queue's active list on FreeBSD (the callout),
    so they count before the watched queue's own ``kevent()`` runs."""
    inner, outer = make_kq(), make_kq()
    inner.change((1, TIMER, EV_ADD | EV_ONESHOT, 0, 1), (2, TIMER, EV_ADD | EV_ONESHOT, 0, 1))
    outer.change((inner, READ, EV_ADD))
    time.sleep(0.02)
    assert [e.data for e in outer.wait(8, 1.0)] == [2]


def test_read_on_a_queue_with_a_ready_socket_is_at_least_one(make_kq, fds):
    """Events still inside the watched queue's epoll set count as one at
    least (documented: they cannot be counted without being taken)."""
    inner, outer = make_kq(), make_kq()
    a, b = fds.socketpair()
    inner.change((a.fileno(), READ, EV_ADD))
    outer.change((inner, READ, EV_ADD))
    b.send(b"x")
    evs = outer.wait(8, 1.0)
    assert len(evs) == 1 and evs[0].data >= 1


@pytest.mark.parametrize("filt,flags", [(READ, EV_ADD), (WRITE, EV_ADD), (READ, EV_DELETE),
                                        (VNODE, EV_ADD)])
def test_queue_watching_itself_is_einval(kq, filt, flags):
    """``kqueue_register``: ``if (fp->f_data == kq) { error = EINVAL; ...}``
    (Linux's epoll would say ``ELOOP``)."""
    fflags = lib.NOTE_WRITE if filt == VNODE else 0
    rc, err, _ = h.kevent_raw(kq, [(kq, filt, flags, fflags)])
    assert (rc, err) == (-1, errno.EINVAL)


@pytest.mark.parametrize("filt", [WRITE, VNODE])
def test_only_read_on_another_queue(make_kq, filt):
    """``kqueue_kqfilter``: ``if (kn->kn_filter != EVFILT_READ) return
    (EINVAL);``"""
    inner, outer = make_kq(), make_kq()
    fflags = lib.NOTE_WRITE if filt == VNODE else 0
    rc, err, _ = h.kevent_raw(outer, [(inner, filt, EV_ADD, fflags)])
    assert (rc, err) == (-1, errno.EINVAL)
    outer.change((inner, READ, EV_ADD))


def test_read_on_a_queue_busy_in_another_thread(make_kq):
    """The watching queue's lock is held while it looks into the watched
    one, whose lock is then only tried: a thread inside ``kevent()`` on the
    watched queue at that moment makes the count 1 (the lower bound), never
    a deadlock or a wrong sign."""
    import threading

    inner, outer = make_kq(), make_kq()
    inner.change((1, USER, EV_ADD, TRIGGER))
    outer.change((inner, READ, EV_ADD))
    stop = time.monotonic() + 0.3
    seen = set()

    def spin():
        while time.monotonic() < stop:
            inner.poll()

    t = threading.Thread(target=spin)
    t.start()
    while time.monotonic() < stop:
        seen.update(e.data for e in outer.poll())
    t.join(10)
    assert not t.is_alive()
    assert seen <= {1} and seen, seen


def test_socket_descriptor_read_data_unchanged(kq, fds):
    """Not a queue: READ data is still FIONREAD."""
    a, b = fds.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.send(b"hello")
    kq.change((a.fileno(), READ, EV_ADD))
    assert [e.data for e in kq.wait(8, 1.0)] == [5]
