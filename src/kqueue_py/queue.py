"""The Pythonic queue: :class:`KQueue` and :class:`Event`.

A thin layer over kqueue_py's internal core (``kqueue_py._core``), which it
shares with the stdlib-compatible layer and the selector.

Design notes
------------
* Events are decoded from the event array as one buffer (``struct``
  unpacking, or strided memoryviews for many events) -- never field by
  field through cffi cdata.  Event buffers are pooled and reused, so
  ``wait()`` allocates nothing beyond the events it returns.
* ``udata`` may be any Python object.  The C ``udata`` word never holds a
  pointer: it holds a token that indexes a dict of objects (0 for
  ``None``).  An object is released exactly when its registration ends:
  a delivered ``EV_ONESHOT`` event or process exit, ``EV_DELETE``, a change
  reporting that the registration is gone (``ENOENT``/``EBADF``), a
  registration the backend dropped because its descriptor was closed, or
  the queue's close.  A change that fails changes nothing.
* Thread safety mirrors the kernel's: any number of threads may call
  ``wait()``, ``apply()`` and the helpers on one queue at once (the GIL is
  released inside ``kevent``); ``close()`` from one thread wakes every
  thread blocked in ``wait()``, which then raises ``ValueError``.
"""
from __future__ import annotations

import time
import weakref
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence, Union

from . import _core
from ._core import (
    CLOSED_MESSAGE,
    KEEP,
    MAX_EVENTS,
    MINUS_EINTR,
    STRIDED,
    Buffer,
    FileDescriptorLike,
    HasFileno,
    QueueObject,
    UdataMap,
    call,
    decode_tuples,
    failure,
    fileno_of,
    ident_of,
    index_arg,
    int_arg,
    lib,
    new_call,
    seconds_ns,
    wait_more,
)

__all__ = ["KQueue", "Event", "Change", "KEEP", "HasFileno", "FileDescriptorLike"]

_EV_ADD = lib.EV_ADD
_EV_DELETE = lib.EV_DELETE
_EV_ONESHOT = lib.EV_ONESHOT
_monotonic_ns = time.monotonic_ns
_unpack_from = _core.KEVENT.unpack_from
_new_tuple = tuple.__new__
_UNSEEN = _core.UNSEEN
#: wait() releases the udata of registrations the backend dropped on its own
#: once every this many calls (the backend sweeps every 128 kevent() calls).
_COLLECT_EVERY = 128


class _EventFields(NamedTuple):
    ident: int
    filter: int
    flags: int
    fflags: int
    data: int
    udata: Any


class Event(_EventFields):
    """One kernel event: ``(ident, filter, flags, fflags, data, udata)``.

    A tuple (so it unpacks and compares cheaply) with named fields."""

    __slots__ = ()

    def __repr__(self) -> str:
        return ("Event(ident={}, filter={}, flags={:#x}, fflags={:#x}, data={}, udata={!r})"
                .format(*self))


def _event_maker() -> Callable[[Any], Event]:
    import functools

    return functools.partial(_new_tuple, Event)


_make_event = _event_maker()
_rows = _core.rows


def _decode_events(buf: Buffer, n: int, get: Callable[[int], Any]) -> list[Event]:
    """The first ``n`` events of ``buf`` as :class:`Event` objects,
    ``udata`` mapped through ``get`` (the core's decoders give the other
    shapes)."""
    if n == 1:
        i, f, fl, ff, d, u = _unpack_from(buf.view)
        return [_new_tuple(Event, (i, f, fl, ff, d, get(u)))]
    if n > 8 and STRIDED:
        c = buf.fields
        return list(map(_make_event, zip(
            c["ident"][:n].tolist(), c["filter"][:n].tolist(), c["flags"][:n].tolist(),
            c["fflags"][:n].tolist(), c["data"][:n].tolist(),
            map(get, c["udata"][:n].tolist()))))
    return [_new_tuple(Event, (i, f, fl, ff, d, get(u)))
            for i, f, fl, ff, d, u in _rows(buf, n)]


class Change(NamedTuple):
    """One change for :meth:`KQueue.apply`."""

    ident: int
    filter: int
    flags: int = _EV_ADD
    fflags: int = 0
    data: int = 0
    udata: Any = None


ChangeLike = Union[Change, Sequence[Any]]


