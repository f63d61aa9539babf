"""kqueue_py: the kqueue event API for Python, everywhere.

On macOS and FreeBSD this binds the kernel's kqueue; on Linux it ships its
own kqueue backend (C, over epoll, eventfd and timerfd).

Four public modules, side by side: each is a thin layer over the one
internal core, ``kqueue_py._core`` (the compiled ``ffi``/``lib``, the
event buffers, the wait loop, the decoders, the error path), and none is
built on another:

* ``kqueue_py.raw`` — ``ffi``, ``lib`` (the compiled ``kqueue_py._kqueue``),
  every ``EVFILT_*``/``EV_*``/``NOTE_*`` constant and the helpers
  ``kev_change``, ``kq_apply``, ``kq_wait``.  All re-exported here.
* ``kqueue_py.queue`` — :class:`KQueue`, the Pythonic queue, and
  :class:`Event`.  Re-exported here.
* ``kqueue_py.compat`` — ``select.kqueue``/``select.kevent`` work-alikes
  and ``install()``.
* ``kqueue_py.selectors`` — ``KqueueSelector`` for ``selectors``/asyncio.

Tools, over ``compat``: ``python -m kqueue_py.run -- COMMAND`` runs a
command, and every Python process it starts, with ``compat.install()`` in
effect; ``pytest -p kqueue_py.pytest_plugin --kqueue`` does the same from
pytest.  (``compat.install()`` is the one place a layer uses another: it
offers ``kqueue_py.selectors.KqueueSelector`` when asked to with
``selector="kqueue"``, or when the stdlib's own class cannot be built.)
"""
from __future__ import annotations

import sys as _sys
from typing import TYPE_CHECKING

from . import raw
from .queue import KEEP, Change, Event, FileDescriptorLike, HasFileno, KQueue
from .raw import (
    CONSTANTS,
    ffi,
    kev_change,
    kq_apply,
    kq_wait,
    lib,
    new_events,
    raise_errno,
    timespec,
)

#: Where the events come from: "linux-backend" (kqueue_py's own C backend)
#: or "kernel" (the BSD/macOS kernel's kqueue).
BACKEND = "linux-backend" if _sys.platform.startswith("linux") else "kernel"

globals().update(raw.CONSTANTS)

if TYPE_CHECKING:
    # For type checkers only: the EVFILT_*/EV_*/NOTE_* constants set from
    # raw.CONSTANTS just above are ints (``from kqueue_py import EV_ADD``).
    def __getattr__(name: str) -> int: ...

__version__ = "0.1.0"

__all__ = [
    "KQueue", "Event", "Change", "KEEP", "HasFileno", "FileDescriptorLike", "BACKEND",
    "CONSTANTS", "ffi", "lib",
    "kev_change", "kq_apply", "kq_wait", "new_events", "raise_errno", "timespec",
    *sorted(raw.CONSTANTS),
]
