"""The one core under every Python layer of kqueue_py (internal).

``raw.kq_wait``, :class:`kqueue_py.KQueue`, :class:`kqueue_py.compat.kqueue`
and :class:`kqueue_py.selectors.KqueueSelector` are thin adapters over what
is here, and nothing else:

* the compiled module (``ffi``, ``lib``) and the ``struct kevent`` layout;
* :class:`QueueBase`: a queue descriptor that closes only while it still
  names its own queue, the fork registry, and the closed-queue check with
  its one message (:data:`CLOSED_MESSAGE`); :class:`QueueObject`, the
  ``fileno``/``closed``/context-manager/``__del__`` that ``KQueue`` and
  ``compat.kqueue`` share;
* the errno -> exception helper (:func:`failure`);
* the two timeout policies: :func:`seconds_ns` (kqueue_py's: seconds as an
  int or float, ``None`` = forever, negative/NaN refused) and
  :func:`control_timeout_ns` (CPython's ``select.kqueue.control``);
* the event buffer (:class:`Buffer`: a memoryview and strided views; each
  layer keeps a list of free ones, one per concurrent wait) and the one
  wait loop (:func:`wait_more`: EINTR is retried with the time that
  remains, PEP 475; a signal handler's exception propagates);
* one decoder per shape: :func:`decode_rows` (raw 6-tuples),
  :func:`decode_tuples` (udata objects; the queue layer decodes its own
  :class:`~kqueue_py.queue.Event` objects from the same buffer), and
  :func:`decode_pairs` (ident, filter);
* :class:`UdataMap`: arbitrary Python udata objects behind integer tokens,
  with the rules that release an object exactly when its registration ends.
"""
from __future__ import annotations

import errno as _errno
import itertools
import math
import operator
import os
import struct
import sys
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Optional, Protocol, TypeVar, Union

from ._kqueue import ffi as ffi
from ._kqueue import lib as lib

# ---------------------------------------------------------------------------
# struct kevent

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


KEVENT = kevent_struct()
SIZE: int = KEVENT.size
IDENT_FILTER = kevent_struct(("ident", "filter"))
INT_MAX = 2**31 - 1
#: The most events one call can take: the backend (and FreeBSD's copyout
#: arithmetic) needs ``nevents * sizeof(struct kevent)`` to fit in an int.
MAX_EVENTS = INT_MAX // SIZE

_FIELDS = dict(ffi.typeof("struct kevent").fields)
_FIELD_RANGES = {
    name: ((0, 2**(8 * ffi.sizeof(_FIELDS[name].type)) - 1)
           if (_FIELDS[name].type.kind == "pointer"
               or int(ffi.cast(_FIELDS[name].type, -1)) > 0)
           else (-2**(8 * ffi.sizeof(_FIELDS[name].type) - 1),
                 2**(8 * ffi.sizeof(_FIELDS[name].type) - 1) - 1))
    for name in KEVENT_FIELDS
}

# Many events are read as strided views of the event array: every field at
# an offset that is a multiple of its own size (every 64-bit platform).
_STRIDED_CODES = {}
for _name in KEVENT_FIELDS:
    _f = _FIELDS[_name]
    _sz = ffi.sizeof(_f.type)
    _lo, _hi = _FIELD_RANGES[_name]
    _STRIDED_CODES[_name] = (_INT_CODES[_sz].upper() if _lo == 0 else _INT_CODES[_sz],
                             _f.offset // _sz, SIZE // _sz,
                             _f.offset % _sz == 0 and SIZE % _sz == 0)
# Only on CPython: PyPy's JIT runs the plain per-event loop faster than it
# copies strided views (measured with python -m kqueue_py.bench on both).
STRIDED = (all(ok for _c, _at, _step, ok in _STRIDED_CODES.values())
           and sys.implementation.name == "cpython")
#: PyPy, the same layout: a buffer's fields are typed pointers into its
#: array instead (``fields[name][at + step * i]``), which PyPy's JIT reads
#: faster than it runs an ``unpack_from`` per record.  A 64-bit unsigned
#: field (ident, udata) is read as *signed*: the JIT turns an unsigned
#: 64-bit read into a check for a value beyond a machine int, and
#: :func:`row_walker` adds 2**64 to a negative value itself.  (kq_wait of
#: 64 ready sockets handed on as tuples: 23.3 us, against 26.8 with
#: unsigned reads and 28.3 with an unpack_from per record; the wait alone
#: 20.8.)
TYPED = (all(ok for _c, _at, _step, ok in _STRIDED_CODES.values())
         and sys.implementation.name == "pypy")
