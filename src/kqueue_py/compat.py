"""A drop-in ``select.kqueue`` / ``select.kevent``, and :func:`install`.

``kqueue``, ``kevent`` and the ``KQ_*`` constants behave as the Python
library reference documents ``select.kqueue`` and ``select.kevent``:
argument parsing and ranges, defaults, error types and messages, rich
comparison, ``kqueue.fromfd()``, ``control(changelist, max_events,
timeout=None, /)``, PEP 475 retries with the remaining timeout,
non-inheritable descriptors, and the fork behaviour of the running
interpreter's own ``select.kqueue`` (from CPython 3.12.1 a queue reads as
closed in a forked child, ``ValueError``; before, it keeps its dead number
and ``control()`` fails with ``OSError(EBADF)``).  Constants the stdlib never
exported are here too: ``KQ_FILTER_USER``, ``KQ_EV_RECEIPT``,
``KQ_EV_DISPATCH``, ``KQ_NOTE_TRIGGER``, ``KQ_NOTE_FF*``, the timer units.

:func:`install` makes the running interpreter's ``select`` module offer
these (only where it has no native kqueue, unless forced), and makes
``selectors.KqueueSelector`` exist and be ``selectors.DefaultSelector`` —
so unmodified kqueue code (selectors, asyncio, Twisted, watchers) runs on
Linux; fresh imports of ``select``/``selectors`` made while it is in effect
are patched too.  :func:`uninstall` undoes it.
"""
from __future__ import annotations

import ast
import errno as _errno
import importlib
import importlib.util
import operator
import os
import struct
import sys
import threading
import time
from typing import Any, Iterable, Optional

from ._core import (
    INT_MAX,
    KEVENT,
    MAX_EVENTS,
    MINUS_EINTR,
    NULL,
    SIZE,
    Buffer,
    QueueObject,
    control_timeout_ns,
    decode_rows,
    failure,
    ffi,
    lib,
    wait_more,
)
from ._core import (
    kevent as _kevent_ns,
)

__all__ = ["kqueue", "kevent", "install", "uninstall", "installed", "SELECTOR_CHOICES"]

_KEVENT = KEVENT   # this platform's struct kevent layout
_SIZE = SIZE
_INT_MAX = INT_MAX
_U64 = 2**64 - 1

#: A forked child inherits no queue.  From 3.12.1 (gh-110395) CPython marks
#: its select.kqueue objects closed there (ValueError); before, an object
#: kept its number and control() failed with OSError(EBADF) -- which event
#: loops written then (eventlet's kqueue hub) take as "make a new queue".
_CLOSED_AT_FORK = sys.version_info >= (3, 12, 1)


def _constant_names() -> dict[str, int]:
    """KQ_* names for every backend constant, as the stdlib spells them."""
    names: dict[str, int] = {}
    for name in dir(lib):
        if name.startswith("EVFILT_") and name != "EVFILT_SYSCOUNT":
            names["KQ_FILTER_" + name[len("EVFILT_"):]] = getattr(lib, name)
        elif name.startswith("EV_"):
            names["KQ_" + name] = getattr(lib, name)
        elif name.startswith("NOTE_"):
            names["KQ_" + name] = getattr(lib, name)
    return names


CONSTANTS: dict[str, int] = _constant_names()
# Names the stdlib exports on FreeBSD and macOS that this backend has no
# filter/flag for: defined (FreeBSD values) so code naming them imports;
# registering KQ_FILTER_AIO fails with EINVAL.
CONSTANTS.setdefault("KQ_FILTER_AIO", -3)
CONSTANTS.setdefault("KQ_EV_FLAG1", 0x2000)
globals().update(CONSTANTS)
__all__ += sorted(CONSTANTS)


def _ident(obj: Any) -> int:
    """``ident`` as select.kevent parses it: an int (a ``size_t``), or an
    object with ``fileno()`` (a non-negative C ``int``)."""
    if isinstance(obj, int):
        if obj < 0:
            raise OverflowError("can't convert negative value to size_t")
        if obj > _U64:
            raise OverflowError("Python int too large to convert to C size_t")
        return int(obj)
    fileno = getattr(obj, "fileno", None)
    if fileno is None:
        raise TypeError("argument must be an int, or have a fileno() method.")
    fd = fileno()
    if not isinstance(fd, int):
        raise TypeError("fileno() returned a non-integer")
    return _fd(fd)


