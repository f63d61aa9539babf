"""``KqueueSelector``: a :class:`selectors.BaseSelector` on kqueue_py.

A layer of its own over kqueue_py's internal core (the one
:class:`kqueue_py.KQueue` and the compat layer use; it is built on
neither), so it works without :func:`kqueue_py.compat.install`::

    import asyncio
    from kqueue_py.selectors import KqueueSelector

    loop = asyncio.SelectorEventLoop(KqueueSelector())
"""
from __future__ import annotations

import selectors as _stdlib_selectors
import sys
import time
from selectors import EVENT_READ, EVENT_WRITE, SelectorKey
from typing import Any, Optional

from . import _core
from ._core import (
    EV_ERROR,
    EV_RECEIPT,
    IDENT_FILTER,
    MINUS_EINTR,
    Buffer,
    Handle,
    call,
    decode_pairs,
    failure,
    lib,
    selector_timeout_ns,
    wait_more,
)

__all__ = ["KqueueSelector", "EVENT_READ", "EVENT_WRITE"]

_READ = lib.EVFILT_READ
_WRITE = lib.EVFILT_WRITE
_ADD = lib.EV_ADD
_DELETE = lib.EV_DELETE
_NODATA = getattr(lib, "NOTE_NODATA", 0)
_pair_from = IDENT_FILTER.unpack_from
_monotonic_ns = time.monotonic_ns
_PYPY = sys.implementation.name == "pypy"

# PyPy: select() reads ident and filter straight from the event array
# through the buffer's typed pointers (_core.TYPED), ident as the *signed*
# word they read it as: a descriptor fits, so it needs no fixing up (a
# selector registers descriptors only).
_ID_AT, _ID_STEP = _core._STRIDED_CODES["ident"][1:3]
_FI_AT, _FI_STEP = _core._STRIDED_CODES["filter"][1:3]
_TYPED = _core.TYPED


