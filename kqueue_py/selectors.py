"""``KqueueSelector``: a :class:`selectors.BaseSelector` on kqueue_py.

Built on :class:`kqueue_py.KQueue` (not on the compat layer), so it works
without :func:`kqueue_py.compat.install`::

    import asyncio
    from kqueue_py.selectors import KqueueSelector

    loop = asyncio.SelectorEventLoop(KqueueSelector())
"""
from __future__ import annotations

import os
import selectors as _stdlib_selectors
from selectors import EVENT_READ, EVENT_WRITE, SelectorKey
from typing import Any, Optional

from .queue import Change, KQueue, _timeout_ns
from .raw import _MINUS_EINTR, _NULL, _kevent_ns, ffi, kevent_struct, lib

__all__ = ["KqueueSelector", "EVENT_READ", "EVENT_WRITE"]

_READ = lib.EVFILT_READ
_WRITE = lib.EVFILT_WRITE
_ADD = lib.EV_ADD
_DELETE = lib.EV_DELETE
_NODATA = getattr(lib, "NOTE_NODATA", 0)
# Only ident and filter of each event are read (the rest is padding here).
_IDENT_FILTER = kevent_struct(("ident", "filter"))
_SIZE = _IDENT_FILTER.size
# Many events are read as two strided views of the array, which needs an
# 8-byte ident and a 2-byte filter at even offsets (every 64-bit platform).
_FIELDS = dict(ffi.typeof("struct kevent").fields)
_FILTER_AT = _FIELDS["filter"].offset
_STRIDED = (_FIELDS["ident"].offset == 0 and ffi.sizeof(_FIELDS["ident"].type) == 8
            and _SIZE % 8 == 0 and ffi.sizeof(_FIELDS["filter"].type) == 2 and _FILTER_AT % 2 == 0)
# Strides of one event in 8-byte words and 2-byte shorts; the filter's short.
_WORDS, _SHORTS, _FILTER_SHORT = _SIZE // 8, _SIZE // 2, _FILTER_AT // 2


class KqueueSelector(_stdlib_selectors._BaseSelectorImpl):
    """Kqueue-based selector (one READ and/or WRITE registration per fd)."""

    # Provided by selectors._BaseSelectorImpl (typeshed does not declare them).
    _fd_to_key: dict[int, SelectorKey]

    def _fileobj_lookup(self, fileobj: Any) -> int:
        return super()._fileobj_lookup(fileobj)  # type: ignore[no-any-return,misc]

    def __init__(self) -> None:
        super().__init__()
        self._queue = KQueue()
        self._filters = 0   # registered (fd, filter) pairs: the most events one wait can return
        # select()'s own event array (a selector is used from one thread).
        self._cap = 0
        self._events: Any = None
        self._view: Any = None
        self._words: Any = None
        self._shorts: Any = None

    def fileno(self) -> int:
        return self._queue.fileno()

    def register(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        key: SelectorKey = super().register(fileobj, events, data)
        changes = _changes(key.fd, events, _ADD)
        try:
            self._queue.apply(changes)
        except BaseException:
            super().unregister(fileobj)
            raise
        self._filters += len(changes)
        return key

    def unregister(self, fileobj: Any) -> SelectorKey:
        key: SelectorKey = super().unregister(fileobj)
        changes = _changes(key.fd, key.events, _DELETE)
        self._filters -= len(changes)
        if not self._queue.closed:
            # The fd may have been closed already, which removed its
            # registrations: ENOENT/EBADF here are expected, not errors.
            self._queue.apply(changes, raise_errors=False)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        try:
            key: SelectorKey = self._fd_to_key[self._fileobj_lookup(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        if events != key.events:
            added = _changes(key.fd, events & ~key.events, _ADD)
            removed = _changes(key.fd, key.events & ~events, _DELETE)
            self._queue.apply(added)
            self._queue.apply(removed, raise_errors=False)
            self._filters += len(added) - len(removed)
        if events != key.events or data is not key.data:
            key = key._replace(events=events, data=data)
            self._fd_to_key[key.fd] = key
        return key

    def select(self, timeout: Optional[float] = None) -> list[tuple[SelectorKey, int]]:
        if timeout is None:
            timeout_ns = -1
        elif timeout <= 0:
            timeout_ns = 0
        else:
            timeout_ns = _timeout_ns(timeout)
        # With nothing registered this still waits (for the timeout), as
        # the stdlib selectors do.
        cap = self._filters if self._filters > 0 else 1
        if cap > self._cap:
            self._grow(cap)
        n: int = _kevent_ns(self._queue._fd, _NULL, 0, self._events, cap, timeout_ns)
        if n <= 0:
            if n == 0 or n == _MINUS_EINTR:
                return []   # interrupted: the handler ran; callers loop (as stdlib selectors)
            self._queue._check()
            raise OSError(-n, os.strerror(-n))
        # Only ident and filter are needed.  For a few events unpack just
        # those two fields; for many, read them as two strided views of the
        # event array (cheaper per event, dearer to set up).
        if n <= 8 or not _STRIDED:
            unpack_from, view = _IDENT_FILTER.unpack_from, self._view
            pairs: Any = [unpack_from(view, _SIZE * i) for i in range(n)]
        else:
            pairs = zip(self._words[0:_WORDS * n:_WORDS].tolist(),
                        self._shorts[_FILTER_SHORT:_SHORTS * n:_SHORTS].tolist())
        ready = []
        fd_to_key = self._fd_to_key
        for ident, filt in pairs:
            key = fd_to_key.get(ident)
            if key is not None:
                mask = EVENT_READ if filt == _READ else EVENT_WRITE
                if key.events & mask:
                    ready.append((key, mask))
        return ready

    def _grow(self, cap: int) -> None:
        cap = max(cap, 2 * self._cap, 64)
        self._events = ffi.new("struct kevent[]", cap)
        view = memoryview(ffi.buffer(self._events))
        self._view = view
        self._words = view.cast("Q")     # ident is each event's first word
        self._shorts = view.cast("h")
        self._cap = cap

    def close(self) -> None:
        self._queue.close()
        super().close()


def _changes(fd: int, events: int, flags: int) -> list[Change]:
    # Selectors never look at data: where the backend offers it, skip its
    # computation (one ioctl per event on Linux).
    fflags = _NODATA if flags & _ADD else 0
    changes = []
    if events & EVENT_READ:
        changes.append(Change(fd, _READ, flags, fflags))
    if events & EVENT_WRITE:
        changes.append(Change(fd, _WRITE, flags, fflags))
    return changes