def _fd(fd: int) -> int:
    if not -2**31 <= fd <= _INT_MAX:
        raise OverflowError("Python int too large to convert to C int")
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return int(fd)


def _c_int(value: Any) -> int:
    """An ``int`` argument as CPython's argument clinic converts it."""
    v: int = operator.index(value)
    if not -2**31 <= v <= _INT_MAX:
        raise OverflowError("Python int too large to convert to C int")
    return v


class kevent:
    """kevent(ident, filter=KQ_FILTER_READ, flags=KQ_EV_ADD, fflags=0, data=0, udata=0)

    A kernel event, as ``select.kevent``: ``ident`` is an int or an object
    with ``fileno()``; ``filter`` is a signed short (range-checked);
    ``flags``, ``fflags`` and ``udata`` are unsigned and, as in CPython,
    truncated to their C width; ``data`` is range-checked.
    """

    __slots__ = ("ident", "filter", "flags", "fflags", "data", "udata")
    __hash__ = None  # type: ignore[assignment]

    ident: int
    filter: int
    flags: int
    fflags: int
    data: int
    udata: int

    def __init__(self, ident: Any, filter: int = lib.EVFILT_READ,
                 flags: int = lib.EV_ADD, fflags: int = 0, data: int = 0,
                 udata: int = 0) -> None:
        # The getargs format units of CPython's kevent(): "O|hHILK".
        f = operator.index(filter)                      # "h": range-checked
        if not -32768 <= f <= 32767:
            raise OverflowError("signed short integer is "
                                + ("less than minimum" if f < 0 else "greater than maximum"))
        flags = operator.index(flags) & 0xFFFF          # "H": truncated
        fflags = operator.index(fflags) & 0xFFFFFFFF    # "I": truncated
        d = operator.index(data)                        # "L": range-checked
        if not -2**63 <= d < 2**63:
            raise OverflowError("int too big to convert")
        if not isinstance(udata, int):                  # "K": an int, truncated
            raise TypeError(f"kevent() argument 6 must be int, not {type(udata).__name__}")
        # ident last, as CPython converts it after the other arguments.
        self.ident = _ident(ident)
        self.filter = f
        self.flags = flags
        self.fflags = fflags
        self.data = d
        self.udata = udata & _U64

    def _row(self) -> tuple[int, int, int, int, int, int]:
        return (self.ident, self.filter, self.flags, self.fflags, self.data, self.udata)

    def __repr__(self) -> str:
        # data is printed as C's %llx prints it (two's complement).
        return (f"<select.kevent ident={self.ident} filter={self.filter} "
                f"flags={self.flags:#x} fflags={self.fflags:#x} "
                f"data={self.data & _U64:#x} udata={self.udata:#x}>")

    def _key(self) -> tuple[int, int, int, int, int, int]:
        # CPython compares the fields in order, udata as a signed intptr_t.
        u = self.udata
        return (self.ident, self.filter, self.flags, self.fflags, self.data,
                u - 2**64 if u >= 2**63 else u)

    def _cmp(self, other: object) -> Optional[int]:
        if not isinstance(other, kevent):
            return None
        a, b = self._key(), other._key()
        return (a > b) - (a < b)

    def __eq__(self, other: object) -> bool:
        c = self._cmp(other)
        return NotImplemented if c is None else c == 0

    def __ne__(self, other: object) -> bool:
        c = self._cmp(other)
        return NotImplemented if c is None else c != 0

    def __lt__(self, other: object) -> bool:
        c = self._cmp(other)
        return NotImplemented if c is None else c < 0

    def __le__(self, other: object) -> bool:
        c = self._cmp(other)
        return NotImplemented if c is None else c <= 0

    def __gt__(self, other: object) -> bool:
        c = self._cmp(other)
        return NotImplemented if c is None else c > 0

    def __ge__(self, other: object) -> bool:
        c = self._cmp(other)
        return NotImplemented if c is None else c >= 0


