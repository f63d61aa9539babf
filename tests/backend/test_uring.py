"""The event path's system calls batched through io_uring, and its switch.

Where the process has io_uring, one kevent() that reports several fd
events makes their identity probes and READ socket counts in one
io_uring_enter of the calling thread's ring (csrc/uring.c);
``KQUEUE_PY_IO_URING=0`` forces the plain system calls.  The whole suite
runs both ways in CI (.ci/run); these tests check that the switch switches
(the descriptors the process holds, and ``kqueue_py_io_uring()``), that
both paths report the same events, data and dropped registrations as an
outside oracle (``select.epoll`` and ``FIONREAD``), and the ring's
descriptor rules: one for the process, shared by its threads, none
inherited by a fork() child, and no thread woken by a ring's end.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from kqueue_py import lib

from helpers import Queue, descriptors_named, wait_blocked_in_kevent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the Linux backend's io_uring path")

READ = lib.EVFILT_READ
EV_ADD = lib.EV_ADD
EV_DELETE = lib.EV_DELETE
EVFILT_USER = lib.EVFILT_USER

# io_uring_setup(2), asked from a child process (a ring closed in this
# process would notify this thread): does this kernel and sandbox give one?
_HAVE_URING = r"""
import ctypes, os, platform
nr = {"x86_64": 425, "aarch64": 425}.get(platform.machine(), 425)
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
fd = libc.syscall(nr, 4, params)
print("yes" if fd >= 0 else "no:" + os.strerror(ctypes.get_errno()))
"""


def uring_available() -> tuple[bool, str]:
    out = subprocess.run([sys.executable, "-c", _HAVE_URING], capture_output=True,
                         text=True, timeout=60).stdout.strip()
    return out == "yes", out


def skip_reason(why: str) -> str:
    if os.environ.get("KQUEUE_PY_IO_URING") == "0":
        return "io_uring forced off (KQUEUE_PY_IO_URING=0)"
    return f"no io_uring here: {why}"


def ring_fds() -> list[int]:
    """This process's io_uring descriptors."""
    return descriptors_named("anon_inode:[io_uring]")


