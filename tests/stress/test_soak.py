"""Soak and resource-exhaustion tests.

(a) Leaks: 200,000 register/wait/delete cycles (EVFILT_READ on a
    socketpair plus EVFILT_USER) through ``lib.kevent``, more through
    ``KQueue``, and 20,000 queue create/close cycles each through
    ``lib.kqueue``/``lib.kqueue_close``, ``KQueue`` and ``compat.kqueue``.
    Afterwards the process's descriptor count equals the baseline and RSS
    grew by less than a few MB after a warm-up.  The measured numbers are
    attached with ``record_property`` (and printed, visible with ``-s``).
(b) Exhaustion: with ``RLIMIT_NOFILE`` lowered (and restored afterwards),
    queues are created until ``EMFILE``: ``lib.kqueue()``, ``KQueue()`` and
    ``compat.kqueue()`` fail cleanly with ``OSError(EMFILE)`` and leak
    nothing; registrations needing a descriptor (EVFILT_VNODE's inotify
    instance, EVFILT_PROC's pidfd) fail cleanly; the existing queues keep
    working, and once descriptors are freed, new queues and those
    registrations work again.

Set ``KQUEUE_PY_LONG=1`` to multiply the cycle counts by 10 (a long run).
"""
from __future__ import annotations

import errno
import gc
import os
import sys
import resource
import socket
import tempfile

import pytest

from kqueue_py import KQueue, compat, ffi, lib

pytestmark = pytest.mark.slow

LONG = os.environ.get("KQUEUE_PY_LONG", "") not in ("", "0")
SCALE = 10 if LONG else 1

READ, USER, VNODE, PROC = lib.EVFILT_READ, lib.EVFILT_USER, lib.EVFILT_VNODE, lib.EVFILT_PROC
EV_ADD, EV_DELETE, EV_CLEAR, EV_ONESHOT = lib.EV_ADD, lib.EV_DELETE, lib.EV_CLEAR, lib.EV_ONESHOT
TRIGGER = lib.NOTE_TRIGGER

PAGE = os.sysconf("SC_PAGE_SIZE")
#: Allowed RSS growth after warm-up (allocator noise, pymalloc arenas).
RSS_MARGIN = 4 * 1024 * 1024
#: Set by tools/run-sanitized.sh: the backend runs under AddressSanitizer.
SANITIZED = bool(os.environ.get("KQUEUE_PY_SANITIZED"))
PYPY = sys.implementation.name == "pypy"


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def snapshot():
    gc.collect()
    gc.collect()   # PyPy: finalizers of the first pass' garbage run in the second
    return fd_count(), rss()


def report(record_property, name, before, after):
    (fd0, rss0), (fd1, rss1) = before, after
    record_property(f"{name}_fds", f"{fd0}->{fd1}")
    record_property(f"{name}_rss_kib", f"{rss0 // 1024}->{rss1 // 1024}")
    print(f"\n[soak] {name}: fds {fd0} -> {fd1}, RSS {rss0 / 2**20:.1f} MiB -> "
          f"{rss1 / 2**20:.1f} MiB ({(rss1 - rss0) / 1024:+.0f} KiB)")
    assert fd1 == fd0, f"{name}: descriptor leak {fd0} -> {fd1}"
    if SANITIZED or PYPY:
        # AddressSanitizer keeps freed memory in quarantine (256 MiB by
        # default), and PyPy's GC sizes its heap as it sees fit: there RSS
        # measures the allocator, not a leak.  The descriptor check above
        # still holds.
        return
    assert rss1 - rss0 < RSS_MARGIN, f"{name}: RSS grew {(rss1 - rss0) / 2**20:.1f} MiB"


def fill(arr, i, ident, filt, flags, fflags=0, data=0, udata=0):
    e = arr[i]
    e.ident, e.filter, e.flags, e.fflags, e.data = ident, filt, flags, fflags, data
    e.udata = ffi.cast("void *", udata)


# ---------------------------------------------------------------------------
# (a) leaks.