def _change_error(err: int, change: Change) -> OSError:
    """The OSError subclass for ``err`` (FileNotFoundError for ENOENT, ...)
    with the failed change attached as ``.change``."""
    exc = _core.os_error(err)
    exc.strerror = f"{exc.strerror}: {change!r}"
    exc.change = change  # type: ignore[attr-defined]
    return exc


def _checked(c: Any, i: int) -> Change:
    """Change ``i`` of a batch, its fields' types checked (their ranges are
    checked when packed: ``OverflowError`` naming the field)."""
    if type(c) is not Change:
        try:
            c = Change(*c)
        except TypeError:
            raise TypeError(f"changes[{i}] must be a Change or a sequence of 2 to 6 "
                            f"fields (ident, filter, flags, fflags, data, udata), "
                            f"not {c!r}") from None
    ident, filt, flags, fflags, data, udata = c
    # Plain ints (nearly every change) are taken as they are, without a call.
    if type(ident) is not int:
        ident = ident_of(ident, f"changes[{i}].ident", check_range=False)
    if type(filt) is not int:
        filt = index_arg(filt, f"changes[{i}].filter")
    if type(flags) is not int:
        flags = index_arg(flags, f"changes[{i}].flags")
    if type(fflags) is not int:
        fflags = index_arg(fflags, f"changes[{i}].fflags")
    if type(data) is not int:
        data = index_arg(data, f"changes[{i}].data")
    return Change(ident, filt, flags, fflags, data, udata)


