"""What a queue costs: descriptors made on first use, and idents of any shape.

A queue holds its own descriptor and one dup of it; the wake eventfd, the
timerfd, the descriptor-lifetime sets (the identity set, the nested sets of
READ/WRITE registrations and the spare set for their rebuilds) and the
inotify instance come with the first registration that needs them.  Counted in /proc/self/fd.  Also: closing a
queue still wakes its waiters, a descriptor that cannot be made (EMFILE) is
that change's error, and USER/TIMER idents that differ only in their high
bits are kept apart.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from kqueue_py import ffi, lib

from helpers import kevent_raw, wait_blocked_in_kevent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the Linux backend's descriptors")

EV_ADD, EV_DELETE, EV_CLEAR, EV_ERROR = lib.EV_ADD, lib.EV_DELETE, lib.EV_CLEAR, lib.EV_ERROR




def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def held_by(make):
    """Descriptors a new queue holds after make(kq) ran."""
    lib.kqueue_close(lib.kqueue())   # what the process makes once, made
    before = open_fds()
    kq = lib.kqueue()
    assert kq >= 0
    try:
        make(kq)
        return open_fds() - before
    finally:
        lib.kqueue_close(kq)


def add(kq, ident, filt, flags=EV_ADD, fflags=0, data=0):
    rc, err, _ = kevent_raw(kq, [(ident, filt, flags, fflags, data, 0)], 0, 0)
    assert rc == 0, (rc, err)


def test_new_queue_holds_two_descriptors():
    assert held_by(lambda kq: None) == 2


def test_read_registrations_add_three_descriptors_once(fds):
    pairs = [fds.socketpair() for _ in range(5)]
    r, _w = fds.pipe()

    def make(kq):
        for a, _b in pairs:
            add(kq, a.fileno(), lib.EVFILT_READ)
        add(kq, r, lib.EVFILT_READ)
        # ... and they still work.
        pairs[0][1].send(b"x")
        rc, _, evs = kevent_raw(kq, [], 8, 2.0)
        assert [e.ident for e in evs] == [pairs[0][0].fileno()]
    # The identity set, the first nested READ set, and the spare set kept
    # for its rebuilds (see docs/linux-backend.md).
    assert held_by(make) == 2 + 3


@pytest.mark.parametrize("filt,fflags,data,extra", [
    (lib.EVFILT_USER, 0, 0, 1),         # wake eventfd
    (lib.EVFILT_TIMER, 0, 60_000, 2),   # wake eventfd + timerfd
])
def test_first_user_or_timer_adds_its_descriptors_once(filt, fflags, data, extra):
    def make(kq):
        for ident in range(1, 200):
            add(kq, ident, filt, EV_ADD, fflags, data)
    assert held_by(make) == 2 + extra


def test_first_write_registration_adds_the_write_sets(fds):
    pairs = [fds.socketpair() for _ in range(3)]

    def make(kq):
        for a, _b in pairs:
            add(kq, a.fileno(), lib.EVFILT_WRITE)
        rc, _, evs = kevent_raw(kq, [], 8, 2.0)
        assert sorted(e.ident for e in evs) == sorted(a.fileno() for a, _ in pairs)
    assert held_by(make) == 2 + 3


def test_regular_file_read_registration_gets_its_wake_descriptor(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    fd = os.open(path, os.O_RDONLY)
    try:
        def make(kq):
            add(kq, fd, lib.EVFILT_READ)
            rc, _, evs = kevent_raw(kq, [], 8, 2.0)
            assert [e.ident for e in evs] == [fd]
        # The queue's 2, its wake eventfd (regular files report from the
        # pending list), the inotify instance that wakes READ when a file
        # grows, and the identity set (no nested set: epoll refuses files).
        assert held_by(make) == 5
    finally:
        os.close(fd)


def test_close_wakes_a_waiter_of_a_queue_without_wake_descriptor(fds):
    a, _b = fds.socketpair()
    kq = lib.kqueue()
    add(kq, a.fileno(), lib.EVFILT_READ)    # no wake eventfd made
    result: list = []

    def waiter():
        result.append(kevent_raw(kq, [], 4, 30.0)[:2])

    t = threading.Thread(target=waiter)
    t.start()
    wait_blocked_in_kevent(t)
    t0 = time.monotonic()
    lib.kqueue_close(kq)
    t.join(10.0)
    assert not t.is_alive(), "a waiter stayed blocked in a closed queue"
    assert time.monotonic() - t0 < 5.0
    assert result == [(-1, errno.EBADF)]


def test_close_wakes_a_waiter_of_an_empty_queue():
    kq = lib.kqueue()
    result: list = []
    t = threading.Thread(target=lambda: result.append(kevent_raw(kq, [], 4, 30.0)[:2]))
    t.start()
    wait_blocked_in_kevent(t)
    lib.kqueue_close(kq)
    t.join(10.0)
    assert not t.is_alive()
    assert result == [(-1, errno.EBADF)]


def test_a_timer_still_wakes_after_lazy_creation():
    kq = lib.kqueue()
    try:
        add(kq, 1, lib.EVFILT_TIMER, EV_ADD | lib.EV_ONESHOT, 0, 50)
        rc, _, evs = kevent_raw(kq, [], 4, 5.0)
        assert [(e.ident, e.filter) for e in evs] == [(1, lib.EVFILT_TIMER)]
    finally:
        lib.kqueue_close(kq)


SUBPROCESS = textwrap.dedent("""
    import errno, os, resource, socket
    from kqueue_py import ffi, lib
    resource.setrlimit(resource.RLIMIT_NOFILE, (__LIMIT__, __LIMIT__))
    """)


def run(body: str, limit: int) -> str:
    code = SUBPROCESS.replace("__LIMIT__", str(limit)) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_many_more_queues_fit_under_a_low_descriptor_limit():
    out = run("""
        n = 0
        while True:
            fd = lib.kqueue()
            if fd < 0:
                assert ffi.errno == errno.EMFILE, ffi.errno
                break
            n += 1
        print(n)
    """, 256)
    # 5 descriptors a queue allowed ~50; 2 allow ~125.
    assert int(out) >= 110, out


def test_emfile_making_a_descriptor_is_that_changes_error():
    out = run("""
        kq = lib.kqueue()
        assert kq >= 0
        a, b = socket.socketpair()
        # Use up every descriptor.
        hog = []
        while True:
            try:
                hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as e:
                assert e.errno == errno.EMFILE
                break
        ch = ffi.new("struct kevent[]", 3)
        for i, (ident, filt) in enumerate([(a.fileno(), lib.EVFILT_READ),
                                           (7, lib.EVFILT_USER),
                                           (8, lib.EVFILT_TIMER)]):
            ch[i].ident = ident
            ch[i].filter = filt
            ch[i].flags = lib.EV_ADD | lib.EV_RECEIPT
            ch[i].data = 1000
        out = ffi.new("struct kevent[]", 3)
        n = lib.kevent(kq, ch, 3, out, 3, ffi.NULL)
        assert n == 3, (n, ffi.errno)
        print([(int(out[i].flags & lib.EV_ERROR != 0), int(out[i].data)) for i in range(3)])
        # Without room for errors: -1 and errno.
        ch[0].ident = 9
        ch[0].filter = lib.EVFILT_USER
        ch[0].flags = lib.EV_ADD
        n = lib.kevent(kq, ch, 1, ffi.NULL, 0, ffi.NULL)
        print(n, ffi.errno)
        # With descriptors back, the same change works, and the queue is fine.
        for fd in hog[:8]:
            os.close(fd)
        n = lib.kevent(kq, ch, 1, ffi.NULL, 0, ffi.NULL)
        ch[0].fflags = lib.NOTE_TRIGGER
        ch[0].flags = 0
        n2 = lib.kevent(kq, ch, 1, out, 3, ffi.NULL)
        print(n, n2, int(out[0].ident))
        lib.kqueue_close(kq)
    """, 64)
    lines = out.splitlines()
    # A queue's first READ needs its identity and nested sets, USER its wake
    # eventfd, TIMER none (it fires without its timerfd:
    # test_a_timer_fires_with_no_descriptor_left).
    assert lines[0] == str([(1, errno.EMFILE), (1, errno.EMFILE), (1, 0)])
    assert lines[1] == f"-1 {errno.EMFILE}"
    assert lines[2] == "0 1 9"


def test_a_timer_fires_with_no_descriptor_left():
    # A server out of descriptors disables its listener and re-enables it
    # from a one-shot timer: the queue's first timer cannot make its
    # timerfd or wake eventfd, and must fire all the same (FreeBSD's timers
    # need no descriptor).
    out = run("""
        import select, time
        kq = lib.kqueue()
        assert kq >= 0
        hog = []
        while True:
            try:
                hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as e:
                assert e.errno == errno.EMFILE
                break

        def change(ident, flags, data, fflags=0):
            ch = ffi.new("struct kevent *")
            ch.ident, ch.filter, ch.flags, ch.fflags, ch.data = (
                ident, lib.EVFILT_TIMER, flags, fflags, data)
            rc = lib.kevent(kq, ch, 1, ffi.NULL, 0, ffi.NULL)
            return rc, ffi.errno if rc < 0 else 0

        def wait(timeout):
            evs = ffi.new("struct kevent[8]")
            ts = ffi.NULL if timeout is None else ffi.new(
                "struct timespec *", (int(timeout), int(timeout % 1 * 1e9)))
            t0 = time.monotonic()
            n = lib.kevent(kq, ffi.NULL, 0, evs, 8, ts)
            assert n >= 0, ffi.errno
            return [(int(evs[i].ident), int(evs[i].data)) for i in range(n)], \
                time.monotonic() - t0

        # A one-shot timer, waited for with a longer timeout and forever.
        assert change(1, lib.EV_ADD | lib.EV_ONESHOT, 100) == (0, 0)
        evs, took = wait(5.0)
        print("oneshot", evs, 0.09 <= took < 2.0)
        assert change(2, lib.EV_ADD | lib.EV_ONESHOT, 50) == (0, 0)
        evs, took = wait(None)
        print("forever", evs, 0.04 <= took < 2.0)
        # A periodic one counts its expirations.
        assert change(3, lib.EV_ADD, 20) == (0, 0)
        time.sleep(0.25)
        evs, took = wait(0)
        print("periodic", [i for i, _ in evs], evs[0][1] >= 5 if evs else None)
        evs, took = wait(5.0)
        print("again", [i for i, _ in evs], took < 2.0)
        # A wait shorter than the deadline still times out on time.
        assert change(3, lib.EV_DELETE, 0) == (0, 0)
        assert change(4, lib.EV_ADD | lib.EV_ONESHOT, 3000) == (0, 0)
        evs, took = wait(0.1)
        print("short", evs, took < 2.0)
        # Descriptors back: the next TIMER registration makes the timerfd,
        # and the queue's descriptor polls readable for a timer again.
        for fd in hog[:4]:
            os.close(fd)
        assert change(5, lib.EV_ADD | lib.EV_ONESHOT, 50) == (0, 0)
        p = select.poll()
        p.register(kq, select.POLLIN)
        print("pollable", bool(p.poll(5000)))
        evs, took = wait(0)
        print("then", sorted(i for i, _ in evs))
        lib.kqueue_close(kq)
    """, 64)
    assert out.splitlines() == [
        "oneshot [(1, 1)] True",
        "forever [(2, 1)] True",
        "periodic [3] True",
        "again [3] True",
        "short [] True",
        "pollable True",
        "then [5]",
    ], out


@pytest.mark.parametrize("filt", [lib.EVFILT_USER, lib.EVFILT_TIMER])
def test_idents_differing_only_in_high_bits_stay_apart(kq, filt):
    # The same 4,000 idents that used to share one hash bucket: each
    # registration is its own, found, triggered and deleted on its own.
    idents = [(i << 48) | 5 for i in range(1, 4001)]
    data = 3_600_000 if filt == lib.EVFILT_TIMER else 0
    arr = ffi.new("struct kevent[]", len(idents))
    for i, ident in enumerate(idents):
        arr[i].ident = ident
        arr[i].filter = filt
        arr[i].flags = EV_ADD
        arr[i].data = data
        arr[i].udata = ffi.cast("void *", i + 1)
    assert lib.kevent(kq, arr, len(idents), ffi.NULL, 0, ffi.NULL) == 0
    # Re-adding is a change of the existing registration, not a new one.
    assert lib.kevent(kq, arr, len(idents), ffi.NULL, 0, ffi.NULL) == 0
    if filt == lib.EVFILT_USER:
        kq.change((idents[1234], filt, 0, lib.NOTE_TRIGGER, 0, 1235))
        evs = kq.wait(8, 2.0)
        assert [(e.ident, e.udata) for e in evs] == [(idents[1234], 1235)]
    for i in range(len(idents)):
        arr[i].flags = EV_DELETE
    assert lib.kevent(kq, arr, len(idents), ffi.NULL, 0, ffi.NULL) == 0
    rc, err, evs = kevent_raw(kq, [(idents[0], filt, EV_DELETE)], 1)
    assert evs[0].data == errno.ENOENT
