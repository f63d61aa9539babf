"""Helpers shared by the tests: import them (``from helpers import kevent``).

Events from the raw ``lib.kevent`` are decoded into :class:`Event` tuples
``(ident, filter, flags, fflags, data, udata)`` with ``udata`` as an int.
:class:`Queue` is a queue descriptor (an ``int``) with methods that apply
changes and collect events; the ``kq`` fixture (conftest.py) hands one out.
The HTTP helpers read one response the way a plain client would
(:func:`read_response`, :func:`request`) or as h11, a strict HTTP/1.1
implementation, frames it (:class:`H11Client`); :class:`Server` runs an
example server as a program in a subprocess.
"""
from __future__ import annotations

import os
import platform
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import namedtuple
from contextlib import contextmanager
from typing import Iterator, Optional

from kqueue_py import ffi, lib

# --------------------------------------------------------------------------
# Event decoding.

Event = namedtuple("Event", "ident filter flags fflags data udata")

#: Flags the kernel may add to a returned event on its own.
RETURNED_FLAGS = lib.EV_EOF | lib.EV_ERROR


def udata_int(p) -> int:
    return int(ffi.cast("uintptr_t", p))


def decode(events, n: int) -> list[Event]:
    out = []
    for i in range(n):
        e = events[i]
        out.append(Event(int(e.ident), int(e.filter), int(e.flags), int(e.fflags),
                         int(e.data), udata_int(e.udata)))
    return out


def make_changes(changes):
    """A ``struct kevent[]`` from tuples (ident, filter, flags[, fflags[, data[, udata]]])."""
    changes = list(changes)
    arr = ffi.new("struct kevent[]", max(len(changes), 1))
    for i, ch in enumerate(changes):
        ident, filt, flags, *rest = ch
        fflags = rest[0] if len(rest) > 0 else 0
        data = rest[1] if len(rest) > 1 else 0
        udata = rest[2] if len(rest) > 2 else 0
        e = arr[i]
        e.ident = ident
        e.filter = filt
        e.flags = flags
        e.fflags = fflags
        e.data = data
        e.udata = ffi.cast("void *", udata)
    return arr, len(changes)


def make_timeout(timeout):
    """None -> NULL (wait forever); a float -> struct timespec *."""
    if timeout is None:
        return ffi.NULL
    ts = ffi.new("struct timespec *")
    ts.tv_sec = int(timeout)
    ts.tv_nsec = int(round((timeout - int(timeout)) * 1e9))
    if ts.tv_nsec >= 1_000_000_000:
        ts.tv_sec += 1
        ts.tv_nsec -= 1_000_000_000
    return ts


def kevent_raw(kq: int, changes=(), nevents: int = 0, timeout=0.0):
    """Call ``lib.kevent``; returns ``(rc, errno, [Event...])``."""
    arr, nch = make_changes(changes)
    evs = ffi.new("struct kevent[]", max(nevents, 1))
    ffi.errno = 0
    rc = lib.kevent(kq, arr if nch else ffi.NULL, nch,
                    evs if nevents else ffi.NULL, nevents, make_timeout(timeout))
    err = ffi.errno
    return rc, err, (decode(evs, rc) if rc > 0 else [])


def kevent(kq: int, changes=(), nevents: int = 0, timeout=0.0) -> list[Event]:
    """Call ``lib.kevent``; raise ``OSError`` on -1, else return the events."""
    rc, err, events = kevent_raw(kq, changes, nevents, timeout)
    if rc < 0:
        raise OSError(err, os.strerror(err))
    return events


class Queue(int):
    """A kqueue descriptor (an int) with helpers for the tests."""

    def change(self, *changes) -> None:
        """Apply changes with nevents == 0 (errors raise OSError)."""
        kevent(self, changes, 0, 0)

    def changes(self, changes, nevents=None, timeout=0.0) -> list[Event]:
        """Apply changes with room for their errors/receipts; return events."""
        changes = list(changes)
        return kevent(self, changes, len(changes) if nevents is None else nevents, timeout)

    def poll(self, nevents: int = 64) -> list[Event]:
        """Collect ready events without waiting."""
        return kevent(self, (), nevents, 0)

    def wait(self, nevents: int = 64, timeout=2.0) -> list[Event]:
        """Wait up to ``timeout`` seconds for events."""
        return kevent(self, (), nevents, timeout)

    def wait_one(self, timeout=2.0) -> Event:
        """Wait for one event; fail if none arrives in time."""
        evs = self.wait(1, timeout)
        assert len(evs) == 1, f"no event within {timeout}s"
        return evs[0]

    def drain(self, nevents: int = 64) -> list[Event]:
        """Collect until a poll returns nothing (for one-shot / clear events)."""
        out = []
        for _ in range(100_000):
            evs = self.poll(nevents)
            if not evs:
                return out
            out.extend(evs)
        raise AssertionError("queue never ran dry")

    def readable(self) -> bool:
        """Does the queue descriptor itself poll readable (events pending)?"""
        r, _, _ = select.select([self], [], [], 0)
        return bool(r)



