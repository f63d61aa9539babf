"""The scenarios, every comparator's runner, and the targets.

A runner ``run(n)`` does one scenario operation ``n`` times in its own loop.
Before timing, each scenario runs a self-check (:attr:`Built.checks`): every
comparator must see the same events, so a broken comparator cannot win.

Roles: the variant named by ``roles["kqueue_py"]``, ``roles["ctypes"]`` and
``roles["stdlib"]`` fill the table's main columns; the raw-C program adds
``rawC kevent`` (the same backend call from C) and ``rawC epoll`` (the
kernel's floor).  Other variants appear in the detail listing.

Floors (:func:`floors`): which variants do the work of a raw-C variant plus
some Python, so can never be faster than it; a run where one is (beyond the
noise) measured nothing real, and the report says so instead of charting it.

:data:`TARGETS`, at the end, is the one table of what kqueue_py aims for,
each target a ratio of two variants of one run (or a time per operation).
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import select
import selectors
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import kqueue_py
from kqueue_py import KQueue, ffi, kev_change, kq_apply, kq_wait, lib, new_events
from kqueue_py._core import Buffer, row_walker
from kqueue_py.raw import kevent_struct

from .ctypes_binding import CtypesKqueue, KEvent, Timespec
from .timing import Runner

__all__ = ["Context", "Built", "Scenario", "SCENARIOS", "SkipScenario", "Target", "TARGETS",
           "floors", "RAWC_KEVENT", "RAWC_EPOLL"]

#: The raw-C program's variants (rawc.py names them).
RAWC_KEVENT = "rawC kevent"
RAWC_EPOLL = "rawC epoll"
#: The ready scenarios' kernel floors, each the one before it plus one more
#: system call per event: the count, then the identity check.
RAWC_EPOLL_CHAIN = (RAWC_EPOLL, "rawC epoll+FIONREAD", "rawC epoll+FIONREAD+probe")
#: Beside the chain, on the count's floor: the identity checks made as
#: the backend makes them with io_uring (one ring run per wait), and as
#: the mechanism before them made them (an EPOLL_CTL_MOD per event).
RAWC_EPOLL_RING = "rawC epoll+ring"
RAWC_EPOLL_MOD = "rawC epoll+FIONREAD+MOD"

KEVENT_SIZE: int = ffi.sizeof("struct kevent")
# (ident, filter, data, udata) of a buffer's events (flags and fflags
# skipped), walked the way the package walks events on this interpreter.
_kev4_rows = row_walker(("ident", "filter", "data", "udata"))
_KEVFULL = kevent_struct()

HAVE_EPOLL = hasattr(select, "epoll")
HAVE_STDLIB_KQUEUE = hasattr(select, "kqueue")
TIMER_PERIOD_MS = 600_000          # 10 minutes: armed timers never fire mid-run


class SkipScenario(Exception):
    """The scenario cannot run here (the message says why)."""


@dataclass
class Context:
    """What every scenario builder gets."""

    ct: CtypesKqueue
    quick: bool
    fd_budget: int                 # descriptors a scenario may open
    notes: List[str] = field(default_factory=list)


@dataclass
class Built:
    """A scenario ready to measure."""

    runners: Dict[str, Runner]
    roles: Dict[str, str]
    unit: str
    rawc: Optional[Tuple[str, int]] = None
    checks: List[Callable[[], None]] = field(default_factory=list)
    cleanup: List[Callable[[], object]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def close(self) -> None:
        for fn in reversed(self.cleanup):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                print(f"bench: cleanup error: {e!r}", file=sys.stderr)
        self.cleanup.clear()


@dataclass
class Scenario:
    name: str
    title: str
    build: Callable[[Context], Built]


# ---------------------------------------------------------------- fixtures

def _tcp_pair() -> Tuple[socket.socket, socket.socket]:
    """A connected (accepted, client) pair of TCP sockets over loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        c = socket.create_connection(lst.getsockname())
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        a, _ = lst.accept()
    return a, c


def _socket_fds(n: int, built: Built, tcp: bool = False) -> List[int]:
    """``n`` descriptors: both ends of ceil(n/2) socketpairs (or TCP pairs)."""
    socks: List[socket.socket] = []
    def close_all() -> None:
        for s in socks:
            s.close()

    built.cleanup.append(close_all)
    while len(socks) < n:
        a, b = _tcp_pair() if tcp else socket.socketpair()
        socks += [a, b]
    return [s.fileno() for s in socks[:n]]


def _make_ready(fds: List[int], ready: int) -> List[int]:
    """Make fds[0], fds[2], ... (``ready`` of them) readable: write one byte
    into each one's peer (and, over TCP, see it land).  Returns the ready
    descriptors."""
    out = []
    for k in range(ready):
        os.write(fds[2 * k + 1], b"x")
        out.append(fds[2 * k])
    for fd in out:
        select.select([fd], [], [], 5.0)
    return out


def _new_kq(built: Built) -> int:
    kq: int = lib.kqueue()
    if kq < 0:
        kqueue_py.raise_errno()
    built.cleanup.append(lambda: lib.kqueue_close(kq))
    return kq


def _kq_batch(triples: List[Tuple[int, int, int, int, int]]) -> Any:
    """A ``struct kevent[]`` of (ident, filter, flags, data, udata) changes,
    filled through one buffer write."""
    arr = ffi.new("struct kevent[]", max(1, len(triples)))
    buf = ffi.buffer(arr)
    for i, (ident, filt, flags, data, udata) in enumerate(triples):
        _KEVFULL.pack_into(buf, i * KEVENT_SIZE, ident, filt, flags, 0, data, udata)
    return arr


def _kq_apply_all(kq: int, arr: Any, n: int) -> None:
    if n and lib.kevent(kq, arr, n, ffi.NULL, 0, ffi.NULL) < 0:
        kqueue_py.raise_errno()


def _ct_batch(triples: List[Tuple[int, int, int, int, int]]) -> Any:
    arr = (KEvent * max(1, len(triples)))()
    for i, (ident, filt, flags, data, udata) in enumerate(triples):
        e = arr[i]
        e.ident, e.filter, e.flags, e.data, e.udata = ident, filt, flags, data, udata or None
    return arr