def test_soak_register_wait_delete_lib(record_property):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    b.send(b"x")                           # a is readable
    kq = lib.kqueue()
    assert kq >= 0
    fd = a.fileno()
    add = ffi.new("struct kevent[2]")
    fill(add, 0, fd, READ, EV_ADD, 0, 0, 1)
    fill(add, 1, 7, USER, EV_ADD | EV_CLEAR, TRIGGER, 0, 2)
    delete = ffi.new("struct kevent[2]")
    fill(delete, 0, fd, READ, EV_DELETE)
    fill(delete, 1, 7, USER, EV_DELETE)
    evs = ffi.new("struct kevent[4]")
    ts = ffi.new("struct timespec *", (1, 0))
    kevent = lib.kevent
    NULL = ffi.NULL

    def cycles(n):
        for _ in range(n):
            if kevent(kq, add, 2, NULL, 0, NULL) != 0:
                raise OSError(ffi.errno, "add")
            if kevent(kq, NULL, 0, evs, 4, ts) != 2:
                raise AssertionError("expected READ and USER")
            if kevent(kq, delete, 2, NULL, 0, NULL) != 0:
                raise OSError(ffi.errno, "delete")

    try:
        cycles(10_000)                     # warm-up
        before = snapshot()
        cycles(200_000 * SCALE)
        after = snapshot()
    finally:
        lib.kqueue_close(kq)
        a.close()
        b.close()
    report(record_property, "lib_cycles", before, after)


def test_soak_register_wait_delete_kqueue(record_property):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.send(b"x")
    q = KQueue()
    tokens_before = None

    def cycles(n):
        for i in range(n):
            q.apply([(a.fileno(), READ, EV_ADD, 0, 0, ("reader", i)),
                     (7, USER, EV_ADD | EV_CLEAR, TRIGGER, 0, ["user", i])])
            evs = q.wait(1.0)
            assert len(evs) == 2 and evs[0].udata is not None
            q.apply([(a.fileno(), READ, EV_DELETE), (7, USER, EV_DELETE)])

    try:
        cycles(5_000)
        tokens_before = len(q._objects)
        before = snapshot()
        cycles(50_000 * SCALE)
        after = snapshot()
        # The udata maps do not grow either.
        assert len(q._objects) == tokens_before
    finally:
        q.close()
        a.close()
        b.close()
    report(record_property, "kqueue_cycles", before, after)


@pytest.mark.parametrize("api", ["lib", "KQueue", "compat"])
def test_soak_create_close(api, record_property):
    def lib_cycle():
        kq = lib.kqueue()
        if kq < 0:
            raise OSError(ffi.errno, "kqueue")
        assert lib.kqueue_close(kq) == 0

    def kqueue_cycle():
        q = KQueue()
        q.add_user(1, udata="x")
        q.close()

    def compat_cycle():
        kq = compat.kqueue()
        kq.close()

    cycle = {"lib": lib_cycle, "KQueue": kqueue_cycle, "compat": compat_cycle}[api]
    for _ in range(1_000):
        cycle()
    before = snapshot()
    for _ in range(20_000 * SCALE):
        cycle()
    after = snapshot()
    report(record_property, f"create_close_{api}", before, after)


def test_soak_garbage_collected_queues_release_descriptors():
    """Queues dropped without close() release their descriptors when
    collected (KQueue.__del__ / kqueue.__del__)."""
    gc.collect()
    before = fd_count()
    for i in range(2_000):
        q = KQueue()
        q.add_user(1)
        c = compat.kqueue()
        del q, c
        if i % 100 == 99:
            gc.collect()   # PyPy collects on memory pressure, not descriptor pressure
    gc.collect()
    gc.collect()
    assert fd_count() == before


# ---------------------------------------------------------------------------
# (b) exhaustion.

def user_round_trip(kq: int, ident: int = 99) -> None:
    arr = ffi.new("struct kevent[1]")
    fill(arr, 0, ident, USER, EV_ADD | EV_CLEAR, TRIGGER, 0, 5)
    assert lib.kevent(kq, arr, 1, ffi.NULL, 0, ffi.NULL) == 0, ffi.errno
    evs = ffi.new("struct kevent[4]")
    n = lib.kevent(kq, ffi.NULL, 0, evs, 4, ffi.new("struct timespec *", (1, 0)))
    assert n == 1 and evs[0].ident == ident, (n, ffi.errno)


def change(kq: int, ident, filt, flags, fflags=0, data=0):
    arr = ffi.new("struct kevent[1]")
    fill(arr, 0, ident, filt, flags, fflags, data)
    ffi.errno = 0
    rc = lib.kevent(kq, arr, 1, ffi.NULL, 0, ffi.NULL)
    return rc, (ffi.errno if rc < 0 else 0)


def free_slots() -> int:
    """How many descriptors can still be opened (opens and closes them)."""
    fds = []
    try:
        while True:
            fds.append(os.dup(0))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    for fd in fds:
        os.close(fd)
    return len(fds)