_new_kevent = object.__new__


def _kevent_from_row(row: tuple[int, int, int, int, int, int]) -> kevent:
    ev = _new_kevent(kevent)
    ev.ident, ev.filter, ev.flags, ev.fflags, ev.data, ev.udata = row
    return ev


class kqueue(QueueObject):
    """kqueue()

    A kernel event queue, as ``select.kqueue``.  The descriptor is
    non-inheritable.
    """

    __slots__ = ("_free",)
    _free: list[Buffer]

    def __new__(cls, *args: Any, **kwargs: Any) -> kqueue:
        if args:
            raise TypeError("kqueue() takes no positional arguments")
        if kwargs:
            raise TypeError("kqueue() takes no keyword arguments")
        self = object.__new__(cls)
        self._free = []
        self._open()
        return self

    def __init__(self) -> None:  # arguments are refused in __new__
        pass

    @classmethod
    def fromfd(cls, fd: int) -> kqueue:
        """Create a kqueue object from a given control fd (sharing its queue)."""
        fd = _c_int(fd)
        self = object.__new__(cls)
        self._free = []
        self._adopt(fd)
        return self

    def close(self) -> None:
        """Close the kqueue control file descriptor.  Further operations on
        the kqueue object will raise an exception."""
        fd = self._fd
        # As CPython's: a failing close() is not reported.
        if self._close_fd() < 0 and ffi.errno == _errno.EBADF:
            try:
                os.close(fd)  # not a queue of ours (fromfd on a plain fd)
            except OSError:
                pass

    def _after_fork(self) -> None:
        """In a forked child, as the running interpreter's select.kqueue:
        closed from 3.12.1; before, the dead number stays (``fileno()``
        returns it, ``control()`` fails with ``EBADF`` from the backend,
        which closed the queue).  Closing such an object closes nothing:
        the number may name another file of the child's by now."""
        if _CLOSED_AT_FORK:
            self._fd = -1

    def control(self, changelist: Optional[Iterable[kevent]], maxevents: int,
                timeout: Optional[float] = None, /) -> list[kevent]:
        """Calls the kernel kevent function.

        - changelist must be an iterable of kevent objects describing the
          changes to be made to the kernel's watch list or None.
        - maxevents lets you specify the maximum number of events that the
          kernel will return.
        - timeout is the maximum time to wait in seconds, or else None to
          wait forever.  timeout accepts floats for smaller timeouts, too.
        """
        maxevents = _c_int(maxevents)
        fd = self._live_fd()
        if maxevents < 0:
            raise ValueError(f"Length of eventlist must be 0 or positive, got {maxevents}")
        if maxevents > MAX_EVENTS:
            raise ValueError(f"maxevents must be at most {MAX_EVENTS} (the most events one "
                             f"kevent() call can return), got {maxevents}")

        timeout_ns = control_timeout_ns(timeout)
        deadline = time.monotonic_ns() + timeout_ns if timeout_ns > 0 else 0

        changes = NULL
        nchanges = 0
        if changelist is not None:
            try:
                it = iter(changelist)
            except TypeError:
                raise TypeError("changelist is not iterable") from None
            seq = list(it)
            nchanges = len(seq)
            if nchanges > _INT_MAX:
                raise OverflowError("changelist is too long")
            if nchanges:
                packed = bytearray(nchanges * _SIZE)
                pack_into = _KEVENT.pack_into
                for i, ev in enumerate(seq):
                    if not isinstance(ev, kevent):
                        raise TypeError("changelist must be an iterable of select.kevent objects")
                    try:
                        pack_into(packed, i * _SIZE, ev.ident, ev.filter, ev.flags,
                                  ev.fflags, ev.data, ev.udata)
                    except (struct.error, ValueError, OverflowError):
                        # An attribute was assigned a value out of its C
                        # range (PyPy's struct raises ValueError for some):
                        # check it as the constructor would.
                        ev = kevent(ev.ident, ev.filter, ev.flags, ev.fflags, ev.data, ev.udata)
                        pack_into(packed, i * _SIZE, *ev._row())
                changes = ffi.from_buffer("struct kevent[]", packed)

        buf = None
        events = NULL
        if maxevents:
            # The buffer pool, inline as in KQueue.wait (the hot path of
            # every event loop built on this class).
            free = self._free
            try:
                buf = free.pop()
            except IndexError:
                buf = Buffer(maxevents)
            if buf.cap < maxevents:
                buf = Buffer(maxevents)
            events = buf.events
        n = _kevent_ns(fd, changes, nchanges, events, maxevents, timeout_ns)
        if n < 0:
            # PEP 475: the changes were applied before the wait was
            # interrupted; the one wait loop retries the wait alone, with
            # the time that remains.
            if n == MINUS_EINTR:
                n = wait_more(fd, events, maxevents, timeout_ns, deadline, n)
            if n < 0:
                if buf is not None:
                    self._free.append(buf)
                raise failure(self._fd, n)
        if buf is None:
            return []
        rows = decode_rows(buf, n) if n else []
        self._free.append(buf)
        return list(map(_kevent_from_row, rows))