def _ct_apply_all(ct: CtypesKqueue, kq: int, arr: Any, n: int) -> None:
    if n and ct.kevent(kq, arr, n, None, 0, None) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ct_new_kq(ct: CtypesKqueue, built: Built) -> int:
    kq = ct.new_queue()
    built.cleanup.append(lambda: ct.kqueue_close(kq))
    return kq


def _expect(name: str, got: List[Tuple[Any, ...]], want: List[int]) -> None:
    idents = sorted(int(t[0]) for t in got)
    if idents != sorted(want):
        raise AssertionError(f"{name}: self-check saw idents {idents[:8]}..., "
                             f"expected {sorted(want)[:8]}... ({len(got)} vs {len(want)})")


# ------------------------------------------------------- poll-type scenarios

def _build_poll(ctx: Context, *, nfds: int, ready: int, cap: int, timers: int = 0,
                unit: str, rawc: Tuple[str, int], stdlib: bool = True,
                cdata_variant: bool = False, lib_variant: bool = True,
                tcp: bool = False) -> Built:
    """``nfds`` sockets registered for EVFILT_READ (level-triggered), the
    first ``ready`` readable; optionally ``timers`` armed timers.  One op:
    a poll (timeout 0) whose events are handed on as Python tuples."""
    built = Built(runners={}, roles={}, unit=unit, rawc=rawc)
    fds = _socket_fds(nfds, built, tcp)
    want = _make_ready(fds, ready)
    udatas = [i + 1 for i in range(nfds)]
    regs = [(fd, lib.EVFILT_READ, lib.EV_ADD, 0, u) for fd, u in zip(fds, udatas)]
    regs += [(i, lib.EVFILT_TIMER, lib.EV_ADD, TIMER_PERIOD_MS, 0) for i in range(timers)]

    # -- kqueue_py: the raw helper kq_wait + one-buffer decode -----------
    kq = _new_kq(built)
    _kq_apply_all(kq, _kq_batch(regs), len(regs))
    buf = Buffer(cap)       # an event array with the package's views of it
    events = buf.events
    last: Dict[str, Any] = {}

    def run_kq_wait(n: int) -> None:
        wait, it, ev, k_, b = kq_wait, _kev4_rows, events, kq, buf
        out: List[Tuple[int, int, int, int]] = []
        for _ in range(n):
            k = wait(k_, ev, cap, 0)
            out = list(it(b, k)) if k > 0 else []
        last["kqueue_py"] = out

    built.runners["kqueue_py kq_wait"] = run_kq_wait
    built.roles["kqueue_py"] = "kqueue_py kq_wait"

    if lib_variant:
        ts0 = ffi.new("struct timespec *")

        def run_lib(n: int) -> None:
            kevent, null, it, ev, k_, b = lib.kevent, ffi.NULL, _kev4_rows, events, kq, buf
            out: List[Tuple[int, int, int, int]] = []
            for _ in range(n):
                k = kevent(k_, null, 0, ev, cap, ts0)
                out = list(it(b, k)) if k > 0 else []
            last["lib"] = out

        built.runners["kqueue_py lib.kevent"] = run_lib

    if cdata_variant:
        ts1 = ffi.new("struct timespec *")

        def run_cdata(n: int) -> None:
            kevent, null, ev, k_ = lib.kevent, ffi.NULL, events, kq
            out: List[Tuple[Any, ...]] = []
            for _ in range(n):
                k = kevent(k_, null, 0, ev, cap, ts1)
                out = [(e.ident, e.filter, e.data, e.udata) for e in ev[0:k]] if k > 0 else []
            last["cdata"] = out

        built.runners["kqueue_py cdata fields"] = run_cdata

    # -- the Pythonic API -------------------------------------------------
    if not timers:
        q = KQueue()
        built.cleanup.append(q.close)
        for fd, u in zip(fds, udatas):
            q.add_reader(fd, u)
        q_wait, q_tuples = q.wait, q.wait_tuples

        # As the kq_wait runner, the events are handed on only when there are
        # some (an empty comprehension alone costs ~100 ns on CPython 3.11).
        def run_q_wait(n: int) -> None:
            wait = q_wait
            for _ in range(n):
                evs = wait(0, cap)
                out = [(e.ident, e.filter, e.data, e.udata) for e in evs] if evs else []
                del out

        def run_q_tuples(n: int) -> None:
            wait = q_tuples
            for _ in range(n):
                evs = wait(0, cap)
                out = [(e[0], e[1], e[4], e[5]) for e in evs] if evs else []
                del out

        built.runners["kqueue_py KQueue.wait"] = run_q_wait
        built.runners["kqueue_py KQueue.wait_tuples"] = run_q_tuples
        built.roles["KQueue.wait"] = "kqueue_py KQueue.wait"
        built.checks.append(lambda: _expect(
            "KQueue", [(e.ident, e.filter, e.data, e.udata) for e in q.wait(0, cap)], want))

    # -- ctypes -----------------------------------------------------------
    ct = ctx.ct
    ckq = _ct_new_kq(ct, built)
    _ct_apply_all(ct, ckq, _ct_batch(regs), len(regs))
    carr = ct.events(cap)
    cts = ctypes.pointer(Timespec(0, 0))

    def run_ctypes(n: int) -> None:
        kevent, arr, k_, tsp = ct.kevent, carr, ckq, cts
        out: List[Tuple[int, int, int, Any]] = []
        for _ in range(n):
            k = kevent(k_, None, 0, arr, cap, tsp)
            out = [(e.ident, e.filter, e.data, e.udata) for e in arr[:k]] if k > 0 else []
        last["ctypes"] = out

    built.runners["ctypes"] = run_ctypes
    built.roles["ctypes"] = "ctypes"

    # -- the stdlib -------------------------------------------------------
    if stdlib and not timers:
        _stdlib_poll(built, fds, udatas, cap, last)
        built.checks.append(lambda: _expect("stdlib", last.get("stdlib", []), want))
        built.checks.append(lambda: _expect("selectors", last.get("selectors", []), want))
        built.checks.append(lambda: _expect("kqueue_py selector",
                                            last.get("kqueue_py selector", []), want))
    elif timers:
        built.notes.append("stdlib: no timer facility in select/selectors to compare with")

    def check() -> None:
        for name, run in built.runners.items():
            if not name.startswith("kqueue_py KQueue"):
                run(1)
        _expect("kqueue_py", last["kqueue_py"], want)
        _expect("ctypes", last["ctypes"], want)
        for key in ("lib", "cdata"):
            if key in last:
                _expect(key, last[key], want)
        got = {(int(t[0]), int(t[3])) for t in last["kqueue_py"]}
        ref = {(int(t[0]), int(t[3] or 0)) for t in last["ctypes"]}
        if got != ref:
            raise AssertionError("kqueue_py and ctypes disagree on (ident, udata)")

    built.checks.insert(0, check)
    return built


