"""A ctypes binding of the very same compiled functions kqueue_py calls.

The installed extension (``kqueue_py/_kqueue*.so``) exports ``kqueue``,
``kevent`` and ``kqueue_close`` with default visibility, so
``ctypes.CDLL(path)`` reaches exactly the code cffi calls (on Linux, the
package's backend; on BSD/macOS the extension's symbols are the kernel's
``kqueue``/``kevent`` from libc).  The comparison isolates the
foreign-function layer: the same C work, called two ways.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Any

from ..raw import ffi

__all__ = ["KEvent", "Timespec", "CtypesKqueue", "extension_path", "load"]


# FreeBSD 12+ appends ``uint64_t ext[4]`` to the six common fields.
_TAIL = ffi.sizeof("struct kevent") - 32


class KEvent(ctypes.Structure):
    """``struct kevent``: the six common fields (LP64), then any platform tail."""

    _fields_ = [
        ("ident", ctypes.c_size_t),     # uintptr_t
        ("filter", ctypes.c_int16),
        ("flags", ctypes.c_uint16),
        ("fflags", ctypes.c_uint32),
        ("data", ctypes.c_ssize_t),     # intptr_t (int64_t on FreeBSD)
        ("udata", ctypes.c_void_p),
    ] + ([("ext", ctypes.c_char * _TAIL)] if _TAIL > 0 else [])


# The compiler's layout (recorded by cffi) must be the one declared above.
assert ctypes.sizeof(KEvent) == ffi.sizeof("struct kevent"), "struct kevent size differs"
assert all(getattr(KEvent, name).offset == ffi.offsetof("struct kevent", name)
           for name in ("ident", "filter", "flags", "fflags", "data", "udata")), \
    "struct kevent layout differs"


class Timespec(ctypes.Structure):
    """``struct timespec``."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def extension_path() -> str:
    """The file of the installed ``kqueue_py._kqueue`` extension."""
    from .. import _kqueue

    path: str = _kqueue.__file__
    return path


class CtypesKqueue:
    """``kqueue``/``kevent``/``kqueue_close`` with argtypes and restype."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or extension_path()
        self.dll = ctypes.CDLL(self.path, use_errno=True)
        kev_p = ctypes.POINTER(KEvent)
        self.kqueue: Any = self.dll.kqueue
        self.kqueue.argtypes = []
        self.kqueue.restype = ctypes.c_int
        self.kevent: Any = self.dll.kevent
        self.kevent.argtypes = [ctypes.c_int, kev_p, ctypes.c_int, kev_p,
                                ctypes.c_int, ctypes.POINTER(Timespec)]
        self.kevent.restype = ctypes.c_int
        close_name = "kqueue_close" if hasattr(self.dll, "kqueue_close") else None
        if close_name is None:  # BSD: the extension's shim is static
            libc = ctypes.CDLL(None, use_errno=True)
            self.kqueue_close: Any = libc.close
        else:
            self.kqueue_close = self.dll.kqueue_close
        self.kqueue_close.argtypes = [ctypes.c_int]
        self.kqueue_close.restype = ctypes.c_int

    @staticmethod
    def events(cap: int) -> Any:
        """A ``struct kevent[cap]`` array."""
        return (KEvent * cap)()

    @staticmethod
    def change(ident: int, filter: int, flags: int, udata: int = 0,
               fflags: int = 0, data: int = 0) -> KEvent:
        """One change, ``EV_SET`` style."""
        return KEvent(ident, filter, flags, fflags, data, udata or None)

    def new_queue(self) -> int:
        """A new queue descriptor; ``OSError`` on failure."""
        kq: int = self.kqueue()
        if kq < 0:
            err = ctypes.get_errno()
            raise OSError(err, "kqueue() failed")
        return kq


def load() -> CtypesKqueue:
    """The binding for the installed extension of this interpreter."""
    if sys.platform == "win32":  # pragma: no cover
        raise OSError("no kqueue on Windows")
    return CtypesKqueue()
