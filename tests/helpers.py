"""Helpers shared by the tests: import them (``from helpers import kevent``).

Events from the raw ``lib.kevent`` are decoded into :class:`Event` tuples
``(ident, filter, flags, fflags, data, udata)`` with ``udata`` as an int.
:class:`Queue` is a queue descriptor (an ``int``) with methods that apply
changes and collect events; the ``kq`` fixture (conftest.py) hands one out.
The HTTP helpers read one response the way a plain client would.
"""
from __future__ import annotations

import os
import re
import select
import socket
import time
from collections import namedtuple

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


def wait_until(pred, timeout=2.0, interval=0.002):
    """Poll ``pred`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


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