def _stdlib_poll(built: Built, fds: List[int], udatas: List[int], cap: int,
                 last: Dict[str, Any]) -> None:
    umap = dict(zip(fds, udatas))
    if HAVE_EPOLL:
        ep = select.epoll()
        built.cleanup.append(ep.close)
        for fd in fds:
            ep.register(fd, select.EPOLLIN)

        def run_epoll(n: int) -> None:
            poll, m = ep.poll, umap
            out: List[Tuple[int, int, int]] = []
            for _ in range(n):
                evs = poll(0, cap)
                out = [(fd, mask, m[fd]) for fd, mask in evs] if evs else []
            last["stdlib"] = out

        # The same maxevents as kqueue_py's event array: the one epoll call
        # the table, the targets and the chart compare with.
        built.runners[f"stdlib epoll.poll(0, {cap})"] = run_epoll
        built.roles["stdlib"] = f"stdlib epoll.poll(0, {cap})"
    elif HAVE_STDLIB_KQUEUE:  # pragma: no cover - BSD/macOS
        skq = select.kqueue()  # type: ignore[attr-defined]
        built.cleanup.append(skq.close)
        skq.control([select.kevent(fd, select.KQ_FILTER_READ,  # type: ignore[attr-defined]
                                   select.KQ_EV_ADD, udata=u)  # type: ignore[attr-defined]
                     for fd, u in zip(fds, udatas)], 0, 0)

        def run_kqueue(n: int) -> None:
            control = skq.control
            out: List[Tuple[int, int, int, int]] = []
            for _ in range(n):
                evs = control(None, cap, 0)
                out = [(e.ident, e.filter, e.data, e.udata) for e in evs] if evs else []
            last["stdlib"] = out

        built.runners["stdlib kqueue.control"] = run_kqueue
        built.roles["stdlib"] = "stdlib kqueue.control"

    sel = selectors.DefaultSelector()
    built.cleanup.append(sel.close)
    for fd, u in zip(fds, udatas):
        sel.register(fd, selectors.EVENT_READ, u)

    def run_selectors(n: int) -> None:
        sel_select = sel.select
        out: List[Tuple[int, int, Any]] = []
        for _ in range(n):
            evs = sel_select(0)
            out = [(key.fd, mask, key.data) for key, mask in evs] if evs else []
        last["selectors"] = out

    built.runners[f"stdlib {type(sel).__name__}.select"] = run_selectors
    built.roles["stdlib selector"] = f"stdlib {type(sel).__name__}.select"
    if "stdlib" not in built.roles:
        built.roles["stdlib"] = f"stdlib {type(sel).__name__}.select"

    # kqueue_py's own selector on the same fds: the selector-level comparison.
    from ..selectors import KqueueSelector

    ksel = KqueueSelector()
    built.cleanup.append(ksel.close)
    for fd, u in zip(fds, udatas):
        ksel.register(fd, selectors.EVENT_READ, u)

    def run_kqueue_selector(n: int) -> None:
        ksel_select = ksel.select
        out: List[Tuple[int, int, Any]] = []
        for _ in range(n):
            evs = ksel_select(0)
            out = [(key.fd, mask, key.data) for key, mask in evs] if evs else []
        last["kqueue_py selector"] = out

    built.runners["kqueue_py KqueueSelector.select"] = run_kqueue_selector
    built.roles["KqueueSelector"] = "kqueue_py KqueueSelector.select"


def build_empty_poll(ctx: Context) -> Built:
    return _build_poll(ctx, nfds=2, ready=0, cap=64, unit="poll",
                       rawc=("empty_poll", 0))


def build_ready64(ctx: Context) -> Built:
    b = _build_poll(ctx, nfds=128, ready=64, cap=64, unit="wait of 64",
                    rawc=("ready", 64), cdata_variant=True)
    b.notes.append("stdlib epoll hands (fd, mask, udata-from-dict): it reports no byte "
                   "count, kqueue_py's data is FIONREAD (see rawC epoll+FIONREAD)")
    _identity_notes(b)
    return b


def _identity_notes(b: Built) -> None:
    b.notes.append("rawC epoll+FIONREAD+probe adds the identity check as a system call "
                   "per event: the kernel's part with io_uring off")
    b.notes.append("rawC epoll+ring: the kernel's part with io_uring, as the backend "
                   "makes it (the probes, and on TCP the counts, in one io_uring_enter "
                   "per wait; where the kernel has io_uring)")
    b.notes.append("rawC epoll+FIONREAD+MOD: the kernel's part of the check the lifetime "
                   "rule replaced (an EPOLL_CTL_MOD of the item per event)")


def build_ready64_tcp(ctx: Context) -> Built:
    b = _build_poll(ctx, nfds=128, ready=64, cap=64, unit="wait of 64",
                    rawc=("ready_tcp", 64), cdata_variant=True, tcp=True)
    b.notes.append("ready64 over connected TCP pairs on loopback instead of AF_UNIX")
    _identity_notes(b)
    return b


def _active_n(want: int) -> Callable[[Context], Built]:
    def build(ctx: Context) -> Built:
        n = want
        if n > ctx.fd_budget:
            n = max(10, ctx.fd_budget - ctx.fd_budget % 2)
        b = _build_poll(ctx, nfds=n, ready=1, cap=64, unit="poll", rawc=("active", n))
        if n != want:
            b.notes.append(f"scaled down: {n} registered, not {want} "
                           "(RLIMIT_NOFILE too low)")
        return b

    return build


def build_timers_wait(ctx: Context) -> Built:
    n = 10_000
    b = _build_poll(ctx, nfds=2, ready=0, cap=64, timers=n, unit="poll",
                    rawc=("timers_wait", n))
    b.notes.append(f"{n} EVFILT_TIMER armed ({TIMER_PERIOD_MS} ms periodic), nothing ready")
    return b