class KQueue(QueueObject):
    """A kqueue: register interest with :meth:`apply` (or the helpers),
    collect events with :meth:`wait`.

    >>> with KQueue() as q:
    ...     q.add_user(1, udata="wake")
    ...     q.trigger(1)
    ...     [(e.ident, e.udata) for e in q.wait(0)]
    [(1, 'wake')]
    """

    # __dict__: where the C form of wait() goes (_fast_wait below).
    __slots__ = ("_cap", "_free", "_udata", "_objects", "_finite", "_triggers", "_memo",
                 "_tick", "__dict__")

    def __init__(self, max_events: int = 64) -> None:
        self._fd = -1
        cap = int_arg(max_events, "max_events", 1, MAX_EVENTS)
        self._cap = cap
        self._free: list[Buffer] = []
        self._udata = UdataMap()
        self._objects = self._udata.objects     # token -> udata, read by wait()
        self._finite = self._udata.finite       # non-empty: wait() releases udata
        # trigger()'s prepared changes: ident or (ident, fflags) -> (request,
        # its address for the C form of trigger()).
        self._triggers: dict[Any, Any] = {}
        # Waits left before wait() releases the udata of registrations the
        # backend dropped on its own (_collect_dropped).
        self._tick = _COLLECT_EVERY
        self._open()
        # One buffer now (its request names this queue): a wait never
        # allocates unless threads wait at once.
        try:
            self._free.append(Buffer(cap, self._fd))
        except BaseException:
            self._close_fd()
            raise
        self._memo: Any = None
        self._fast_wait()

    # CPython: wait() and trigger() in C.  A Python method costs a frame
    # and a few attribute reads around the C call, ~1.5x an empty
    # select.epoll.poll; each C form (csrc/binding/fast_cpython.c) is a builtin
    # bound to this queue's state, put in the instance's __dict__, where
    # attribute lookup finds it before the class's method: ``q.wait(0)``
    # is then one C call.  The C wait serves a poll or a wait for ever with
    # the (timeout, max_events) objects a free buffer was last prepared for
    # (_prepare reports them through self._memo), and decodes the events
    # into Event objects itself (no Python call per event); the C trigger
    # applies a prepared trigger (self._triggers); everything else goes to
    # the class's methods (KQueue.wait, KQueue.trigger), events whose udata
    # is to be released and failures to finish/_finish.  They hold this queue weakly,
    # so dropping the queue closes it as before.  Not for subclasses that
    # override the method.
    def _fast_wait(self) -> None:
        bind = _core._qwait_bind
        if bind is None or type(self).wait is not KQueue.wait:
            return
        ref = weakref.ref(self)

        def slow(*args: Any, **kw: Any) -> list[Event]:
            q = ref()
            if q is None:
                raise ValueError(CLOSED_MESSAGE)
            return KQueue.wait(q, *args, **kw)

        objects, finite = self._objects, self._finite

        def finish(buf: Buffer, n: int) -> list[Event]:
            # More than one event, udata to release, or a failure.
            q = ref()
            if q is None:
                raise ValueError(CLOSED_MESSAGE)
            return q._finish(buf, n)

        def collect() -> None:
            # The C form's turn of wait()'s periodic _collect_dropped().
            q = ref()
            if q is not None:
                q._collect_dropped()

        fast, self._memo = bind(self._free, slow, finish, KQueue.wait, objects, finite,
                                Event, collect, _COLLECT_EVERY)
        self.__dict__["wait"] = fast

        def slow_trigger(*args: Any, **kw: Any) -> None:
            q = ref()
            if q is None:
                raise ValueError(CLOSED_MESSAGE)
            KQueue.trigger(q, *args, **kw)

        if _core._qtrigger_bind is not None and type(self).trigger is KQueue.trigger:
            self.__dict__["trigger"] = _core._qtrigger_bind(self._triggers, slow_trigger,
                                                            KQueue.trigger)

    def _unbind_fast(self) -> None:
        """close() and fork: the C form goes (later waits check)."""
        self.__dict__.pop("wait", None)
        self.__dict__.pop("trigger", None)
        memo = getattr(self, "_memo", None)
        if memo is not None and _core._qwait_remember is not None:
            _core._qwait_remember(memo)
        self._memo = None

    def _finish(self, buf: Buffer, n: int) -> list[Event]:
        """The end of a wait the C form made, when it does not decode the
        result itself (more than one event, udata to release, or ``n`` < 0:
        -errno; a poll or a wait for ever, so no deadline): as
        :meth:`wait`'s, but the C form puts the buffer back into its pool."""
        if n == MINUS_EINTR:
            n = wait_more(buf.req.kq, buf.events, buf.ask, buf.ns, 0, n)
        if n <= 0:
            if n == 0:
                return []
            raise failure(self._fd, n)
        if n == 1:
            i, f, fl, ff, d, u = _unpack_from(buf.view)
            events = [_new_tuple(Event, (i, f, fl, ff, d, self._objects.get(u)))]
        else:
            events = _decode_events(buf, n, self._objects.get)
        if self._finite:
            self._udata.release_delivered(buf, n)
        return events

    # -- lifecycle (fileno, closed, with, __del__: QueueObject) ----------
    def close(self) -> None:
        """Close the queue; threads blocked in :meth:`wait` wake and raise
        ``ValueError``.  Every udata object is released.  Idempotent."""
        self._close_fd()
        self._free = []     # every later wait goes through _prepare, which checks
        self._unbind_fast()
        self._udata.clear()
        self._triggers.clear()      # in place: the C form of trigger() reads it

    def _after_fork(self) -> None:
        self._fd = -1
        self._free = []
        self._unbind_fast()
        self._udata.clear()
        self._triggers.clear()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<KQueue {state}>"

    # -- changes -------------------------------------------------------
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
        fd = self._live_fd()
        try:
            it = iter(changes)
        except TypeError:
            raise TypeError(f"changes must be an iterable of Change, "
                            f"not {type(changes).__name__}") from None
        batch = [_checked(c, i) for i, c in enumerate(it)]
        if any(c[1] == 0 for c in batch):
            # The kernel skips a change with filter 0, without a receipt
            # (FreeBSD's kqueue_kevent): so does this layer.
            batch = [c for c in batch if c[1] != 0]
        n = len(batch)
        if n == 0:
            return []
        if n > MAX_EVENTS:
            raise ValueError(f"too many changes in one batch: {n} (at most {MAX_EVENTS})")
        umap = self._udata
        if self._objects:
            umap.drain(fd)
        rows, actions = umap.plan(batch)
        packed = _core.pack_changes(rows, lambda i: f"changes[{i}]")
        receipts = _core.submit(self, fd, packed, n)
        errs = umap.settle(batch, actions, receipts)
        failures = [(c, _change_error(err, c)) for c, err in zip(batch, errs) if err]
        if failures and raise_errors:
            raise failures[0][1]
        return failures

    def _one(self, ident: int, filter: int, flags: int, fflags: int = 0,
             data: int = 0, udata: Any = None) -> None:
        self.apply((Change(ident, filter, flags, fflags, data, udata),))

    # Convenience helpers: one change each, applied at once.
    def add_reader(self, fd: int | HasFileno, udata: Any = None, *, flags: int = 0,
                   lowat: int = 0) -> None:
        """Watch ``fd`` (an int or an object with ``fileno()``) for reading;
        ``lowat`` > 0: only once that many bytes are ready (``NOTE_LOWAT``)."""
        fd = fileno_of(fd, "fd")
        lowat = int_arg(lowat, "lowat", 0, 2**63 - 1)
        fflags = lib.NOTE_LOWAT if lowat else 0
        self._one(fd, lib.EVFILT_READ, _EV_ADD | _flags(flags), fflags, lowat, udata)

    def add_writer(self, fd: int | HasFileno, udata: Any = None, *, flags: int = 0) -> None:
        """Watch ``fd`` for writing (``data`` = free space)."""
        self._one(fileno_of(fd, "fd"), lib.EVFILT_WRITE, _EV_ADD | _flags(flags), 0, 0, udata)

    def remove(self, ident: int | HasFileno, filter: int) -> None:
        """Delete the ``(ident, filter)`` registration (``FileNotFoundError``
        if there is none); its udata is released."""
        self._one(_ident(ident), filter, _EV_DELETE)

    def enable(self, ident: int | HasFileno, filter: int) -> None:
        """Re-enable a registration (``EV_ENABLE``), keeping its udata."""
        self._one(_ident(ident), filter, lib.EV_ENABLE, udata=KEEP)

    def disable(self, ident: int | HasFileno, filter: int) -> None:
        """Stop reporting a registration (``EV_DISABLE``), keeping it and its udata."""
        self._one(_ident(ident), filter, lib.EV_DISABLE, udata=KEEP)

    def add_timer(self, ident: int, interval: float, udata: Any = None, *,
                  oneshot: bool = False) -> None:
        """A timer firing every ``interval`` seconds (once with ``oneshot``);
        ``data`` of its events counts expirations since the last report."""
        ns = _core.duration_ns(interval, "interval")
        flags = _EV_ADD | (_EV_ONESHOT if oneshot else 0)
        self._one(_ident(ident), lib.EVFILT_TIMER, flags, lib.NOTE_NSECONDS, ns, udata)

    def add_user(self, ident: int, udata: Any = None, *, flags: int = lib.EV_CLEAR) -> None:
        """A user event (``EVFILT_USER``), fired by :meth:`trigger`."""
        self._one(_ident(ident), lib.EVFILT_USER, _EV_ADD | _flags(flags), 0, 0, udata)

    def trigger(self, ident: int, fflags: int = 0) -> None:
        """Trigger user event ``ident``; safe from any thread, wakes waiters.
        ``fflags`` may carry ``NOTE_FFAND``/``NOTE_FFOR``/``NOTE_FFCOPY``
        with a 24-bit value."""
        # The fast path: a change prepared once per (ident, fflags), applied
        # through the one-argument entry point; its request is never written
        # again, so threads share it.  EV_KEEPUDATA leaves the registration's
        # udata as it is; without it (macOS) the current udata word must be
        # sent again, which the general path does.
        # Only plain ints are looked up (True == 1, but True is no ident);
        # the plain trigger by its ident alone, one with fflags by both.
        # close() and fork empty the prepared changes, so a hit is a queue
        # that was open (as with any call, a close from another thread
        # meanwhile makes the call fail).
        if type(ident) is int and type(fflags) is int:
            try:
                req = self._triggers[ident if fflags == 0 else (ident, fflags)][0]
            except KeyError:
                req = self._prepare_trigger(ident, fflags)
        else:
            req = self._prepare_trigger(ident, fflags)
        if req is None or call(req) < 0:
            # No fast path here, or the trigger failed (no such user event,
            # the queue closed meanwhile...): the general path applies it
            # again, or raises what apply() raises for it (it changed
            # nothing: a failed change has no effect).
            self._one(_ident(ident), lib.EVFILT_USER, 0,
                      lib.NOTE_TRIGGER | int_arg(fflags, "fflags", 0, 2**32 - 1), udata=KEEP)

    def _prepare_trigger(self, ident: Any, fflags: Any) -> Any:
        """The request of a trigger of ``ident`` with ``fflags`` (checked
        here), or None where there is no fast path (no ``EV_KEEPUDATA``)."""
        fflags = int_arg(fflags, "fflags", 0, 2**32 - 1)
        ident = _ident(ident)
        fd = self._live_fd()
        if not _core.EV_KEEPUDATA:
            return None
        # The request carries its change: it alone keeps all it points to.
        req = new_call(fd)
        change = req.change
        change.ident = ident
        change.filter = lib.EVFILT_USER
        change.flags = _core.EV_KEEPUDATA
        change.fflags = lib.NOTE_TRIGGER | fflags
        req.changelist = _core.ffi.addressof(req, "change")
        req.nchanges = 1
        triggers = self._triggers
        if len(triggers) >= 64:
            triggers.clear()
        triggers[ident if fflags == 0 else (ident, fflags)] = (
            req, int(_core.ffi.cast("uintptr_t", req)))
        return req

    def add_signal(self, signum: int, udata: Any = None) -> None:
        """Count deliveries of signal ``signum`` (``EVFILT_SIGNAL``)."""
        self._one(int_arg(signum, "signum", 1, 2**31 - 1), lib.EVFILT_SIGNAL, _EV_ADD,
                  0, 0, udata)

    def add_process(self, pid: int, udata: Any = None, *, fflags: Optional[int] = None) -> None:
        """Watch process ``pid`` (``EVFILT_PROC``, ``NOTE_EXIT`` by default);
        the registration (and its udata) ends when the process exits."""
        pid = int_arg(pid, "pid", 1, 2**31 - 1)
        ff = lib.NOTE_EXIT if fflags is None else int_arg(fflags, "fflags", 0, 2**32 - 1)
        self._one(pid, lib.EVFILT_PROC, _EV_ADD | lib.EV_ONESHOT, ff, 0, udata)

    def add_vnode(self, fd: int | HasFileno, fflags: int, udata: Any = None, *,
                  flags: int = lib.EV_CLEAR) -> None:
        """Watch a file or directory (``EVFILT_VNODE``) for ``NOTE_*`` changes."""
        fflags = int_arg(fflags, "fflags", 0, 2**32 - 1)
        self._one(fileno_of(fd, "fd"), lib.EVFILT_VNODE, _EV_ADD | _flags(flags), fflags,
                  0, udata)

    # -- events --------------------------------------------------------
    # wait() and wait_tuples() are written out in full, alike but for the
    # decoder, on purpose: sharing the body through one more method call
    # made an empty poll measurably slower.  For the same reason the buffer
    # pool is inline: pop a free buffer, append it back however the wait
    # ends; a buffer lost to an exception is simply replaced.  Each buffer
    # carries its request for the fast entry point, prepared for the
    # ``timeout`` and ``max_events`` objects it last served (``buf.t``,
    # ``buf.m``): a wait passing the same objects again -- an event loop's
    # ``wait(0)`` or ``wait(None)`` -- checks nothing else and writes
    # nothing before the call.  close() and fork empty the pool, so a wait
    # on a closed queue always goes through _prepare, which checks.  Change
    # both alike.
    def wait(self, timeout: Optional[float] = None,
             max_events: Optional[int] = None) -> list[Event]:
        """Wait up to ``timeout`` seconds (``None``: forever, 0: poll) and
        return up to ``max_events`` events as :class:`Event` objects.

        Interrupted waits are retried with the remaining time (PEP 475); a
        signal handler's exception propagates.
        """
        self._tick = tick = self._tick - 1
        if tick <= 0:
            self._collect_dropped()
        free = self._free   # the buffer pool, inline (see above)
        try:
            buf = free.pop()
        except IndexError:
            buf = self._prepare(None, timeout, max_events)
        else:
            if timeout is not buf.t or max_events is not buf.m:
                buf = self._prepare(buf, timeout, max_events)
        ns = buf.ns
        deadline = _monotonic_ns() + ns if ns > 0 else 0
        n = call(buf.req)
        if n <= 0:
            if n == 0:
                free.append(buf)
                return []
            if n == MINUS_EINTR:
                n = wait_more(buf.req.kq, buf.events, buf.ask, ns, deadline, n)
            if n <= 0:
                free.append(buf)
                if n == 0:
                    return []
                raise failure(self._fd, n)
        if n == 1:   # _decode_events' one-event case, inlined: the common case
            i, f, fl, ff, d, u = _unpack_from(buf.view)
            events = [_new_tuple(Event, (i, f, fl, ff, d, self._objects.get(u)))]
        else:
            events = _decode_events(buf, n, self._objects.get)
        if self._finite:
            self._udata.release_delivered(buf, n)
        free.append(buf)
        return events

    def wait_tuples(self, timeout: Optional[float] = None,
                    max_events: Optional[int] = None
                    ) -> list[tuple[int, int, int, int, int, Any]]:
        """Like :meth:`wait`, but the events are plain tuples in
        :class:`Event`'s field order -- the fastest way to get them."""
        self._tick = tick = self._tick - 1
        if tick <= 0:
            self._collect_dropped()
        free = self._free   # the buffer pool, inline (see above)
        try:
            buf = free.pop()
        except IndexError:
            buf = self._prepare(None, timeout, max_events)
        else:
            if timeout is not buf.t or max_events is not buf.m:
                buf = self._prepare(buf, timeout, max_events)
        ns = buf.ns
        deadline = _monotonic_ns() + ns if ns > 0 else 0
        n = call(buf.req)
        if n <= 0:
            if n == 0:
                free.append(buf)
                return []
            if n == MINUS_EINTR:
                n = wait_more(buf.req.kq, buf.events, buf.ask, ns, deadline, n)
            if n <= 0:
                free.append(buf)
                if n == 0:
                    return []
                raise failure(self._fd, n)
        if n == 1:   # decode_tuples' one-event case, inlined
            i, f, fl, ff, d, u = _unpack_from(buf.view)
            events = [(i, f, fl, ff, d, self._objects.get(u))]
        else:
            events = decode_tuples(buf, n, self._objects.get)
        if self._finite:
            self._udata.release_delivered(buf, n)
        free.append(buf)
        return events

    def _collect_dropped(self) -> None:
        """Every _COLLECT_EVERY waits: release the udata objects of
        registrations the backend dropped on its own (descriptor closed
        without EV_DELETE) -- the backend finds those within a bounded
        number of calls, and this hands their objects back without a
        change batch.  One call into the backend when there are objects."""
        self._tick = _COLLECT_EVERY
        if self._objects and self._fd >= 0:
            self._udata.drain(self._fd)

    def _prepare(self, buf: Optional[Buffer], timeout: Any, max_events: Any) -> Buffer:
        """A buffer (``buf``, or a new one if None or too small) whose
        request is a wait on this queue for ``timeout`` and ``max_events``,
        both checked here (on failure ``buf`` goes back to the pool).
        ``ValueError`` if the queue is closed.  ``max_events=0`` asks for no
        events and does not wait: the call returns 0 at once."""
        try:
            cap = self._cap if max_events is None else _max_events(max_events)
            if cap == 0:
                self._live_fd()
                ns = 0
            else:
                ns = seconds_ns(timeout)
            fd = self._live_fd()
        except BaseException:
            if buf is not None:
                self._free.append(buf)
            raise
        if buf is None or buf.cap < cap:
            buf = Buffer(max(cap, self._cap), fd)
        req = buf.req
        if buf.ask != cap:
            req.nevents = buf.ask = cap
        if buf.ns != ns:
            req.timeout_ns = buf.ns = ns
        # Only values whose identity fixes their value may skip this next
        # time (a float or an int is immutable; an object with __index__ or
        # __float__ might answer differently).
        buf.t = timeout if timeout is None or type(timeout) in (int, float) else _UNSEEN
        buf.m = max_events if max_events is None or type(max_events) is int else _UNSEEN
        remember = _core._qwait_remember
        if self._memo is not None and remember is not None and buf.t is timeout \
                and buf.m is max_events:
            remember(self._memo, buf, timeout, max_events, buf.addr)
        return buf


def _max_events(value: Any) -> int:
    return int_arg(value, "max_events", 0, MAX_EVENTS)


def _flags(value: Any) -> int:
    return int_arg(value, "flags", 0, 0xFFFF)


def _ident(value: Any) -> int:
    return ident_of(value, "ident")
