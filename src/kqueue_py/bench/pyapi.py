"""The Pythonic API's variants: ``kqueue_py.KQueue``.

Everything that depends on its exact spelling is in this module, so an API
change means editing only here.  Used names: ``KQueue()``, ``.close()``,
``.add_reader(fd, udata)``, ``.wait(timeout, max_events)`` (events with
``.ident .filter .data .udata``), ``.wait_tuples``, ``.add_user(ident)`` and
``.trigger(ident)``.
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence

from kqueue_py import KQueue

__all__ = ["new_queue", "register_readers", "poll_runners", "decode_events",
           "user_roundtrip_parts"]


def new_queue() -> KQueue:
    return KQueue()


def register_readers(q: KQueue, fds: Sequence[int], udatas: Sequence[int]) -> None:
    """EVFILT_READ, level-triggered, for every fd."""
    for fd, u in zip(fds, udatas):
        q.add_reader(fd, u)


def poll_runners(q: KQueue, cap: int) -> dict[str, Callable[[int], None]]:
    """Runners: ``KQueue.wait(0)`` and ``KQueue.wait_tuples(0)``, each
    handing (ident, filter, data, udata) on."""
    wait, wt = q.wait, q.wait_tuples

    # As the kq_wait runner, the events are handed on only when there are
    # some (an empty comprehension alone costs ~100 ns on CPython 3.11).
    def run_wait(n: int) -> None:
        for _ in range(n):
            evs = wait(0, cap)
            out = [(e.ident, e.filter, e.data, e.udata) for e in evs] if evs else []
            del out

    def run_tuples(n: int) -> None:
        for _ in range(n):
            evs = wt(0, cap)
            out = [(e[0], e[1], e[4], e[5]) for e in evs] if evs else []
            del out

    return {"kqueue_py KQueue.wait": run_wait, "kqueue_py KQueue.wait_tuples": run_tuples}


def decode_events(q: KQueue, cap: int) -> List[tuple[int, int, int, Any]]:
    """One poll, for the self-check."""
    return [(e.ident, e.filter, e.data, e.udata) for e in q.wait(0, cap)]


def user_roundtrip_parts(qa: KQueue, qb: KQueue) -> tuple[Callable[[KQueue], None],
                                                          Callable[[KQueue], Any]]:
    """(trigger(q), wait_one(q)) for EVFILT_USER ident 1 on both queues."""
    qa.add_user(1)
    qb.add_user(1)

    def trigger(q: KQueue) -> None:
        q.trigger(1)

    def wait_one(q: KQueue) -> Any:
        while True:
            evs = q.wait(None, 1)
            if evs:
                return evs[0]

    return trigger, wait_one
