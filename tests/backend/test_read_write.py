"""EVFILT_READ and EVFILT_WRITE: data, EOF, errors, and per-filter flags;
then, as FreeBSD's kqueue(2) has them, checked on Linux:

- Socket errors stay with the application: after any event, the program's own
  getsockopt(SO_ERROR), recv() and send() see what they see after an epoll
  wake-up on the same scenario (the oracle: the same code driven by
  select.epoll).
- A registration dies with its descriptor: nothing is reported under a number
  that no longer names the registered file, even when a dup() or a fork()
  child keeps that file open, and such a file stops waking the queue.
- NOTE_LOWAT never loses an event, whatever the flags.
- Regular files: READ while the offset is not at the end (data = size -
  offset), woken when the file changes; WRITE always ready.
"""
from __future__ import annotations

import errno
import fcntl
import os
import resource
import select
import socket
import struct
import sys
import threading
import time
import warnings

import pytest

from kqueue_py import ffi, lib

from helpers import wait_blocked_in_kevent, wait_until

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the Linux backend's conformance")

READ, WRITE = lib.EVFILT_READ, lib.EVFILT_WRITE
EV_ADD, EV_DELETE, EV_ENABLE, EV_DISABLE = lib.EV_ADD, lib.EV_DELETE, lib.EV_ENABLE, lib.EV_DISABLE
EV_ONESHOT, EV_CLEAR, EV_DISPATCH = lib.EV_ONESHOT, lib.EV_CLEAR, lib.EV_DISPATCH
EV_EOF, EV_ERROR = lib.EV_EOF, lib.EV_ERROR
NOTE_LOWAT = lib.NOTE_LOWAT
NOTE_NODATA = getattr(lib, "NOTE_NODATA", 0)     # a Linux backend extension

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def one(evs, ident, filt):
    found = [e for e in evs if (e.ident, e.filter) == (ident, filt)]
    assert len(found) == 1, f"expected one ({ident}, {filt}) event in {evs}"
    return found[0]


def wait_for(kq, ident, filt, pred, timeout=2.0, h=None):
    """Wait until an event for (ident, filt) satisfies pred; return it.

    For level-triggered registrations whose data settles over time (TCP)."""
    import time
    deadline = time.monotonic() + timeout
    last = None
    while True:
        evs = [e for e in kq.wait(64, 0.05) if (e.ident, e.filter) == (ident, filt)]
        if evs:
            last = evs[-1]
            if pred(last):
                return last
        if time.monotonic() >= deadline:
            return last


# ---------------------------------------------------------------------------
# READ: data


def test_read_data_is_exact_bytes_readable_for_pipe(kq, fds):
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD))
    assert kq.poll() == []
    os.write(w, b"a" * 1234)
    assert one(kq.wait(), r, READ).data == 1234
    os.write(w, b"b" * 100)
    assert one(kq.poll(), r, READ).data == 1334
    os.read(r, 334)
    assert one(kq.poll(), r, READ).data == 1000


def test_read_data_is_exact_bytes_readable_for_unix_socket(kq, fds):
    a, b = fds.socketpair()
    kq.change((a.fileno(), READ, EV_ADD))
    b.send(b"x" * 5000)
    assert one(kq.wait(), a.fileno(), READ).data == 5000
    a.recv(1000)
    assert one(kq.poll(), a.fileno(), READ).data == 4000


def test_read_data_is_exact_bytes_readable_for_tcp_socket(kq, fds):
    c, s = fds.tcp_pair()
    s.setblocking(False)
    kq.change((s.fileno(), READ, EV_ADD))
    c.sendall(b"y" * 7000)
    ev = wait_for(kq, s.fileno(), READ, lambda e: e.data == 7000)
    assert ev is not None and ev.data == 7000
    s.recv(2000)
    assert one(kq.poll(), s.fileno(), READ).data == 5000


def test_read_is_silent_on_empty_pipe_and_socket(kq, fds):
    r, w = fds.pipe()
    a, b = fds.socketpair()
    kq.change((r, READ, EV_ADD), (a.fileno(), READ, EV_ADD))
    assert kq.wait(64, 0.03) == []


# ---------------------------------------------------------------------------
# READ: EOF and errors


def test_read_eof_on_pipe_writer_close(kq, fds):
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD))
    fds.close(w)
    ev = one(kq.wait(), r, READ)
    assert ev.flags & EV_EOF
    assert ev.data == 0


def test_read_eof_on_pipe_writer_close_with_data_buffered(kq, fds):
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD))
    os.write(w, b"z" * 77)
    fds.close(w)
    ev = one(kq.wait(), r, READ)
    assert ev.flags & EV_EOF
    assert ev.data == 77


def test_read_no_eof_while_pipe_writer_open(kq, fds):
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD))
    os.write(w, b"z")
    ev = one(kq.wait(), r, READ)
    assert not ev.flags & EV_EOF


def test_read_eof_on_unix_peer_close_with_data_buffered(kq, fds):
    a, b = fds.socketpair()
    kq.change((a.fileno(), READ, EV_ADD))
    b.send(b"q" * 300)
    b.close()
    ev = one(kq.wait(), a.fileno(), READ)
    assert ev.flags & EV_EOF
    assert ev.data == 300
    a.recv(100)
    ev = one(kq.poll(), a.fileno(), READ)
    assert ev.flags & EV_EOF and ev.data == 200


def test_read_eof_on_tcp_peer_close_with_data_buffered(kq, fds):
    c, s = fds.tcp_pair()
    s.setblocking(False)
    kq.change((s.fileno(), READ, EV_ADD))
    c.sendall(b"w" * 300)
    c.close()
    ev = wait_for(kq, s.fileno(), READ, lambda e: bool(e.flags & EV_EOF))
    assert ev is not None and ev.flags & EV_EOF
    assert ev.data == 300
    assert ev.fflags == 0     # an orderly close is not an error


def test_read_eof_on_tcp_peer_shutdown_write(kq, fds):
    c, s = fds.tcp_pair()
    kq.change((s.fileno(), READ, EV_ADD))
    c.shutdown(socket.SHUT_WR)
    ev = wait_for(kq, s.fileno(), READ, lambda e: bool(e.flags & EV_EOF))
    assert ev is not None and ev.flags & EV_EOF and ev.data == 0


# ---------------------------------------------------------------------------
# READ: listening sockets


def test_listening_tcp_socket_data_is_number_of_pending_connections(kq, fds):
    lst = fds.tcp_listener(backlog=16)
    kq.change((lst.fileno(), READ, EV_ADD))
    assert kq.poll() == []
    for _ in range(3):
        fds.sock(socket.create_connection(lst.getsockname()))
    ev = wait_for(kq, lst.fileno(), READ, lambda e: e.data == 3)
    assert ev is not None and ev.data == 3
    conn, _ = lst.accept()
    fds.sock(conn)
    assert one(kq.poll(), lst.fileno(), READ).data == 2


def test_listening_unix_socket_data_is_number_of_pending_connections(kq, fds, tmp_path):
    path = str(tmp_path / "sock")
    lst = fds.sock(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    lst.bind(path)
    lst.listen(16)
    kq.change((lst.fileno(), READ, EV_ADD))
    assert kq.poll() == []
    for _ in range(3):
        c = fds.sock(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        c.connect(path)
    ev = one(kq.wait(), lst.fileno(), READ)
    assert ev.data == 3


# ---------------------------------------------------------------------------
# WRITE


def test_write_pipe_data_is_free_space(kq, fds):
    r, w = fds.pipe()
    size = fcntl.fcntl(w, F_GETPIPE_SZ)
    kq.change((w, WRITE, EV_ADD))
    assert one(kq.poll(), w, WRITE).data == size
    os.write(w, b"x" * 1000)
    assert one(kq.poll(), w, WRITE).data == size - 1000
    os.read(r, 400)
    assert one(kq.poll(), w, WRITE).data == size - 600


def test_write_pipe_full_is_silent_then_reports_when_drained(kq, fds):
    r, w = fds.pipe()
    kq.change((w, WRITE, EV_ADD))
    try:
        while True:
            os.write(w, b"\0" * 65536)
    except BlockingIOError:
        pass
    assert kq.wait(64, 0.03) == []
    while True:
        try:
            os.read(r, 1 << 20)
        except BlockingIOError:
            break
    ev = one(kq.wait(), w, WRITE)
    assert ev.data == fcntl.fcntl(w, F_GETPIPE_SZ)


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_write_socket_data_is_positive_free_space(kq, fds, kind):
    a, b = fds.socketpair() if kind == "unix" else fds.tcp_pair()
    kq.change((a.fileno(), WRITE, EV_ADD))
    ev = one(kq.wait(), a.fileno(), WRITE)
    assert ev.data > 0
    assert not ev.flags & EV_EOF


def test_write_eof_when_pipe_reader_closed(kq, fds):
    r, w = fds.pipe()
    kq.change((w, WRITE, EV_ADD))
    fds.close(r)
    ev = one(kq.wait(), w, WRITE)
    assert ev.flags & EV_EOF


def test_write_eof_when_unix_peer_closed(kq, fds):
    a, b = fds.socketpair()
    kq.change((a.fileno(), WRITE, EV_ADD))
    b.close()
    ev = one(kq.wait(), a.fileno(), WRITE)
    assert ev.flags & EV_EOF


def test_listening_socket_is_silent_for_write(kq, fds):
    lst = fds.tcp_listener()
    kq.change((lst.fileno(), WRITE, EV_ADD))
    assert kq.wait(64, 0.05) == []
    fds.sock(socket.create_connection(lst.getsockname()))
    assert all(e.filter != WRITE for e in kq.wait(64, 0.05))


def test_udp_socket_is_writable_at_once(kq, fds):
    u = fds.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    u.bind(("127.0.0.1", 0))
    kq.change((u.fileno(), WRITE, EV_ADD, 0, 0, 3))
    ev = one(kq.poll(), u.fileno(), WRITE)
    assert ev.udata == 3 and ev.data > 0


def test_udp_socket_read_reports_datagram(kq, fds):
    u = fds.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    u.bind(("127.0.0.1", 0))
    v = fds.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    kq.change((u.fileno(), READ, EV_ADD))
    assert kq.poll() == []
    v.sendto(b"d" * 64, u.getsockname())
    ev = one(kq.wait(), u.fileno(), READ)
    assert ev.data >= 64


# ---------------------------------------------------------------------------
# Per-registration flags: READ and WRITE on one fd are independent


def test_clear_is_per_filter_on_one_fd(kq, fds):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD | EV_CLEAR, 0, 0, 1), (fd, WRITE, EV_ADD, 0, 0, 2))
    b.send(b"hello")
    evs = kq.wait()
    assert one(evs, fd, READ).udata == 1
    assert one(evs, fd, WRITE).udata == 2
    for _ in range(3):
        evs = kq.poll()
        assert [(e.filter, e.udata) for e in evs] == [(WRITE, 2)]
    b.send(b"more")
    evs = kq.wait()
    assert one(evs, fd, READ).data == 9
    one(evs, fd, WRITE)


