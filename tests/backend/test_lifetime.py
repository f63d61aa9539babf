"""A registration lives exactly as long as its descriptor (the Linux backend).

On BSD ``close(fd)`` ends every registration of ``fd``.  The Linux backend
applies the same rule in one mechanism for every descriptor filter: these
tests close descriptors behind the queue's back (with and without a
``dup()`` keeping the file alive, with the number reused by another file or
by the backend itself) and check that nothing is reported for the dead
registration, that a re-add makes a new registration, that the dead
registration's udata is handed back, that cleaning up never strands a
thread blocked in the queue, never spins, and is never triggered by a
registration deleted properly.
"""
from __future__ import annotations

import ctypes
import errno
import gc
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

from kqueue_py import ffi, lib

from helpers import descriptors_named, kevent, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the Linux backend's lifetime rule")

READ, WRITE, VNODE = lib.EVFILT_READ, lib.EVFILT_WRITE, lib.EVFILT_VNODE
SIGNAL = lib.EVFILT_SIGNAL
EV_ADD, EV_DELETE, EV_CLEAR, EV_ONESHOT = lib.EV_ADD, lib.EV_DELETE, lib.EV_CLEAR, lib.EV_ONESHOT
EV_KEEPUDATA = lib.EV_KEEPUDATA


def take_dropped(kq: int) -> list[int]:
    buf = ffi.new("uint64_t[]", 1024)
    n = lib.kqueue_py_take_dropped(kq, buf, 1024)
    assert n >= 0
    return list(ffi.unpack(buf, n))


# --------------------------------------------------------------------------
# Which epoll files the process holds, to see whether the backend replaced
# one of its sets (a rebuild): kcmp(KCMP_FILE) compares the files behind two
# descriptors of this process.

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(os.uname().machine)


def _same_file(a: int, b: int) -> bool:
    pid = os.getpid()
    r = _libc.syscall(_SYS_KCMP, pid, pid, 0, a, b)
    if r < 0:
        pytest.skip(f"kcmp: {os.strerror(ctypes.get_errno())}")
    return r == 0


def _epoll_fds() -> list[int]:
    return descriptors_named("anon_inode:[eventpoll]")


def _items(epfd: int) -> int:
    with open(f"/proc/self/fdinfo/{epfd}") as f:
        return sum(line.startswith("tfd:") for line in f)


class EpollSnapshot:
    """Every epoll descriptor of the process, each with a dup() of its file:
    ``replaced()`` lists those whose number no longer names that file."""

    def __init__(self) -> None:
        if _SYS_KCMP is None:
            pytest.skip("kcmp number unknown here")
        self.held = {fd: os.dup(fd) for fd in _epoll_fds()}
        self.items = {fd: _items(fd) for fd in self.held}   # registrations then

    def replaced(self) -> list[int]:
        out = []
        for fd, copy in self.held.items():
            try:
                os.fstat(fd)
            except OSError:
                out.append(fd)
                continue
            if not _same_file(fd, copy):
                out.append(fd)
        return out

    def close(self) -> None:
        for copy in self.held.values():
            os.close(copy)


def _waits_without_spinning(kq: int, seconds: float) -> None:
    """A wait that reports nothing sleeps: its CPU time stays well below
    its length (a lingering item would make it spin)."""
    t0 = time.thread_time()
    assert kevent(kq, (), 8, seconds) == []
    cpu = time.thread_time() - t0
    assert cpu < 0.6 * seconds, f"kevent() spun for {cpu:.3f} s of CPU in a {seconds} s wait"