_CTYPE_OF_CODE = {"b": "int8_t *", "B": "uint8_t *", "h": "int16_t *", "H": "uint16_t *",
                  "i": "int32_t *", "I": "uint32_t *", "q": "int64_t *", "Q": "int64_t *"}

#: CPython: KQueue.wait's C form, made per queue (queue.py), and the
#: report of what a buffer's request is prepared for; set by the compiled
#: module when :mod:`kqueue_py.raw` is imported (csrc/binding/fast_cpython.c).
_qwait_bind: Optional[Callable[..., tuple[Any, Any]]] = None
_qwait_remember: Optional[Callable[..., bool]] = None
#: CPython: KQueue.trigger's C form, made per queue (queue.py).
_qtrigger_bind: Optional[Callable[..., Any]] = None
#: CPython: KqueueSelector.select's decode in C, (request address, n,
#: fd_to_key) -> [(key, event), ...] (selectors.py).
_select_ready: Optional[Callable[[int, int, Any], list[tuple[Any, int]]]] = None

NULL = ffi.NULL
kevent = lib.kqueue_py_kevent      # kevent(); timeout in ns (< 0: forever); -errno on failure
#: The fast entry point: ``call(request)`` runs the ``kevent`` a
#: ``struct kqueue_py_call`` describes (:func:`new_call`); -errno on failure.
call = lib.kqueue_py_call
MINUS_EINTR = -_errno.EINTR
#: Drains the udata of registrations the Linux backend dropped on its own
#: (their descriptor was closed); absent on the kernel's kqueue.
take_dropped: Optional[Callable[[int, Any, int], int]] = getattr(
    lib, "kqueue_py_take_dropped", None)

EV_ADD = lib.EV_ADD
EV_DELETE = lib.EV_DELETE
EV_ONESHOT = lib.EV_ONESHOT
EV_ERROR = lib.EV_ERROR
EV_RECEIPT = lib.EV_RECEIPT
EV_KEEPUDATA = getattr(lib, "EV_KEEPUDATA", 0)
EVFILT_PROC = lib.EVFILT_PROC
NOTE_EXIT = lib.NOTE_EXIT


# ---------------------------------------------------------------------------
# Errors and arguments

#: What every layer raises (as ``ValueError``) for an operation on a closed queue.
CLOSED_MESSAGE = "I/O operation on closed kqueue object"


def os_error(err: int) -> OSError:
    """The ``OSError`` subclass for the positive errno ``err``."""
    return OSError(err, os.strerror(err))


def failure(fd: int, result: int) -> Exception:
    """The exception for a failed call on a queue: ``ValueError`` if the
    queue is closed (``fd`` < 0: closed here, or by another thread while the
    call ran), else the ``OSError`` for ``result`` (a negative errno)."""
    if fd < 0:
        return ValueError(CLOSED_MESSAGE)
    return os_error(-result)


class HasFileno(Protocol):
    """Anything with a ``fileno()`` method: sockets, files, selectors..."""

    def fileno(self) -> int: ...


#: A file descriptor: an int, or an object with ``fileno()``.
FileDescriptorLike = Union[int, HasFileno]

_IDENT_MAX = _FIELD_RANGES["ident"][1]


def _type_name(value: object) -> str:
    return type(value).__name__


def fileno_of(obj: object, name: str = "fd") -> int:
    """A descriptor argument as an int: an int >= 0 or an object whose
    ``fileno()`` returns one.  ``TypeError`` for anything else (``bool``
    included: ``True`` is not descriptor 1), ``ValueError`` if negative."""
    if type(obj) is int:
        fd: Any = obj
    elif isinstance(obj, bool):
        raise TypeError(f"{name} must be a file descriptor (an int or an object with a "
                        f"fileno() method), not bool")
    elif isinstance(obj, int):
        fd = int(obj)
    else:
        method = getattr(obj, "fileno", None)
        if method is None:
            raise TypeError(f"{name} must be a file descriptor (an int or an object with a "
                            f"fileno() method), not {_type_name(obj)}")
        fd = method()
        if not isinstance(fd, int) or isinstance(fd, bool):
            raise TypeError(f"{name}.fileno() must return an int, not {_type_name(fd)}")
        fd = int(fd)
    if fd < 0:
        raise ValueError(f"{name} must be a non-negative file descriptor, got {fd}")
    if fd > INT_MAX:
        raise ValueError(f"{name} must be a file descriptor (at most {INT_MAX}), got {fd}")
    return int(fd)