def test_clear_on_write_leaves_read_level_triggered_on_one_fd(kq, fds):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD, 0, 0, 1), (fd, WRITE, EV_ADD | EV_CLEAR, 0, 0, 2))
    b.send(b"hello")
    evs = kq.wait()
    one(evs, fd, READ)
    one(evs, fd, WRITE)
    for _ in range(3):
        evs = kq.poll()
        assert [(e.filter, e.udata) for e in evs] == [(READ, 1)]


def test_oneshot_is_per_filter_on_one_fd(kq, fds):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD | EV_ONESHOT), (fd, WRITE, EV_ADD))
    b.send(b"x")
    evs = kq.wait()
    one(evs, fd, READ)
    one(evs, fd, WRITE)
    b.send(b"y")
    assert [e.filter for e in kq.poll()] == [WRITE]
    with pytest.raises(OSError) as ei:
        kq.change((fd, READ, EV_DELETE))
    assert ei.value.errno == errno.ENOENT
    kq.change((fd, WRITE, EV_DELETE))


def test_dispatch_is_per_filter_on_one_fd(kq, fds):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD), (fd, WRITE, EV_ADD | EV_DISPATCH))
    b.send(b"x")
    evs = kq.wait()
    one(evs, fd, READ)
    one(evs, fd, WRITE)
    for _ in range(2):
        assert [e.filter for e in kq.poll()] == [READ]
    kq.change((fd, WRITE, EV_ENABLE))
    evs = kq.poll()
    one(evs, fd, READ)
    one(evs, fd, WRITE)


def test_delete_read_keeps_write_on_one_fd(kq, fds):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD), (fd, WRITE, EV_ADD))
    b.send(b"x")
    assert len(kq.wait()) == 2
    kq.change((fd, READ, EV_DELETE))
    assert [e.filter for e in kq.poll()] == [WRITE]
    kq.change((fd, READ, EV_ADD))
    kq.change((fd, WRITE, EV_DELETE))
    assert [e.filter for e in kq.poll()] == [READ]


def test_disable_write_keeps_read_on_one_fd(kq, fds):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD), (fd, WRITE, EV_ADD))
    kq.change((fd, WRITE, EV_DISABLE))
    b.send(b"x")
    assert [e.filter for e in kq.wait()] == [READ]
    kq.change((fd, WRITE, EV_ENABLE), (fd, READ, EV_DISABLE))
    assert [e.filter for e in kq.wait()] == [WRITE]


# ---------------------------------------------------------------------------
# Room in the eventlist


def test_one_slot_fd_readable_and_writable_nothing_lost(kq, fds):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD | EV_CLEAR, 0, 0, 1), (fd, WRITE, EV_ADD | EV_CLEAR, 0, 0, 2))
    b.send(b"x")
    first = kq.wait(1)
    second = kq.wait(1)
    assert len(first) == 1 and len(second) == 1
    assert {first[0].filter, second[0].filter} == {READ, WRITE}
    assert kq.wait(1, 0.03) == []


def test_one_slot_level_triggered_alternates_between_filters(kq, fds):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD), (fd, WRITE, EV_ADD))
    b.send(b"x")
    got = [kq.wait(1) for _ in range(2)]
    assert all(len(g) == 1 for g in got)
    assert {g[0].filter for g in got} == {READ, WRITE}


def test_one_slot_oneshot_both_filters_reported(kq, fds):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD | EV_ONESHOT), (fd, WRITE, EV_ADD | EV_ONESHOT))
    b.send(b"x")
    got = kq.wait(1) + kq.wait(1)
    assert sorted(e.filter for e in got) == sorted([READ, WRITE])
    assert kq.wait(1, 0.03) == []


def _pipes_with_data(fds, n):
    pipes = [fds.pipe() for _ in range(n)]
    for r, w in pipes:
        os.write(w, b"!")
    return pipes


@pytest.mark.parametrize("flag", [EV_ONESHOT, EV_CLEAR, EV_DISPATCH])
def test_more_ready_read_events_than_room_none_lost_none_duplicated(kq, fds, flag):
    pipes = _pipes_with_data(fds, 100)
    kq.changes([(r, READ, EV_ADD | flag, 0, 0, r + 10_000) for r, _ in pipes], nevents=0)
    got = []
    while True:
        evs = kq.poll(7)
        assert len(evs) <= 7
        if not evs:
            break
        got.extend(evs)
    idents = [e.ident for e in got]
    assert sorted(idents) == sorted(r for r, _ in pipes)
    assert all(e.udata == e.ident + 10_000 and e.data == 1 for e in got)


@pytest.mark.parametrize("flag", [EV_ONESHOT, EV_CLEAR])
def test_more_ready_read_and_write_events_than_room(kq, fds, flag):
    pairs = [fds.socketpair() for _ in range(100)]
    changes = []
    for a, b in pairs:
        b.send(b"!")
        changes.append((a.fileno(), READ, EV_ADD | flag))
        changes.append((a.fileno(), WRITE, EV_ADD | flag))
    kq.change(*changes)
    got = []
    while True:
        evs = kq.poll(7)
        assert len(evs) <= 7
        if not evs:
            break
        got.extend(evs)
    keys = sorted((e.ident, e.filter) for e in got)
    assert keys == sorted((c[0], c[1]) for c in changes)


@pytest.mark.parametrize("filt", [READ, WRITE])
def test_more_level_events_than_room_each_reported_once_per_round(kq, fds, filt):
    pipes = _pipes_with_data(fds, 100)
    idents = [r if filt == READ else w for r, w in pipes]
    kq.change(*[(i, filt, EV_ADD) for i in idents])
    got = []
    while len(got) < 100:
        evs = kq.poll(7)
        assert 0 < len(evs) <= 7
        assert len({e.ident for e in evs}) == len(evs), "duplicate within one call"
        got.extend(evs)
    first_round = [e.ident for e in got[:100]]
    assert sorted(first_round) == sorted(idents), "a level-scan round must visit every event once"


# ---------------------------------------------------------------------------
# NOTE_LOWAT


def test_read_note_lowat_eof_is_reported_below_the_mark(kq, fds):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD, lib.NOTE_LOWAT, 100))
    b.send(b"x" * 10)
    b.close()
    ev = one(kq.wait(), fd, READ)
    assert ev.flags & EV_EOF and ev.data == 10


# --------------------------------------------------------------------------
# NOTE_NODATA: a kqueue_py extension of the Linux backend.


@pytest.mark.skipif(not hasattr(lib, "NOTE_NODATA"), reason="Linux backend extension")
def test_note_nodata_reports_readiness_with_data_zero_and_keeps_eof(kq):
    a, b = socket.socketpair()
    try:
        kq.change((a.fileno(), READ, EV_ADD, lib.NOTE_NODATA),
                  (a.fileno(), lib.EVFILT_WRITE, EV_ADD, lib.NOTE_NODATA))
        b.send(b"12345")
        evs = {e.filter: e for e in kq.wait()}
        assert evs[READ].data == 0 and evs[lib.EVFILT_WRITE].data == 0
        assert not evs[READ].flags & lib.EV_EOF
        b.close()
        evs = {e.filter: e for e in kq.wait()}
        assert evs[READ].flags & lib.EV_EOF and evs[READ].data == 0
    finally:
        a.close()


@pytest.mark.skipif(not hasattr(lib, "NOTE_NODATA"), reason="Linux backend extension")
def test_note_nodata_yields_to_note_lowat(kq):
    a, b = socket.socketpair()
    try:
        kq.change((a.fileno(), READ, EV_ADD, lib.NOTE_NODATA | lib.NOTE_LOWAT, 4))
        b.send(b"12")
        assert kq.poll() == []                     # below the mark: counted
        b.send(b"345")
        (ev,) = kq.wait()
        assert ev.data == 5
    finally:
        a.close()
        b.close()