class KqueueSelector(_stdlib_selectors._BaseSelectorImpl):
    """Kqueue-based selector (one READ and/or WRITE registration per fd)."""

    # Provided by selectors._BaseSelectorImpl (typeshed does not declare them).
    _fd_to_key: dict[int, SelectorKey]

    def _fileobj_lookup(self, fileobj: Any) -> int:
        return super()._fileobj_lookup(fileobj)  # type: ignore[no-any-return,misc]

    def __init__(self) -> None:
        super().__init__()
        self._kq = Handle()
        self._filters = 0   # registered (fd, filter) pairs: the most events one wait can return
        # select()'s own event array (a selector is used from one thread)
        # and its request for the fast entry point (_core.Buffer): the
        # descriptor, the array, how many events to ask for and the
        # timeout; select() prepares it again only when the timeout object
        # differs from the last one or a registration changed _ask.
        self._kqfd = self._kq.fd
        self._buf = Buffer(64, self._kqfd)
        self._ptrs = self._typed(self._buf)
        self._ask = 1      # how many events select() asks for
        # CPython: the decode below in C (set when kqueue_py.raw is
        # imported, which kqueue_py's own import does).
        self._ready_c = _core._select_ready
        _core.on_fork(self)

    def _after_fork(self) -> None:
        self._kqfd = -1
        self._buf.t = _core.UNSEEN

    @staticmethod
    def _typed(buf: Buffer) -> Any:
        """(ident, filter) pointers into ``buf``'s array (PyPy; see _TYPED)."""
        if not _TYPED:
            return None
        return buf.fields["ident"], buf.fields["filter"]

    def _resize(self) -> None:
        # Only select() writes to its request (see _prepare); a registration
        # (maybe from another thread while select() waits) makes the next
        # select() prepare it again, asking for _ask events.
        ask = self._filters if self._filters > 0 else 1
        if ask > self._buf.cap:
            self._buf = Buffer(max(ask, 2 * self._buf.cap), self._kqfd)
            self._ptrs = self._typed(self._buf)
        if ask != self._ask:
            self._ask = ask
            self._buf.t = _core.UNSEEN

    def fileno(self) -> int:
        return self._kq.live_fd()

    def _submit(self, fd: int, events: int, flags: int) -> list[int]:
        """EV_ADD or EV_DELETE the filters of ``events`` for ``fd``; the
        errno of each change (0: done)."""
        # Selectors never look at data: where the backend offers it, skip its
        # computation (one ioctl per event on Linux).
        fflags = _NODATA if flags & _ADD else 0
        rows = []
        if events & EVENT_READ:
            rows.append((fd, _READ, flags | EV_RECEIPT, fflags, 0, 0))
        if events & EVENT_WRITE:
            rows.append((fd, _WRITE, flags | EV_RECEIPT, fflags, 0, 0))
        if not rows:
            return []
        kq = self._kq
        packed = _core.pack_changes(rows, lambda i: f"fd {fd}")
        receipts = _core.submit(kq, kq.live_fd(), packed, len(rows))
        return [data if rflags & EV_ERROR else 0 for rflags, data in receipts]

    def register(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        key: SelectorKey = super().register(fileobj, events, data)
        try:
            errs = self._submit(key.fd, events, _ADD)
            failed = [e for e in errs if e]
            if failed:
                if len(failed) < len(errs):    # undo the half that worked
                    self._submit(key.fd, events, _DELETE)
                raise _core.os_error(failed[0])
            self._filters += len(errs)
            self._resize()
        except BaseException:
            super().unregister(fileobj)
            raise
        return key

    def unregister(self, fileobj: Any) -> SelectorKey:
        key: SelectorKey = super().unregister(fileobj)
        self._filters -= bool(key.events & EVENT_READ) + bool(key.events & EVENT_WRITE)
        self._resize()
        if self._kq.fd >= 0:
            # The fd may have been closed already, which removed its
            # registrations: ENOENT/EBADF here are expected, not errors.
            self._submit(key.fd, key.events, _DELETE)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        try:
            key: SelectorKey = self._fd_to_key[self._fileobj_lookup(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        if events != key.events:
            added = events & ~key.events
            try:
                failed = [e for e in self._submit(key.fd, added, _ADD) if e]
                # A failing delete (EBADF: the descriptor was closed) fails
                # the modify too, as EpollSelector's EPOLL_CTL_MOD does.
                if not failed:
                    failed = [e for e in self._submit(key.fd, key.events & ~events, _DELETE)
                              if e]
                if failed:
                    raise _core.os_error(failed[0])
            except BaseException:
                # As EpollSelector (and BaseSelector.modify, which
                # unregisters first): a modify that raises leaves the file
                # object unregistered -- in the kernel too.
                self._forget(fileobj, key, key.events | added)
                raise
            self._filters += (bool(events & EVENT_READ) + bool(events & EVENT_WRITE)
                              - bool(key.events & EVENT_READ) - bool(key.events & EVENT_WRITE))
            self._resize()
        if events != key.events or data is not key.data:
            key = key._replace(events=events, data=data)
            self._fd_to_key[key.fd] = key
        return key

    def _forget(self, fileobj: Any, key: SelectorKey, events: int) -> None:
        """Unregister after a failed modify: the key goes, and whatever of
        ``events`` is still registered for its fd is deleted (errors
        ignored: the descriptor may be closed)."""
        super().unregister(fileobj)
        self._filters -= bool(key.events & EVENT_READ) + bool(key.events & EVENT_WRITE)
        self._resize()
        if self._kq.fd >= 0:
            self._submit(key.fd, events, _DELETE)

    def select(self, timeout: Optional[float] = None) -> list[tuple[SelectorKey, int]]:
        buf = self._buf
        # The request is ready when the timeout is the very object it was
        # prepared for (an event loop passes None, 0 or the same float);
        # close() and fork reset that, so a closed selector always checks.
        if timeout is not buf.t:
            self._prepare(buf, timeout)
        ns = buf.ns
        deadline = _monotonic_ns() + ns if ns > 0 else 0
        n: int = call(buf.req)
        if n <= 0:
            if n == 0:
                return []
            if n == MINUS_EINTR:
                # PEP 475: retried with the time that remains.
                n = wait_more(self._kqfd, buf.events, buf.ask, ns, deadline, n)
            if n <= 0:
                if n == 0:
                    return []
                raise failure(self._kqfd, n)
        fd_to_key = self._fd_to_key
        if self._ready_c is not None:
            return self._ready_c(buf.addr, n, fd_to_key)     # the loop below, in C
        ready = []
        if _TYPED:
            idents, filters = self._ptrs
            if n == 1:
                # One event, the common case, without the loop: PyPy's JIT
                # enters a loop run once at ~90 ns (select() of 1 ready fd
                # among 10: 415 -> ~330 ns, EpollSelector's ~410).
                key = fd_to_key.get(idents[_ID_AT])
                if key is not None:
                    mask = EVENT_READ if filters[_FI_AT] == _READ else EVENT_WRITE
                    if key.events & mask:
                        ready.append((key, mask))
                return ready
            for i in range(n):
                key = fd_to_key.get(idents[_ID_AT + _ID_STEP * i])
                if key is not None:
                    mask = (EVENT_READ if filters[_FI_AT + _FI_STEP * i] == _READ
                            else EVENT_WRITE)
                    if key.events & mask:
                        ready.append((key, mask))
            return ready
        if _PYPY:
            # PyPy's JIT reads the cdata fields in place faster than any
            # decoder copies them out.
            events = buf.events
            for i in range(n):
                ev = events[i]
                key = fd_to_key.get(ev.ident)
                if key is not None:
                    mask = EVENT_READ if ev.filter == _READ else EVENT_WRITE
                    if key.events & mask:
                        ready.append((key, mask))
            return ready
        for ident, filt in decode_pairs(buf, n):
            key = fd_to_key.get(ident)
            if key is not None:
                mask = EVENT_READ if filt == _READ else EVENT_WRITE
                if key.events & mask:
                    ready.append((key, mask))
        return ready

    def _prepare(self, buf: Buffer, timeout: Any) -> None:
        """Make ``buf``'s request wait for ``timeout`` (checked here);
        the closed-selector ``ValueError`` if closed.  With nothing
        registered select() still waits for the timeout, as the stdlib
        selectors do (it asks for at least one event)."""
        ns = selector_timeout_ns(timeout)
        if self._kqfd < 0:
            raise failure(-1, 0)
        if buf.ns != ns:
            buf.req.timeout_ns = buf.ns = ns
        if buf.ask != self._ask:
            buf.req.nevents = buf.ask = self._ask
        buf.t = timeout if timeout is None or type(timeout) in (int, float) else _core.UNSEEN

    def close(self) -> None:
        self._kqfd = -1
        self._buf.t = _core.UNSEEN
        self._kq.close()
        super().close()