def env_with(value: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KQUEUE_PY_IO_URING", None)
    if value is not None:
        env["KQUEUE_PY_IO_URING"] = value
    return env


def ready_pairs(n: int, kind: str = "unix") -> list[tuple[socket.socket, socket.socket]]:
    pairs = []
    for i in range(n):
        if kind == "unix":
            a, b = socket.socketpair()
        else:
            with socket.create_server(("127.0.0.1", 0)) as srv:
                b = socket.create_connection(srv.getsockname())
                a, _ = srv.accept()
        b.sendall(b"x" * (i + 1))
        pairs.append((a, b))
    return pairs


# The same program, run with the switch on and off: every kind of fd event
# the ring can batch, and the lifetime rule's cases, with their data.
_SCENARIO = textwrap.dedent(r"""
    import ctypes, fcntl, json, os, select, socket, struct, sys, termios, time
    sys.path.insert(0, sys.argv[1])
    if sys.argv[2] == "seccomp":
        # As Docker's default profile does: io_uring_setup fails with EPERM
        # (a seccomp filter: number 425 -> EPERM, anything else allowed).
        class Filter(ctypes.Structure):
            _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                        ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]
        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]
        code = (Filter * 4)(Filter(0x20, 0, 0, 0), Filter(0x15, 0, 1, 425),
                            Filter(0x06, 0, 0, 0x00050000 | 1), Filter(0x06, 0, 0, 0x7FFF0000))
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(38, 1, 0, 0, 0) == 0                                  # NO_NEW_PRIVS
        assert libc.prctl(22, 2, ctypes.byref(Prog(4, code)), 0, 0) == 0         # SECCOMP filter
    from helpers import Queue, kevent
    from kqueue_py import ffi, lib

    READ, EV_ADD, EV_CLEAR = lib.EVFILT_READ, lib.EV_ADD, lib.EV_CLEAR
    def inq(fd):
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    keep = []
    def unix_pair(n):
        a, b = socket.socketpair(); keep.extend((a, b)); b.sendall(b"u" * n); return a
    def tcp_pair(n):
        srv = socket.create_server(("127.0.0.1", 0))
        b = socket.create_connection(srv.getsockname()); a, _ = srv.accept(); srv.close()
        keep.extend((a, b)); b.sendall(b"t" * n)
        while inq(a.fileno()) < n: time.sleep(0.001)
        return a
    def udp_pair(n):
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("127.0.0.1", 0))
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); keep.extend((a, b))
        b.sendto(b"d" * n, a.getsockname()); b.sendto(b"e" * (n + 50), a.getsockname())
        while inq(a.fileno()) == 0: time.sleep(0.001)
        return a
    def pipe(n):
        r, w = os.pipe(); keep.extend((r, w)); os.write(w, b"p" * n); return r
    def listener(n):
        srv = socket.create_server(("127.0.0.1", 0), backlog=8); keep.append(srv)
        for _ in range(n):
            keep.append(socket.create_connection(srv.getsockname()))
        return srv

    kq = Queue(lib.kqueue())
    live = {}
    for i, make in enumerate([unix_pair, tcp_pair, udp_pair, pipe, listener] * 4):
        fd = make(i + 1) if make is not listener else make(1 + i % 3)
        fd = fd if isinstance(fd, int) else fd.fileno()
        flags = EV_ADD | (EV_CLEAR if i % 2 else 0)
        kq.change((fd, READ, flags, 0, 0, 1000 + fd))
        live[fd] = make.__name__
    # The lifetime rule: closed with a dup kept (dead, its file alive), and
    # a number that names another file now (dead; the new file is ready).
    dead = []
    for fd in sorted(live)[:6:2]:
        keep.append(os.dup(fd)); os.close(fd); dead.append(fd); del live[fd]
    reused = sorted(live)[1]
    keep.append(os.dup(reused)); os.close(reused)
    a, b = socket.socketpair(); keep.extend((a, b)); b.sendall(b"z" * 7)
    if a.fileno() != reused:
        os.dup2(a.fileno(), reused)
    dead.append(reused); del live[reused]

    # The oracle: epoll's readiness and FIONREAD of what each live number names.
    ep = select.epoll()
    for fd in live:
        ep.register(fd, select.EPOLLIN)
    want = sorted(fd for fd, _ in ep.poll(0))
    evs = kevent(kq, (), 64, 0)
    got = sorted((e.ident, e.data, e.flags, e.udata) for e in evs)
    dropped = ffi.new("uint64_t[64]")
    nd = lib.kqueue_py_take_dropped(kq, dropped, 64)
    print(json.dumps({
        "uring": lib.kqueue_py_io_uring(),
        "rings": sum(os.readlink(f"/proc/self/fd/{n}") == "anon_inode:[io_uring]"
                     for n in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{n}")),
        "events": got,
        "oracle": want,
        "kinds": {str(fd): live[fd] for fd in live},
        "dropped": sorted(dropped[i] for i in range(nd)),
        "dead": sorted(1000 + fd for fd in dead),
        "fionread": {str(fd): inq(fd) for fd in live if live[fd] != "listener"},
    }))
""")


def run_scenario(switch: str | None, how: str = "plain") -> dict:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _SCENARIO, here, how], capture_output=True,
                       text=True, timeout=120, env=env_with(switch))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_switch_switches_and_both_paths_report_the_same():
    have, why = uring_available()
    off = run_scenario("0")
    on = run_scenario(None)
    # Forced off: the plain system calls, and not one ring in the process.
    assert off["uring"] == 0 and off["rings"] == 0
    if have:
        assert on["uring"] == 1 and on["rings"] == 1
    else:
        assert on["uring"] == 0 and on["rings"] == 0, why
    for res in (off, on):
        # Every live registration the oracle finds ready, none of the dead.
        assert [e[0] for e in res["events"]] == res["oracle"]
        assert len(res["oracle"]) == len(res["kinds"])
        # data: FIONREAD (the next datagram for UDP), the accept queue for a
        # listener (1 + i % 3 connections: never 0).
        for ident, data, flags, udata in res["events"]:
            assert udata == 1000 + ident
            kind = res["kinds"][str(ident)]
            if kind == "listener":
                assert 1 <= data <= 3
            else:
                assert data == res["fionread"][str(ident)], (kind, ident)
        assert res["dropped"] == res["dead"]
    # The same, but for the numbers (the ring takes one in the first run).
    assert [e[1:3] for e in on["events"]] == [e[1:3] for e in off["events"]]
    assert len(on["dropped"]) == len(off["dropped"]) == len(on["dead"])