# NOTE_NODATA also means epoll's contract for a descriptor closed while
# registered: level-triggered and EV_CLEAR registrations skip the identity
# check (one epoll_ctl per event), so -- exactly as with select.epoll -- a
# file kept open by a dup() is still reported under the closed number until
# the registration is deleted.  Without NOTE_NODATA, and for EV_ONESHOT /
# EV_DISPATCH with it, the registration dies with its descriptor.

def _closed_but_duped(kq, fds, flags, fflags):
    """A readable socket registered (udata 77) and in a select.epoll oracle,
    then closed while a dup() keeps its file.  Returns (fd, the dup, the
    oracle's report, the peer)."""
    import select
    a, b = fds.socketpair()
    fd = a.fileno()
    keep = fds.track(os.dup(fd))
    kq.change((fd, READ, EV_ADD | flags, fflags, 0, 77))
    ep = select.epoll()
    ep.register(fd, select.EPOLLIN | (select.EPOLLET if flags & EV_CLEAR else 0))
    b.send(b"x")
    os.close(fd)
    a.detach()
    oracle = [f for f, _ in ep.poll(0.5)]
    ep.close()
    return fd, keep, oracle, b


@pytest.mark.skipif(not hasattr(lib, "NOTE_NODATA"), reason="Linux backend extension")
@pytest.mark.parametrize("flags", [0, EV_CLEAR], ids=["level", "clear"])
def test_note_nodata_reports_a_closed_descriptor_as_epoll_does(kq, fds, flags):
    fd, _keep, oracle, peer = _closed_but_duped(kq, fds, flags, lib.NOTE_NODATA)
    assert oracle == [fd]
    evs = kq.wait(8, 0.5)
    assert [(e.ident, e.filter, e.udata) for e in evs] == [(fd, READ, 77)]
    if flags & EV_CLEAR:
        assert kq.poll() == []
        peer.send(b"y")                     # a new edge, as epoll would see
        assert [e.ident for e in kq.wait(8, 0.5)] == [fd]
    else:
        assert [e.ident for e in kq.poll()] == [fd]     # level: again
    # The contract's remedy: delete before closing.  The number is closed
    # now, so EV_DELETE says EBADF -- and the registration is gone.
    with pytest.raises(OSError) as info:
        kq.change((fd, READ, EV_DELETE))
    assert info.value.errno == errno.EBADF
    peer.send(b"z")
    assert kq.wait(8, 0.2) == []


@pytest.mark.skipif(not hasattr(lib, "kqueue_py_take_dropped"), reason="Linux backend")
@pytest.mark.parametrize("flags,fflags", [
    (0, 0), (EV_CLEAR, 0),
    (EV_ONESHOT, lib.NOTE_NODATA if hasattr(lib, "NOTE_NODATA") else 0),
    (EV_DISPATCH, lib.NOTE_NODATA if hasattr(lib, "NOTE_NODATA") else 0),
], ids=["level", "clear", "oneshot-nodata", "dispatch-nodata"])
def test_without_note_nodata_a_closed_descriptor_is_never_reported(kq, fds, flags, fflags):
    fd, _keep, oracle, _peer = _closed_but_duped(kq, fds, flags, fflags)
    assert oracle == [fd]                   # epoll would report it
    assert kq.wait(8, 0.3) == []            # kqueue(2) does not
    assert ffi_take_dropped(kq) == [77]     # removed by the backend


def ffi_take_dropped(kq) -> list[int]:
    from kqueue_py import ffi
    buf = ffi.new("uint64_t[]", 16)
    n = lib.kqueue_py_take_dropped(kq, buf, 16)
    assert n >= 0
    return [int(buf[i]) for i in range(n)]


# ===========================================================================
# As FreeBSD has them, against outside oracles (the Linux backend).

def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def events_for(evs, ident, filt):
    return [e for e in evs if (e.ident, e.filter) == (ident, filt)]


def take_dropped(kq: int, cap: int = 64) -> list[int]:
    buf = ffi.new("uint64_t[]", max(cap, 1))
    n = lib.kqueue_py_take_dropped(kq, buf, cap)
    if n < 0:
        raise OSError(ffi.errno, os.strerror(ffi.errno))
    return [int(buf[i]) for i in range(n)]


# ---------------------------------------------------------------------------
# 1. Socket errors belong to the application.
#
# Each scenario is one function that builds a socket, waits for it with a
# waiter, and returns what the application then sees.  The waiter is either
# a kqueue registration or select.epoll; both must give the same outcome.


class EpollWaiter:
    """The oracle: readiness from select.epoll, level-triggered."""

    def __init__(self):
        self.ep = select.epoll()

    def register(self, fd, filters, fflags=0):
        mask = 0
        if READ in filters:
            mask |= select.EPOLLIN | getattr(select, "EPOLLRDHUP", 0x2000)  # PyPy 3.9 lacks the name
        if WRITE in filters:
            mask |= select.EPOLLOUT
        self.ep.register(fd, mask)

    def wait(self, fd, timeout=2.0):
        return self.ep.poll(timeout)

    def close(self):
        self.ep.close()


class KqueueWaiter:
    def __init__(self, kq):
        self.kq = kq
        self.reports = []

    def register(self, fd, filters, fflags=0):
        self.kq.change(*[(fd, f, EV_ADD, fflags) for f in filters])

    def wait(self, fd, timeout=2.0):
        evs = self.kq.wait(64, timeout)
        self.reports.extend(evs)
        return evs

    def close(self):
        pass


def outcome_of(call):
    try:
        return ("ok", call())
    except OSError as exc:
        return (type(exc).__name__, exc.errno)


def scenario_refused_connect(waiter, filters=(WRITE,), fflags=0):
    s = socket.socket()
    s.setblocking(False)
    try:
        assert s.connect_ex(("127.0.0.1", closed_port())) == errno.EINPROGRESS
        waiter.register(s.fileno(), filters, fflags)
        assert waiter.wait(s.fileno())
        return {"SO_ERROR": s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR),
                "SO_ERROR again": s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)}
    finally:
        s.close()


def reset_pair():
    lst = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(lst.getsockname())
    s, _ = lst.accept()
    lst.close()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.setblocking(False)
    return c, s


def scenario_reset(waiter, filters=(READ,), fflags=0):
    c, s = reset_pair()
    try:
        waiter.register(s.fileno(), filters, fflags)
        c.close()                      # RST
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            waiter.wait(s.fileno(), 0.05)
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
            if info[0] == 7:           # TCP_CLOSE: the reset arrived
                break
        for _ in range(3):             # more level-triggered reports
            waiter.wait(s.fileno(), 0)
        return {"recv": outcome_of(lambda: s.recv(10)),
                "recv again": outcome_of(lambda: s.recv(10)),
                "SO_ERROR": s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)}
    finally:
        s.close()


def scenario_udp_refused(waiter, filters=(READ,), fflags=0):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setblocking(False)
    try:
        u.connect(("127.0.0.1", closed_port()))
        waiter.register(u.fileno(), filters, fflags)
        u.send(b"ping")                # the ICMP port-unreachable comes back
        assert waiter.wait(u.fileno())
        return {"recv": outcome_of(lambda: u.recv(10)),
                "recv again": outcome_of(lambda: u.recv(10)),
                "SO_ERROR": u.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)}
    finally:
        u.close()


SCENARIOS = {
    "refused connect, WRITE": (scenario_refused_connect, (WRITE,), 0,
                               {"SO_ERROR": errno.ECONNREFUSED, "SO_ERROR again": 0}),
    "refused connect, READ+WRITE": (scenario_refused_connect, (READ, WRITE), 0,
                                    {"SO_ERROR": errno.ECONNREFUSED, "SO_ERROR again": 0}),
    "refused connect, NOTE_NODATA": (scenario_refused_connect, (READ, WRITE), NOTE_NODATA,
                                     {"SO_ERROR": errno.ECONNREFUSED, "SO_ERROR again": 0}),
    "peer reset, READ": (scenario_reset, (READ,), 0,
                         {"recv": ("ConnectionResetError", errno.ECONNRESET),
                          "recv again": ("ok", b""), "SO_ERROR": 0}),
    "peer reset, READ+WRITE": (scenario_reset, (READ, WRITE), 0,
                               {"recv": ("ConnectionResetError", errno.ECONNRESET),
                                "recv again": ("ok", b""), "SO_ERROR": 0}),
    "peer reset, NOTE_NODATA": (scenario_reset, (READ, WRITE), NOTE_NODATA,
                                {"recv": ("ConnectionResetError", errno.ECONNRESET),
                                 "recv again": ("ok", b""), "SO_ERROR": 0}),
    "connected UDP, port closed": (scenario_udp_refused, (READ,), 0,
                                   {"recv": ("ConnectionRefusedError", errno.ECONNREFUSED),
                                    "recv again": ("BlockingIOError", errno.EAGAIN),
                                    "SO_ERROR": 0}),
    "connected UDP, READ+WRITE, NOTE_NODATA": (
        scenario_udp_refused, (READ, WRITE), NOTE_NODATA,
        {"recv": ("ConnectionRefusedError", errno.ECONNREFUSED),
         "recv again": ("BlockingIOError", errno.EAGAIN), "SO_ERROR": 0}),
}


