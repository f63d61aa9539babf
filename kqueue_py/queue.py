"""The Pythonic queue: :class:`KQueue` and :class:`Event`.

Built on the raw layer (``lib.kqueue``, ``lib.kqueue_py_kevent``, ``lib.kqueue_close``).

Design notes
------------
* Events are decoded from the event array as one buffer with
  ``struct.iter_unpack`` — never field by field through cffi cdata, which
  costs more than the wait itself (DESIGN.md §6).  Event buffers are pooled
  and reused, so ``wait()`` allocates nothing beyond the events it returns.
* ``udata`` may be any Python object.  The C ``udata`` word never holds a
  pointer: it holds a small integer token, stable per ``(ident, filter)``
  registration, that indexes a dict of objects.  A stale or unknown token
  yields ``None``; nothing can dangle.
* Thread safety mirrors the kernel's: any number of threads may call
  ``wait()``, ``apply()`` and the helpers on one queue at once (the GIL is
  released inside ``kevent``); ``close()`` from one thread wakes every
  thread blocked in ``wait()``, which then raises ``ValueError``.
"""
from __future__ import annotations

import errno as _errno
import functools
import itertools
import math
import operator
import os
import struct
import threading
import time
import weakref
from typing import Any, Iterable, NamedTuple, Optional, Sequence, Union

from .raw import _MINUS_EINTR, _NULL, _kevent_ns, ffi, kevent_struct, lib

__all__ = ["KQueue", "Event", "Change", "KEEP"]

# struct kevent as the compiler laid it out on this platform (ident, filter,
# flags, fflags, data, udata; anything else, e.g. FreeBSD's ext[4], padding).
_KEVENT = kevent_struct()
_KEVENT_SIZE = _KEVENT.size

_EV_ADD = lib.EV_ADD
_EV_DELETE = lib.EV_DELETE
_EV_ONESHOT = lib.EV_ONESHOT
_EV_ERROR = lib.EV_ERROR
_EV_RECEIPT = lib.EV_RECEIPT
_EV_KEEPUDATA = getattr(lib, "EV_KEEPUDATA", 0)
_INT_MAX = 2**31 - 1


class Event(tuple):  # type: ignore[type-arg]
    """One kernel event: ``(ident, filter, flags, fflags, data, udata)``.

    A tuple (so it unpacks and compares cheaply) with named fields.
    """

    __slots__ = ()

    ident: int = property(operator.itemgetter(0))  # type: ignore[assignment]
    filter: int = property(operator.itemgetter(1))  # type: ignore[assignment]
    flags: int = property(operator.itemgetter(2))  # type: ignore[assignment]
    fflags: int = property(operator.itemgetter(3))  # type: ignore[assignment]
    data: int = property(operator.itemgetter(4))  # type: ignore[assignment]
    udata: Any = property(operator.itemgetter(5))

    def __repr__(self) -> str:
        return ("Event(ident={}, filter={}, flags={:#x}, fflags={:#x}, data={}, udata={!r})"
                .format(*self))


_make_event = functools.partial(tuple.__new__, Event)


class _Keep:
    """Sentinel type of :data:`KEEP`."""

    def __repr__(self) -> str:
        return "KEEP"


#: Pass as a change's ``udata`` to leave the registration's udata as it is.
KEEP: Any = _Keep()


class Change(NamedTuple):
    """One change for :meth:`KQueue.apply`."""

    ident: int
    filter: int
    flags: int = _EV_ADD
    fflags: int = 0
    data: int = 0
    udata: Any = None


def _change_error(err: int, change: Change) -> OSError:
    """The OSError subclass for ``err`` (FileNotFoundError for ENOENT, ...)
    with the failed change attached as ``.change``."""
    exc = OSError(err, f"{os.strerror(err)}: {change!r}")
    exc.change = change  # type: ignore[attr-defined]
    return exc


class _Buffer:
    """An event array with a memoryview over it, pooled per queue."""

    __slots__ = ("events", "view", "cap", "deadline_ns")

    def __init__(self, cap: int) -> None:
        self.events = ffi.new("struct kevent[]", cap)
        self.view = memoryview(ffi.buffer(self.events))
        self.cap = cap
        self.deadline_ns = 0   # of the wait in progress, for EINTR retries


ChangeLike = Union[Change, Sequence[Any]]


