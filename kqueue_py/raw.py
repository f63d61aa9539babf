"""The raw layer: the compiled module's ``ffi``/``lib`` and the seed's helpers.

These mirror the origin module (``kev_change``, ``kq_apply``, ``kq_wait``)
for code that works with ``struct kevent`` arrays directly.  Everything
above this layer (the Pythonic queue, the stdlib-compatible layer) is
built on the same ``lib`` functions.
"""
from __future__ import annotations

import errno as _errno
import math
import os
import struct
import time
from typing import Any

from ._kqueue import ffi, lib

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


#: The ``struct kevent`` fields every platform has, in the order Python sees them.
KEVENT_FIELDS = ("ident", "filter", "flags", "fflags", "data", "udata")

_INT_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}


def kevent_struct(fields: tuple[str, ...] = KEVENT_FIELDS, ffi: Any = ffi) -> struct.Struct:
    """A :class:`struct.Struct` for one ``struct kevent`` as compiled here.

    The layout is the C compiler's (cffi records it at build time): 32 bytes
    on macOS and the Linux backend, 64 on FreeBSD 12+ (``ext[4]`` follows
    ``udata``), other field widths elsewhere.  ``fields`` are packed and
    unpacked in the order given; every other byte is padding, and the
    struct always spans ``sizeof(struct kevent)``, so arrays of it can be
    walked with ``iter_unpack``.  ``udata`` reads as an unsigned integer.
    """
    ctype = ffi.typeof("struct kevent")
    layout = dict(ctype.fields)
    fmt, at = "=", 0
    for name in fields:
        field = layout[name]   # KeyError: not a struct kevent field
        size = ffi.sizeof(field.type)
        code = _INT_CODES.get(size)
        if code is None or field.bitshift != -1:
            raise TypeError(f"struct kevent.{name}: unsupported type {field.type.cname}")
        if field.offset < at:
            raise ValueError(f"struct kevent fields must be given in memory order: {fields}")
        if field.type.kind == "pointer" or int(ffi.cast(field.type, -1)) > 0:
            code = code.upper()   # unsigned
        fmt += f"{field.offset - at}x{code}" if field.offset > at else code
        at = field.offset + size
    end = ffi.sizeof(ctype)
    return struct.Struct(fmt + f"{end - at}x" if end > at else fmt)


def raise_errno(err: int | None = None) -> Any:
    """Raise the ``OSError`` subclass for ``err`` (default: ``ffi.errno``)."""
    if err is None:
        err = ffi.errno
    raise OSError(err, os.strerror(err))


_kevent_ns = lib.kqueue_py_kevent   # kevent(); timeout in ns; returns -errno
_NULL = ffi.NULL
_MINUS_EINTR = -_errno.EINTR


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


def kq_apply(kq: int, change: Any) -> bool:
    """Apply one change now, draining no events.  True on success.

    On failure ``ffi.errno`` holds the error.
    """
    r: int = _kevent_ns(kq, change, 1, _NULL, 0, 0)
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
    (0 = timeout), or -1 on a real failure with ``ffi.errno`` kept.

    EINTR is retried, waiting only for the time that remains (the origin
    module reissued the full timeout on every retry).  A Python signal
    handler runs between retries; if it raises, the exception propagates.
    The errno comes back folded into the C result, so a handler that makes
    kqueue calls of its own cannot disturb it.
    """
    if timeout_ms <= 0:
        timeout_ns = -1 if timeout_ms < 0 else 0
        while True:
            n: int = _kevent_ns(kq, _NULL, 0, events, cap, timeout_ns)
            if n >= 0:
                return n
            if n != _MINUS_EINTR:
                ffi.errno = -n
                return -1
    timeout_ns = timeout_ms * 1_000_000
    deadline = time.monotonic_ns() + timeout_ns
    while True:
        n = _kevent_ns(kq, _NULL, 0, events, cap, timeout_ns)
        if n >= 0:
            return n
        if n != _MINUS_EINTR:
            ffi.errno = -n
            return -1
        timeout_ns = max(0, deadline - time.monotonic_ns())