# ------------------------------------------------------- batch scenarios

def _build_batch(ctx: Context, *, regs: List[Tuple[int, int, int, int, int]],
                 dels: List[Tuple[int, int, int, int, int]], unit: str,
                 rawc: Tuple[str, int]) -> Built:
    """One op: one kevent() with every EV_ADD, then one with every EV_DELETE."""
    built = Built(runners={}, roles={}, unit=unit, rawc=rawc)
    n = len(regs)
    kq = _new_kq(built)
    add, dele = _kq_batch(regs), _kq_batch(dels)

    def run_kq(m: int) -> None:
        kevent, null, k_, a, d = lib.kevent, ffi.NULL, kq, add, dele
        for _ in range(m):
            if kevent(k_, a, n, null, 0, null) < 0 or kevent(k_, d, n, null, 0, null) < 0:
                kqueue_py.raise_errno()

    built.runners["kqueue_py lib.kevent (prebuilt)"] = run_kq
    built.roles["kqueue_py"] = "kqueue_py lib.kevent (prebuilt)"

    # The same, building both changelists in Python on every op.
    buf = bytearray(n * KEVENT_SIZE)
    cbuf = ffi.from_buffer("struct kevent[]", buf)

    def run_kq_pack(m: int) -> None:
        kevent, null, k_, pack = lib.kevent, ffi.NULL, kq, _KEVFULL.pack_into
        for _ in range(m):
            off = 0
            for ident, filt, flags, data, udata in regs:
                pack(buf, off, ident, filt, flags, 0, data, udata)
                off += KEVENT_SIZE
            if kevent(k_, cbuf, n, null, 0, null) < 0:
                kqueue_py.raise_errno()
            off = 0
            for ident, filt, flags, data, udata in dels:
                pack(buf, off, ident, filt, flags, 0, data, udata)
                off += KEVENT_SIZE
            if kevent(k_, cbuf, n, null, 0, null) < 0:
                kqueue_py.raise_errno()

    built.runners["kqueue_py struct.pack_into + lib.kevent"] = run_kq_pack

    ct = ctx.ct
    ckq = _ct_new_kq(ct, built)
    cadd, cdel = _ct_batch(regs), _ct_batch(dels)

    def run_ct(m: int) -> None:
        kevent, k_, a, d = ct.kevent, ckq, cadd, cdel
        for _ in range(m):
            if kevent(k_, a, n, None, 0, None) < 0 or kevent(k_, d, n, None, 0, None) < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))

    built.runners["ctypes (prebuilt)"] = run_ct
    built.roles["ctypes"] = "ctypes (prebuilt)"

    def check() -> None:
        for run in built.runners.values():
            run(1)

    built.checks.append(check)
    return built


def build_regdel(ctx: Context) -> Built:
    want = 1000
    n = min(want, max(10, ctx.fd_budget))
    probe = Built(runners={}, roles={}, unit="")
    fds = _socket_fds(n, probe)
    regs = [(fd, lib.EVFILT_READ, lib.EV_ADD, 0, i + 1) for i, fd in enumerate(fds)]
    dels = [(fd, lib.EVFILT_READ, lib.EV_DELETE, 0, 0) for fd in fds]
    built = _build_batch(ctx, regs=regs, dels=dels, unit=f"add+delete of {n} fds",
                         rawc=("regdel", n))
    built.cleanup.insert(0, probe.close)
    if n != want:
        built.notes.append(f"scaled down to {n} fds (RLIMIT_NOFILE too low)")

    if HAVE_EPOLL:
        ep = select.epoll()
        built.cleanup.append(ep.close)

        def run_epoll(m: int) -> None:
            reg, unreg, ev = ep.register, ep.unregister, select.EPOLLIN
            for _ in range(m):
                for fd in fds:
                    reg(fd, ev)
                for fd in fds:
                    unreg(fd)

        built.runners["stdlib epoll.register/unregister"] = run_epoll
        built.roles["stdlib"] = "stdlib epoll.register/unregister"
    sel = selectors.DefaultSelector()
    built.cleanup.append(sel.close)

    def run_sel(m: int) -> None:
        reg, unreg, ev = sel.register, sel.unregister, selectors.EVENT_READ
        for _ in range(m):
            for i, fd in enumerate(fds):
                reg(fd, ev, i)
            for fd in fds:
                unreg(fd)

    name = f"stdlib {type(sel).__name__}.register/unregister"
    built.runners[name] = run_sel
    built.roles.setdefault("stdlib", name)
    built.notes.append("stdlib: one call per fd (no batch API); kqueue_py/ctypes: "
                       "2 kevent() calls per op")
    return built


def build_timers(ctx: Context) -> Built:
    n = 10_000
    regs = [(i, lib.EVFILT_TIMER, lib.EV_ADD, TIMER_PERIOD_MS, i + 1) for i in range(n)]
    dels = [(i, lib.EVFILT_TIMER, lib.EV_DELETE, 0, 0) for i in range(n)]
    b = _build_batch(ctx, regs=regs, dels=dels, unit=f"add+delete of {n} timers",
                     rawc=("timers", n))
    b.notes.append("stdlib: no timer facility in select/selectors to compare with")
    return b


# --------------------------------------------- cross-thread EVFILT_USER wake

def _echo_thread(name: str, body: Callable[[], None], built: Built,
                 stop_flag: Dict[str, bool], wake: Callable[[], object]) -> None:
    """Run ``body`` in a daemon thread; cleanup sets the stop flag, calls
    ``wake`` (which makes the blocked echo thread return) and joins."""
    t = threading.Thread(target=body, name=f"bench-echo-{name}", daemon=True)
    t.start()

    def finish() -> None:
        stop_flag["stop"] = True
        wake()
        t.join(10)
        if t.is_alive():
            print(f"bench: echo thread {name} did not stop", file=sys.stderr)

    built.cleanup.append(finish)


def _pin_to_one_cpu(built: Built) -> Optional[int]:
    """Pin the calling thread, and so every thread it starts from now on, to
    one CPU until ``built`` is closed (then the old affinity comes back,
    after the threads are joined: cleanup runs last to first).  Returns the
    CPU, or None where threads cannot be pinned (BSD, macOS)."""
    getaff = getattr(os, "sched_getaffinity", None)
    setaff = getattr(os, "sched_setaffinity", None)
    if getaff is None or setaff is None:  # pragma: no cover - not Linux
        return None
    saved = getaff(0)
    cpu: int = min(saved)
    setaff(0, {cpu})
    built.cleanup.insert(0, lambda: setaff(0, saved))
    return cpu