class KQueue:
    """A kqueue: register interest with :meth:`apply` (or the helpers),
    collect events with :meth:`wait`.

    >>> with KQueue() as q:
    ...     q.add_user(1, udata="wake")
    ...     q.trigger(1)
    ...     [(e.ident, e.udata) for e in q.wait(0)]
    [(1, 'wake')]
    """

    def __init__(self, max_events: int = 64) -> None:
        if max_events < 1:
            raise ValueError("max_events must be positive")
        fd = lib.kqueue()
        if fd < 0:
            err = ffi.errno
            raise OSError(err, os.strerror(err))
        self._fd: int = fd
        self._id: int = lib.kqueue_py_queue_id(fd)
        self._max_events = max_events
        self._pool: list[_Buffer] = []
        # udata: (ident, filter) -> token, token -> object.
        self._tokens: dict[tuple[int, int], int] = {}
        self._objects: dict[int, Any] = {}
        # Tokens of EV_ONESHOT registrations holding udata: wait() releases
        # the udata when they fire.  Empty (falsy) in the common case.
        self._oneshots: set[int] = set()
        self._next_token = itertools.count(1).__next__
        self._lock = threading.Lock()   # guards the udata maps only
        _LIVE.add(self)

    # -- lifecycle -----------------------------------------------------
    def fileno(self) -> int:
        """The queue's descriptor: poll it for readability to learn that
        events are pending (it can sit in select, epoll or another kqueue)."""
        self._check()
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the queue; threads blocked in :meth:`wait` wake and raise
        ``ValueError``.  Idempotent."""
        fd, self._fd = self._fd, -1
        # Close only if the number still names this queue: a finalizer that
        # runs late (PyPy) must not close a queue that reused the number.
        if fd >= 0 and lib.kqueue_py_queue_id(fd) == self._id:
            lib.kqueue_close(fd)
        self._objects.clear()
        self._tokens.clear()
        self._oneshots.clear()

    def __enter__(self) -> KQueue:
        self._check()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<KQueue {state}>"

    def _check(self) -> None:
        if self._fd < 0:
            raise ValueError("I/O operation on closed kqueue")

    # -- changes -------------------------------------------------------
    def _token(self, ident: int, filter: int) -> int:
        key = (ident, filter)
        token = self._tokens.get(key)
        if token is None:
            token = self._tokens[key] = self._next_token()
        return token

    def _forget(self, ident: int, filter: int) -> None:
        token = self._tokens.pop((ident, filter), None)
        if token is not None:
            self._objects.pop(token, None)
            self._oneshots.discard(token)

    def apply(self, changes: Iterable[ChangeLike], *, raise_errors: bool = True
              ) -> list[tuple[Change, OSError]]:
        """Apply a batch of changes in one ``kevent`` call.

        Every change is attempted, in order (each carries ``EV_RECEIPT``, so
        nothing is drained).  With ``raise_errors`` (the default) the first
        failure is raised after the whole batch was applied, as the
        ``OSError`` subclass of its errno with the change in ``.change``;
        otherwise the failures are returned as ``(change, error)`` pairs.
        A change's ``udata`` may be any object, or :data:`KEEP`.
        """
        self._check()
        batch = [c if type(c) is Change else Change(*c) for c in changes]
        n = len(batch)
        if n == 0:
            return []
        if n > _INT_MAX // _KEVENT_SIZE:
            raise ValueError("too many changes")
        packed = bytearray(n * _KEVENT_SIZE)
        pack_into = _KEVENT.pack_into
        new_keys: set[tuple[int, int]] = set()
        with self._lock:
            for i, c in enumerate(batch):
                ident = operator.index(c.ident)
                filt = operator.index(c.filter)
                flags = operator.index(c.flags)
                if (ident, filt) not in self._tokens:
                    new_keys.add((ident, filt))
                token = self._token(ident, filt)
                if c.udata is not KEEP and not flags & (_EV_KEEPUDATA | _EV_DELETE):
                    if c.udata is None:
                        self._objects.pop(token, None)
                        self._oneshots.discard(token)
                    else:
                        self._objects[token] = c.udata
                        if flags & _EV_ONESHOT:
                            self._oneshots.add(token)
                        else:
                            self._oneshots.discard(token)
                try:
                    pack_into(packed, i * _KEVENT_SIZE, ident, filt,
                              flags | _EV_RECEIPT, operator.index(c.fflags),
                              operator.index(c.data), token)
                except (struct.error, ValueError, OverflowError) as exc:  # PyPy: ValueError
                    raise OverflowError(f"change {i} out of range: {c!r}") from exc
        changelist = ffi.from_buffer("struct kevent[]", packed)
        out = ffi.new("struct kevent[]", n)
        r = _kevent_ns(self._fd, changelist, n, out, n, 0)
        if r < 0:
            self._check()
            raise OSError(-r, os.strerror(-r))
        failures: list[tuple[Change, OSError]] = []
        results = _KEVENT.iter_unpack(ffi.buffer(out, r * _KEVENT_SIZE))
        with self._lock:
            for c, (ident, filt, rflags, _, data, _) in zip(batch, results):
                if rflags & _EV_ERROR and data:
                    failures.append((c, _change_error(data, c)))
                    # No registration exists (any more): drop its udata.
                    if data in (_errno.ENOENT, _errno.EBADF) or (ident, filt) in new_keys:
                        self._forget(ident, filt)
                elif c.flags & _EV_DELETE:
                    self._forget(ident, filt)
        if failures and raise_errors:
            raise failures[0][1]
        return failures

    def _one(self, ident: int, filter: int, flags: int, fflags: int = 0,
             data: int = 0, udata: Any = None) -> None:
        self.apply((Change(ident, filter, flags, fflags, data, udata),))

    # Convenience helpers: one change each, applied at once.
    def add_reader(self, fd: Union[int, Any], udata: Any = None, *, flags: int = 0,
                   lowat: int = 0) -> None:
        """Watch ``fd`` (an int or an object with ``fileno()``) for reading."""
        fflags = lib.NOTE_LOWAT if lowat else 0
        self._one(_fileno(fd), lib.EVFILT_READ, _EV_ADD | flags, fflags, lowat, udata)

    def add_writer(self, fd: Union[int, Any], udata: Any = None, *, flags: int = 0) -> None:
        """Watch ``fd`` for writing (``data`` = free space)."""
        self._one(_fileno(fd), lib.EVFILT_WRITE, _EV_ADD | flags, 0, 0, udata)

    def remove(self, ident: Union[int, Any], filter: int) -> None:
        """Delete the ``(ident, filter)`` registration (``FileNotFoundError``
        if there is none)."""
        self._one(_fileno(ident), filter, _EV_DELETE)

    def enable(self, ident: Union[int, Any], filter: int) -> None:
        self._one(_fileno(ident), filter, lib.EV_ENABLE, udata=KEEP)

    def disable(self, ident: Union[int, Any], filter: int) -> None:
        self._one(_fileno(ident), filter, lib.EV_DISABLE, udata=KEEP)

    def add_timer(self, ident: int, interval: float, udata: Any = None, *,
                  oneshot: bool = False) -> None:
        """A timer firing every ``interval`` seconds (once with ``oneshot``);
        ``data`` of its events counts expirations since the last report."""
        if interval < 0 or math.isnan(interval):
            raise ValueError("interval must be non-negative")
        flags = _EV_ADD | (_EV_ONESHOT if oneshot else 0)
        self._one(ident, lib.EVFILT_TIMER, flags, lib.NOTE_NSECONDS,
                  int(interval * 1e9), udata)

    def add_user(self, ident: int, udata: Any = None, *, flags: int = lib.EV_CLEAR) -> None:
        """A user event (``EVFILT_USER``), fired by :meth:`trigger`."""
        self._one(ident, lib.EVFILT_USER, _EV_ADD | flags, 0, 0, udata)

    def trigger(self, ident: int, fflags: int = 0) -> None:
        """Trigger user event ``ident``; safe from any thread, wakes waiters.
        ``fflags`` may carry ``NOTE_FFAND``/``NOTE_FFOR``/``NOTE_FFCOPY``
        with a 24-bit value."""
        self._one(ident, lib.EVFILT_USER, 0, lib.NOTE_TRIGGER | fflags, udata=KEEP)

    def add_signal(self, signum: int, udata: Any = None) -> None:
        """Count deliveries of signal ``signum`` (``EVFILT_SIGNAL``)."""
        self._one(signum, lib.EVFILT_SIGNAL, _EV_ADD, 0, 0, udata)

    def add_process(self, pid: int, udata: Any = None, *, fflags: Optional[int] = None) -> None:
        """Watch process ``pid`` (``EVFILT_PROC``, ``NOTE_EXIT`` by default)."""
        self._one(pid, lib.EVFILT_PROC, _EV_ADD | lib.EV_ONESHOT,
                  lib.NOTE_EXIT if fflags is None else fflags, 0, udata)

    def add_vnode(self, fd: Union[int, Any], fflags: int, udata: Any = None, *,
                  flags: int = lib.EV_CLEAR) -> None:
        """Watch a file or directory (``EVFILT_VNODE``) for ``NOTE_*`` changes."""
        self._one(_fileno(fd), lib.EVFILT_VNODE, _EV_ADD | flags, fflags, 0, udata)

    # -- events --------------------------------------------------------
    def wait(self, timeout: Optional[float] = None,
             max_events: Optional[int] = None) -> list[Event]:
        """Wait up to ``timeout`` seconds (``None``: forever, 0: poll) and
        return up to ``max_events`` events as :class:`Event` objects.

        Interrupted waits are retried with the remaining time (PEP 475); a
        signal handler's exception propagates.
        """
        events = self.wait_tuples(timeout, max_events)
        return list(map(_make_event, events)) if events else []

    def wait_tuples(self, timeout: Optional[float] = None,
                    max_events: Optional[int] = None
                    ) -> list[tuple[int, int, int, int, int, Any]]:
        """Like :meth:`wait`, but the events are plain tuples in
        :class:`Event`'s field order — the fastest way to get them."""
        cap = self._max_events
        if max_events is not None and max_events != cap:
            if max_events <= 0:
                if max_events == 0:
                    self._check()
                    return []
                raise ValueError("max_events must be non-negative")
            if max_events > _INT_MAX // _KEVENT_SIZE:
                raise ValueError("max_events is too large")
            cap = max_events
        if timeout is None:
            timeout_ns = -1
        elif timeout == 0:
            timeout_ns = 0
        else:
            timeout_ns = _timeout_ns(timeout)
        pool = self._pool
        buf = pool.pop() if pool else _Buffer(self._max_events)
        if buf.cap < cap:
            buf = _Buffer(cap)
        if timeout_ns > 0:
            buf.deadline_ns = time.monotonic_ns() + timeout_ns
        try:
            n = _kevent_ns(self._fd, _NULL, 0, buf.events, cap, timeout_ns)
            if n < 0:
                n = self._kevent_retry(buf, cap, timeout_ns, n)
            if n == 0:
                return []
            objects = self._objects
            rows = _KEVENT.iter_unpack(buf.view[: n * _KEVENT_SIZE])
            if not objects:
                return [(i, f, fl, ff, d, None) for i, f, fl, ff, d, _ in rows]
            get = objects.get
            events = [(i, f, fl, ff, d, get(u)) for i, f, fl, ff, d, u in rows]
            if self._oneshots:
                self._release_oneshots(events)
            return events
        finally:
            pool.append(buf)   # larger buffers are kept too: callers reuse caps

    def _kevent_retry(self, buf: _Buffer, cap: int, timeout_ns: int, n: int) -> int:
        """A wait failed with -errno ``n``: retry EINTR (PEP 475; a handler
        that raised has already propagated), raise anything else."""
        if n == _MINUS_EINTR and timeout_ns > 0:
            # Waits with a timeout carry their deadline in buf.deadline_ns.
            while n == _MINUS_EINTR:
                remaining = max(0, buf.deadline_ns - time.monotonic_ns())
                n = _kevent_ns(self._fd, _NULL, 0, buf.events, cap, remaining)
        while n == _MINUS_EINTR:
            n = _kevent_ns(self._fd, _NULL, 0, buf.events, cap, timeout_ns)
        if n >= 0:
            return n
        self._check()
        raise OSError(-n, os.strerror(-n))

    def _release_oneshots(self, events: list[tuple[int, int, int, int, int, Any]]) -> None:
        """Fired EV_ONESHOT registrations are gone: drop their udata."""
        with self._lock:
            tokens, objects, oneshots = self._tokens, self._objects, self._oneshots
            for e in events:
                if e[2] & _EV_ONESHOT and e[5] is not None:
                    token = tokens.get((e[0], e[1]))
                    # Unless another thread re-registered it meanwhile
                    # (with a different object).
                    if token in oneshots and objects.get(token) is e[5]:
                        del tokens[(e[0], e[1])]
                        del objects[token]
                        oneshots.discard(token)


# Queues alive in this process.  As on BSD, a forked child does not inherit
# them: the backend closes their descriptors in the child (pthread_atfork)
# and here they turn "closed", so using one raises ValueError.
_LIVE: weakref.WeakSet[KQueue] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for q in list(_LIVE):
        q._fd = -1
        q._objects.clear()
        q._tokens.clear()
        q._oneshots.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _timeout_ns(seconds: float) -> int:
    """A non-negative timeout in seconds as nanoseconds (rounded up)."""
    if seconds > 0:
        if seconds > 9e9:   # ~285 years: forever in practice
            if seconds != seconds or seconds == math.inf:
                raise ValueError("timeout must be a finite number")
            return 9_000_000_000 * 1_000_000_000
        return math.ceil(seconds * 1e9)
    if seconds == 0:
        return 0
    if seconds != seconds:
        raise ValueError("timeout must be a finite number")
    raise ValueError("timeout must be non-negative")


def _fileno(obj: Union[int, Any]) -> int:
    if isinstance(obj, int):
        return obj
    return int(obj.fileno())
