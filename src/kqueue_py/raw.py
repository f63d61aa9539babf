"""The raw layer: the compiled module's ``ffi``/``lib`` and the classic helpers.

``kev_change``, ``kq_apply`` and ``kq_wait`` are small helpers for code
that works with ``struct kevent`` arrays directly.  The other public
modules (the Pythonic queue, the stdlib-compatible layer, the selector) sit
beside this one, not on it: each calls the same ``lib`` functions through
one internal core.
"""
from __future__ import annotations

import math
import sys
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
_call = _core.call
_new_call = _core.new_call
_NULL = _core.NULL
_wait_more = _core.wait_more
_monotonic_ns = time.monotonic_ns
_capacity = _core.events_capacity

# Prepared requests for the fast entry point (``_core.call``), so that a
# helper called again with the same arguments -- what an event loop does --
# makes one single-argument C call.  Each entry holds the change or event
# array itself, which keeps alive the memory the request points to (so a
# hit counts only for the very same object), the other arguments it was
# prepared for, and the request.  A prepared request is never written
# again, so threads may share it.  Changes are looked up by queue, then by
# change: one change is often applied to several queues in turn (one
# trigger, two threads).  Waits are looked up by the event array alone
# (cdata hash by address), then by all the arguments, which finds the
# request when one array is used with several queues in turn.  At most
# _CACHED entries of each kind are kept (then the cache starts over).
_CACHED = 64
# Each entry also holds the request's address (an int): on CPython,
# kq_wait and kq_apply are C functions that read these very caches (see
# the end of this module).
_applies: dict[int, dict[Any, tuple[Any, Any, int]]] = {}
_waits: dict[Any, tuple[Any, int, int, int, Any, int]] = {}
_waits_all: dict[tuple[int, Any, int, int], tuple[Any, int, int, int, Any, int]] = {}


def _remember(cache: dict[Any, Any], key: Any, entry: Any) -> None:
    if len(cache) >= _CACHED:
        cache.clear()
    cache[key] = entry


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
    try:
        obj, req, _addr = _applies[kq][change]
    except (KeyError, TypeError):     # TypeError: kq or change is not hashable
        req = _prepare_apply(kq, change)
    else:
        if obj is not change:
            req = _prepare_apply(kq, change)
    r: int = _call(req)
    if r < 0:
        ffi.errno = -r
        return False
    return True


def _prepare_apply(kq: int, change: Any) -> Any:
    if _room(change, "change") < 1:
        raise ValueError("change must hold one struct kevent, got an empty array")
    req = _new_call(kq, change, 1)
    per_queue = _applies.get(kq)
    if per_queue is None:
        per_queue = {}
        _remember(_applies, kq, per_queue)
    _remember(per_queue, change, (change, req, _address(req)))
    return req


def _address(req: Any) -> int:
    return int(ffi.cast("uintptr_t", req))


def _apply_failed(r: int) -> bool:
    """kq_apply's failure (``r``: -errno), after the C function's call."""
    ffi.errno = -r
    return False


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
    try:
        obj, k, c, t, req, _addr = _waits[events]
    except (KeyError, TypeError):     # TypeError: events is not hashable
        req = _prepare_wait(kq, events, cap, timeout_ms)
    else:
        if obj is not events or k != kq or c != cap or t != timeout_ms:
            req = _prepare_wait(kq, events, cap, timeout_ms)
    if timeout_ms > 0:
        deadline = _monotonic_ns() + timeout_ms * 1_000_000
    n: int = _call(req)
    if n >= 0:
        return n
    if n == _MINUS_EINTR:
        n = _wait_more(kq, events, cap, req.timeout_ns,
                       deadline if timeout_ms > 0 else 0, n)
        if n >= 0:
            return n
    ffi.errno = -n
    return -1


_MINUS_EINTR = _core.MINUS_EINTR


def _prepare_wait(kq: int, events: Any, cap: int, timeout_ms: int) -> Any:
    key = (kq, events, cap, timeout_ms)
    try:
        entry = _waits_all.get(key)
    except TypeError:                 # not hashable: not cdata (_room says so)
        entry = None
    if entry is None or entry[0] is not events:
        room = _room(events, "events")
        if cap > room:
            _too_many(cap, room)
        if timeout_ms <= 0:
            ns = -1 if timeout_ms < 0 else 0
        else:
            ns = timeout_ms * 1_000_000
        req = _new_call(kq, events=events, nevents=cap, timeout_ns=ns)
        entry = (events, kq, cap, timeout_ms, req, _address(req))
        _remember(_waits_all, key, entry)
    _remember(_waits, events, entry)
    return entry[4]


def _too_many(cap: int, room: int) -> None:
    raise ValueError(f"cap must be at most the {room} events the buffer holds, got {cap}")


def _wait_failed(kq: int, events: Any, cap: int, timeout_ms: int, n: int) -> int:
    """What kq_wait does after its first call returned ``n`` < 0, for the C
    function's calls (a poll or a wait for ever: no deadline)."""
    if n == _MINUS_EINTR:
        n = _wait_more(kq, events, cap, -1 if timeout_ms < 0 else 0, 0, n)
        if n >= 0:
            return n
    ffi.errno = -n
    return -1


_kq_wait_py = kq_wait
_kq_apply_py = kq_apply
_fast_wait: Any = None
_fast_apply: Any = None

# CPython: kq_wait and kq_apply become the C functions the compiled module
# makes of them (csrc/binding/fast_cpython.c), which take the same arguments,
# serve a call whose request is cached here at C speed and hand every other
# call to the Python functions above.  PyPy's JIT runs those as fast.
if sys.implementation.name == "cpython" and lib.kqueue_py_fast_install() == 0:
    kq_wait = _fast_wait  # noqa: F811
    kq_apply = _fast_apply  # noqa: F811