def build_user_rt(ctx: Context) -> Built:
    """Thread A triggers B's user event; B, blocked in kevent(), wakes and
    triggers A's; A wakes.  One op = one round trip.

    Every thread of the scenario (and of the raw-C program's) runs on one
    CPU: a wake-up is then a switch between two threads of that CPU, whose
    cost is the work of the calls measured.  Across two CPUs it would be
    dominated by the sleeping CPU's exit from idle -- on a VM, ~5 us or ~50
    us depending on whether the vCPU halted, which no comparator controls
    and which made the numbers bimodal.  Pinned, every comparator does the
    same thing (each side wakes the other with one call and blocks in one),
    on the same CPU, interleaved."""
    built = Built(runners={}, roles={}, unit="round trip", rawc=("user_rt", 0))
    if _pin_to_one_cpu(built) is None:  # pragma: no cover - not Linux
        built.notes.append("a round trip is two cross-CPU wakeups: waking an idle CPU "
                           "(on a VM: an idle vCPU) dominates, so results can be bimodal "
                           "and depend on what else runs")
    else:
        built.notes.append("both threads of every comparator run on one CPU (the raw-C "
                           "program's too): a wake is a switch between two threads, not a "
                           "CPU's exit from idle, which made cross-CPU numbers bimodal")
    stop_flag = {"stop": False}

    # -- kqueue_py: kq_apply / kq_wait ----------------------------------
    kqa, kqb = _new_kq(built), _new_kq(built)
    for kq in (kqa, kqb):
        if not kq_apply(kq, kev_change(1, lib.EVFILT_USER, lib.EV_ADD | lib.EV_CLEAR)):
            kqueue_py.raise_errno()
    trig = kev_change(1, lib.EVFILT_USER, 0, fflags=lib.NOTE_TRIGGER)

    def echo_kq() -> None:
        ev = new_events(1)
        while kq_wait(kqb, ev, 1, -1) >= 0 and not stop_flag["stop"]:
            kq_apply(kqa, trig)

    _echo_thread("kqueue_py", echo_kq, built,
                 stop_flag, lambda: kq_apply(kqb, trig))
    eva = new_events(1)

    def run_kq(n: int) -> None:
        apply, wait, a, b, t, ev = kq_apply, kq_wait, kqa, kqb, trig, eva
        for _ in range(n):
            apply(b, t)
            wait(a, ev, 1, -1)

    built.runners["kqueue_py kq_apply/kq_wait"] = run_kq
    built.roles["kqueue_py"] = "kqueue_py kq_apply/kq_wait"
    # The same program timed a second time, apart (A/A): the spread this
    # scenario's noise alone gives (a full run once put kq_apply/kq_wait
    # at 1.08x the stdlib's where runs of this scenario alone gave
    # 0.97-0.99x).
    built.runners["kqueue_py kq_apply/kq_wait, a second time"] = run_kq
    built.roles["kqueue_py again"] = "kqueue_py kq_apply/kq_wait, a second time"

    def check_kq() -> None:
        kq_apply(kqb, trig)
        if kq_wait(kqa, eva, 1, 5000) != 1:
            raise AssertionError("kqueue_py: no wake within 5 s")

    built.checks.append(check_kq)

    # -- the Pythonic API -------------------------------------------------
    qa, qb = KQueue(), KQueue()
    qa.add_user(1)
    qb.add_user(1)

    # Called as the other variants' functions are: bound once, then
    # directly (the stdlib's eventfd_write/poll/read likewise).
    def echo_q() -> None:
        wait, trigger = qb.wait, qa.trigger
        try:
            while True:
                wait(None, 1)
                if stop_flag["stop"]:
                    break
                trigger(1)
        except (OSError, ValueError):
            pass

    # Thread joined (finish) before the queues close: LIFO cleanup.
    built.cleanup.append(qa.close)
    built.cleanup.append(qb.close)
    _echo_thread("KQueue", echo_q, built,
                 stop_flag, lambda: qb.trigger(1))

    def run_q(n: int) -> None:
        trigger, wait = qb.trigger, qa.wait
        for _ in range(n):
            trigger(1)
            wait(None, 1)

    def check_q() -> None:
        qb.trigger(1)
        if len(qa.wait(5, 1)) != 1:
            raise AssertionError("KQueue: no wake within 5 s")

    built.checks.append(check_q)
    built.runners["kqueue_py KQueue.trigger/wait"] = run_q
    built.roles["KQueue"] = "kqueue_py KQueue.trigger/wait"

    # -- ctypes -----------------------------------------------------------
    ct = ctx.ct
    cka, ckb = _ct_new_kq(ct, built), _ct_new_kq(ct, built)
    for kq in (cka, ckb):
        reg = KEvent(1, lib.EVFILT_USER, lib.EV_ADD | lib.EV_CLEAR, 0, 0, None)
        if ct.kevent(kq, ctypes.byref(reg), 1, None, 0, None) < 0:
            raise OSError(ctypes.get_errno(), "ctypes kevent")
    ctrig = KEvent(1, lib.EVFILT_USER, 0, lib.NOTE_TRIGGER, 0, None)

    def echo_ct() -> None:
        ev = (KEvent * 1)()
        kevent = ct.kevent
        while kevent(ckb, None, 0, ev, 1, None) >= 0 and not stop_flag["stop"]:
            kevent(cka, ctrig, 1, None, 0, None)

    _echo_thread("ctypes", echo_ct, built,
                 stop_flag, lambda: ct.kevent(ckb, ctrig, 1, None, 0, None))
    ceva = (KEvent * 1)()

    def run_ct(n: int) -> None:
        kevent, a, b, t, ev = ct.kevent, cka, ckb, ctrig, ceva
        for _ in range(n):
            kevent(b, t, 1, None, 0, None)
            kevent(a, None, 0, ev, 1, None)

    built.runners["ctypes"] = run_ct
    built.roles["ctypes"] = "ctypes"

    def check_ct() -> None:
        ct.kevent(ckb, ctrig, 1, None, 0, None)
        if ct.kevent(cka, None, 0, ceva, 1, ctypes.pointer(Timespec(5, 0))) != 1:
            raise AssertionError("ctypes: no wake within 5 s")

    built.checks.append(check_ct)

    # -- the stdlib: eventfd (or a pipe) + epoll (or selectors) -----------
    _stdlib_roundtrip(built, stop_flag)
    return built