def fork_waiting_child(status: int = 0) -> tuple[int, int]:
    """Fork a child that exits with ``status`` once a byte arrives on the
    returned pipe end: ``(pid, w)``; ``os.write(w, b"x")`` lets it go (the
    caller closes ``w`` and reaps the child)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.read(r, 1)
        os._exit(status)
    os.close(r)
    return pid, w


def descriptors_named(link: str) -> list[int]:
    """This process's descriptors whose ``/proc/self/fd`` link reads
    ``link`` (``anon_inode:[eventpoll]``, ``anon_inode:[io_uring]``, ...)."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == link:
                out.append(int(name))
        except OSError:
            pass            # closed meanwhile (the listing's own descriptor)
    return out


def wait_until(pred, timeout=2.0, interval=0.002):
    """Poll ``pred`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


# The system calls a thread of the Linux backend sleeps in while kevent()
# waits: epoll_wait, epoll_pwait, epoll_pwait2 (numbers per architecture).
_EPOLL_WAITS = {"x86_64": {232, 281, 441}, "aarch64": {22, 441}}


def blocked_in_kevent(thread: threading.Thread) -> bool:
    """Whether ``thread`` (of this process) sleeps in the kernel's epoll wait,
    as kevent() does while it waits: its wchan, or its current system call."""
    tid = thread.native_id
    base = f"/proc/self/task/{tid}"
    try:
        with open(f"{base}/wchan") as f:
            if "epoll" in f.read():
                return True
        with open(f"{base}/syscall") as f:
            call = f.read().split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False   # gone
    waits = _EPOLL_WAITS.get(platform.machine(), {441})
    return call.isdigit() and int(call) in waits


def wait_blocked_in_kevent(*threads: threading.Thread, timeout: float = 10.0) -> None:
    """Return once every thread sleeps inside kevent(); fail the test if one
    never gets there (it returned, or is stuck elsewhere)."""
    ok = wait_until(lambda: all(blocked_in_kevent(t) for t in threads), timeout=timeout)
    assert ok, [(t.name, t.is_alive()) for t in threads if not blocked_in_kevent(t)]


# --------------------------------------------------------------------------
# HTTP/1.1 client side, for the example servers.

STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] [^\r\n]*\r\n")


def read_response(f) -> tuple[int, dict[str, str], bytes]:
    """One response from the file object ``f``: (status, headers, body).

    Header names come lowercased; the body is read by its Content-Length."""
    line = f.readline()
    if not line:
        raise ConnectionError("closed before a response")
    assert STATUS_LINE.fullmatch(line), line
    status = int(line.split()[1])
    headers: dict[str, str] = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return status, headers, body


def request(addr, raw: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a new connection and read one response."""
    # The file object is closed explicitly: a socket's fd stays open while a
    # makefile() object lives, which on PyPy lasts until a garbage collection.
    with socket.create_connection(addr, timeout=timeout) as s, s.makefile("rb") as f:
        s.sendall(raw)
        return read_response(f)

def exchange(addr, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send ``raw``, shut down the sending side, return all that comes back
    (until the server closes or resets the connection)."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        out = bytearray()
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)



# --------------------------------------------------------------------------
# The example servers as programs.


