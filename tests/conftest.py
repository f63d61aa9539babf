"""Shared fixtures for the low-level (raw ``ffi``/``lib``) behaviour tests.

The tests run against the *installed* kqueue_py (the built wheel), never
against the source tree: a stale in-place build would test the wrong code.

Fixtures
--------
``kq``       a queue from ``lib.kqueue()`` wrapped in :class:`Queue` (an
             ``int`` subclass, so it can be passed straight to ``lib.kevent``),
             closed with ``lib.kqueue_close`` at teardown.
``make_kq``  a factory for more queues, each closed at teardown.
``fds``      a tracker that makes pipes/sockets and closes them at teardown.
``lowest_free``  ``lowest_free.next_is(n)`` makes the next descriptor the
             process opens get the number ``n`` (for fd-reuse tests).

Events are decoded into :class:`Event` tuples
``(ident, filter, flags, fflags, data, udata)`` with ``udata`` as an int.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

import kqueue_py
from kqueue_py import ffi, lib

# --------------------------------------------------------------------------
# The package under test must be the installed one.

_SRC_PKG = (Path(__file__).resolve().parent.parent / "kqueue_py").resolve()
_IMPORTED_PKG = Path(kqueue_py.__file__).resolve().parent

assert _IMPORTED_PKG != _SRC_PKG, (
    f"kqueue_py was imported from the source tree ({_IMPORTED_PKG}); the tests "
    "must run against the installed wheel (install it, and run the venv's "
    "pytest, not `python -m pytest` from the checkout)"
)
assert "site-packages" in _IMPORTED_PKG.parts or "dist-packages" in _IMPORTED_PKG.parts, (
    f"kqueue_py imported from {_IMPORTED_PKG}, not from an installed location"
)
assert Path(kqueue_py.raw.__file__).resolve().parent == _IMPORTED_PKG

LINUX = sys.platform.startswith("linux")

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


# --------------------------------------------------------------------------
# Fixtures.


@pytest.fixture
def make_kq():
    made: list[int] = []

    def factory() -> Queue:
        fd = lib.kqueue()
        if fd < 0:
            raise OSError(ffi.errno, os.strerror(ffi.errno))
        made.append(fd)
        return Queue(fd)

    yield factory
    for fd in reversed(made):
        lib.kqueue_close(fd)


@pytest.fixture
def kq(make_kq) -> Queue:
    return make_kq()


class Fds:
    """Makes descriptors and closes whatever is still open at teardown."""

    def __init__(self):
        self._objs = []   # sockets
        self._fds = set()

    def track(self, fd: int) -> int:
        self._fds.add(fd)
        return fd

    def pipe(self, nonblock: bool = True):
        r, w = os.pipe()
        if nonblock:
            os.set_blocking(r, False)
            os.set_blocking(w, False)
        self._fds.update((r, w))
        return r, w

    def sock(self, s: socket.socket) -> socket.socket:
        self._objs.append(s)
        return s

    def socketpair(self, family=socket.AF_UNIX, type=socket.SOCK_STREAM):
        a, b = socket.socketpair(family, type)
        a.setblocking(False)
        b.setblocking(False)
        self._objs.extend((a, b))
        return a, b

    def tcp_listener(self, backlog: int = 16) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(backlog)
        self._objs.append(s)
        return s

    def tcp_pair(self):
        """A connected (client, server) pair of TCP sockets on loopback."""
        lst = self.tcp_listener()
        c = socket.create_connection(lst.getsockname())
        s, _ = lst.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._objs.extend((c, s))
        lst.close()
        return c, s

    def close(self, fd: int) -> None:
        """Close a tracked fd now (and forget it)."""
        self._fds.discard(fd)
        os.close(fd)

    def close_all(self):
        for s in self._objs:
            try:
                s.close()
            except OSError:
                pass
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def fds():
    f = Fds()
    yield f
    f.close_all()


class LowestFree:
    """Forces a descriptor number to be reused.

    POSIX gives every new descriptor (open, pipe, socket, epoll_create, ...)
    the lowest number not in use.  :meth:`next_is` holds every free number
    below ``num`` open (on /dev/null) until teardown, so the next descriptor
    the process opens is ``num`` itself -- the reuse a test needs happens for
    sure instead of by luck.
    """

    def __init__(self) -> None:
        self._held: list[int] = []

    def next_is(self, num: int) -> None:
        try:
            os.fstat(num)
        except OSError:
            pass
        else:
            raise AssertionError(f"descriptor {num} is still open")
        while True:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            if fd >= num:        # == num: every number below it is now in use
                os.close(fd)
                return
            self._held.append(fd)

    def release(self) -> None:
        for fd in self._held:
            os.close(fd)
        self._held.clear()


@pytest.fixture
def lowest_free():
    lf = LowestFree()
    yield lf
    lf.release()


def wait_until(pred, timeout=2.0, interval=0.002):
    """Poll ``pred`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


class _Helpers:
    """Helpers handed to tests (test modules cannot import conftest)."""

    Event = Event
    decode = staticmethod(decode)
    make_changes = staticmethod(make_changes)
    make_timeout = staticmethod(make_timeout)
    kevent = staticmethod(kevent)
    kevent_raw = staticmethod(kevent_raw)
    udata_int = staticmethod(udata_int)
    wait_until = staticmethod(wait_until)
    Queue = Queue
    errno = errno


@pytest.fixture(scope="session")
def h():
    return _Helpers