def test_io_uring_refused_falls_back():
    """io_uring refused by a seccomp filter (io_uring_setup: EPERM, as under
    Docker's default profile): the plain system calls, the same report."""
    refused = run_scenario(None, "seccomp")
    off = run_scenario("0")
    assert refused["uring"] == 0 and refused["rings"] == 0
    assert [e[0] for e in refused["events"]] == refused["oracle"]
    assert refused["events"] == off["events"] and refused["dropped"] == off["dropped"]


def test_threads_share_the_process_ring(kq):
    """Threads waiting on one queue at once take turns at the process's one
    ring (a thread that finds it busy makes the system calls): every wait
    reports every ready socket with its count, and no thread leaves a
    descriptor behind."""
    have, why = uring_available()
    if not have or not lib.kqueue_py_io_uring():
        pytest.skip(skip_reason(why))
    pairs = ready_pairs(8)
    kq.change(*[(a.fileno(), READ, EV_ADD, 0, 0, 0) for a, _ in pairs])
    before = ring_fds()
    assert len(before) == 1
    seen: list[list[tuple[int, int]]] = []

    def waiter():
        for _ in range(200):
            seen.append(sorted((e.ident, e.data) for e in kq.wait(64, 2.0)))

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expect = sorted((a.fileno(), i + 1) for i, (a, _) in enumerate(pairs))
    assert len(seen) == 800 and all(s == expect for s in seen)
    assert ring_fds() == before
    for a, b in pairs:
        a.close()
        b.close()


def test_a_ring_closed_does_not_interrupt_another_wait(make_kq):
    """A thread that used the ring for one queue, then blocks in another,
    is woken by that queue's event, not by an interruption: closing a ring
    would notify every thread that submitted to it, as a signal does, and
    the process's ring is never closed."""
    have, why = uring_available()
    if not have or not lib.kqueue_py_io_uring():
        pytest.skip(skip_reason(why))
    for _ in range(5):
        busy, idle = make_kq(), make_kq()
        pairs = ready_pairs(4)
        busy.change(*[(a.fileno(), READ, EV_ADD, 0, 0, 0) for a, _ in pairs])
        idle.change((7, EVFILT_USER, EV_ADD | lib.EV_CLEAR, 0, 0, 0))
        out: list[object] = []

        def waiter(busy: Queue = busy, idle: Queue = idle, out: list[object] = out) -> None:
            out.append(len(busy.wait(64, 2.0)))
            try:
                out.append([(e.ident, e.filter) for e in idle.wait(4, None)])
            except OSError as e:
                out.append(e)

        t = threading.Thread(target=waiter)
        t.start()
        wait_blocked_in_kevent(t)
        lib.kqueue_close(busy)      # a ring per queue would close here
        for a, b in pairs:
            a.close()
            b.close()
        # Give a stray interruption the time to come, then wake it.
        t.join(0.2)
        idle.change((7, EVFILT_USER, 0, lib.NOTE_TRIGGER, 0, 0))
        t.join(10)
        assert out == [4, [(7, EVFILT_USER)]]