class Server:
    """A server program in a subprocess; its stderr is collected."""

    def __init__(self, args: list[str], *, script: Optional[str] = None,
                 nofile: Optional[int] = None, path: Optional[str] = None) -> None:
        """``python -m *args``, or ``python -c script``, or ``python path *args``."""
        if path is not None:
            cmd = [sys.executable, path, *args]
        elif script:
            cmd = [sys.executable, "-c", script]
        else:
            cmd = [sys.executable, "-m", *args]
        preexec = None
        if nofile is not None:
            def preexec() -> None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        env = None
        if sys.implementation.name == "pypy" and "PYPY_GC_NURSERY" not in os.environ:
            # PyPy sizes its nursery as half the "cache size" of
            # /proc/cpuinfo, which some VMs report as the host's whole L3
            # (480 MB: a 240 MB nursery, garbage kept until it fills): the
            # memory tests would measure that, not the server
            # (docs/servers.md, "How the limits work").
            env = dict(os.environ, PYPY_GC_NURSERY="4M")
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, cwd="/", preexec_fn=preexec,
                                     env=env)
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline().decode()
        m = re.search(r":(\d+)", first)
        if m is None:
            rest = self.proc.stderr.read().decode()
            self.proc.kill()
            raise AssertionError(f"no startup line: {first!r} {rest[-2000:]}")
        self.port = int(m.group(1))
        self.addr = ("127.0.0.1", self.port)
        self.err: list[bytes] = [first.encode()]
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def stderr(self) -> str:
        return b"".join(self.err).decode(errors="replace")

    def wait_stderr(self, text: str, timeout: float = 5.0) -> bool:
        """Whether ``text`` shows up on the program's stderr within ``timeout``."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status(self, key: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


@contextmanager
def http_server(*options: str, workers: int = 0, nofile: Optional[int] = None,
                script: Optional[str] = None) -> Iterator[Server]:
    srv = Server(["kqueue_py.examples.http", "--port", "0", "--workers", str(workers), *options],
                 script=script, nofile=nofile)
    try:
        yield srv
    finally:
        srv.stop()


@contextmanager
def echo_server(*options: str, nofile: Optional[int] = None) -> Iterator[Server]:
    srv = Server(["kqueue_py.examples.echo", "--port", "0", *options], nofile=nofile)
    try:
        yield srv
    finally:
        srv.stop()


# --------------------------------------------------------------------------
# h11 as the client-side oracle: it frames each response as RFC 9112 says
# (by the request's method, the status, Content-Length/Transfer-Encoding)
# and raises h11.RemoteProtocolError on anything a strict client rejects.


class H11Client:
    """One connection whose responses h11 parses.

    Requests go out either through h11 (:meth:`send_request`) or as raw
    bytes (:meth:`send_raw`, after telling h11 with :meth:`expect` which
    request method each raw request has, so that it frames the answers)."""

    def __init__(self, addr, timeout: float = 10.0) -> None:
        import h11
        self.h11 = h11
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.conn = h11.Connection(our_role=h11.CLIENT)
        self.pending: list[str] = []      # methods of requests not yet answered

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H11Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ready_for_next(self) -> None:
        h11 = self.h11
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()

    def send_request(self, method: str, target: str, headers=(), body: Optional[bytes] = None,
                     chunks=None) -> None:
        """A request through h11: ``body`` with a Content-Length, ``chunks``
        (a list of bytes) chunked, neither: no body."""
        h11 = self.h11
        hdrs = [("Host", "t"), *headers]
        if body is not None:
            hdrs.append(("Content-Length", str(len(body))))
        elif chunks is not None:
            hdrs.append(("Transfer-Encoding", "chunked"))
        self._ready_for_next()
        out = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        for data in ([body] if body else []) + list(chunks or []):
            out += self.conn.send(h11.Data(data=data))
        out += self.conn.send(h11.EndOfMessage())
        self.sock.sendall(out)
        self.pending.append(method)

    def expect(self, method: str, target: str = "/") -> None:
        """Tell h11 a request of ``method`` was sent (its bytes go out with
        :meth:`send_raw`): h11 keeps one request in flight, so call this
        right before reading each answer."""
        h11 = self.h11
        self._ready_for_next()
        self.conn.send(h11.Request(method=method, target=target, headers=[("Host", "t")]))
        self.conn.send(h11.EndOfMessage())

    def send_raw(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def response(self, method: Optional[str] = None) -> tuple[int, dict[str, str], bytes]:
        """The next response, as h11 frames it: (status, headers, body).
        For a raw request, ``method`` is that request's method."""
        h11 = self.h11
        if method is not None:
            self.expect(method)
        elif self.pending:
            self.pending.pop(0)
        status = None
        headers: dict[str, str] = {}
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    key = name.decode().lower()
                    # Repeated fields stay visible: "a" and "b" become "a, b".
                    headers[key] = (headers[key] + ", " if key in headers else "") + value.decode("latin-1")
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert status is not None
                return status, headers, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before a response")

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection (and sends nothing more)."""
        unread = self.conn.trailing_data[0]
        assert unread == b"", f"bytes after the last response: {unread[:200]!r}"
        self.sock.settimeout(timeout)
        try:
            extra = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        assert extra == b"", f"bytes after the last response: {extra[:200]!r}"
        return True