def _blocked_in_epoll(tid: int) -> bool:
    """Is thread tid asleep in epoll_wait / epoll_pwait / epoll_pwait2?"""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            nr = f.read().split()[0]
        with open(f"/proc/self/task/{tid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    epoll_calls = {"x86_64": {"232", "281", "441"}, "aarch64": {"22", "441"}}
    return state == "S" and nr in epoll_calls.get(os.uname().machine, set())


# --------------------------------------------------------------------------
# A cleanup never strands a thread blocked in the queue.


def _one_strand_trial(make_kq) -> list[str]:
    kq = make_kq()
    a, b = socket.socketpair()
    keep = os.dup(a.fileno())
    extra = [socket.socketpair() for _ in range(3)]
    try:
        kq.change((a.fileno(), READ, EV_ADD | EV_CLEAR, 0, 0, 1))
        a.close()                              # the dup keeps the file
        b.send(b"x")
        assert kq.poll() == []                 # found dead: nothing reported
        got: list[list] = []

        def waiter() -> None:
            got.append(kevent(kq, (), 1, None))

        threads = [threading.Thread(target=waiter, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        assert wait_until(lambda: all(t.native_id is not None and _blocked_in_epoll(t.native_id)
                                      for t in threads), timeout=10)
        b.send(b"y")                           # the dead item's next edge
        # One new ready registration per thread: each must wake one.
        for i, (x, y) in enumerate(extra):
            y.send(b"z")
            kq.change((x.fileno(), READ, EV_ADD | EV_ONESHOT, 0, 0, 100 + i))
            assert wait_until(lambda i=i: len(got) > i, timeout=10), \
                f"thread {i + 1} of 3 never woke for a ready registration"
        for t in threads:
            t.join(10)
        return sorted(e.udata for evs in got for e in evs)
    finally:
        os.close(keep)
        b.close()
        for x, y in extra:
            x.close()
            y.close()


def test_no_blocked_thread_is_stranded_by_a_cleanup(make_kq):
    # Repeated: the race that stranded a thread in a replaced set (about
    # half of the trials on the old backend) must not exist at all.
    for _ in range(40):
        assert _one_strand_trial(make_kq) == [100, 101, 102]


# --------------------------------------------------------------------------
# Events of registrations deleted properly never rebuild anything.


def test_in_flight_events_of_deleted_registrations_rebuild_nothing(kq):
    idle = [socket.socketpair() for _ in range(150)]
    busy = [socket.socketpair() for _ in range(10)]
    kq.change(*[(a.fileno(), READ, EV_ADD, 0, 0, 1) for a, _ in idle])
    for a, b in busy:
        b.send(b"ready")
    snap = EpollSnapshot()
    stop = threading.Event()
    seen = [0]

    def waiter() -> None:
        while not stop.is_set():
            seen[0] += len(kevent(kq, (), 8, 0.01))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 1.5
        rounds = 0
        while time.monotonic() < deadline:
            kq.change(*[(a.fileno(), READ, EV_ADD, 0, 0, 2) for a, _ in busy])
            kq.change(*[(a.fileno(), READ, EV_DELETE) for a, _ in busy])
            rounds += 1
        stop.set()
        for t in threads:
            t.join(10)
        assert rounds > 50 and seen[0] > 0
        assert snap.replaced() == [], "a set was rebuilt without any stale registration"
    finally:
        stop.set()
        snap.close()
        for a, b in idle + busy:
            a.close()
            b.close()


def test_a_stale_item_costs_a_rebuild_of_its_own_small_set_only(kq):
    # 600 registrations; one dies while a dup() keeps its file: at most the
    # one set that held it is replaced, and the others are untouched.
    pairs = [socket.socketpair() for _ in range(600)]
    try:
        kq.change(*[(a.fileno(), READ, EV_ADD, 0, 0, 1) for a, _ in pairs])
        victim, peer = pairs[300]
        keep = os.dup(victim.fileno())
        snap = EpollSnapshot()
        victim.close()
        peer.send(b"x")
        assert kq.poll() == []
        assert kq.poll() == []                 # the lingering item is gone
        # Sets replaced that held registrations (the spare set kept for a
        # rebuild held none): exactly one, of at most 128.
        held = [snap.items[fd] for fd in snap.replaced() if snap.items[fd]]
        snap.close()
        assert len(held) == 1 and held[0] <= 128, f"rebuilt sets held {held} registrations"
        os.close(keep)
        pairs[299][1].send(b"y")               # its neighbours still work
        pairs[301][1].send(b"y")
        assert sorted(e.ident for e in kq.poll()) == sorted(
            [pairs[299][0].fileno(), pairs[301][0].fileno()])
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# --------------------------------------------------------------------------
# A registration found ready alone in its nested set waits in the queue's
# own set from then on (one epoll_wait per wait, however many nested sets):
# the lifetime rule holds there too.


def _watched_numbers(kq: int) -> set[int]:
    """The descriptor numbers of the items in the queue's own epoll set."""
    with open(f"/proc/self/fdinfo/{kq}") as f:
        return {int(line.split()[1]) for line in f if line.startswith("tfd:")}


@pytest.fixture
def big_queue(kq):
    """A queue with 300 idle READ registrations (three nested sets)."""
    idle = [socket.socketpair() for _ in range(150)]
    kq.change(*[(s.fileno(), READ, EV_ADD, 0, 0, 1) for pair in idle for s in pair])
    yield kq
    for a, b in idle:
        a.close()
        b.close()


def test_one_ready_registration_among_many_waits_in_the_queue_set(big_queue, fds):
    kq = big_queue
    a, b = fds.socketpair()
    kq.change((a.fileno(), READ, EV_ADD, 0, 0, 7))
    assert a.fileno() not in _watched_numbers(kq)
    b.send(b"xy")
    for _ in range(3):                         # level-triggered, as before the move
        assert [(e.ident, e.udata, e.data) for e in kq.poll()] == [(a.fileno(), 7, 2)]
    assert a.fileno() in _watched_numbers(kq)
    a.recv(2)
    assert kq.poll() == []
    b.send(b"z")
    assert [(e.ident, e.data) for e in kq.wait(8, 2.0)] == [(a.fileno(), 1)]
    kq.change((a.fileno(), READ, lib.EV_DISABLE))
    assert kq.poll() == []
    kq.change((a.fileno(), READ, lib.EV_ENABLE))
    assert [e.ident for e in kq.poll()] == [a.fileno()]
    kq.change((a.fileno(), READ, EV_DELETE))
    assert a.fileno() not in _watched_numbers(kq) and kq.poll() == []


def test_a_moved_registration_dies_with_its_descriptor_without_spinning(big_queue):
    kq = big_queue
    a, b = socket.socketpair()
    num = a.fileno()
    kq.change((num, READ, EV_ADD, 0, 0, 41))
    b.send(b"x")
    assert [e.udata for e in kq.poll()] == [41]
    assert [e.udata for e in kq.poll()] == [41]
    assert num in _watched_numbers(kq)
    keep = os.dup(num)                         # the file outlives the number
    try:
        a.close()
        b.send(b"more level-triggered data")
        _waits_without_spinning(kq, 0.5)
        assert 41 in take_dropped(kq)
    finally:
        os.close(keep)
        b.close()


def test_a_moved_registration_on_a_reused_number_is_a_new_one(big_queue, fds, lowest_free):
    kq = big_queue
    a, b = fds.socketpair()
    num = a.fileno()
    kq.change((num, READ, EV_ADD, 0, 0, 51))
    b.send(b"x")
    assert [e.udata for e in kq.poll()] == [51]
    assert num in _watched_numbers(kq)
    a.close()
    lowest_free.next_is(num)
    c, d = fds.socketpair()
    assert c.fileno() == num
    d.send(b"y")
    assert kq.poll() == [], "reported the closed registration under the new file"
    kq.change((num, READ, EV_ADD | EV_KEEPUDATA, 0, 0, 52))
    assert [e.udata for e in kq.poll()] == [52]
    assert 51 in take_dropped(kq)


def test_read_and_write_on_one_descriptor_both_alone_ready(big_queue, fds):
    kq = big_queue
    a, b = fds.socketpair()
    writers = [fds.socketpair() for _ in range(150)]
    for w, _ in writers:                       # two WRITE sets, full of ready items
        kq.change((w.fileno(), WRITE, EV_ADD | lib.EV_DISABLE, 0, 0, 2))
    kq.change((a.fileno(), WRITE, EV_ADD, 0, 0, 3))
    assert [(e.ident, e.filter) for e in kq.poll()] == [(a.fileno(), WRITE)]
    kq.change((a.fileno(), READ, EV_ADD, 0, 0, 4))
    b.send(b"x")
    for _ in range(3):
        got = sorted((e.filter, e.udata) for e in kq.poll())
        assert got == sorted([(WRITE, 3), (READ, 4)])
    assert a.fileno() in _watched_numbers(kq)       # one of the two moved


def test_a_moved_registration_is_not_lost_when_the_eventlist_is_full(big_queue, fds):
    kq = big_queue
    a, b = fds.socketpair()
    c, d = fds.socketpair()
    kq.change((a.fileno(), READ, EV_ADD, 0, 0, 61))
    b.send(b"x")
    assert [e.udata for e in kq.poll()] == [61]
    assert a.fileno() in _watched_numbers(kq)
    kq.change((c.fileno(), READ, EV_ADD, 0, 0, 62))
    d.send(b"x")
    seen = []
    for _ in range(6):                         # room for one event per call
        seen += [e.udata for e in kq.poll(1)]
    assert seen.count(61) >= 2 and seen.count(62) >= 2, seen


def test_lowat_on_a_moved_registration(big_queue, fds):
    kq = big_queue
    a, b = fds.socketpair()
    kq.change((a.fileno(), READ, EV_ADD, 0, 0, 71))
    b.send(b"x")
    assert [e.udata for e in kq.poll()] == [71]
    assert a.fileno() in _watched_numbers(kq)
    kq.change((a.fileno(), READ, EV_ADD, lib.NOTE_LOWAT, 4, 71))
    assert kq.poll() == []                     # 1 byte, mark 4
    b.send(b"yzw")
    assert [(e.udata, e.data) for e in kq.poll()] == [(71, 4)]
    assert [(e.udata, e.data) for e in kq.poll()] == [(71, 4)]


@pytest.mark.parametrize("fflags", [0, getattr(lib, "NOTE_NODATA", 0)], ids=["counted", "nodata"])
def test_a_registration_on_the_queues_own_descriptor_never_takes_its_item(big_queue, fflags):
    # READ on the queue's own wake eventfd, ready alone in its nested set
    # (or, with NOTE_NODATA, meant for the queue's set from the start): the
    # queue's set holds that file under that number already, and the
    # registration must not take the item over (deleting it would then
    # take the queue's wake-up away from blocked threads).
    kq = big_queue
    USER = lib.EVFILT_USER

    def eventfds() -> set[int]:
        return set(descriptors_named("anon_inode:[eventfd]"))

    before = eventfds()
    kq.change((1, USER, EV_ADD, 0, 0, 5))     # level: stays triggered, wake fd readable
    made = eventfds() - before
    assert len(made) == 1
    wake = made.pop()
    kq.change((wake, READ, EV_ADD, fflags, 0, 9), (1, USER, 0, lib.NOTE_TRIGGER, 0, 5))
    for _ in range(3):
        assert sorted((e.filter, e.udata) for e in kq.poll()) == sorted([(USER, 5), (READ, 9)])
    kq.change((wake, READ, EV_DELETE), (1, USER, EV_DELETE))
    assert kq.poll() == []
    kq.change((2, USER, EV_ADD | EV_CLEAR, 0, 0, 6))
    got: list = []
    t = threading.Thread(target=lambda: got.append(kevent(kq, (), 8, None)), daemon=True)
    t.start()
    assert wait_until(lambda: t.native_id is not None and _blocked_in_epoll(t.native_id),
                      timeout=10)
    kq.change((2, USER, 0, lib.NOTE_TRIGGER, 0, 6))
    t.join(10)
    woke = not t.is_alive()
    if not woke:
        lib.kqueue_close(kq)                   # (wakes it, with EBADF)
        t.join(10)
    assert woke, "a blocked thread was not woken: the queue lost its wake-up item"
    assert [(e.filter, e.udata) for e in got[0]] == [(USER, 6)]


def test_readiness_matches_epoll_across_many_nested_sets(kq):
    # An outside oracle: the same sockets in a select.epoll set; random
    # sends and reads, and after each step both report the same ready set.
    import random
    import select
    rng = random.Random(1234)
    pairs = [socket.socketpair() for _ in range(400)]
    ep = select.epoll()
    try:
        for a, _ in pairs:
            kq.change((a.fileno(), READ, EV_ADD, 0, 0, a.fileno()))
            ep.register(a.fileno(), select.EPOLLIN)
        pending = {}
        for step in range(600):
            a, b = pairs[rng.randrange(len(pairs))]
            if pending.get(a.fileno()) and rng.random() < 0.5:
                a.recv(1)
                pending[a.fileno()] -= 1
            else:
                b.send(b"x")
                pending[a.fileno()] = pending.get(a.fileno(), 0) + 1
            want = sorted(fd for fd, _ in ep.poll(0, 1024))
            got = sorted(e.ident for e in kq.poll(1024))
            assert got == want, f"step {step}"
            assert all(e.data == pending[e.ident] for e in kq.poll(1024))
        assert _watched_numbers(kq) & {a.fileno() for a, _ in pairs}, "none moved"
    finally:
        ep.close()
        for a, b in pairs:
            a.close()
            b.close()


def _rebuild_fault_switch() -> ctypes.c_int:
    """The backend's fault injection for a rebuild's epoll_ctl() calls
    (debug and sanitizer builds only: ``make asan``)."""
    import kqueue_py._kqueue as ext
    try:
        return ctypes.c_int.in_dll(ctypes.CDLL(ext.__file__), "kqueue_py_debug_rebuild_errno")
    except ValueError:
        pytest.skip("fault injection is compiled into debug and sanitizer builds only")


@pytest.mark.parametrize("err", [errno.ENOMEM, errno.ENOSPC])
def test_a_failed_rebuild_is_reported_and_keeps_the_old_set(kq, err):
    switch = _rebuild_fault_switch()
    pairs = [socket.socketpair() for _ in range(4)]
    kq.change(*[(a.fileno(), READ, EV_ADD, 0, 0, i) for i, (a, _) in enumerate(pairs)])
    victim, peer = pairs[0]
    keep = os.dup(victim.fileno())
    snap = EpollSnapshot()
    try:
        victim.close()
        peer.send(b"level-triggered: the lingering item comes back")
        switch.value = err
        try:
            for _ in range(3):                 # reported, every time it is tried
                with pytest.raises(OSError) as e:
                    kevent(kq, (), 8, 0)
                assert e.value.errno == err
            # (The spare set, which held nothing, may be a new one.)
            assert [fd for fd in snap.replaced() if snap.items[fd]] == [], \
                "the set was replaced although its rebuild failed"
            pairs[1][1].send(b"y")             # the old set still serves its live items
            assert [ev.udata for ev in kq.poll()] == [1]
        finally:
            switch.value = 0
        assert [ev.udata for ev in kq.poll()] == [1]
        assert [snap.items[fd] for fd in snap.replaced() if snap.items[fd]] == [4]
        pairs[2][1].send(b"z")
        assert sorted(ev.udata for ev in kq.poll()) == [1, 2]
    finally:
        snap.close()
        os.close(keep)
        for a, b in pairs:
            a.close()
            b.close()


# --------------------------------------------------------------------------
# No busy loop at EMFILE.


def test_a_lingering_item_does_not_spin_when_out_of_descriptors(kq):
    a, b = socket.socketpair()
    keep = os.dup(a.fileno())
    kq.change((a.fileno(), READ, EV_ADD, 0, 0, 1))
    a.close()
    b.send(b"level-triggered data that stays")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    filler = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        with pytest.raises(OSError):
            while True:
                filler.append(os.open(os.devnull, os.O_RDONLY))
        t0 = time.thread_time()
        rc_events = kevent(kq, (), 8, 1.0)
        cpu = time.thread_time() - t0
        assert rc_events == []
        # A spinning wait burns most of the second; an idle one next to none.
        assert cpu < 0.3, f"kevent() spun for {cpu:.3f} s of CPU in a 1 s wait"
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.close(keep)
        b.close()


# --------------------------------------------------------------------------
# Every descriptor filter and every number.


@pytest.mark.parametrize("what", ["file-rename", "dir-write"])
def test_vnode_registration_dies_with_its_descriptor(kq, tmp_path, what):
    if what == "file-rename":
        path = tmp_path / "f"
        path.write_bytes(b"data")
        fd = os.open(path, os.O_RDONLY)
        kq.change((fd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_RENAME, 0, 77))
        os.close(fd)
        os.rename(path, tmp_path / "g")
    else:
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        kq.change((fd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_WRITE, 0, 77))
        os.close(fd)
        (tmp_path / "new").write_bytes(b"")
    assert kq.wait(8, 0.2) == [], "reported under a closed descriptor"
    assert 77 in take_dropped(kq)


def test_vnode_reregistration_on_a_reused_number_is_a_new_registration(kq, tmp_path, lowest_free):
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"")
    second.write_bytes(b"")
    fd = os.open(first, os.O_RDONLY)
    kq.change((fd, VNODE, EV_ADD | EV_ONESHOT, lib.NOTE_WRITE, 0, 1))
    os.close(fd)
    lowest_free.next_is(fd)
    fd2 = os.open(second, os.O_RDONLY)
    assert fd2 == fd
    try:
        kq.change((fd2, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_WRITE, 0, 2))
        for _ in range(2):
            with open(second, "ab") as f:
                f.write(b"more")
            ev = kq.wait_one()
            assert (ev.ident, ev.udata) == (fd2, 2)
            assert not ev.flags & EV_ONESHOT, "the dead registration's EV_ONESHOT was kept"
    finally:
        os.close(fd2)


def test_failed_readd_on_a_reused_number_hands_the_dead_udata_back(kq, tmp_path, fds,
                                                                   lowest_free):
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    kq.change((fd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_WRITE, 0, 55))
    os.close(fd)
    lowest_free.next_is(fd)
    a, _b = fds.socketpair()
    assert a.fileno() == fd
    with pytest.raises(OSError) as e:          # a socket cannot be watched
        kq.change((fd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_WRITE, 0, 66))
    assert e.value.errno == errno.EINVAL
    assert take_dropped(kq) == [55]


def test_read_reregistration_on_a_reused_number_ignores_keepudata(kq, fds, lowest_free):
    a, b = fds.socketpair()
    num = a.fileno()
    kq.change((num, READ, EV_ADD, 0, 0, 111))
    a.close()
    lowest_free.next_is(num)
    c, d = fds.socketpair()
    assert c.fileno() == num
    d.send(b"x")
    kq.change((num, READ, EV_ADD | EV_KEEPUDATA, 0, 0, 222))
    ev = kq.wait_one()
    assert (ev.ident, ev.udata) == (num, 222), "a new registration keeps no dead udata"
    assert 111 in take_dropped(kq)


def test_backend_signal_descriptors_do_not_inherit_a_dead_registration():
    # The process-wide signal descriptors are made once per process: a
    # fresh interpreter, where they get the number a dead READ registration
    # still names.
    script = textwrap.dedent("""
        import os, signal, socket, sys
        sys.path.insert(0, sys.argv[1])
        from helpers import Queue, kevent
        from kqueue_py import lib
        signal.signal(signal.SIGUSR1, lambda *a: None)
        kq = Queue(lib.kqueue())
        kq.change((1, lib.EVFILT_USER, lib.EV_ADD | lib.EV_CLEAR))   # the wake descriptor
        a, b = socket.socketpair()
        num = a.fileno()
        kq.change((num, lib.EVFILT_READ, lib.EV_ADD, 0, 0, 5))
        keep = os.dup(num)
        a.close()
        kq.change((signal.SIGUSR1, lib.EVFILT_SIGNAL, lib.EV_ADD, 0, 0, 9))
        owned = os.readlink(f"/proc/self/fd/{num}")
        b.send(b"x")
        evs = kq.poll()
        os.kill(os.getpid(), signal.SIGUSR1)
        evs += kq.poll()
        print(owned, sorted((e.ident, e.filter, e.udata) for e in evs))
    """)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # tests/
    r = subprocess.run([sys.executable, "-c", script, here], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    owned, _, evs = r.stdout.strip().partition(" ")
    if "signalfd" not in owned and "eventfd" not in owned:
        pytest.skip(f"the number went to {owned}, not a signal descriptor")
    assert evs == f"[({signal.SIGUSR1}, {SIGNAL}, 9)]"


# --------------------------------------------------------------------------
# The udata of a dead registration comes back with no event at all.


def test_udata_of_a_closed_registration_comes_back_without_any_event(kq):
    a, b = socket.socketpair()
    kq.change((a.fileno(), READ, EV_ADD, 0, 0, 31), (a.fileno(), WRITE, EV_ADD | EV_CLEAR, 0, 0, 32))
    assert [e.udata for e in kq.poll()] == [32]
    a.close()                                  # no dup anywhere: epoll drops its items
    got: list[int] = []
    for _ in range(20000):
        kq.poll()
        got += take_dropped(kq)
        if len(got) >= 2:
            break
    b.close()
    assert sorted(got) == [31, 32]


def test_kqueue_releases_the_object_of_a_closed_registration():
    from kqueue_py import KQueue

    class Conn:
        pass

    q = KQueue()
    a, b = socket.socketpair()
    conn = Conn()
    ref = weakref.ref(conn)
    q.add_reader(a, conn)
    q.add_user(1)                              # (makes the wake descriptor now)
    del conn
    a.close()
    for _ in range(20000):
        q.wait(0)
        if ref() is None:
            break
        if _ % 64 == 0:
            q.add_user(1)                      # a change batch hands udata back
            gc.collect()
    released = ref() is None
    b.close()
    q.close()
    assert released, "KQueue kept the object of a registration closed without EV_DELETE"


@pytest.mark.parametrize("method", ["wait", "wait_tuples"])
def test_kqueue_wait_alone_releases_the_object_of_a_closed_registration(method):
    # No change batch at all: wait() itself hands the object back, within
    # a bounded number of calls (the backend's sweep probes each of a few
    # registered numbers once every 4,096 kevent() calls and finds the dead
    # registration; wait() collects every 128 calls).
    from kqueue_py import KQueue

    class Conn:
        pass

    q = KQueue()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    conn = Conn()
    ref = weakref.ref(conn)
    q.add_reader(a, conn)
    q.add_writer(c, "kept")                    # live, and ready on every call
    del conn
    a.close()
    wait = getattr(q, method)
    calls = 0
    try:
        while calls < 4096 + 3 * 128:
            assert len(wait(0)) == 1
            calls += 1
            if calls % 128 == 0:
                gc.collect()                   # PyPy frees objects only then
                if ref() is None:
                    break
        assert ref() is None, f"object still held after {calls} wait() calls"
        assert [e[5] for e in wait(0)] == ["kept"]
    finally:
        b.close()
        c.close()
        d.close()
        q.close()


# --------------------------------------------------------------------------
# fork: the child holds no descriptor of the parent's queues.


def test_fork_child_holds_no_queue_descriptors(make_kq, fds):
    before = set(os.listdir("/proc/self/fd"))
    kq = make_kq()
    a, _b = fds.socketpair()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kq.change((child.pid, lib.EVFILT_PROC, EV_ADD, lib.NOTE_EXIT, 0, 1),
                  (a.fileno(), READ, EV_ADD, 0, 0, 2))
        made = {}
        for n in set(os.listdir("/proc/self/fd")) - before - {str(a.fileno()), str(_b.fileno())}:
            try:
                made[n] = os.readlink(f"/proc/self/fd/{n}")
            except OSError:
                pass                           # listdir's own descriptor
        assert "anon_inode:[pidfd]" in made.values()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            left = []
            for name, what in made.items():
                try:
                    if os.readlink(f"/proc/self/fd/{name}") == what:
                        left.append(what)
                except OSError:
                    pass
            os.write(w, repr(sorted(left)).encode())
            os._exit(0)
        os.close(w)
        out = os.read(r, 4096).decode()
        os.close(r)
        os.waitpid(pid, 0)
        assert out == "[]", f"the fork child holds the parent queue's descriptors: {out}"
    finally:
        child.kill()
        child.wait()


# --------------------------------------------------------------------------
# Level-triggered NOTE_NODATA registrations (KqueueSelector's) take epoll's
# contract -- delete before close -- and so wait in the queue's own set, as
# EpollSelector's items do; every other registration keeps the rule.

NODATA = getattr(lib, "NOTE_NODATA", 0)


@pytest.mark.skipif(not NODATA, reason="a Linux backend extension")
def test_a_level_nodata_registration_waits_in_the_queue_set(kq, fds):
    a, b = fds.socketpair()
    num = a.fileno()
    kq.change((num, READ, EV_ADD, NODATA, 0, 5), (num, WRITE, EV_ADD, NODATA, 0, 6))
    assert num in _watched_numbers(kq)
    b.send(b"x")
    for _ in range(3):                         # level-triggered, both filters
        assert sorted((e.filter, e.udata, e.data) for e in kq.poll()) == \
            sorted([(READ, 5, 0), (WRITE, 6, 0)])
    kq.change((num, READ, EV_DELETE))
    assert num not in _watched_numbers(kq)
    assert [(e.filter, e.udata) for e in kq.poll()] == [(WRITE, 6)]
    kq.change((num, WRITE, EV_DELETE))
    assert kq.poll() == []


@pytest.mark.skipif(not NODATA, reason="a Linux backend extension")
@pytest.mark.parametrize("change", [(0, 0), (NODATA | lib.NOTE_LOWAT, 1)],
                         ids=["counted", "lowat"])
def test_a_nodata_registration_changed_to_count_keeps_the_rule_without_spinning(kq, change):
    # Changed to count data (or given a mark), a registration follows the
    # rule again: dead with its descriptor, never reported, no busy loop
    # while its file, kept open by a dup(), stays readable.
    a, b = socket.socketpair()
    num = a.fileno()
    kq.change((num, READ, EV_ADD, NODATA, 0, 51))
    kq.change((num, READ, EV_ADD, change[0], change[1], 51))
    b.send(b"xyz")
    assert [(e.udata, e.data) for e in kq.poll()] == [(51, 3)]
    keep = os.dup(num)
    try:
        a.close()
        b.send(b"more level-triggered data")
        _waits_without_spinning(kq, 0.5)
        dropped = take_dropped(kq)
        for _ in range(20000):                 # found by its event, or by the sweep
            if 51 in dropped:
                break
            kq.poll()
            dropped += take_dropped(kq)
        assert 51 in dropped
    finally:
        os.close(keep)
        b.close()


@pytest.mark.parametrize("fflags", [0, NODATA], ids=["counted", "nodata"])
def test_a_failed_registration_leaves_nothing_on_its_number(kq, fds, lowest_free, fflags):
    # READ on an epoll set that holds the queue: epoll refuses the loop
    # (ELOOP).  The number, closed and then taken by a socket, is a fresh
    # one for the queue: the new registration works and reports.
    import select
    ep = select.epoll()
    ep.register(kq, select.EPOLLIN)
    num = ep.fileno()
    with pytest.raises(OSError) as info:
        kq.change((num, READ, EV_ADD, fflags, 0, 3))
    assert info.value.errno == errno.ELOOP
    ep.close()
    lowest_free.next_is(num)
    a, b = fds.socketpair()
    assert a.fileno() == num
    kq.change((num, READ, EV_ADD, fflags, 0, 4))
    b.send(b"x")
    assert [e.udata for e in kq.poll()] == [4]
    kq.change((num, READ, EV_DELETE))
    assert kq.poll() == []


# --------------------------------------------------------------------------
# The one case Linux cannot see is documented as such.


def test_the_blind_spot_is_documented_not_claimed_handled():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    readme = open(os.path.join(root, "README.md")).read()
    backend = open(os.path.join(root, "docs", "linux-backend.md")).read()
    for text in (readme, backend):
        assert "dup2()" in text and "SCM_RIGHTS" in text
    deviations = backend[backend.index("## Deviations from FreeBSD"):]
    row = next(line for line in deviations.splitlines() if "dup2()" in line)
    assert "not detected" in row