# ---------------------------------------------------------------------------
# install() / uninstall()
#
# An installation is a list of records (module, name, previous value), in the
# order the changes were made; uninstall() undoes them in reverse, so every
# module object ever patched -- the live ``select`` and ``selectors`` and any
# fresh copy imported while installed -- ends as it was.  A finder first on
# sys.meta_path hands every fresh import of ``select``/``selectors`` (code
# that pops sys.modules['select'] and imports again, as
# ``eventlet.patcher.original('select')`` does; importlib.reload) a loader
# that patches the new module as soon as it has executed.

_MISSING: Any = object()
_HOOKED = ("select", "selectors")
#: The ``selector`` choices of :func:`install`.
SELECTOR_CHOICES = ("stdlib", "kqueue")


class _Installation:
    __slots__ = ("force", "selector", "hide_epoll", "hide_poll", "records", "finder")

    def __init__(self, force: bool, selector: str, hide_epoll: bool, hide_poll: bool) -> None:
        self.force = force
        self.selector = selector
        self.hide_epoll = hide_epoll
        self.hide_poll = hide_poll
        self.records: list[tuple[Any, str, Any]] = []
        self.finder = _ReimportFinder()

    def options(self) -> tuple[bool, str, bool, bool]:
        return (self.force, self.selector, self.hide_epoll, self.hide_poll)

    def set(self, module: Any, name: str, value: Any) -> None:
        self.records.append((module, name, getattr(module, name, _MISSING)))
        setattr(module, name, value)

    def delete(self, module: Any, name: str) -> None:
        if hasattr(module, name):
            self.records.append((module, name, getattr(module, name)))
            delattr(module, name)

    def patched(self, module: Any) -> bool:
        """Whether ``module`` is a ``select`` this installation patched."""
        return any(m is module and name == "kqueue" for m, name, _ in self.records)

    def patch_select(self, module: Any) -> None:
        for name, value in {"kqueue": kqueue, "kevent": kevent, **CONSTANTS}.items():
            self.set(module, name, value)
        for name in sorted(vars(module)):
            if ((self.hide_epoll and (name == "epoll" or name.startswith("EPOLL")))
                    or (self.hide_poll and (name in ("poll", "devpoll") or name.startswith("POLL")))):
                self.delete(module, name)

    def patch_selectors(self, module: Any) -> None:
        selector_cls: type
        if self.selector == "kqueue":
            from .selectors import KqueueSelector

            selector_cls = KqueueSelector
        else:
            selector_cls = _stdlib_kqueue_selector(module)
        self.set(module, "KqueueSelector", selector_cls)
        self.set(module, "DefaultSelector", selector_cls)
        if self.hide_epoll:
            self.delete(module, "EpollSelector")
        if self.hide_poll:
            self.delete(module, "PollSelector")
            self.delete(module, "DevpollSelector")


_state: Optional[_Installation] = None
_lock = threading.RLock()