def _stdlib_roundtrip(built: Built, stop_flag: Dict[str, bool]) -> None:
    if HAVE_EPOLL and hasattr(os, "eventfd"):
        efa, efb = os.eventfd(0), os.eventfd(0)
        epa, epb = select.epoll(), select.epoll()
        built.cleanup += [epa.close, epb.close, lambda: os.close(efa), lambda: os.close(efb)]
        epa.register(efa, select.EPOLLIN)
        epb.register(efb, select.EPOLLIN)

        def echo() -> None:
            while True:
                epb.poll()
                os.eventfd_read(efb)
                if stop_flag["stop"]:
                    break
                os.eventfd_write(efa, 1)

        _echo_thread("stdlib", echo, built,
                     stop_flag, lambda: os.eventfd_write(efb, 1))

        def run(n: int) -> None:
            write, read, poll, a, b = os.eventfd_write, os.eventfd_read, epa.poll, efa, efb
            for _ in range(n):
                write(b, 1)
                poll()
                read(a)

        def check() -> None:
            os.eventfd_write(efb, 1)
            if not epa.poll(5):
                raise AssertionError("stdlib: no wake within 5 s")
            os.eventfd_read(efa)

        name = "stdlib eventfd + epoll.poll"
    else:  # pragma: no cover - BSD/macOS: pipes and the default selector
        ra, wa = os.pipe()
        rb, wb = os.pipe()
        sa, sb = selectors.DefaultSelector(), selectors.DefaultSelector()
        built.cleanup += [sa.close, sb.close] + [
            functools.partial(os.close, fd) for fd in (ra, wa, rb, wb)]
        sa.register(ra, selectors.EVENT_READ)
        sb.register(rb, selectors.EVENT_READ)

        def echo() -> None:
            while True:
                sb.select()
                os.read(rb, 1)
                if stop_flag["stop"]:
                    break
                os.write(wa, b"x")

        _echo_thread("stdlib", echo, built,
                     stop_flag, lambda: os.write(wb, b"x"))

        def run(n: int) -> None:
            for _ in range(n):
                os.write(wb, b"x")
                sa.select()
                os.read(ra, 1)

        def check() -> None:
            os.write(wb, b"x")
            if not sa.select(5):
                raise AssertionError("stdlib: no wake within 5 s")
            os.read(ra, 1)

        name = "stdlib pipe + selectors"
    built.runners[name] = run
    built.roles["stdlib"] = name
    built.checks.append(check)


# ------------------------------------------------ one trigger, nobody waits

def build_trigger(ctx: Context) -> Built:
    """One op: trigger an EVFILT_USER event (``NOTE_TRIGGER``) that nobody
    waits for -- what a worker thread does to wake an event loop."""
    built = Built(runners={}, roles={}, unit="trigger", rawc=("trigger", 0))
    q = KQueue()
    built.cleanup.append(q.close)
    q.add_user(1)

    def run_q(n: int) -> None:
        trigger = q.trigger
        for _ in range(n):
            trigger(1)

    built.runners["kqueue_py KQueue.trigger"] = run_q
    built.roles["KQueue.trigger"] = "kqueue_py KQueue.trigger"

    kq = _new_kq(built)
    if not kq_apply(kq, kev_change(1, lib.EVFILT_USER, lib.EV_ADD | lib.EV_CLEAR)):
        kqueue_py.raise_errno()
    trig = kev_change(1, lib.EVFILT_USER, 0, fflags=lib.NOTE_TRIGGER)

    def run_kq(n: int) -> None:
        apply, k_, t = kq_apply, kq, trig
        for _ in range(n):
            apply(k_, t)

    built.runners["kqueue_py kq_apply"] = run_kq
    built.roles["kqueue_py"] = "kqueue_py kq_apply"

    ct = ctx.ct
    ckq = _ct_new_kq(ct, built)
    reg = KEvent(1, lib.EVFILT_USER, lib.EV_ADD | lib.EV_CLEAR, 0, 0, None)
    if ct.kevent(ckq, ctypes.byref(reg), 1, None, 0, None) < 0:
        raise OSError(ctypes.get_errno(), "ctypes kevent")
    ctrig = KEvent(1, lib.EVFILT_USER, 0, lib.NOTE_TRIGGER, 0, None)

    def run_ct(n: int) -> None:
        kevent, k_, t = ct.kevent, ckq, ctrig
        for _ in range(n):
            kevent(k_, t, 1, None, 0, None)

    built.runners["ctypes"] = run_ct
    built.roles["ctypes"] = "ctypes"

    if hasattr(os, "eventfd"):
        efd = os.eventfd(0)
        built.cleanup.append(lambda: os.close(efd))

        def run_ef(n: int) -> None:
            write, fd = os.eventfd_write, efd
            for _ in range(n):
                write(fd, 1)

        built.runners["stdlib os.eventfd_write"] = run_ef
        built.roles["stdlib"] = "stdlib os.eventfd_write"
    else:  # PyPy 3.9, BSD/macOS: a pipe (drained now and then: it must not fill)
        r, w = os.pipe()
        os.set_blocking(r, False)
        built.cleanup += [functools.partial(os.close, r), functools.partial(os.close, w)]

        def run_pipe(n: int) -> None:
            write, read, fd = os.write, os.read, w
            for i in range(n):
                write(fd, b"x")
                if i & 1023 == 1023:
                    read(r, 65536)
            try:
                read(r, 65536)
            except BlockingIOError:
                pass

        built.runners["stdlib os.write(pipe)"] = run_pipe
        built.roles["stdlib"] = "stdlib os.write(pipe)"
    built.notes.append("the stdlib's way to wake a loop from a thread is a write to an "
                       "eventfd (a pipe where there is none): one system call each time; "
                       "a user event already triggered needs none")

    def check() -> None:
        q.trigger(1)
        if [e.ident for e in q.wait(0)] != [1]:
            raise AssertionError("KQueue.trigger: no event")
        for run in built.runners.values():
            run(1)

    built.checks.append(check)
    return built