def test_a_fork_child_holds_no_ring(kq):
    have, why = uring_available()
    if not have or not lib.kqueue_py_io_uring():
        pytest.skip(skip_reason(why))
    pairs = ready_pairs(4)
    kq.change(*[(a.fileno(), READ, EV_ADD, 0, 0, 0) for a, _ in pairs])
    assert len(kq.wait()) == 4
    assert len(ring_fds()) == 1, "the process has its ring"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            report = {"inherited": ring_fds()}
            # A queue of its own works, with a ring of its own.
            mine = Queue(lib.kqueue())
            more = ready_pairs(4)
            mine.change(*[(a.fileno(), READ, EV_ADD, 0, 0, 0) for a, _ in more])
            report["events"] = sorted(e.data for e in mine.wait())
            report["own"] = len(ring_fds())
            os.write(w, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = json.loads(f.read() or b"{}")
    os.waitpid(pid, 0)
    assert report == {"inherited": [], "events": [1, 2, 3, 4], "own": 1}
    for a, b in pairs:
        a.close()
        b.close()


def test_tcp_counts_through_the_ring_match_fionread(kq):
    """TCP sockets get their READ data from SIOCINQ through the ring where
    the kernel has it; each event's data is what FIONREAD says."""
    import fcntl
    import struct
    import termios

    have, _ = uring_available()
    forced_off = os.environ.get("KQUEUE_PY_IO_URING") == "0"
    assert lib.kqueue_py_io_uring() == (1 if have and not forced_off else 0)
    pairs = ready_pairs(16, "tcp")
    for a, _ in pairs:
        while struct.unpack("i", fcntl.ioctl(a.fileno(), termios.FIONREAD, b"\0" * 4))[0] == 0:
            threading.Event().wait(0.001)
    kq.change(*[(a.fileno(), READ, EV_ADD, 0, 0, 0) for a, _ in pairs])
    for rounds in range(3):
        evs = {e.ident: e.data for e in kq.wait(64, 2.0)}
        want = {a.fileno(): struct.unpack("i", fcntl.ioctl(a.fileno(), termios.FIONREAD,
                                                           b"\0" * 4))[0] for a, _ in pairs}
        assert evs == want
        for a, b in pairs[rounds::4]:
            b.sendall(b"y" * 10)
        for a, _ in pairs[rounds::4]:
            while struct.unpack("i", fcntl.ioctl(a.fileno(), termios.FIONREAD,
                                                 b"\0" * 4))[0] < want[a.fileno()] + 10:
                threading.Event().wait(0.001)
    for a, b in pairs:
        a.close()
        b.close()


_RING_NUMBER_TAKEN = textwrap.dedent(r"""
    import json, os, socket, sys
    sys.path.insert(0, sys.argv[1])
    from helpers import Queue
    from kqueue_py import lib
    kq = Queue(lib.kqueue())
    rings = [int(n) for n in os.listdir("/proc/self/fd")
             if os.path.exists(f"/proc/self/fd/{n}")
             and os.readlink(f"/proc/self/fd/{n}") == "anon_inode:[io_uring]"]
    assert len(rings) == 1, rings
    # The program closes the ring's number behind the backend's back and
    # puts a pipe there.
    r, w = os.pipe()
    os.dup2(r, rings[0])
    os.write(w, b"abc")
    pairs = [socket.socketpair() for _ in range(8)]
    for i, (a, b) in enumerate(pairs):
        b.sendall(b"x" * (i + 1))
    kq.change(*[(a.fileno(), lib.EVFILT_READ, lib.EV_ADD, 0, 0, 0) for a, _ in pairs])
    got = [sorted(e.data for e in kq.wait()) for _ in range(3)]
    pid = os.fork()
    if pid == 0:
        # The child closes its copy of the ring, not the program's pipe.
        os._exit(0 if os.read(rings[0], 3) == b"abc" else 1)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"got": got, "child": status, "uring": lib.kqueue_py_io_uring()}))
""")


def test_the_ring_number_taken_by_the_program():
    """A program that closes the ring's descriptor and reuses the number
    (as a program that closes every descriptor it does not know might):
    the waits go on with the plain system calls, and a fork() child
    leaves the program's descriptor on that number alone."""
    have, why = uring_available()
    if not have or os.environ.get("KQUEUE_PY_IO_URING") == "0":
        pytest.skip(skip_reason(why))
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _RING_NUMBER_TAKEN, here], capture_output=True,
                       text=True, timeout=60, env=env_with(None))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["got"] == [list(range(1, 9))] * 3
    assert res["child"] == 0
    assert res["uring"] == 0        # the ring failed: the plain system calls from then on