@linux_only
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_application_sees_the_socket_error_as_under_epoll(kq, name):
    scenario, filters, fflags, expected = SCENARIOS[name]
    oracle = EpollWaiter()
    try:
        under_epoll = scenario(oracle, filters, fflags)
    finally:
        oracle.close()
    waiter = KqueueWaiter(kq)
    under_kqueue = scenario(waiter, filters, fflags)
    assert under_epoll == expected          # the oracle says what is right
    assert under_kqueue == under_epoll
    assert waiter.reports, "kqueue reported nothing"
    # Linux cannot read the error without clearing it: fflags stays 0.
    assert all(e.fflags == 0 for e in waiter.reports), waiter.reports


@linux_only
def test_refused_connect_reports_eof_on_read_and_write(kq):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect_ex(("127.0.0.1", closed_port()))
        kq.change((s.fileno(), READ, EV_ADD), (s.fileno(), WRITE, EV_ADD))
        deadline = time.monotonic() + 2
        seen = {}
        while len(seen) < 2 and time.monotonic() < deadline:
            for e in kq.wait(64, 0.1):
                seen[e.filter] = e
        assert set(seen) == {READ, WRITE}
        for e in seen.values():     # FreeBSD: SBS_CANTRCVMORE / SBS_CANTSENDMORE
            assert e.flags & EV_EOF and e.fflags == 0
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    finally:
        s.close()


@linux_only
def test_read_and_write_reports_stay_consistent_after_a_reset(kq):
    c, s = reset_pair()
    try:
        kq.change((s.fileno(), READ, EV_ADD), (s.fileno(), WRITE, EV_ADD))
        kq.poll()
        c.close()
        # The reset has arrived once the socket polls readable (then for good).
        assert select.select([s], [], [], 5.0)[0] == [s]
        reports = []
        for _ in range(4):          # level-triggered: every call reports both
            evs = kq.wait(64, 0.5)
            assert {e.filter for e in evs} == {READ, WRITE}, evs
            reports.extend(evs)
        assert all(e.flags & EV_EOF and e.fflags == 0 for e in reports), reports
        with pytest.raises(ConnectionResetError):
            s.recv(10)
    finally:
        s.close()


@linux_only
def test_udp_error_is_a_read_event_without_eof(kq):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setblocking(False)
    try:
        u.connect(("127.0.0.1", closed_port()))
        kq.change((u.fileno(), READ, EV_ADD))
        u.send(b"x")
        ev = kq.wait_one()
        # FreeBSD's filt_soread: a "temporary udp error" is an event, no EOF.
        assert (ev.ident, ev.filter, ev.flags & EV_EOF, ev.fflags) == (u.fileno(), READ, 0, 0)
        with pytest.raises(ConnectionRefusedError):
            u.recv(10)
        assert kq.poll() == []      # the error was the application's, and it took it
    finally:
        u.close()


@linux_only
@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("fflags", [0, NOTE_NODATA])
def test_local_shutdown_wr_makes_write_report_eof(kq, fds, kind, fflags):
    if kind == "tcp":
        a, b = fds.tcp_pair()
        a.setblocking(False)
    else:
        a, b = fds.socketpair()
    kq.change((a.fileno(), WRITE, EV_ADD, fflags))
    ev = kq.wait_one()
    assert not ev.flags & EV_EOF
    a.shutdown(socket.SHUT_WR)      # FreeBSD: SBS_CANTSENDMORE -> EV_EOF (at once: local)
    ev = kq.wait_one()
    assert ev.flags & EV_EOF and ev.fflags == 0
    # The peer is still fine: only our sending side is shut.
    assert b.recv(10) == b""


@linux_only
def test_peer_shutdown_alone_is_no_write_eof(kq, fds):
    a, b = fds.tcp_pair()
    a.setblocking(False)
    kq.change((a.fileno(), WRITE, EV_ADD))
    b.shutdown(socket.SHUT_WR)      # CLOSE_WAIT on a: sending still works
    assert select.select([a], [], [], 5.0)[0] == [a]    # the FIN has arrived
    ev = kq.wait_one()
    assert not ev.flags & EV_EOF


# ---------------------------------------------------------------------------
# 2. A registration dies with its descriptor.


def _ignore_fork_warning():
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")