def installed() -> bool:
    """True while :func:`install` is in effect."""
    return _state is not None


def install(force: bool = False, *, selector: str = "stdlib", hide_epoll: bool = False,
            hide_poll: bool = False) -> bool:
    """Offer kqueue_py as ``select.kqueue`` and make it the default selector.

    Without ``force``, nothing happens on a platform whose ``select`` module
    already has a native kqueue (returns False).  ``selector`` picks the
    class that becomes ``selectors.KqueueSelector`` and
    ``selectors.DefaultSelector``: ``"stdlib"`` (the default), the standard
    library's own KqueueSelector running on these ``select.kqueue`` objects,
    as on BSD; ``"kqueue"``, :class:`kqueue_py.selectors.KqueueSelector`.
    For testing code that prefers epoll or poll when present,
    ``hide_epoll`` removes ``select.epoll``, the ``EPOLL*`` constants and
    ``selectors.EpollSelector``, and ``hide_poll`` removes ``select.poll``,
    ``POLL*`` and ``selectors.PollSelector``.

    The installation also covers every fresh import of ``select`` or
    ``selectors`` (a module popped from ``sys.modules`` and imported again,
    ``importlib.reload``) while it is in effect.  Idempotent with the same
    arguments (``ValueError`` with others: uninstall first); undone
    entirely by :func:`uninstall`.  Returns True when installed.
    """
    global _state
    if selector not in SELECTOR_CHOICES:
        raise ValueError(f"selector must be one of {SELECTOR_CHOICES}, got {selector!r}")
    options = (bool(force), selector, bool(hide_epoll), bool(hide_poll))
    import select
    import selectors

    with _lock:
        if _state is not None:
            if _state.options() != options:
                raise ValueError("kqueue_py.compat is already installed with other options "
                                 f"{_state.options()}: call uninstall() first")
            return True
        if not force and hasattr(select, "kqueue") and select.kqueue is not kqueue:
            return False
        state = _Installation(*options)
        try:
            state.patch_select(select)
            state.patch_selectors(selectors)
        except BaseException:
            _undo(state)
            raise
        sys.meta_path.insert(0, state.finder)
        _state = state
    return True


def uninstall() -> None:
    """Restore ``select`` and ``selectors`` as they were before install():
    the live modules and every copy imported while installed."""
    global _state
    with _lock:
        state = _state
        if state is None:
            return
        _state = None
        try:
            sys.meta_path.remove(state.finder)
        except ValueError:
            pass
        _undo(state)


def _undo(state: _Installation) -> None:
    for module, name, previous in reversed(state.records):
        if previous is _MISSING:
            if hasattr(module, name):
                delattr(module, name)
        else:
            setattr(module, name, previous)
    state.records.clear()


