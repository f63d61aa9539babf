"""The slot for the Pythonic API, ``kqueue_py.KQueue``.

Everything that depends on its exact spelling is in this module, so an API
change means editing only here.  Used names: ``KQueue()``, ``.close()``,
``.add_reader(fd, udata)``, ``.wait(timeout, max_events)`` (events with
``.ident .filter .data .udata``), ``.wait_tuples`` (optional),
``.add_user(ident)``/``.trigger(ident)`` (optional).  Missing pieces make
:func:`available` return a note, and the variants are skipped.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

__all__ = ["available", "poll_runners", "user_roundtrip_parts"]


def available() -> Optional[str]:
    """``None`` if ``kqueue_py.KQueue`` can be benchmarked, else why not."""
    import kqueue_py

    cls = getattr(kqueue_py, "KQueue", None)
    if cls is None:
        return "kqueue_py.KQueue is absent in this build: Pythonic-API variants skipped"
    missing = [m for m in ("add_reader", "wait", "close") if not hasattr(cls, m)]
    if missing:
        return f"kqueue_py.KQueue lacks {', '.join(missing)}: Pythonic-API variants skipped"
    return None


def new_queue() -> Any:
    import kqueue_py

    return kqueue_py.KQueue()


def register_readers(q: Any, fds: Sequence[int], udatas: Sequence[int]) -> None:
    """EVFILT_READ, level-triggered, for every fd."""
    for fd, u in zip(fds, udatas):
        q.add_reader(fd, u)


def poll_runners(q: Any, cap: int) -> dict[str, Callable[[int], None]]:
    """Runners: ``KQueue.wait(0)`` handing (ident, filter, data, udata) on,
    and ``wait_tuples`` when it exists."""
    wait = q.wait

    # As the kq_wait runner, the events are handed on only when there are
    # some (an empty comprehension alone costs ~100 ns on CPython 3.11).
    def run_wait(n: int) -> None:
        for _ in range(n):
            evs = wait(0, cap)
            out = [(e.ident, e.filter, e.data, e.udata) for e in evs] if evs else []
            del out

    runners: dict[str, Callable[[int], None]] = {"kqueue_py KQueue.wait": run_wait}
    wt = getattr(q, "wait_tuples", None)
    if wt is not None:
        def run_tuples(n: int) -> None:
            for _ in range(n):
                evs = wt(0, cap)
                out = [(e[0], e[1], e[4], e[5]) for e in evs] if evs else []
                del out

        runners["kqueue_py KQueue.wait_tuples"] = run_tuples
    return runners


def decode_events(q: Any, cap: int) -> List[tuple[int, int, int, Any]]:
    """One poll, for the self-check."""
    return [(e.ident, e.filter, e.data, e.udata) for e in q.wait(0, cap)]


def user_roundtrip_parts(qa: Any, qb: Any) -> Optional[tuple[Callable[[Any], None],
                                                              Callable[[Any], Any]]]:
    """(trigger(q), wait_one(q)) for EVFILT_USER ident 1, or None."""
    if not (hasattr(qa, "add_user") and hasattr(qa, "trigger")):
        return None
    qa.add_user(1)
    qb.add_user(1)

    def trigger(q: Any) -> None:
        q.trigger(1)

    def wait_one(q: Any) -> Any:
        while True:
            evs = q.wait(None, 1)
            if evs:
                return evs[0]

    return trigger, wait_one