def fork_holding(fd_keep: int):
    """A real fork() child that keeps every inherited descriptor open until
    its stdin-like pipe is closed.  Returns (pid, release_fd)."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        _ignore_fork_warning()
        pid = os.fork()
    if pid == 0:                    # the child: hold the file, wait, leave
        try:
            os.close(w)
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    return pid, w


def occupy_below(fd: int, fds) -> None:
    """Fill every free number below fd (with /dev/null, closed at teardown),
    so that the next descriptor created takes fd once it is closed."""
    for n in range(fd):
        try:
            os.fstat(n)
        except OSError:
            got = os.open("/dev/null", os.O_RDONLY)
            fds.track(got)
            assert got == n


def release(child):
    pid, w = child
    os.close(w)
    os.waitpid(pid, 0)


def assert_quiet(kq, seconds=0.3):
    """No event, and the queue is not spinning: a wait of `seconds` sleeps
    for about that long and uses little CPU."""
    t0, c0 = time.monotonic(), time.process_time()
    evs = kq.wait(64, seconds)
    dt, dc = time.monotonic() - t0, time.process_time() - c0
    assert evs == []
    assert dt >= seconds * 0.8, f"the wait returned after {dt:.3f}s"
    assert dc < seconds * 0.5, f"the wait burnt {dc:.3f}s of CPU in {dt:.3f}s"
    assert not kq.readable()


@linux_only
@pytest.mark.parametrize("holder", ["fork", "dup"])
@pytest.mark.parametrize("flags", [0, EV_CLEAR, EV_DISPATCH, EV_ONESHOT])
def test_socket_closed_here_but_held_elsewhere_is_not_reported(kq, fds, holder, flags):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD | flags, 0, 0, 0x51))
    child = dup = None
    if holder == "fork":
        child = fork_holding(fd)
    else:
        dup = os.dup(fd)
    try:
        a.close()                   # no EV_DELETE: close() must end it
        b.send(b"data")             # the file is alive elsewhere, and readable
        assert kq.wait(64, 0.2) == []
        assert_quiet(kq)
        # The backend dropped it on its own (an EV_CLEAR registration only
        # when its file next became ready -- it did, above).
        assert take_dropped(kq) == [0x51]
        assert take_dropped(kq) == []
        b.send(b"more")
        assert_quiet(kq, 0.2)
    finally:
        if child:
            release(child)
        if dup is not None:
            os.close(dup)


@linux_only
@pytest.mark.parametrize("holder", ["fork", "dup"])
def test_reused_number_is_never_reported_with_the_old_registration(kq, fds, holder):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD, 0, 0, 0x61))
    if holder == "fork":
        child = fork_holding(fd)
        keep = None
    else:
        child, keep = None, os.dup(fd)
    try:
        occupy_below(fd, fds)
        a.close()
        c, d = socket.socketpair()          # takes the closed number
        fds.sock(c), fds.sock(d)
        reused = next((s for s in (c, d) if s.fileno() == fd), None)
        assert reused is not None, "the number was not reused"
        b.send(b"old file readable")
        other = d if reused is c else c
        other.send(b"new file readable")    # the unregistered one too
        evs = kq.wait(64, 0.2)
        assert evs == [], f"reported for a number that names another file: {evs}"
        assert take_dropped(kq) == [0x61]
        # A new registration on the number gets only the new file's events.
        kq.change((fd, READ, EV_ADD, 0, 0, 0x62))
        ev = kq.wait_one()
        assert (ev.ident, ev.udata, ev.data) == (fd, 0x62, len(b"new file readable"))
    finally:
        if child:
            release(child)
        if keep is not None:
            os.close(keep)


@linux_only
def test_stale_number_taken_by_a_pidfd_of_the_queue_breaks_nothing(kq, fds):
    # A prefork pattern: the parent registers a connection, forks a worker
    # that keeps it, closes its copy without EV_DELETE, and watches the
    # worker's exit -- whose pidfd takes the freed number.  The old file's
    # readiness must neither be reported nor disturb the PROC registration.
    # The queue makes its wake descriptor on first need (a USER or PROC
    # registration): make it now, so that the pidfd is what takes the number.
    kq.change((1, lib.EVFILT_USER, EV_ADD, 0, 0, 0))
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD, 0, 0, 0xB1))
    pid, w = fork_holding(fd)
    try:
        occupy_below(fd, fds)
        a.close()
        kq.change((pid, lib.EVFILT_PROC, EV_ADD, lib.NOTE_EXIT, 0, 0xB2))
        assert "pidfd" in os.readlink(f"/proc/self/fd/{fd}"), "the pidfd took another number"
        b.send(b"for the worker")
        assert kq.wait(64, 0.2) == []
        assert take_dropped(kq) == [0xB1]
        os.close(w)                         # the worker exits
        ev = kq.wait_one(5.0)
        assert (ev.ident, ev.filter, ev.udata) == (pid, lib.EVFILT_PROC, 0xB2)
        assert ev.fflags & lib.NOTE_EXIT
    finally:
        try:
            os.close(w)
        except OSError:
            pass
        os.waitpid(pid, 0)


def make_lingering(kq, fds, udata=0xC1, out_of_reach=False):
    """A level-triggered READ registration whose descriptor is closed while
    a dup() keeps its (readable) file: its epoll item lingers, and the
    queue rebuilds its set when the item comes back.  Returns the dup.

    out_of_reach: the registered descriptor is a copy of the socket at a
    number no descriptor the process makes later takes (the highest the
    limit allows, at most 1023), so that the closed number stays closed
    while other threads wait on the queue: see
    test_threads_blocked_in_the_queue_survive_a_rebuild."""
    a, b = fds.socketpair()
    fd = a.fileno()
    if out_of_reach:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        top = 1023 if soft == resource.RLIM_INFINITY else min(soft, 1024) - 1
        fd = fcntl.fcntl(fd, fcntl.F_DUPFD, top)   # (PyPy 3.9 has no F_DUPFD_CLOEXEC)
        os.set_inheritable(fd, False)
        assert fd >= top, fd
        a.close()
    kq.change((fd, READ, EV_ADD, 0, 0, udata))
    keep = os.dup(fd)
    fds.track(keep)
    if out_of_reach:
        os.close(fd)
    else:
        a.close()
    b.send(b"readable forever")
    fds.sock(b)
    return keep


@linux_only
def test_rebuilt_set_keeps_every_other_registration(kq, fds):
    USER, TIMER = lib.EVFILT_USER, lib.EVFILT_TIMER
    level_r, level_w = fds.pipe()
    os.write(level_w, b"xy")
    dis_r, dis_w = fds.pipe()
    os.write(dis_w, b"x")
    disp_r, disp_w = fds.pipe()
    os.write(disp_w, b"x")
    clr_r, clr_w = fds.pipe()
    wr_r, wr_w = fds.pipe()
    kq.change((level_r, READ, EV_ADD, 0, 0, 1),
              (dis_r, READ, EV_ADD | EV_DISABLE, 0, 0, 2),
              (disp_r, READ, EV_ADD | EV_DISPATCH, 0, 0, 3),
              (clr_r, READ, EV_ADD | EV_CLEAR, 0, 0, 4),
              (wr_w, WRITE, EV_ADD | EV_DISPATCH, 0, 0, 5),
              (77, USER, EV_ADD | EV_CLEAR, 0, 0, 6),
              (88, TIMER, EV_ADD, 0, 50, 7))
    got = {e.udata for e in kq.poll()}
    assert got == {1, 3, 5}                 # level, dispatched once, write once
    make_lingering(kq, fds)
    assert {e.udata for e in kq.wait(64, 0.01)} <= {1, 7}
    assert_quiet_except = {e.udata for e in kq.poll()}
    assert assert_quiet_except <= {1, 7}
    assert take_dropped(kq) == [0xC1]
    # After the rebuild: each registration as it was.
    assert {e.udata for e in kq.poll()} - {7} == {1}        # level still level
    kq.change((77, USER, 0, lib.NOTE_TRIGGER, 0, 6))
    assert {e.udata for e in kq.poll()} - {7} == {1, 6}
    os.write(clr_w, b"new")                 # an edge for the EV_CLEAR one
    evs = [e for e in kq.wait(64, 1.0) if e.udata == 4]
    assert [e.data for e in evs] == [3]
    assert 4 not in {e.udata for e in kq.poll()}
    assert 2 not in {e.udata for e in kq.poll()}            # still disabled
    kq.change((dis_r, READ, EV_ENABLE, 0, 0, 2))
    assert 2 in {e.udata for e in kq.poll()}
    assert 3 not in {e.udata for e in kq.poll()}            # still dispatched
    kq.change((disp_r, READ, EV_ENABLE, 0, 0, 3))
    assert 3 in {e.udata for e in kq.poll()}
    kq.change((wr_w, WRITE, EV_ENABLE, 0, 0, 5))
    assert 5 in {e.udata for e in kq.poll()}
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:      # the timer still runs
        if 7 in {e.udata for e in kq.wait(64, 0.1)}:
            break
    else:
        raise AssertionError("the timer stopped after the rebuild")
    os.read(level_r, 2)
    assert 1 not in {e.udata for e in kq.poll()}


@linux_only
def test_rebuilt_write_set_keeps_the_other_write_registrations(kq, fds):
    r1, w1 = fds.pipe()
    r2, w2 = fds.pipe()
    fill(w2)
    kq.change((w2, WRITE, EV_ADD | EV_CLEAR, 0, 0, 2))
    assert kq.poll() == []
    a, b = fds.socketpair()
    kq.change((a.fileno(), WRITE, EV_ADD, 0, 0, 0xF1))
    keep = os.dup(a.fileno())
    fds.track(keep)
    a.close()                               # writable forever, held by the dup
    assert kq.wait(64, 0.1) == []
    assert_quiet(kq, 0.2)                   # the WRITE set was rebuilt
    assert take_dropped(kq) == [0xF1]
    drain(r2)                               # an edge for the EV_CLEAR one
    assert [e.udata for e in kq.wait(64, 1.0)] == [2]
    kq.change((w1, WRITE, EV_ADD, 0, 0, 1))
    assert [e.udata for e in kq.poll()] == [1]
    assert [e.udata for e in kq.poll()] == [1]


def assert_waits_without_spinning(kq, seconds=0.5):
    """A wait with nothing to report takes its whole timeout and little CPU
    (a queue spinning on lingering items burns about `seconds` of it)."""
    t0, c0 = time.monotonic(), time.process_time()
    evs = kq.wait(64, seconds)
    dt, dc = time.monotonic() - t0, time.process_time() - c0
    assert evs == []
    assert dt >= seconds * 0.8, f"the wait returned after {dt:.3f}s"
    assert dc < seconds * 0.3, f"the wait burnt {dc:.3f}s of CPU in {dt:.3f}s"


@linux_only
def test_two_lingering_read_items_are_both_cleaned_up(kq, fds):
    # Two level-triggered READ registrations closed while dup()s keep their
    # (readable) files: both items come back in every epoll_wait.
    pairs = [fds.socketpair(), fds.socketpair()]
    for (a, b), udata in zip(pairs, (0xA1, 0xA2)):
        kq.change((a.fileno(), READ, EV_ADD, 0, 0, udata))
        fds.track(os.dup(a.fileno()))
    for a, b in pairs:
        a.close()
        b.send(b"readable forever")
    assert_waits_without_spinning(kq, 0.5)
    assert sorted(take_dropped(kq)) == [0xA1, 0xA2]
    assert_quiet(kq, 0.3)                   # rebuilt: quiet from now on
    r, w = fds.pipe()                       # and the queue still works
    kq.change((r, READ, EV_ADD, 0, 0, 0xA3))
    os.write(w, b"x")
    assert [e.udata for e in kq.wait(64, 1.0)] == [0xA3]


@linux_only
@pytest.mark.parametrize("holder", ["fork", "dup"])
def test_read_and_write_lingering_on_one_socket_are_cleaned_up(kq, fds, holder):
    # The prefork pattern: one connection registered for READ and WRITE,
    # closed without EV_DELETE while a worker (or a dup) keeps it, with data
    # pending.  One item lingers in the READ set, one in the WRITE set.
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD, 0, 0, 0xB1), (fd, WRITE, EV_ADD, 0, 0, 0xB2))
    child = keep = None
    if holder == "fork":
        child = fork_holding(fd)
    else:
        keep = os.dup(fd)
    try:
        a.close()
        b.send(b"pending")
        assert_waits_without_spinning(kq, 0.5)
        assert sorted(take_dropped(kq)) == [0xB1, 0xB2]
        assert_quiet(kq, 0.3)
        b.send(b"more")
        assert_quiet(kq, 0.3)
    finally:
        if child:
            release(child)
        if keep is not None:
            os.close(keep)


@linux_only
def test_queue_descriptor_stays_pollable_across_a_rebuild(kq, fds):
    outer = select.epoll()
    try:
        outer.register(kq, select.EPOLLIN)
        make_lingering(kq, fds)
        assert kq.wait(64, 0.1) == []
        assert_quiet(kq, 0.2)               # rebuilt: quiet
        assert outer.poll(0) == []
        r, w = fds.pipe()
        kq.change((r, READ, EV_ADD, 0, 0, 0xD1))
        os.write(w, b"x")
        # The epoll set watching the queue's descriptor still sees it.
        assert outer.poll(1.0) == [(int(kq), select.EPOLLIN)]
        assert [e.udata for e in kq.poll()] == [0xD1]
    finally:
        outer.close()


@linux_only
def test_threads_blocked_in_the_queue_survive_a_rebuild(kq, fds):
    # The closed number stays closed (out_of_reach): this thread makes
    # descriptors while the waiters run (the /proc files
    # wait_blocked_in_kevent reads, the pipe below), and with the lowest
    # free number one of them would take the registered number while a
    # waiter's kevent() probes it (fstat, epoll_ctl: is it still the
    # registered file?).  The kernel answers that probe for one file or
    # the other, and the registration dies either way; but ThreadSanitizer
    # models each number as a memory word that opening writes and every
    # call on it reads, so make tsan reported the reuse as a data race on
    # "file descriptor N", with no memory shared.  The stale item, the
    # rebuild and the threads blocked across it are the same.
    got: list = []

    def waiter():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not got:
            got.extend(e.udata for e in kq.wait(64, 0.5) if e.udata == 0xE1)

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for t in threads:
        t.start()
    wait_blocked_in_kevent(*threads)        # both blocked in kevent()
    make_lingering(kq, fds, out_of_reach=True)
    wait_blocked_in_kevent(*threads)        # and again, after the stale item
    r, w = fds.pipe()
    kq.change((r, READ, EV_ADD | EV_ONESHOT, 0, 0, 0xE1))
    os.write(w, b"x")
    for t in threads:
        t.join()
    assert got == [0xE1]


@linux_only
def test_write_registration_dies_with_its_descriptor_too(kq, fds):
    a, b = fds.socketpair()
    fd = a.fileno()
    kq.change((fd, WRITE, EV_ADD, 0, 0, 0x71))
    assert events_for(kq.poll(), fd, WRITE)
    keep = os.dup(fd)
    try:
        a.close()
        assert kq.wait(64, 0.1) == []
        assert_quiet(kq, 0.2)
        assert take_dropped(kq) == [0x71]
    finally:
        os.close(keep)


@linux_only
def test_regular_file_registration_dies_with_close_and_reuse(kq, fds, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    kq.change((fd, READ, EV_ADD, 0, 0, 0x81))
    assert [(e.ident, e.data, e.udata) for e in kq.poll()] == [(fd, 100, 0x81)]
    occupy_below(fd, fds)
    os.close(fd)
    c, d = socket.socketpair()               # an unregistered socket takes the number
    fds.sock(c), fds.sock(d)
    assert fd in (c.fileno(), d.fileno())
    (d if c.fileno() == fd else c).send(b"x")
    for _ in range(3):
        assert kq.poll() == []
    assert take_dropped(kq) == [0x81]
    assert not kq.readable()


@linux_only
def test_regular_file_closed_number_reports_nothing(kq, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    fd = os.open(path, os.O_RDONLY)
    keep = os.dup(fd)
    try:
        kq.change((fd, READ, EV_ADD, 0, 0, 0x82), (fd, WRITE, EV_ADD, 0, 0, 0x83))
        assert len(kq.poll()) == 2
        os.close(fd)
        assert kq.poll() == []
        assert sorted(take_dropped(kq)) == [0x82, 0x83]
    finally:
        os.close(keep)


@linux_only
def test_take_dropped_contract(kq, make_kq, fds):
    assert take_dropped(kq) == []
    buf = ffi.new("uint64_t[]", 4)
    # Not a queue: EBADF.  A bad count: EINVAL.
    r, w = fds.pipe()
    assert lib.kqueue_py_take_dropped(r, buf, 4) == -1 and ffi.errno == errno.EBADF
    assert lib.kqueue_py_take_dropped(-1, buf, 4) == -1 and ffi.errno == errno.EBADF
    assert lib.kqueue_py_take_dropped(kq, buf, -1) == -1 and ffi.errno == errno.EINVAL
    assert lib.kqueue_py_take_dropped(kq, ffi.NULL, 0) == 0
    # Several, taken a few at a time, in the order they were dropped.
    made = []
    for i in range(5):
        a, _b = fds.socketpair()
        kq.change((a.fileno(), READ, EV_ADD | EV_DISABLE, 0, 0, 0x90 + i))
        made.append(a)
    keep = [os.dup(a.fileno()) for a in made]
    try:
        for a in made:
            fd = a.fileno()
            a.close()
            # Found stale by a change (here EV_ENABLE): EBADF, as BSD says
            # for a closed descriptor, and the udata goes to the list.
            rc, err, _ = _kevent_raw(kq, [(fd, READ, EV_ENABLE)])
            assert (rc, err) == (-1, errno.EBADF)
        assert take_dropped(kq, 2) == [0x90, 0x91]
        assert take_dropped(kq, 10) == [0x92, 0x93, 0x94]
    finally:
        for k in keep:
            os.close(k)
    # EV_DELETE and delivered EV_ONESHOT events are the caller's business.
    a, b = fds.socketpair()
    kq.change((a.fileno(), READ, EV_ADD | EV_ONESHOT, 0, 0, 0xA0))
    b.send(b"x")
    assert kq.wait_one().udata == 0xA0
    c, d = fds.socketpair()
    kq.change((c.fileno(), READ, EV_ADD, 0, 0, 0xA1))
    kq.change((c.fileno(), READ, EV_DELETE))
    assert take_dropped(kq) == []


def _kevent_raw(kq, changes):
    arr = ffi.new("struct kevent[]", len(changes))
    for i, (ident, filt, flags) in enumerate(changes):
        arr[i].ident, arr[i].filter, arr[i].flags = ident, filt, flags
    ffi.errno = 0
    rc = lib.kevent(kq, arr, len(changes), ffi.NULL, 0, ffi.NULL)
    return rc, ffi.errno, None


@linux_only
def test_dropped_list_is_per_queue_and_bounded_by_registrations(make_kq, fds):
    kq1, kq2 = make_kq(), make_kq()
    a, b = fds.socketpair()
    kq1.change((a.fileno(), READ, EV_ADD, 0, 0, 1))
    kq2.change((a.fileno(), READ, EV_ADD, 0, 0, 2))
    keep = os.dup(a.fileno())
    try:
        a.close()
        b.send(b"x")
        assert kq1.wait(64, 0.1) == [] and kq2.wait(64, 0.1) == []
        assert take_dropped(kq1) == [1] and take_dropped(kq2) == [2]
    finally:
        os.close(keep)


# ---------------------------------------------------------------------------
# 3. NOTE_LOWAT never loses an event.

LOWAT_FLAGS = {"level": 0, "clear": EV_CLEAR, "oneshot": EV_ONESHOT, "dispatch": EV_DISPATCH}


def make_stream(fds, kind):
    """(reader fd, writer fd, writer object or None) of a stream."""
    if kind == "pipe":
        r, w = fds.pipe()
        return r, w
    if kind == "unix":
        a, b = fds.socketpair()
        return a.fileno(), b.fileno()
    c, s = fds.tcp_pair()
    c.setblocking(False)
    s.setblocking(False)
    return s.fileno(), c.fileno()


def registered(kq, fd, filt, fflags=0, data=0) -> bool:
    """Is (fd, filt) still registered?  (An EV_ENABLE carrying the same
    fflags and data: every change replaces them.)"""
    arr = ffi.new("struct kevent[]", 1)
    arr[0].ident, arr[0].filter, arr[0].flags = fd, filt, EV_ENABLE
    arr[0].fflags, arr[0].data = fflags, data
    return lib.kevent(kq, arr, 1, ffi.NULL, 0, ffi.NULL) == 0


@linux_only
@pytest.mark.parametrize("kind", ["pipe", "unix", "tcp"])
@pytest.mark.parametrize("flagname", list(LOWAT_FLAGS))
def test_read_lowat_fires_once_the_mark_is_reached(kq, fds, kind, flagname):
    flags = LOWAT_FLAGS[flagname]
    r, w = make_stream(fds, kind)
    kq.change((r, READ, EV_ADD | flags, NOTE_LOWAT, 10))
    os.write(w, b"a" * 5)
    assert kq.wait(64, 0.1) == []           # below the mark: nothing (and not consumed)
    os.write(w, b"b" * 5)
    evs = kq.wait(64, 2.0)
    assert [(e.ident, e.filter, e.data) for e in evs] == [(r, READ, 10)]
    if flagname == "oneshot":
        assert not registered(kq, r, READ)
    elif flagname == "dispatch":
        os.write(w, b"c")
        assert kq.wait(64, 0.1) == []
        kq.change((r, READ, EV_ENABLE, NOTE_LOWAT, 10))
        assert [e.data for e in kq.wait(64, 1.0)] == [11]
    elif flagname == "clear":
        assert kq.wait(64, 0.1) == []       # no new data, no new event
        os.write(w, b"c")
        assert [e.data for e in kq.wait(64, 1.0)] == [11]
    else:
        assert [e.data for e in kq.poll()] == [10]    # still at the mark
        os.read(r, 3)
        assert kq.wait(64, 0.1) == []       # below again
        os.write(w, b"d" * 3)
        assert [e.data for e in kq.wait(64, 1.0)] == [10]


def fill(fd) -> int:
    total = 0
    chunk = b"x" * 65536
    while True:
        try:
            n = os.write(fd, chunk)
        except BlockingIOError:
            return total
        total += n


def drain(fd, limit=None) -> int:
    total = 0
    while limit is None or total < limit:
        try:
            got = os.read(fd, 65536 if limit is None else min(65536, limit - total))
        except BlockingIOError:
            break
        if not got:
            break
        total += len(got)
    return total


@linux_only
@pytest.mark.parametrize("kind", ["pipe", "unix", "tcp"])
@pytest.mark.parametrize("flagname", list(LOWAT_FLAGS))
def test_write_lowat_fires_once_free_space_reaches_the_mark(kq, fds, kind, flagname):
    flags = LOWAT_FLAGS[flagname]
    r, w = make_stream(fds, kind)
    mark = 32768
    fill(w)
    kq.change((w, WRITE, EV_ADD | flags, NOTE_LOWAT, mark))
    assert kq.wait(64, 0.05) == []          # full
    drain(r, 4096)                          # a wake-up below the mark
    for e in kq.wait(64, 0.1):
        assert e.data >= mark, e            # never below the mark
    # Now empty it: 64 KiB and more free, and nothing else happens.
    deadline = time.monotonic() + 3
    evs = []
    while not evs and time.monotonic() < deadline:
        drain(r)
        evs = events_for(kq.wait(64, 0.1), w, WRITE)
    assert len(evs) == 1 and evs[0].data >= mark, evs
    if flagname == "oneshot":
        assert not registered(kq, w, WRITE, NOTE_LOWAT, mark)
    elif flagname == "dispatch":
        assert kq.wait(64, 0.05) == []
    elif flagname == "level":
        assert [e.data >= mark for e in kq.poll()] == [True]


@linux_only
def test_write_lowat_below_the_mark_dies_with_its_descriptor(kq, fds):
    a, b = fds.socketpair()
    fill(a.fileno())
    kq.change((a.fileno(), WRITE, EV_ADD, NOTE_LOWAT, 1 << 30, 0x77))   # never reached
    drain(b.fileno())                       # writable, still below the mark
    assert kq.wait(64, 0.05) == []          # below the mark: re-polled
    keep = os.dup(a.fileno())
    fds.track(keep)
    a.close()
    assert kq.wait(64, 0.1) == []
    assert take_dropped(kq) == [0x77]
    assert_quiet(kq, 0.2)


@linux_only
def test_write_lowat_on_a_pipe_level_triggered_waits_until_the_pipe_has_that_much_room(kq, fds):
    r, w = fds.pipe()
    fill(w)
    kq.change((w, WRITE, EV_ADD, NOTE_LOWAT, 32768))
    drain(r, 4096)
    assert [e for e in kq.wait(64, 0.1) if e.data < 32768] == []
    drain(r)
    assert select.select([], [w], [], 0)[1] == [w]
    ev = kq.wait_one(2.0)
    assert ev.ident == w and ev.data >= 65536 - 4096


# ---------------------------------------------------------------------------
# 4. Regular files as FreeBSD (filt_vfsread / filt_vfswrite).


@linux_only
def test_regular_file_read_is_ready_while_offset_is_before_the_end(kq, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        kq.change((fd, READ, EV_ADD))
        assert [e.data for e in kq.poll()] == [100]
        os.read(fd, 40)
        assert [e.data for e in kq.poll()] == [60]
        os.read(fd, 60)
        assert kq.poll() == []              # at the end: quiet
        assert not kq.readable()
        assert_quiet(kq, 0.2)
        with open(path, "ab") as f:         # grows: fires again
            f.write(b"y" * 7)
        ev = kq.wait_one(2.0)
        assert (ev.ident, ev.data, ev.flags & EV_EOF) == (fd, 7, 0)
        os.lseek(fd, 10, os.SEEK_SET)       # level-triggered: data follows the offset
        assert [e.data for e in kq.poll()] == [97]
        os.lseek(fd, 0, os.SEEK_END)
        assert kq.poll() == []
    finally:
        os.close(fd)


@linux_only
def test_regular_file_read_past_the_end_reports_negative_data(kq, tmp_path):
    # kqueue(2): "data contains the offset from current position to end of
    # file, and may be negative".
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDWR)
    try:
        os.lseek(fd, 0, os.SEEK_END)
        kq.change((fd, READ, EV_ADD))
        assert kq.poll() == []
        os.truncate(path, 40)
        ev = kq.wait_one(2.0)
        assert ev.data == -60
    finally:
        os.close(fd)


@linux_only
def test_regular_file_read_clear_fires_once_per_change(kq, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        kq.change((fd, READ, EV_ADD | EV_CLEAR))
        assert kq.poll() == []
        with open(path, "ab") as f:
            f.write(b"abc")
        assert [e.data for e in kq.wait(64, 2.0)] == [3]
        assert kq.poll() == []              # cleared, unread
        with open(path, "ab") as f:
            f.write(b"de")
        assert [e.data for e in kq.wait(64, 2.0)] == [5]
    finally:
        os.close(fd)


@linux_only
@pytest.mark.parametrize("flags", [EV_ONESHOT, EV_DISPATCH])
def test_regular_file_read_oneshot_dispatch_wait_for_data(kq, tmp_path, flags):
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        kq.change((fd, READ, EV_ADD | flags))
        assert kq.poll() == []              # empty file: not consumed
        with open(path, "ab") as f:
            f.write(b"abcd")
        assert [e.data for e in kq.wait(64, 2.0)] == [4]
        with open(path, "ab") as f:
            f.write(b"e")
        assert kq.wait(64, 0.1) == []
        assert registered(kq, fd, READ) == (flags == EV_DISPATCH)
    finally:
        os.close(fd)


@linux_only
def test_regular_file_write_is_always_ready(kq, tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        kq.change((fd, WRITE, EV_ADD))
        for _ in range(3):
            assert [(e.ident, e.filter, e.data) for e in kq.poll()] == [(fd, WRITE, 0)]
        os.write(fd, b"x" * 10)
        assert [(e.ident, e.filter, e.data) for e in kq.poll()] == [(fd, WRITE, 0)]
    finally:
        os.close(fd)


@linux_only
def test_regular_file_write_clear_reports_once_then_on_each_change(kq, tmp_path):
    # FreeBSD: filt_vfswrite is always true, and EV_CLEAR takes the knote off
    # the active list after a report until the vnode next changes.
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        kq.change((fd, WRITE, EV_ADD | EV_CLEAR, 0, 0, 0x91))
        assert [(e.ident, e.filter, e.data, e.udata) for e in kq.poll()] == \
            [(fd, WRITE, 0, 0x91)]
        assert kq.poll() == []              # cleared: not again ...
        assert_quiet(kq, 0.2)
        os.write(fd, b"x" * 10)             # ... until the file changes
        assert [(e.ident, e.filter) for e in kq.wait(64, 2.0)] == [(fd, WRITE)]
        assert kq.poll() == []
        with open(path, "ab") as f:         # a change through another descriptor
            f.write(b"y")
        assert [(e.ident, e.filter) for e in kq.wait(64, 2.0)] == [(fd, WRITE)]
        assert kq.poll() == []
    finally:
        os.close(fd)


@linux_only
def test_directory_read_clear_reports_once_then_on_each_change(kq, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        kq.change((fd, READ, EV_ADD | EV_CLEAR, 0, 0, 0x92))
        assert [(e.ident, e.udata) for e in kq.poll()] == [(fd, 0x92)]
        assert kq.poll() == []
        assert_quiet(kq, 0.2)
        (d / "new").write_bytes(b"")        # an entry appears
        assert [(e.ident, e.udata) for e in kq.wait(64, 2.0)] == [(fd, 0x92)]
        assert kq.poll() == []
        (d / "new").unlink()                # and goes
        assert [(e.ident, e.udata) for e in kq.wait(64, 2.0)] == [(fd, 0x92)]
        assert kq.poll() == []
    finally:
        os.close(fd)


@linux_only
@pytest.mark.parametrize("filt", [READ, WRITE])
def test_device_without_poll_with_clear_reports_once(kq, filt):
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        kq.change((fd, filt, EV_ADD | EV_CLEAR, 0, 0, 0x93))
        assert [(e.ident, e.filter, e.udata) for e in kq.poll()] == [(fd, filt, 0x93)]
        for _ in range(2):
            assert kq.poll() == []
        assert_quiet(kq, 0.2)
        kq.change((fd, filt, EV_ADD | EV_CLEAR, 0, 0, 0x94))   # a new look
        assert [(e.ident, e.filter, e.udata) for e in kq.poll()] == [(fd, filt, 0x94)]
        assert kq.poll() == []
    finally:
        os.close(fd)


@linux_only
def test_regular_file_read_woken_by_a_writer_in_another_thread(kq, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        kq.change((fd, READ, EV_ADD))

        reader = threading.current_thread()

        def writer():
            wait_blocked_in_kevent(reader)      # the write comes while it waits
            with open(path, "ab") as f:
                f.write(b"hello")

        t = threading.Thread(target=writer)
        t.start()
        ev = kq.wait_one(5.0)               # blocked, then woken by the write
        t.join()
        assert ev.data == 5
    finally:
        os.close(fd)


@linux_only
def test_device_without_poll_stays_always_ready(kq):
    # /dev/null has no poll method: epoll refuses it, poll(2) calls it ready.
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        kq.change((fd, READ, EV_ADD, 0, 0, 5))
        for _ in range(2):
            assert [(e.ident, e.data, e.udata) for e in kq.poll()] == [(fd, 0, 5)]
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# 5. A registration on a reused number, re-added while its old report is
#    still pending.  Each scenario runs in a child interpreter with a
#    timeout: a corrupted pending list hangs under the queue's lock (or
#    crashes), which must fail the test rather than block the suite.

_REUSE_PENDING = r'''
import os, socket, sys, tempfile
from kqueue_py import ffi, lib

READ, WRITE = lib.EVFILT_READ, lib.EVFILT_WRITE
kq = lib.kqueue()

def kevent(changes=(), n=16, timeout=0.0):
    ch = ffi.new("struct kevent[]", max(len(changes), 1))
    for i, (ident, filt, flags, udata) in enumerate(changes):
        ch[i].ident, ch[i].filter, ch[i].flags = ident, filt, flags
        ch[i].udata = ffi.cast("void *", udata)
    out = ffi.new("struct kevent[]", n)
    ts = ffi.new("struct timespec *")
    ts.tv_sec, ts.tv_nsec = int(timeout), int((timeout % 1) * 1e9)
    r = lib.kevent(kq, ch, len(changes), out, n, ts)
    if r < 0:
        raise OSError(ffi.errno, os.strerror(ffi.errno))
    return [(int(out[i].ident), int(out[i].filter), int(out[i].data),
             int(ffi.cast("uintptr_t", out[i].udata))) for i in range(r)]

d = tempfile.mkdtemp()
old = os.path.join(d, "old")
with open(old, "wb") as f:
    f.write(b"x" * 100)
fd = os.open(old, os.O_RDONLY)
# Unread data: the registration's first report waits on the pending list.
kevent([(fd, READ, lib.EV_ADD, 0x1)], 0)
if sys.argv[1] == "socket":
    a, b = socket.socketpair()
    b.send(b"hello")
    other, want = a.fileno(), [(fd, READ, 5, 0x2)]
else:
    new = os.path.join(d, "new")
    with open(new, "wb") as f:
        f.write(b"y" * 7)
    other, want = os.open(new, os.O_RDONLY), [(fd, READ, 7, 0x2)]
os.close(fd)                                  # no EV_DELETE
os.dup2(other, fd)                            # the number names another file
kevent([(fd, READ, lib.EV_ADD, 0x2)], 0)     # re-added before any wait
for _ in range(3):
    got = kevent(timeout=0.2)
    assert got == want, got
kevent([(fd, READ, lib.EV_DELETE, 0)], 0)
assert kevent(timeout=0.1) == []
# The queue still works: a user event goes through the pending list.
kevent([(7, lib.EVFILT_USER, lib.EV_ADD | lib.EV_CLEAR, 0x3)], 0)
ch = ffi.new("struct kevent[]", 1)
ch[0].ident, ch[0].filter, ch[0].fflags = 7, lib.EVFILT_USER, lib.NOTE_TRIGGER
assert lib.kevent(kq, ch, 1, ffi.NULL, 0, ffi.NULL) == 0
got = kevent(timeout=1.0)
assert [(i, f) for i, f, _d, _u in got] == [(7, lib.EVFILT_USER)], got
print("ok")
'''


@linux_only
@pytest.mark.parametrize("reuser", ["socket", "file"])
def test_readd_on_a_reused_number_while_the_old_report_is_pending(reuser, tmp_path):
    import subprocess
    try:
        proc = subprocess.run([sys.executable, "-c", _REUSE_PENDING, reuser], cwd=tmp_path,
                              capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("kevent() hung: the pending list was corrupted")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ---------------------------------------------------------------------------
# Sockets: SEQPACKET and UDP (``sys/kern/uipc_socket.c``)


def _udp_pair(fds):
    a = fds.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    b = fds.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _seqpacket_pair(fds):
    return fds.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


@pytest.mark.parametrize("kind", ["seqpacket", "udp"])
@pytest.mark.parametrize("fflags", [0, lib.NOTE_NODATA])
def test_local_shutdown_wr_is_write_eof_on_seqpacket_and_udp(kq, fds, kind, fflags):
    """``filt_sowrite``: ``if (so->so_snd.sb_state & SBS_CANTSENDMORE) {
    kn->kn_flags |= EV_EOF; ...}`` -- ``shutdown(SHUT_WR)`` sets it for every
    protocol (``socantsendmore``), a SEQPACKET or a connected UDP socket as
    much as TCP.  The probe must neither send anything nor take the pending
    error: the peer receives no record, and an ICMP error stays for
    ``recv()``."""
    a, b = _seqpacket_pair(fds) if kind == "seqpacket" else _udp_pair(fds)
    kq.change((a.fileno(), WRITE, EV_ADD, fflags))
    ev = kq.wait_one()
    assert not ev.flags & EV_EOF
    with pytest.raises(BlockingIOError):
        b.recv(10)                  # the look sent nothing
    a.shutdown(socket.SHUT_WR)
    ev = kq.wait_one()
    assert (ev.ident, ev.filter) == (a.fileno(), WRITE)
    assert ev.flags & EV_EOF and ev.fflags == 0
    if kind == "udp":
        with pytest.raises(BlockingIOError):
            b.recv(10)
    else:
        assert b.recv(10) == b""    # the peer sees the end of the stream
    with pytest.raises(BrokenPipeError):
        a.send(b"x")


def test_udp_write_eof_probe_keeps_the_pending_error(kq, fds):
    """The look for ``SBS_CANTSENDMORE`` must not consume a connected UDP
    socket's pending ICMP error (Linux clears it on any read of it)."""
    import select

    port_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port_sock.bind(("127.0.0.1", 0))
    closed = port_sock.getsockname()
    port_sock.close()
    u = fds.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    u.connect(closed)
    u.send(b"x")
    with select.epoll() as ep:      # the oracle: the error has arrived
        ep.register(u.fileno(), select.EPOLLERR)
        assert ep.poll(2.0)
    u.shutdown(socket.SHUT_WR)
    kq.change((u.fileno(), WRITE, EV_ADD))
    ev = kq.wait_one()
    assert ev.flags & EV_EOF and ev.fflags == 0
    assert u.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED


