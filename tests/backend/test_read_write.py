"""EVFILT_READ and EVFILT_WRITE: data, EOF, errors, and per-filter flags."""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

import pytest

from kqueue_py import lib

READ, WRITE = lib.EVFILT_READ, lib.EVFILT_WRITE
EV_ADD, EV_DELETE, EV_ENABLE, EV_DISABLE = lib.EV_ADD, lib.EV_DELETE, lib.EV_ENABLE, lib.EV_DISABLE
EV_ONESHOT, EV_CLEAR, EV_DISPATCH = lib.EV_ONESHOT, lib.EV_CLEAR, lib.EV_DISPATCH
EV_EOF, EV_ERROR = lib.EV_EOF, lib.EV_ERROR

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


def test_read_tcp_reset_gives_eof_and_leaves_the_error_to_recv(kq, fds):
    # Linux cannot read a socket's pending error without clearing it, so
    # fflags stays 0 and the application's own recv() sees ECONNRESET.
    c, s = fds.tcp_pair()
    kq.change((s.fileno(), READ, EV_ADD))
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()     # sends RST
    ev = wait_for(kq, s.fileno(), READ, lambda e: bool(e.flags & EV_EOF))
    assert ev is not None, "no event after the peer reset the connection"
    assert ev.flags & EV_EOF
    assert ev.fflags == 0
    with pytest.raises(ConnectionResetError):
        s.recv(10)


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
# READ: regular files


def test_regular_file_read_is_ready_with_bytes_from_offset_to_eof(kq, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"0123456789" * 100)
    fd = os.open(p, os.O_RDWR)
    try:
        kq.change((fd, READ, EV_ADD, 0, 0, 5))
        ev = one(kq.poll(), fd, READ)
        assert ev.data == 1000 and ev.udata == 5
        os.lseek(fd, 300, os.SEEK_SET)
        assert one(kq.poll(), fd, READ).data == 700
        os.read(fd, 650)
        assert one(kq.poll(), fd, READ).data == 50
    finally:
        os.close(fd)


def test_regular_file_reports_again_after_reaching_eof(kq, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"a" * 100)
    fd = os.open(p, os.O_RDONLY)
    try:
        kq.change((fd, READ, EV_ADD))
        assert one(kq.poll(), fd, READ).data == 100
        os.read(fd, 100)   # at EOF now
        kq.poll()
        with open(p, "ab") as f:
            f.write(b"b" * 40)
        assert one(kq.poll(), fd, READ).data == 40
        os.lseek(fd, 0, os.SEEK_SET)
        assert one(kq.poll(), fd, READ).data == 140
    finally:
        os.close(fd)


def test_regular_file_write_is_ready(kq, tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        kq.change((fd, WRITE, EV_ADD, 0, 0, 6))
        ev = one(kq.poll(), fd, WRITE)
        assert ev.udata == 6
    finally:
        os.close(fd)


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


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_read_note_lowat_reports_only_at_low_water_mark(kq, fds, kind):
    a, b = fds.socketpair() if kind == "unix" else fds.tcp_pair()
    fd = a.fileno()
    kq.change((fd, READ, EV_ADD, lib.NOTE_LOWAT, 100))
    b.sendall(b"x" * 50)
    assert kq.wait(8, 0.05) == [], "reported below the low-water mark"
    b.sendall(b"y" * 60)
    ev = wait_for(kq, fd, READ, lambda e: e.data == 110)
    assert ev is not None and ev.data == 110


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
