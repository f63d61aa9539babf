"""Shared fixtures for the low-level (raw ``ffi``/``lib``) behaviour tests.

The tests run against the *installed* kqueue_py (the built wheel): the
package's source lives in ``src/``, which is never on ``sys.path``.

Fixtures
--------
``kq``       a queue from ``lib.kqueue()`` wrapped in :class:`Queue` (an
             ``int`` subclass, so it can be passed straight to ``lib.kevent``),
             closed with ``lib.kqueue_close`` at teardown.
``make_kq``  a factory for more queues, each closed at teardown.
``fds``      a tracker that makes pipes/sockets and closes them at teardown.
``lowest_free``  ``lowest_free.next_is(n)`` makes the next descriptor the
             process opens get the number ``n`` (for fd-reuse tests).

Helpers the tests import are in ``helpers.py``.
"""
from __future__ import annotations

import os
import socket

import pytest

from kqueue_py import ffi, lib

from helpers import Queue


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