def test_udp_read_lowat_counts_every_queued_datagram(kq, fds):
    """``filt_soread``: ``kn->kn_data = sbavail(&so->so_rcv) - so->so_rcv.sb_ctl;``
    and ``if (kn->kn_sfflags & NOTE_LOWAT) { if (kn->kn_data >= kn->kn_sdata)
    return (1); }`` -- the mark is judged against every queued datagram:
    two of 5 and 7 bytes reach a mark of 10.  Linux tells only the next
    datagram's size (``FIONREAD``), so the event must come all the same
    (never lost); ``data`` is what ``recv()`` returns next.  A mark above
    the bound Linux gives (``SO_MEMINFO``'s receive memory, to which every
    queued byte is charged) is not reached, as on FreeBSD."""
    a, b = _udp_pair(fds)
    kq.change((a.fileno(), READ, EV_ADD, lib.NOTE_LOWAT, 10))
    b.send(b"12345")
    b.send(b"1234567")
    wait_until(lambda: len(a.recv(64, socket.MSG_PEEK)) == 5)
    evs = kq.wait(8, 1.0)
    assert [(e.ident, e.filter) for e in evs] == [(a.fileno(), READ)]
    assert evs[0].data == 5 and not evs[0].flags & EV_EOF
    kq.change((a.fileno(), READ, EV_ADD, lib.NOTE_LOWAT, 1 << 20))
    assert kq.wait(8, 0.05) == []
    assert a.recv(64) == b"12345" and a.recv(64) == b"1234567"