# ------------------------------------------------- asyncio: an echo server

ECHO_CLIENTS = 32
ECHO_MESSAGE = b"x" * 64


class _EchoServer(asyncio.BufferedProtocol):
    """Echoes what it reads (into one buffer of its own: no allocation per read)."""

    def __init__(self) -> None:
        self.buf = bytearray(4096)
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytes(self.buf[:nbytes]))


class _EchoClient(asyncio.BufferedProtocol):
    """Sends ECHO_MESSAGE, waits for all of it to come back, ``left`` times."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.left = 0
        self.buf = bytearray(4096)
        self.got = 0
        self.done: Optional[asyncio.Future[None]] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def start(self, requests: int, done: asyncio.Future[None]) -> None:
        self.left = requests
        self.done = done
        self.got = 0
        self.transport.write(ECHO_MESSAGE)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)[self.got:]

    def buffer_updated(self, nbytes: int) -> None:
        self.got += nbytes
        if self.got < len(ECHO_MESSAGE):
            return
        assert self.done is not None
        if self.got != len(ECHO_MESSAGE) or self.buf[:self.got] != ECHO_MESSAGE:
            self.done.set_exception(AssertionError(f"echo returned {bytes(self.buf[:16])!r}..."))
            return
        self.got = 0
        self.left -= 1
        if self.left > 0:
            self.transport.write(ECHO_MESSAGE)
        elif not self.done.done():
            self.done.set_result(None)


def _echo_runner(loop: asyncio.AbstractEventLoop, clients: List[_EchoClient]) -> Runner:
    """``run(n)``: n requests, spread over the clients, all at once."""
    def run(n: int) -> None:
        k, extra = divmod(n, len(clients))
        futs = []
        for i, c in enumerate(clients):
            want = k + (1 if i < extra else 0)
            if want:
                fut = loop.create_future()
                c.start(want, fut)
                futs.append(fut)
        loop.run_until_complete(asyncio.gather(*futs))

    return run


def _echo_setup(built: Built, loop: asyncio.AbstractEventLoop, n: int) -> List[_EchoClient]:
    async def setup() -> Tuple[Any, List[_EchoClient]]:
        server = await loop.create_server(_EchoServer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = []
        for _ in range(n):
            _t, c = await loop.create_connection(_EchoClient, "127.0.0.1", port)
            clients.append(c)
        return server, clients

    server, clients = loop.run_until_complete(setup())

    def close() -> None:
        for c in clients:
            c.transport.close()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    built.cleanup.append(close)
    return clients


def build_asyncio_echo(ctx: Context) -> Built:
    """An echo server and N clients over TCP loopback in one event loop,
    ``asyncio.BufferedProtocol`` on both sides (no allocation per read, so
    the loop's own work weighs more); one op = one request (64 bytes there
    and back).  The same program on
    ``SelectorEventLoop(KqueueSelector())`` and on asyncio's default loop
    (``EpollSelector`` on Linux): time per request, so the speed-up is the
    ratio of requests per second."""
    from ..selectors import KqueueSelector

    n = min(ECHO_CLIENTS, max(1, (ctx.fd_budget - 8) // 2))
    built = Built(runners={}, roles={}, unit=f"request ({n} clients)")
    std_loop = asyncio.new_event_loop()
    std_clients = _echo_setup(built, std_loop, n)
    kq_loop = asyncio.SelectorEventLoop(KqueueSelector())
    kq_clients = _echo_setup(built, kq_loop, n)
    sel = getattr(std_loop, "_selector", None)
    std_name = f"stdlib asyncio default loop ({type(sel).__name__ if sel else '?'})"
    built.runners[std_name] = _echo_runner(std_loop, std_clients)
    built.runners["kqueue_py asyncio SelectorEventLoop(KqueueSelector())"] = _echo_runner(
        kq_loop, kq_clients)
    built.roles["kqueue_py"] = "kqueue_py asyncio SelectorEventLoop(KqueueSelector())"
    built.roles["stdlib"] = std_name

    # The default loop once more, on sockets of its own: the same program
    # as the "stdlib" variant, so the ratio of the two (an A/A comparison)
    # is what this run's noise alone makes of two equal loops.
    again_loop = asyncio.new_event_loop()
    again_clients = _echo_setup(built, again_loop, n)
    built.runners[f"{std_name}, a second one"] = _echo_runner(again_loop, again_clients)
    built.roles["stdlib again"] = f"{std_name}, a second one"
    built.notes.append("the default loop is timed twice, as two loops of their own: their "
                       "ratio (A/A in the targets) is the spread this run gives two equal "
                       "loops")

    # The default loop again, its sockets also registered (EVFILT_READ) in
    # a kqueue_py queue nobody waits on: what the backend's registrations
    # cost the socket calls themselves, in the kernel (each registered
    # descriptor has epoll items of the backend's, which every wake-up of
    # the socket visits), apart from what the selector does.
    shadow_loop = asyncio.new_event_loop()
    shadow_clients = _echo_setup(built, shadow_loop, n)
    idle = KQueue()
    built.cleanup.append(idle.close)
    shadow_sel = getattr(shadow_loop, "_selector", None)
    if shadow_sel is not None:
        for key in list(shadow_sel.get_map().values()):
            idle.add_reader(key.fd)
        built.runners[f"{std_name}, sockets also in an idle kqueue_py queue"] = _echo_runner(
            shadow_loop, shadow_clients)
        built.notes.append("the default loop is also timed with its sockets registered in an "
                           "idle kqueue_py queue: the difference is what the backend's "
                           "registrations cost the socket calls in the kernel, apart from the "
                           "selector")
    if n != ECHO_CLIENTS:
        built.notes.append(f"scaled down: {n} clients, not {ECHO_CLIENTS} "
                           "(RLIMIT_NOFILE too low)")

    def check() -> None:
        for run in built.runners.values():
            run(2 * n)

    built.checks.append(check)
    return built


# ---------------------------------------------------------------- registry

SCENARIOS: List[Scenario] = [
    Scenario("empty_poll", "empty poll (timeout 0, nothing ready)", build_empty_poll),
    Scenario("ready64", "wait returning 64 ready sockets -> (ident, filter, data, udata)",
             build_ready64),
    Scenario("ready64_tcp", "the same, 64 ready TCP sockets (loopback)", build_ready64_tcp),
    Scenario("regdel1000", "register + delete 1,000 fds, one batch each", build_regdel),
    Scenario("active1of10", "1 active among 10 registered (poll)", _active_n(10)),
    Scenario("active1of10000", "1 active among 10,000 registered (poll)", _active_n(10_000)),
    Scenario("user_wake_rt", "cross-thread EVFILT_USER wake round trip", build_user_rt),
    Scenario("trigger", "trigger a user event nobody waits for", build_trigger),
    Scenario("timers10000", "add + delete 10,000 EVFILT_TIMER, one batch each", build_timers),
    Scenario("timers_armed_wait", "poll while 10,000 timers are armed", build_timers_wait),
    Scenario("asyncio_echo", f"asyncio echo server, {ECHO_CLIENTS} concurrent clients "
             "(TCP loopback)", build_asyncio_echo),
]


# ---------------------------------------------------------------- floors

#: Slack for two separately timed programs: a variant is "faster than its
#: floor" only when the floor took more than this many times its time.
FLOOR_SLACK = 1.3


def floors(variants: List[str], scenario: str = "") -> Dict[str, List[str]]:
    """For each raw-C variant present, the variants that do its work and
    more, so can never be faster: every kqueue_py and ctypes variant calls
    the very ``kevent`` that ``rawC kevent`` calls (not the selector: it
    registers with ``NOTE_NODATA``, which spares the backend work per
    event); the stdlib's epoll variants make the system calls that
    ``rawC epoll`` makes; and each of the ready scenarios' kernel floors
    (:data:`RAWC_EPOLL_CHAIN`) does the work of the ones before it, and
    the backend's ``kevent()`` of ready sockets at least what
    :data:`RAWC_EPOLL_RING` does.  (The
    batch scenarios' C program keeps its heap as a long-lived process
    does: see rawc_bench.c's ``mallopt``.)"""
    out: Dict[str, List[str]] = {}
    if RAWC_KEVENT in variants:
        out[RAWC_KEVENT] = [v for v in variants if v.startswith(("kqueue_py", "ctypes"))
                            and "KqueueSelector" not in v]
    if RAWC_EPOLL in variants:
        out[RAWC_EPOLL] = [v for v in variants
                           if v.startswith(("stdlib epoll", "stdlib eventfd", "stdlib Epoll",
                                            "stdlib os.eventfd"))]
    for i, floor in enumerate(RAWC_EPOLL_CHAIN):
        if floor in variants:
            out.setdefault(floor, []).extend(
                v for v in RAWC_EPOLL_CHAIN[i + 1:] if v in variants)
    if RAWC_EPOLL_CHAIN[1] in variants:
        out.setdefault(RAWC_EPOLL_CHAIN[1], []).extend(
            v for v in (RAWC_EPOLL_RING, RAWC_EPOLL_MOD) if v in variants)
    if RAWC_EPOLL_RING in variants and RAWC_KEVENT in variants:
        # The backend's kevent() of these events makes at least those
        # calls (through the ring, or dearer as system calls).
        out[RAWC_EPOLL_RING] = [RAWC_KEVENT]
    return {k: v for k, v in out.items() if v}


# ---------------------------------------------------------------- targets

@dataclass(frozen=True)
class Target:
    """What kqueue_py aims for: ``num`` / ``den`` (roles or variant names of
    scenario ``scenario``; ``den_scenario`` if the denominator is another
    scenario's) compared with ``bound`` by ``op``; with ``den`` None,
    ``num``'s time per operation in ns.  Where the scenario also has a
    role ``"<num> again"`` (``num``'s program timed a second time, apart),
    ``num`` / that (an A/A comparison) is reported beside the value: the
    spread the run's noise alone gives two equal programs.  The verdict
    does not compare with it, but an A/A beyond ``report.AA_SPREAD`` flags
    the scenario, and a flagged target is not scored."""

    scenario: str
    label: str
    num: str
    den: Optional[str]
    op: str
    bound: float
    den_scenario: Optional[str] = None


TARGETS: List[Target] = [
    Target("empty_poll", "empty poll: ctypes / kq_wait", "ctypes", "kqueue_py", ">=", 2.5),
    Target("empty_poll", "empty poll: kq_wait / the stdlib's poll", "kqueue_py", "stdlib",
           "<=", 1.05),
    Target("empty_poll", "empty poll: KQueue.wait / the stdlib's poll", "KQueue.wait",
           "stdlib", "<=", 1.2),
    Target("empty_poll", "empty poll: KQueue.wait / kq_wait", "KQueue.wait", "kqueue_py",
           "<=", 1.3),
    Target("active1of10", "1 active among 10: KQueue.wait / kq_wait", "KQueue.wait",
           "kqueue_py", "<=", 1.3),
    Target("ready64", "64 ready: KQueue.wait / kq_wait", "KQueue.wait", "kqueue_py",
           "<=", 1.6),
    Target("ready64", "64 ready: kq_wait / raw C (same backend call)", "kqueue_py",
           RAWC_KEVENT, "<=", 1.3),
    Target("active1of10000", "1 active: among 10,000 / among 10 (kq_wait)", "kqueue_py",
           "kqueue_py", "<=", 1.2, den_scenario="active1of10"),
    Target("empty_poll", "empty poll: KqueueSelector / the stdlib's selector",
           "KqueueSelector", "stdlib selector", "<=", 1.0),
    Target("active1of10", "1 active among 10: KqueueSelector / the stdlib's selector",
           "KqueueSelector", "stdlib selector", "<=", 1.0),
    Target("ready64", "64 ready: KqueueSelector / the stdlib's selector",
           "KqueueSelector", "stdlib selector", "<=", 1.0),
    Target("user_wake_rt", "wake round trip: kq_apply/kq_wait / the stdlib's",
           "kqueue_py", "stdlib", "<=", 1.05),
    Target("user_wake_rt", "wake round trip: KQueue.trigger/wait / the stdlib's",
           "KQueue", "stdlib", "<=", 1.2),
    Target("trigger", "KQueue.trigger, per call", "KQueue.trigger", None, "<=", 1000.0),
    Target("asyncio_echo", "asyncio echo: requests/s, KqueueSelector / the default loop",
           "stdlib", "kqueue_py", ">=", 1.0),
]
