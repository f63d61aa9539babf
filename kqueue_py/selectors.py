"""``KqueueSelector``: a :class:`selectors.BaseSelector` on kqueue_py.

Built on :class:`kqueue_py.KQueue` (not on the compat layer), so it works
without :func:`kqueue_py.compat.install`::

    import asyncio
    from kqueue_py.selectors import KqueueSelector

    loop = asyncio.SelectorEventLoop(KqueueSelector())
"""
from __future__ import annotations

import selectors as _stdlib_selectors
from selectors import EVENT_READ, EVENT_WRITE, SelectorKey
from typing import Any, Optional

from .queue import Change, KQueue
from .raw import lib

__all__ = ["KqueueSelector", "EVENT_READ", "EVENT_WRITE"]

_READ = lib.EVFILT_READ
_WRITE = lib.EVFILT_WRITE
_ADD = lib.EV_ADD
_DELETE = lib.EV_DELETE


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
        timeout = None if timeout is None else max(timeout, 0)
        # With nothing registered this still waits (for the timeout), as
        # the stdlib selectors do.
        events = self._queue.wait_tuples(timeout, max(self._filters, 1))
        ready = []
        fd_to_key = self._fd_to_key
        for ident, filt, _, _, _, _ in events:
            key = fd_to_key.get(ident)
            if key is not None:
                mask = EVENT_READ if filt == _READ else EVENT_WRITE
                if key.events & mask:
                    ready.append((key, mask))
        return ready

    def close(self) -> None:
        self._queue.close()
        super().close()


def _changes(fd: int, events: int, flags: int) -> list[Change]:
    changes = []
    if events & EVENT_READ:
        changes.append(Change(fd, _READ, flags))
    if events & EVENT_WRITE:
        changes.append(Change(fd, _WRITE, flags))
    return changes