def test_unix_dgram_read_lowat_counts_every_queued_datagram(kq, fds):
    """The same ``filt_soread`` for an AF_UNIX datagram socket (FreeBSD
    queues its datagrams in the receiver's buffer: ``sbavail`` is their
    sum).  Linux charges them to the senders, so there is no bound: any
    queued datagram may reach the mark, and the event comes."""
    a, b = fds.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    kq.change((a.fileno(), READ, EV_ADD | EV_CLEAR, lib.NOTE_LOWAT, 10))
    b.send(b"12345")
    b.send(b"1234567")
    evs = kq.wait(8, 1.0)
    assert [(e.ident, e.data) for e in evs] == [(a.fileno(), 5)]


# ---------------------------------------------------------------------------
# Regular files after an inotify overflow (``sys/kern/vfs_subr.c``)


def _max_queued_events() -> int:
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        return int(f.read())


def test_regular_file_read_after_inotify_overflow(kq, tmp_path):
    """``filt_vfsread``: ``kn->kn_data = va.va_size - kn->kn_fp->f_offset;
    res = ... kn->kn_data != 0;`` -- a file registered at its end is
    reported once it grows, whatever happened to other files.  On Linux the
    wake-up is inotify's, whose queue holds ``max_queued_events``: after
    more changes to other watched files than that, the growth of this one
    is lost in the queue's overflow (``IN_Q_OVERFLOW``), and every
    registration must look again."""
    limit = _max_queued_events()
    if limit > 100_000:
        pytest.skip(f"fs.inotify.max_queued_events is {limit}")
    paths = [tmp_path / n for n in ("a", "b", "c")]
    files = []
    for p in paths:
        p.write_bytes(b"")
        files.append(open(p, "rb"))
    try:
        for f in files:
            kq.change((f.fileno(), READ, EV_ADD | EV_CLEAR))
        assert kq.poll() == []              # all at their end
        wa, wb = (os.open(p, os.O_WRONLY | os.O_APPEND) for p in paths[:2])
        try:
            for _ in range(limit // 2 + 8):  # alternate: inotify merges repeats
                os.write(wa, b"x")
                os.write(wb, b"x")
        finally:
            os.close(wa)
            os.close(wb)
        paths[2].write_bytes(b"grown")      # its IN_MODIFY finds the queue full
        evs = kq.wait(8, 1.0)
        got = {e.ident: e.data for e in evs if e.filter == READ}
        assert got.get(files[2].fileno()) == 5, got
        assert got.get(files[0].fileno()) == limit // 2 + 8
        assert kq.poll() == []              # EV_CLEAR: reported once
        paths[2].write_bytes(b"grown again")   # watches still work afterwards
        assert [(e.ident, e.data) for e in kq.wait(8, 1.0)] == [(files[2].fileno(), 11)]
    finally:
        for f in files:
            f.close()
