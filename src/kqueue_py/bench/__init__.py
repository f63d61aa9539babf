"""kqueue_py's benchmark: ``python -m kqueue_py.bench``.

Every number it prints is a ratio from one run, against comparators doing the
same work in the same process:

* ``kqueue_py`` -- the cffi module (``kqueue_py.lib``/``ffi``) and the raw
  helpers (``kq_wait``), events decoded from the array as one buffer as
  the package decodes them (``struct``'s ``iter_unpack`` on CPython, typed
  pointers into the array on PyPy: ``kqueue_py._core.row_walker``), never
  field by field through cdata attributes;
  plus the Pythonic ``kqueue_py.KQueue``;
* ``ctypes`` -- a ctypes binding of the very same compiled ``kqueue``/
  ``kevent``/``kqueue_close`` (``ctypes.CDLL`` on the installed extension),
  events decoded the ordinary ctypes way;
* ``stdlib`` -- ``select.epoll`` (``select.kqueue`` on BSD/macOS) and
  ``selectors.DefaultSelector`` doing the same work;
* ``raw C`` -- ``rawc_bench.c`` (package data), compiled at run time with the
  system ``cc`` against ``<sys/event.h>``; it ``dlopen()``s the installed
  extension and calls the same ``kevent``, plus raw ``epoll_wait`` on Linux:
  the kernel's own floor.

Modules: :mod:`.timing` (perf_counter_ns batches), :mod:`.machine` (facts
recorded with each run), :mod:`.ctypes_binding`, :mod:`.rawc` (the C
program's build and run), :mod:`.scenarios` (every scenario and comparator,
and the one table of targets), :mod:`.report` (the one data model -- a run
and its results, saved as JSON -- its sanity checks and formatters: the
terminal table, the targets, the chart), :mod:`.docs` (``python -m
kqueue_py.bench.docs``: the Markdown tables of the docs, from saved runs),
:mod:`.cli`.

:mod:`.servers` is a separate command, ``python -m kqueue_py.bench.servers``:
a load test (with ``wrk``) of the example HTTP server
(:mod:`kqueue_py.examples`, whose request handling it reuses) against the
same HTTP logic on selectors, asyncio and uvloop.  It measures whole
servers, not the binding, and shares nothing with the rest of this package.
"""
from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark command line; see ``python -m kqueue_py.bench -h``."""
    from .cli import main as _main

    return _main(argv)
