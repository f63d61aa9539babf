"""Scale: registrations that cost no file descriptor each, and changelists of
100,000 entries.  (Costs are measured in the benchmark, not here.)"""
from __future__ import annotations

import os

from kqueue_py import ffi, lib
from kqueue_py.raw import kevent_struct

KEVENT = kevent_struct()
N = 100_000


def changelist(rows: list[tuple[int, int, int, int, int, int]]):
    buf = bytearray(len(rows) * KEVENT.size)
    for i, row in enumerate(rows):
        KEVENT.pack_into(buf, i * KEVENT.size, *row)
    return ffi.from_buffer("struct kevent[]", buf), buf


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_100k_timers_in_one_changelist_cost_no_descriptors(kq):
    # The first timer makes the queue's timerfd (and wake eventfd); the
    # other 100,000 cost no descriptor.
    kq.change((N + 1, lib.EVFILT_TIMER, lib.EV_ADD, 0, 3_600_000, 0))
    fds_before = open_fds()
    hour_ms = 3_600_000
    rows = [(i, lib.EVFILT_TIMER, lib.EV_ADD, 0, hour_ms, i) for i in range(1, N + 1)]
    arr, _keep = changelist(rows)
    assert lib.kevent(kq, arr, N, ffi.NULL, 0, ffi.NULL) == 0
    assert open_fds() == fds_before            # a heap entry each, not a timerfd each
    # Among them, one that fires at once is reported, and only it.
    one, _k1 = changelist([(0, lib.EVFILT_TIMER, lib.EV_ADD | lib.EV_ONESHOT, 0, 0, 7)])
    assert lib.kevent(kq, one, 1, ffi.NULL, 0, ffi.NULL) == 0
    evs = kq.wait(64, 2.0)
    assert [(e.ident, e.filter, e.udata) for e in evs] == [(0, lib.EVFILT_TIMER, 7)]
    assert kq.poll() == []
    # Deleting all 100,000 in one changelist: each exists, none errors.
    rows = [(i, lib.EVFILT_TIMER, lib.EV_DELETE, 0, 0, 0) for i in range(1, N + 1)]
    arr, _keep = changelist(rows)
    assert lib.kevent(kq, arr, N, ffi.NULL, 0, ffi.NULL) == 0
    again, _k2 = changelist([(N, lib.EVFILT_TIMER, lib.EV_DELETE, 0, 0, 0)])
    out = ffi.new("struct kevent[]", 1)
    assert lib.kevent(kq, again, 1, out, 1, ffi.NULL) == 1
    assert out[0].flags & lib.EV_ERROR and out[0].data == 2   # ENOENT: really gone


def test_100k_user_events_trigger_and_drain_in_order_without_loss(kq):
    kq.change((N + 1, lib.EVFILT_USER, lib.EV_ADD, 0, 0, 0))   # makes the wake eventfd
    fds_before = open_fds()
    rows = [(i, lib.EVFILT_USER, lib.EV_ADD | lib.EV_CLEAR, lib.NOTE_TRIGGER, 0, i)
            for i in range(N)]
    arr, _keep = changelist(rows)
    assert lib.kevent(kq, arr, N, ffi.NULL, 0, ffi.NULL) == 0
    assert open_fds() == fds_before
    seen: list[int] = []
    events = ffi.new("struct kevent[]", 4096)
    while True:
        n = lib.kevent(kq, ffi.NULL, 0, events, 4096, ffi.new("struct timespec *"))
        assert n >= 0
        if n == 0:
            break
        seen.extend(ident for ident, *_ in KEVENT.iter_unpack(ffi.buffer(events, n * KEVENT.size)))
    assert seen == list(range(N))              # every one exactly once, FIFO