def index_arg(value: object, name: str) -> int:
    """An integer argument, its range not checked (``TypeError`` naming
    ``name`` for a non-integer or a bool)."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} must be an int, not {_type_name(value)}")
    v: int = operator.index(value)  # type: ignore[arg-type]
    return v


def int_arg(value: object, name: str, lo: int, hi: int) -> int:
    """An integer argument in ``lo..hi`` (``TypeError`` for a non-integer or
    a bool, ``ValueError`` naming ``name`` when out of range)."""
    v = index_arg(value, name)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {v}")
    return v


def ident_of(value: object, name: str = "ident", *, check_range: bool = True) -> int:
    """An ``ident``: an int in ``struct kevent``'s ``uintptr_t`` range, or an
    object with ``fileno()``.  Without ``check_range`` an integer's range is
    left to the caller (a change's fields are range-checked when packed)."""
    if type(value) is int and (not check_range or 0 <= value <= _IDENT_MAX):
        return value
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or an object with a fileno() method, not bool")
    if hasattr(type(value), "__index__"):
        if not check_range:
            return index_arg(value, name)
        return int_arg(value, name, 0, _IDENT_MAX)
    if hasattr(value, "fileno"):
        return fileno_of(value, name)
    raise TypeError(f"{name} must be an int or an object with a fileno() method, "
                    f"not {_type_name(value)}")


# ---------------------------------------------------------------------------
# The two timeout policies

#: Beyond this many seconds (~285 years) a timeout means "forever in practice".
_LONGEST_S = 9e9
_LONGEST_NS = 9_000_000_000 * 1_000_000_000


def _seconds(value: object, name: str) -> float | int:
    if isinstance(value, float):
        return value
    if isinstance(value, int):   # bool included: as select.select() takes it
        return value
    if hasattr(type(value), "__index__"):
        return operator.index(value)  # type: ignore[arg-type]
    if isinstance(value, (str, bytes, bytearray)) or not hasattr(type(value), "__float__"):
        raise TypeError(f"{name} must be a number of seconds (int or float) or None, "
                        f"not {_type_name(value)}")
    return float(value)   # type: ignore[arg-type]


def seconds_ns(value: object, name: str = "timeout") -> int:
    """kqueue_py's timeout policy: ``None`` -> -1 (wait forever); a number
    of seconds >= 0 -> nanoseconds, rounded up (never wait less than asked);
    longer than ~285 years -> that long.  ``TypeError`` for a non-number,
    ``ValueError`` for a negative number, NaN or infinity."""
    if value is None:
        return -1
    s = _seconds(value, name)
    if s > 0:
        if s > _LONGEST_S:
            if s == math.inf:
                raise ValueError(f"{name} must be a finite number of seconds or None, "
                                 "not inf (use None to wait forever)")
            return _LONGEST_NS
        return math.ceil(s * 1e9) if isinstance(s, float) else s * 1_000_000_000
    if s == 0:
        return 0
    if s != s:
        raise ValueError(f"{name} must be a number of seconds, not NaN")
    raise ValueError(f"{name} must be non-negative, got {value!r}")


def selector_timeout_ns(value: object) -> int:
    """The ``selectors`` flavour of :func:`seconds_ns`: a timeout <= 0 polls."""
    if value is None:
        return -1
    s = _seconds(value, "timeout")
    return 0 if s <= 0 else seconds_ns(s)


def duration_ns(value: object, name: str) -> int:
    """A duration in seconds (e.g. a timer's interval) as int64 nanoseconds:
    ``TypeError`` for a non-number, ``ValueError`` if negative, NaN or too
    long for the kernel's 64-bit count of nanoseconds."""
    if value is None:
        raise TypeError(f"{name} must be a number of seconds (int or float), not None")
    s = _seconds(value, name)
    if s != s:
        raise ValueError(f"{name} must be a number of seconds, not NaN")
    if s < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    ns = math.ceil(s * 1e9) if isinstance(s, float) and s != math.inf else None
    if isinstance(s, int):
        ns = s * 1_000_000_000
    if ns is None or ns > 2**63 - 1:
        raise ValueError(f"{name} is too long: at most {(2**63 - 1) / 1e9:.0f} seconds "
                         f"(~292 years), got {value!r}")
    return ns


#: CPython's limit for a timeout (its _PyTime_t counts int64 nanoseconds).
_CONTROL_MAX_S = (2**63 - 1) // 10**9


def control_timeout_ns(timeout: Any) -> int:
    """``select.kqueue.control``'s timeout policy, as CPython checks it:
    ``None`` -> -1; a float or an integer (``__index__``) of seconds, rounded
    away from zero; any failure to convert (NaN, out of range, wrong type)
    is CPython's ``TypeError``; a negative timeout its ``ValueError``."""
    if timeout is None:
        return -1
    ns: Optional[int] = None
    try:
        if isinstance(timeout, float):
            if timeout == timeout:          # not NaN
                t = timeout * 1e9
                if -9.2e18 < t < 9.2e18:
                    ns = math.ceil(t) if t >= 0 else math.floor(t)
        else:
            seconds = operator.index(timeout)
            if -_CONTROL_MAX_S <= seconds <= _CONTROL_MAX_S:
                ns = seconds * 1_000_000_000
    except TypeError:
        pass
    if ns is None:
        raise TypeError("timeout argument must be a number or None, got "
                        + type(timeout).__name__)
    if ns < 0:
        raise ValueError("timeout must be positive or None")
    return ns


# ---------------------------------------------------------------------------
# Queues: descriptor, close, fork

# Queues alive in this process.  As on BSD (and CPython's select.kqueue), a
# forked child does not inherit them: the backend closes their descriptors
# in the child (pthread_atfork) and here they turn "closed".
_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


class QueueBase:
    """A kqueue descriptor (``_fd``; -1 once closed) and the identity of the
    queue it named when opened (``_qid``): closing never closes a queue
    that reused the number."""

    __slots__ = ("_fd", "_qid", "__weakref__")
    _fd: int
    _qid: int

    def _open(self) -> None:
        """Create a new queue for this object."""
        self._fd = -1
        fd = lib.kqueue()
        if fd < 0:
            raise os_error(ffi.errno)
        self._fd = fd
        self._qid = lib.kqueue_py_queue_id(fd)
        _LIVE.add(self)

    def _adopt(self, fd: int) -> None:
        """Use an existing queue descriptor (``fromfd``)."""
        self._fd = fd
        self._qid = lib.kqueue_py_queue_id(fd) if fd >= 0 else 0
        _LIVE.add(self)

    def _close_fd(self) -> int:
        """Mark closed; close the descriptor if it still names our queue.
        Returns ``kqueue_close``'s result (1 if there was nothing to close)."""
        fd, self._fd = self._fd, -1
        if fd < 0 or lib.kqueue_py_queue_id(fd) != self._qid:
            return 1
        r: int = lib.kqueue_close(fd)
        return r

    def _live_fd(self) -> int:
        """The descriptor, or ``ValueError`` if closed."""
        fd = self._fd
        if fd < 0:
            raise ValueError(CLOSED_MESSAGE)
        return fd

    def _after_fork(self) -> None:
        """In a forked child: the backend has closed the descriptor."""
        self._fd = -1


class Handle(QueueBase):
    """A new queue, for layers that hold one rather than being one."""

    __slots__ = ()

    def __init__(self) -> None:
        self._open()

    @property
    def fd(self) -> int:
        """The descriptor; -1 once closed (or in a forked child)."""
        return self._fd

    def live_fd(self) -> int:
        """The descriptor, or the closed-queue ``ValueError``."""
        return self._live_fd()

    def close(self) -> None:
        self._close_fd()


_Q = TypeVar("_Q", bound="QueueObject")


class QueueObject(QueueBase):
    """What a queue object the user holds does the same way in every layer
    (:class:`kqueue_py.KQueue`, :class:`kqueue_py.compat.kqueue`):
    ``fileno()``, ``closed``, the context manager and the close on garbage
    collection.  Each class extends or replaces :meth:`close`."""

    __slots__ = ()

    def fileno(self) -> int:
        """Return the queue's descriptor (the kqueue control file
        descriptor): poll it for readability to learn that events are
        pending (it can sit in select, epoll or another kqueue).
        ``ValueError`` once the queue is closed."""
        return self._live_fd()

    @property
    def closed(self) -> bool:
        """True once the queue is closed: by :meth:`close`, or in a forked
        child where the fork closed it."""
        return self._fd < 0

    def close(self) -> None:
        """Close the queue's descriptor.  Idempotent."""
        self._close_fd()

    def __enter__(self: _Q) -> _Q:
        self._live_fd()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._fd >= 0:
                self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def on_fork(obj: Any) -> None:
    """Call ``obj._after_fork()`` in a forked child (held weakly)."""
    _LIVE.add(obj)


def _after_fork_in_child() -> None:
    for q in list(_LIVE):
        q._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------
# Event buffers and the wait loop

def new_call(kq: int, changes: Any = NULL, nchanges: int = 0, events: Any = NULL,
             nevents: int = 0, timeout_ns: int = 0) -> Any:
    """A ``struct kqueue_py_call *`` for :data:`call`: one ``kevent`` on
    ``kq``.  The request points into ``changes`` and ``events``: whoever
    keeps the request keeps them alive too."""
    req = ffi.new("struct kqueue_py_call *")
    req.kq = kq
    req.changelist = changes
    req.nchanges = nchanges
    req.eventlist = events
    req.nevents = nevents
    req.timeout_ns = timeout_ns
    return req


class _Unseen:
    """Sentinel type of :data:`UNSEEN`."""

    __slots__ = ()


#: What :attr:`Buffer.t` / :attr:`Buffer.m` hold when no argument object
#: may skip preparing the request (``x is UNSEEN`` is never true of an argument).
UNSEEN: Any = _Unseen()


class Buffer:
    """An event array of ``cap`` events with views over it: ``view`` (bytes)
    and, where the layout allows, one view per field in ``fields``: on
    CPython (:data:`STRIDED`) a strided memoryview
    (``fields[name][:n].tolist()`` reads that field of the first n events
    at C speed), on PyPy (:data:`TYPED`) a typed pointer into the array
    (:func:`row_walker` reads it).

    ``req`` is a wait on queue ``kq`` into this array for :data:`call`;
    ``ask`` and ``ns`` mirror its ``nevents`` and ``timeout_ns`` (reading a
    Python attribute is cheaper than reading cdata), so a wait writes a
    field only when its value changes; ``t`` and ``m`` are free for the
    user's own mirrors (the argument objects the request was last prepared
    for; :data:`UNSEEN` at first).  Whoever changes ``req`` must own the
    buffer for the call (a buffer pool gives each wait its own)."""

    __slots__ = ("events", "view", "cap", "fields", "req", "addr", "ask", "ns", "t", "m")

    def __init__(self, cap: int, kq: int = -1) -> None:
        try:
            self.events = ffi.new("struct kevent[]", cap)
        except MemoryError:
            raise MemoryError(f"no memory for an event buffer of {cap} events "
                              f"({cap * SIZE} bytes): lower max_events") from None
        view = memoryview(ffi.buffer(self.events))
        self.view = view
        self.cap = cap
        self.req = new_call(kq, events=self.events, nevents=cap)
        self.addr = int(ffi.cast("uintptr_t", self.req))   # for the C wait (queue.py)
        self.ask = cap
        self.ns = 0
        self.t: Any = UNSEEN
        self.m: Any = UNSEEN
        fields: dict[str, Any] = {}
        if STRIDED:
            casts: dict[str, Any] = {}
            for name, (code, at, step, _ok) in _STRIDED_CODES.items():
                cast = casts.get(code)
                if cast is None:
                    cast = casts[code] = view.cast(code)  # type: ignore[call-overload]
                fields[name] = cast[at::step]
        elif TYPED:
            for name, (code, _at, _step, _ok) in _STRIDED_CODES.items():
                fields[name] = ffi.cast(_CTYPE_OF_CODE[code], self.events)
        self.fields = fields


def wait_more(fd: int, events: Any, cap: int, timeout_ns: int, deadline_ns: int,
              n: int) -> int:
    """The one wait loop, entered after a first ``kevent`` wait returned
    ``n`` < 0.  EINTR is retried (PEP 475): a Python signal handler runs
    before each retry and, if it raises, its exception propagates; a wait
    with a timeout is retried with the time that remains until
    ``deadline_ns`` (``time.monotonic_ns()``), polling once if none does.
    Returns the number of events, or another failure as -errno."""
    while n == MINUS_EINTR:
        if timeout_ns > 0:
            remaining = deadline_ns - time.monotonic_ns()
            timeout_ns = remaining if remaining > 0 else 0
        n = kevent(fd, NULL, 0, events, cap, timeout_ns)
    return n


def events_capacity(events: Any) -> Optional[int]:
    """How many ``struct kevent`` the cdata ``events`` holds: its length for
    a ``struct kevent`` array, 1 for a ``struct kevent *`` (what ``ffi.new``
    of that type owns; a pointer carries no extent, so no more is assumed),
    None for anything else.  No exception is raised and caught on the way
    for a pointer or an array (that alone cost ~0.5 us per call)."""
    try:
        ctype = ffi.typeof(events)
    except TypeError:
        return None          # not cdata
    if ctype is _KEVENT_PTR:
        return 1
    if ctype.kind == "array" and ctype.item is _KEVENT:
        return len(events)
    return None


_KEVENT = ffi.typeof("struct kevent")
_KEVENT_PTR = ffi.typeof("struct kevent *")


# ---------------------------------------------------------------------------
# Decoders

_unpack_from = KEVENT.unpack_from
_pair_from = IDENT_FILTER.unpack_from

Row = tuple[int, int, int, int, int, int]


def row_walker(names: tuple[str, ...] = KEVENT_FIELDS
               ) -> Callable[[Buffer, int], Iterable[tuple[Any, ...]]]:
    """``walk(buf, n)``: the first ``n`` events of ``buf`` as tuples of the
    fields ``names`` (in memory order; ``udata`` as the raw word), the
    fastest way on this interpreter.  On CPython ``iter_unpack`` of their
    :func:`kevent_struct` over the buffer's bytes (one C call over the
    array); on PyPy (:data:`TYPED`) one loop reading the buffer's typed
    pointers, made for ``names`` (with ``exec``, as
    ``collections.namedtuple`` makes its methods): the JIT runs it about
    three times faster than an ``unpack_from`` per record, itself 2-3
    times faster there than ``iter_unpack``."""
    fmt = kevent_struct(names)   # checks the names and their order
    if not TYPED:
        size, iter_unpack = SIZE, fmt.iter_unpack

        def walk(buf: Buffer, n: int) -> Iterable[tuple[Any, ...]]:
            return iter_unpack(buf.view[: n * size])

        return walk
    loads, reads, values = [], [], []
    for k, name in enumerate(names):
        code, at, step, _ok = _STRIDED_CODES[name]
        loads.append(f"f{k} = fields[{name!r}]")
        if code == "Q":    # read signed (see TYPED): made unsigned here
            reads.append(f"v{k} = f{k}[{at} + {step} * i]")
            values.append(f"v{k} if v{k} >= 0 else v{k} + {1 << 64}")
        else:
            values.append(f"f{k}[{at} + {step} * i]")
    source = ("def walk(buf, n):\n"
              f"    fields = buf.fields; {'; '.join(loads)}\n"
              "    out = []\n"
              "    for i in range(n):\n"
              + "".join(f"        {r}\n" for r in reads) +
              f"        out.append(({', '.join(values)},))\n"
              "    return out\n")
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # noqa: S102 -- generated from the field table above
    walker: Callable[[Buffer, int], Iterable[tuple[Any, ...]]] = namespace["walk"]
    return walker


#: The first ``n`` events of a :class:`Buffer` as raw 6-tuples: every
#: decoder walks them through this.
rows: Callable[[Buffer, int], Iterable[Row]] = row_walker()


def decode_rows(buf: Buffer, n: int) -> list[Row]:
    """The first ``n`` events as 6-tuples, ``udata`` as the raw word."""
    return list(rows(buf, n))


def decode_tuples(buf: Buffer, n: int, get: Callable[[int], Any]
                  ) -> list[tuple[int, int, int, int, int, Any]]:
    """The first ``n`` events as 6-tuples, ``udata`` mapped through ``get``."""
    if n == 1:
        i, f, fl, ff, d, u = _unpack_from(buf.view)
        return [(i, f, fl, ff, d, get(u))]
    if n > 8 and STRIDED:
        c = buf.fields
        return list(zip(c["ident"][:n].tolist(), c["filter"][:n].tolist(),
                        c["flags"][:n].tolist(), c["fflags"][:n].tolist(),
                        c["data"][:n].tolist(), map(get, c["udata"][:n].tolist())))
    return [(i, f, fl, ff, d, get(u))
            for i, f, fl, ff, d, u in rows(buf, n)]


def decode_pairs(buf: Buffer, n: int) -> Iterable[tuple[int, int]]:
    """(ident, filter) of the first ``n`` events: one ``iter_unpack`` over
    the array, faster on CPython than an ``unpack_from`` per event (at any
    n > 1) and than the strided views (at any n up to 64 at least)."""
    if n == 1:
        return (_pair_from(buf.view),)
    return _pairs_iter(buf.view[: n * SIZE])


_pairs_iter = IDENT_FILTER.iter_unpack


# ---------------------------------------------------------------------------
# Changes

def pack_changes(rows: list[tuple[int, int, int, int, int, int]],
                 describe: Callable[[int], str]) -> bytearray:
    """``struct kevent`` changes from (ident, filter, flags, fflags, data,
    word) rows.  A field outside its C type's range is an ``OverflowError``
    naming the change (``describe(i)``) and the field."""
    packed = bytearray(len(rows) * SIZE)
    pack_into = KEVENT.pack_into
    for i, row in enumerate(rows):
        try:
            pack_into(packed, i * SIZE, *row)
        except (struct.error, ValueError, OverflowError):  # PyPy: ValueError
            for name, value in zip(KEVENT_FIELDS, row):
                lo, hi = _FIELD_RANGES[name]
                if not lo <= value <= hi:
                    raise OverflowError(
                        f"{describe(i)}.{name} = {value} is out of range for "
                        f"struct kevent.{name} ({lo}..{hi})") from None
            raise
    return packed


def submit(q: QueueBase, fd: int, packed: bytearray, n: int) -> list[tuple[int, int]]:
    """Apply ``n`` packed changes, each with ``EV_RECEIPT`` set by the
    caller, in one ``kevent`` call on ``fd`` (``q``'s descriptor).  Returns
    one (flags, data) receipt per change, in order; a whole-call failure
    raises (:func:`failure`: ``ValueError`` if ``q`` was closed meanwhile)."""
    out = ffi.new("struct kevent[]", n)
    r: int = kevent(fd, ffi.from_buffer("struct kevent[]", packed), n, out, n, 0)
    if r < 0:
        raise failure(q._fd, r)
    # The receipts come back in change order, one per change.
    return [(row[2], row[4]) for row in KEVENT.iter_unpack(ffi.buffer(out, r * SIZE))]


# ---------------------------------------------------------------------------
# udata: Python objects behind tokens

class _Keep:
    """Sentinel type of :data:`KEEP`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEP"


#: Pass as a change's ``udata`` to leave the registration's udata as it is.
KEEP: Any = _Keep()

_DROPPED_CAP = 256


class UdataMap:
    """Arbitrary Python udata objects for one queue's registrations.

    The ``udata`` word of a registration never holds a pointer: it holds a
    token, a number never reused, or 0 for ``None``; ``objects`` maps live
    tokens to objects (a stale or unknown token decodes as ``None``; nothing
    can dangle).  Every change that sets udata gets a fresh token, so a late
    release of an old token can never touch a newer registration.

    Release rules -- the object is dropped when its registration ends:
    a delivered event with ``EV_ONESHOT`` (or ``EVFILT_PROC`` + ``NOTE_EXIT``),
    a successful ``EV_DELETE``, a change failing with ``ENOENT``/``EBADF``
    (no such registration any more), a registration the backend dropped on
    its own (:meth:`drain`), and the queue's close.  A change that failed
    (or was never submitted) changes nothing.
    """

    __slots__ = ("objects", "keyof", "current", "finite", "aliases", "lock", "next_token",
                 "_dropped")

    def __init__(self) -> None:
        self.objects: dict[int, Any] = {}                    # token -> object
        self.keyof: dict[int, tuple[int, int]] = {}          # token -> (ident, filter)
        self.current: dict[tuple[int, int], int] = {}        # (ident, filter) -> token
        # Tokens whose registration ends at its first delivery (EV_ONESHOT,
        # EVFILT_PROC): wait() looks at delivered events only while non-empty.
        self.finite: set[int] = set()
        # A change that failed on an existing registration may still have
        # replaced its udata word (FreeBSD assigns udata before the filter
        # checks the rest): token -> tokens standing for the same object.
        self.aliases: dict[int, list[int]] = {}
        self.lock = threading.Lock()
        self.next_token = itertools.count(1).__next__
        self._dropped: Any = None

    def clear(self) -> None:
        with self.lock:
            self.objects.clear()
            self.keyof.clear()
            self.current.clear()
            self.finite.clear()
            self.aliases.clear()

    def _release(self, token: int) -> None:
        """Drop ``token`` and its aliases (under the lock)."""
        key = self.keyof.pop(token, None)
        if key is None:
            return
        self.objects.pop(token, None)
        self.finite.discard(token)
        if self.current.get(key) == token:
            del self.current[key]
        for alias in self.aliases.pop(token, ()):
            self._release(alias)

    def _release_key(self, key: tuple[int, int]) -> None:
        token = self.current.pop(key, None)
        if token is not None:
            self._release(token)

    def release_delivered(self, buf: Buffer, n: int) -> None:
        """The first ``n`` events in ``buf`` were delivered: release the
        udata of those whose registration ended with the delivery.

        A second pass over the buffer, on purpose: the decoders map every
        token through ``objects.get`` at C speed (``map``, comprehensions,
        strided views); folding this check into them would need a Python
        call per event or the raw tokens kept beside the objects -- a cost
        on every wait, where this pass runs only while some registration
        with a udata object ends at its first event (``finite`` non-empty)."""
        finite = self.finite
        ended = [u for _i, f, fl, ff, _d, u in rows(buf, n)
                 if u in finite and (fl & EV_ONESHOT or (f == EVFILT_PROC and ff & NOTE_EXIT))]
        if ended:
            with self.lock:
                for u in ended:
                    self._release(u)

    def drain(self, fd: int) -> None:
        """Release the udata of registrations the backend dropped on its own
        (descriptor closed).  Called with change batches, and by KQueue.wait()
        once every 128 calls."""
        if take_dropped is None or fd < 0:
            return
        buf = self._dropped
        if buf is None:
            buf = self._dropped = ffi.new("uint64_t[]", _DROPPED_CAP)
        while True:
            k = take_dropped(fd, buf, _DROPPED_CAP)
            if k <= 0:
                return
            with self.lock:
                for token in ffi.unpack(buf, k):
                    self._release(token)
            if k < _DROPPED_CAP:
                return

    def plan(self, batch: list[Any]) -> tuple[list[tuple[int, int, int, int, int, int]],
                                              list[tuple[int, Any]]]:
        """Rows to pack for ``batch`` (objects with ident, filter, flags,
        fflags, data, udata; already checked) and, per change, what success
        will mean: (token, udata) -- token 0 with :data:`KEEP` keeps the
        current udata.  Nothing changes here (the changes may still fail)."""
        rows = []
        actions: list[tuple[int, Any]] = []
        pending: dict[tuple[int, int], int] = {}
        with self.lock:   # other threads may apply changes meanwhile
            current = self.current
            for c in batch:
                ident, filt, flags, udata = c[0], c[1], c[2], c[5]
                key = (ident, filt)
                if udata is KEEP or flags & (EV_KEEPUDATA | EV_DELETE):
                    # Where EV_KEEPUDATA exists the kernel keeps the word;
                    # elsewhere the word that is current is sent again.
                    if EV_KEEPUDATA and not flags & EV_DELETE:
                        flags |= EV_KEEPUDATA
                    word = pending.get(key, current.get(key, 0))
                    udata = KEEP
                    token = 0
                elif udata is None:
                    word = token = 0
                else:
                    word = token = self.next_token()
                pending[key] = word
                rows.append((ident, filt, flags | EV_RECEIPT, c[3], c[4], word))
                actions.append((token, udata))
        return rows, actions

    def settle(self, batch: list[Any], actions: list[tuple[int, Any]],
               receipts: list[tuple[int, int]]) -> list[int]:
        """Apply the receipts of a submitted batch in change order; returns
        each change's errno (0: success)."""
        errs = []
        with self.lock:
            objects, keyof, current, finite = (self.objects, self.keyof, self.current,
                                               self.finite)
            for c, (token, udata), (rflags, data) in zip(batch, actions, receipts):
                key = (c[0], c[1])
                err = data if rflags & EV_ERROR else 0
                errs.append(err)
                flags = c[2]
                if err:
                    if err == _errno.ENOENT or err == _errno.EBADF:
                        self._release_key(key)   # no such registration (any more)
                    elif token and key in current:
                        # The word may now be this change's token: it stands
                        # for the registration's object until that ends.
                        old = current[key]
                        objects[token] = objects[old]
                        keyof[token] = key
                        self.aliases.setdefault(old, []).append(token)
                        self.aliases[token] = [old]
                        if old in finite:
                            finite.add(token)
                    continue
                if flags & EV_DELETE:
                    self._release_key(key)
                    continue
                ends = bool(flags & EV_ONESHOT) or c[1] == EVFILT_PROC
                if udata is KEEP:
                    kept = current.get(key)
                    if kept is not None and ends:
                        finite.add(kept)
                    continue
                self._release_key(key)
                if token:
                    objects[token] = udata
                    keyof[token] = key
                    current[key] = token
                    if ends:
                        finite.add(token)
        return errs
