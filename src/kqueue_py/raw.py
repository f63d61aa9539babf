"""The raw layer: the compiled module's ``ffi``/``lib`` and the classic helpers.

``kev_change``, ``kq_apply`` and ``kq_wait`` are small helpers for code
that works with ``struct kevent`` arrays directly.  Everything above this layer (the
Pythonic queue, the stdlib-compatible layer, the selector) is built on the
same ``lib`` functions through one internal core.
"""
from __future__ import annotations

import math
import time
from typing import Any

from . import _core
from ._core import KEVENT_FIELDS, ffi, kevent_struct, lib

__all__ = [
    "ffi", "lib", "CONSTANTS", "kev_change", "kq_apply", "kq_wait",
    "new_events", "timespec", "raise_errno", "KEVENT_FIELDS", "kevent_struct",
]

#: Every constant the compiled module exposes, by its C name.
CONSTANTS: dict[str, int] = {
    name: getattr(lib, name)
    for name in dir(lib)
    if name.startswith(("EVFILT_", "EV_", "NOTE_"))
}


def raise_errno(err: int | None = None) -> Any:
    """Raise the ``OSError`` subclass for ``err`` (default: ``ffi.errno``)."""
    if err is None:
        err = ffi.errno
    raise _core.os_error(err)


_kevent = _core.kevent
_NULL = _core.NULL
_wait_more = _core.wait_more
_monotonic_ns = time.monotonic_ns
_capacity = _core.events_capacity


def kev_change(fd: int, filter: int, flags: int, udata: int = 0, *,
               fflags: int = 0, data: int = 0) -> Any:
    """A one-entry change (``struct kevent *``) for ``(fd, filter)``.

    ``udata`` is a machine word here (an int); the Pythonic layer maps
    arbitrary Python objects onto it.
    """
    ch = ffi.new("struct kevent *")
    ch.ident = fd
    ch.filter = filter
    ch.flags = flags
    ch.fflags = fflags
    ch.data = data
    ch.udata = ffi.cast("void *", udata)
    return ch


def _room(events: Any, name: str) -> int:
    room = _capacity(events)
    if room is None:
        raise TypeError(f"{name} must be a struct kevent array (new_events(cap)) or a "
                        f"struct kevent *, not {events!r}")
    return room


def kq_apply(kq: int, change: Any) -> bool:
    """Apply one change now, draining no events.  True on success.

    On failure ``ffi.errno`` holds the error.
    """
    if _room(change, "change") < 1:
        raise ValueError("change must hold one struct kevent, got an empty array")
    r: int = _kevent(kq, change, 1, _NULL, 0, 0)
    if r < 0:
        ffi.errno = -r
        return False
    return True


def timespec(seconds: float) -> Any:
    """A ``struct timespec *`` for a non-negative duration in seconds."""
    ts = ffi.new("struct timespec *")
    frac, whole = math.modf(seconds)
    ts.tv_sec = int(whole)
    ts.tv_nsec = min(int(frac * 1e9), 999_999_999)
    return ts


def new_events(cap: int) -> Any:
    """An event buffer: ``struct kevent[cap]``."""
    return ffi.new("struct kevent[]", cap)


def kq_wait(kq: int, events: Any, cap: int, timeout_ms: int) -> int:
    """Wait for up to ``cap`` events into ``events`` (a ``struct kevent[]``).

    ``timeout_ms`` < 0 waits forever, 0 polls.  Returns the number of events
    (0 = timeout), or -1 on a real failure with ``ffi.errno`` kept (``EINVAL``
    for a negative ``cap``, as kevent(2)).  ``ValueError`` if ``cap`` is more
    than ``events`` holds (nothing is ever written past it).

    EINTR is retried, waiting only for the time that remains (PEP 475).  A
    Python signal handler runs between retries; if it raises, the exception
    propagates.  The errno comes back folded into the C result, so a handler
    that makes kqueue calls of its own cannot disturb it.
    """
    if timeout_ms <= 0:
        ns = -1 if timeout_ms < 0 else 0
        deadline = 0
    else:
        ns = timeout_ms * 1_000_000
        deadline = _monotonic_ns() + ns
    try:
        if cap > len(events):
            _too_many(cap, len(events))
    except TypeError:
        room = _room(events, "events")   # a struct kevent *
        if cap > room:
            _too_many(cap, room)
    n: int = _kevent(kq, _NULL, 0, events, cap, ns)
    if n >= 0:
        return n
    n = _wait_more(kq, events, cap, ns, deadline, n)
    if n < 0:
        ffi.errno = -n
        return -1
    return n


def _too_many(cap: int, room: int) -> None:
    raise ValueError(f"cap must be at most the {room} events the buffer holds, got {cap}")