@pytest.fixture
def low_nofile():
    """RLIMIT_NOFILE lowered to a little above the highest open descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(f) for f in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + 60, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)


def test_exhaustion_emfile_is_clean_and_queues_survive(low_nofile):
    baseline = fd_count()
    tmp = tempfile.NamedTemporaryFile()
    queues: list[int] = []
    kq_objs: list[object] = []
    spare: list[int] = []
    try:
        # Fill the table with queues until lib.kqueue() fails.
        while True:
            kq = lib.kqueue()
            if kq < 0:
                break
            queues.append(kq)
            assert len(queues) < 1000
        assert ffi.errno == errno.EMFILE, os.strerror(ffi.errno)
        assert queues
        # A failing kqueue() leaks nothing (no half-made queue left behind).
        slots = free_slots()
        for _ in range(50):
            assert lib.kqueue() == -1 and ffi.errno == errno.EMFILE
        assert free_slots() == slots
        # The wrappers raise a clean OSError(EMFILE).
        with pytest.raises(OSError) as info:
            KQueue()
        assert info.value.errno == errno.EMFILE
        with pytest.raises(OSError) as info:
            compat.kqueue()
        assert info.value.errno == errno.EMFILE
        assert free_slots() == slots

        # A queue makes its wake eventfd and timerfd with its first USER /
        # TIMER registration: give the queues used below theirs while there
        # is room (closing a few queues makes it).
        for _ in range(8):
            lib.kqueue_close(queues.pop())
        for q in queues[:3] + queues[-3:]:
            user_round_trip(q, ident=98)
            assert change(q, 5, lib.EVFILT_TIMER, EV_ADD, 0, 3_600_000) == (0, 0)
            assert change(q, 5, lib.EVFILT_TIMER, lib.EV_DELETE) == (0, 0)
        unused = queues[3]

        # Now use up every descriptor.
        try:
            while True:
                spare.append(os.dup(0))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        kq = queues[-1]
        # Registrations that need a descriptor of their own fail cleanly.
        rc, err = change(kq, tmp.fileno(), VNODE, EV_ADD | EV_CLEAR, lib.NOTE_WRITE)
        assert (rc, err) == (-1, errno.EMFILE), os.strerror(err)
        rc, err = change(kq, os.getpid(), PROC, EV_ADD, lib.NOTE_EXIT)
        assert (rc, err) == (-1, errno.EMFILE), os.strerror(err)
        # ... and leave no registration behind.
        assert change(kq, tmp.fileno(), VNODE, EV_DELETE) == (-1, errno.ENOENT)
        assert change(kq, os.getpid(), PROC, EV_DELETE) == (-1, errno.ENOENT)
        # ... and so does a queue's first USER registration: the descriptor
        # it would make is that change's error, and the queue stays usable.
        assert change(unused, 1, USER, EV_ADD) == (-1, errno.EMFILE)
        assert change(unused, 1, USER, lib.EV_DELETE) == (-1, errno.ENOENT)
        # Existing queues still work while the process is out of descriptors.
        for q in queues[:3] + queues[-3:]:
            user_round_trip(q)
        a_timer = change(kq, 5, lib.EVFILT_TIMER, EV_ADD | EV_ONESHOT, 0, 0)
        assert a_timer == (0, 0)
        evs = ffi.new("struct kevent[8]")
        n = lib.kevent(kq, ffi.NULL, 0, evs, 8, ffi.new("struct timespec *", (1, 0)))
        assert n >= 1 and 5 in [evs[i].ident for i in range(n)]

        # Free some descriptors: everything works again.
        for fd in spare:
            os.close(fd)
        spare.clear()
        for _ in range(6):   # room for everything below
            lib.kqueue_close(queues.pop())
        kq = queues[-1]
        assert change(kq, tmp.fileno(), VNODE, EV_ADD | EV_CLEAR, lib.NOTE_WRITE) == (0, 0)
        assert change(kq, os.getpid(), PROC, EV_ADD, lib.NOTE_EXIT) == (0, 0)
        tmp.write(b"data")
        tmp.flush()
        n = lib.kevent(kq, ffi.NULL, 0, evs, 8, ffi.new("struct timespec *", (1, 0)))
        assert n >= 1 and (tmp.fileno(), VNODE) in [(evs[i].ident, evs[i].filter) for i in range(n)]
        user_round_trip(kq)
        q = KQueue()
        kq_objs.append(q)
        q.add_user(1, udata="ok")
        q.trigger(1)
        assert [e.udata for e in q.wait(1.0)] == ["ok"]
        c = compat.kqueue()
        kq_objs.append(c)
        c.control([compat.kevent(1, USER, EV_ADD | EV_ONESHOT, TRIGGER)], 0)
        assert [e.ident for e in c.control(None, 4, 1.0)] == [1]
        new = lib.kqueue()
        assert new >= 0
        queues.append(new)
        user_round_trip(new)
    finally:
        for fd in spare:
            os.close(fd)
        for o in kq_objs:
            o.close()
        for kq in queues:
            lib.kqueue_close(kq)
        tmp.close()
    assert fd_count() == baseline