def _original_spec(fullname: str, finder: object) -> Any:
    """The spec the rest of sys.meta_path finds for a top-level module."""
    for other in list(sys.meta_path):
        if other is finder:
            continue
        find_spec = getattr(other, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec(fullname, None)
        if spec is not None:
            return spec
    return None


class _ReimportFinder:
    """Hands a fresh import of ``select``/``selectors`` a patching loader."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _HOOKED or path is not None:
            return None
        spec = _original_spec(fullname, self)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _PatchingLoader(spec.loader, self)
        return spec


class _PatchingLoader:
    def __init__(self, loader: Any, finder: _ReimportFinder) -> None:
        self._loader = loader
        self._finder = finder

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        name = module.__name__
        patch = True
        if name == "selectors":
            patch = self._exec_selectors(module)
        else:
            self._loader.exec_module(module)
        # The module looks as any other import made it.
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        with _lock:
            state = _state
            if not patch or state is None or state.finder is not self._finder:
                return     # uninstalled meanwhile, or not on our select: left alone
            if name == "select":
                state.patch_select(module)
            else:
                state.patch_selectors(module)

    def _exec_selectors(self, module: Any) -> bool:
        """Execute a fresh ``selectors``; whether to patch it."""
        live = sys.modules.get("select")
        with _lock:
            state = _state
            ours = state is not None and (live is None or state.patched(live))
        if not ours:
            # Another select stands in sys.modules on purpose (a green one,
            # as eventlet's patcher.inject puts there): the module is built
            # on it, as its author meant, and not patched.
            self._loader.exec_module(module)
            return False
        # The stdlib's class definitions depend on what ``select`` offers when
        # the module executes: run it against an unpatched ``select`` so that
        # it defines what it would without kqueue_py (and uninstall() can
        # restore exactly that), then point it at the live, patched module.
        #
        # The unpatched copy is made with ``select`` out of sys.modules, as a
        # fresh import makes one.  With it there, PyPy (whose ``select`` is
        # built into the interpreter) takes the creation for a reload: it
        # hands back the live, patched module itself and re-initialises it,
        # putting hidden names back.  Without it, PyPy copies the module's
        # initial namespace and CPython makes a new module from its
        # extension's definition: either way a module as the stdlib made it.
        pristine = None
        spec = _original_spec("select", self._finder)
        sys.modules.pop("select", None)
        try:
            if spec is not None and spec.loader is not None:
                pristine = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(pristine)
            if pristine is not None:
                sys.modules["select"] = pristine
            elif live is not None:
                sys.modules["select"] = live
            self._loader.exec_module(module)
        finally:
            if live is not None:
                sys.modules["select"] = live
            else:
                sys.modules.pop("select", None)
        if pristine is not None:
            module.select = live if live is not None else importlib.import_module("select")
        return True


#: The statements whose blocks a module runs at import (3.11 adds
#: ``try``/``except*``, a node of its own).
_BLOCK_STATEMENTS: tuple[type, ...] = (
    ast.If, ast.For, ast.While, ast.With, ast.Try,
    *((ast.TryStar,) if hasattr(ast, "TryStar") else ()))


def _class_def(body: list[ast.stmt], name: str) -> Optional[ast.ClassDef]:
    """The module-level ``class name`` in ``body``: directly, or inside the
    blocks a module runs at import (``if``/``else``, ``try``, ``with``,
    loops), never inside a function or another class."""
    for stmt in body:
        if isinstance(stmt, ast.ClassDef) and stmt.name == name:
            return stmt
        if not isinstance(stmt, _BLOCK_STATEMENTS):
            continue
        blocks: list[list[ast.stmt]] = [getattr(stmt, field, [])
                                        for field in ("body", "orelse", "finalbody")]
        blocks += [handler.body for handler in getattr(stmt, "handlers", [])]
        for block in blocks:
            found = _class_def(block, name)
            if found is not None:
                return found
    return None


def _stdlib_kqueue_selector(selectors_module: Any) -> type:
    """The stdlib's own KqueueSelector, running on the patched select module.

    ``selectors`` defines KqueueSelector only when ``select.kqueue`` exists
    at import time.  Where it was imported without one, the ``class
    KqueueSelector`` statement is found in the module's source by its
    syntax tree (wherever it sits at module level, whatever condition
    guards it) and that statement alone is run in the module's namespace,
    with the source file's line numbers.  Where the source is unavailable,
    has no such class, or the class does not build into a
    ``BaseSelector``, kqueue_py's own selector stands in.
    """
    existing = getattr(selectors_module, "KqueueSelector", None)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    try:
        import inspect

        filename = inspect.getsourcefile(selectors_module) or "<selectors>"
        tree = ast.parse(inspect.getsource(selectors_module), filename)
        node = _class_def(tree.body, "KqueueSelector")
        if node is not None:
            code = compile(ast.Module(body=[node], type_ignores=[]), filename, "exec")
            namespace = vars(selectors_module)
            # Run in the module's own namespace (its methods see the module's
            # globals, as the class defined at import would), then take the
            # name out again: install() sets it, and uninstall() removes it.
            try:
                exec(code, namespace)
            finally:
                cls = namespace.pop("KqueueSelector", None)
            if isinstance(cls, type) and issubclass(cls, selectors_module.BaseSelector):
                return cls
    except Exception:   # no source (OSError, TypeError), no parse, a failing class body
        pass
    from .selectors import KqueueSelector

    return KqueueSelector
