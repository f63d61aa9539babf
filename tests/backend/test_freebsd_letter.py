"""kqueue(2) details checked against FreeBSD's source, line by line.

Each test names the function of ``sys/kern/kern_event.c`` (or the stdlib
document) whose behaviour it pins: timers (``filt_timervalidate``,
``filt_timerattach``, ``filt_timertouch``), the change loop
(``kqueue_kevent``), and a queue's own descriptor (``kqueue_register``,
``kqueue_kqfilter``, ``filt_kqueue``).
"""
from __future__ import annotations

import errno
import socket
import time

import pytest

from kqueue_py import lib

import helpers as h

TIMER, USER, READ, WRITE, VNODE = (lib.EVFILT_TIMER, lib.EVFILT_USER, lib.EVFILT_READ,
                                   lib.EVFILT_WRITE, lib.EVFILT_VNODE)
EV_ADD, EV_DELETE, EV_ENABLE, EV_DISABLE = lib.EV_ADD, lib.EV_DELETE, lib.EV_ENABLE, lib.EV_DISABLE
EV_ONESHOT, EV_CLEAR, EV_DISPATCH = lib.EV_ONESHOT, lib.EV_CLEAR, lib.EV_DISPATCH
EV_ERROR, EV_RECEIPT = lib.EV_ERROR, lib.EV_RECEIPT
SECONDS, MSECONDS, USECONDS, NSECONDS = (lib.NOTE_SECONDS, lib.NOTE_MSECONDS,
                                         lib.NOTE_USECONDS, lib.NOTE_NSECONDS)
ABSTIME, TRIGGER = lib.NOTE_ABSTIME, lib.NOTE_TRIGGER


def timers(evs, ident):
    return [e for e in evs if (e.ident, e.filter) == (ident, TIMER)]


# ---------------------------------------------------------------------------
# Timers


def test_periodic_timer_of_zero_runs_every_millisecond(kq):
    """``filt_timervalidate``: ``if (kn->kn_sdata == 0 && (kn->kn_flags &
    EV_ONESHOT) == 0) kn->kn_sdata = 1;`` -- a periodic timer of 0 is one
    unit, a millisecond by default: at most one expiration per elapsed
    millisecond (not one per microsecond)."""
    t0 = time.monotonic()
    kq.change((1, TIMER, EV_ADD, 0, 0))
    time.sleep(0.1)
    evs = timers(kq.poll(), 1)
    elapsed = time.monotonic() - t0
    assert len(evs) == 1
    assert 50 <= evs[0].data <= elapsed * 1000 + 1, (evs[0].data, elapsed)


def test_periodic_timer_of_zero_seconds_runs_every_second(kq):
    """``filt_timervalidate`` makes ``data`` 0 one unit: with
    ``NOTE_SECONDS`` the first expiration comes after a second, not at once."""
    t0 = time.monotonic()
    kq.change((2, TIMER, EV_ADD, SECONDS, 0))
    assert timers(kq.wait(8, 0.5), 2) == []
    evs = timers(kq.wait(8, 3.0), 2)
    assert len(evs) == 1 and evs[0].data == 1
    assert time.monotonic() - t0 >= 1.0 - 0.002


def test_oneshot_timer_of_zero_still_fires_at_once(kq):
    """``filt_timervalidate`` exempts ``EV_ONESHOT``: 0 means now."""
    kq.change((3, TIMER, EV_ADD | EV_ONESHOT, SECONDS, 0))
    kq.change((4, TIMER, EV_ADD | EV_ONESHOT, 0, 300))      # the yardstick: 300 ms
    evs = kq.wait(8, 5.0)
    assert [(e.ident, e.data) for e in evs] == [(3, 1)], "not before a 300 ms timer"


def test_absolute_timer_gets_no_implied_clear_and_stays_active(kq):
    """``filt_timerattach``: ``if ((kn->kn_sfflags & NOTE_ABSTIME) == 0)
    kn->kn_flags |= EV_CLEAR;`` -- an absolute timer is level-triggered: once
    fired (``filt_timer``: ``kn_data != 0``) it is reported by every
    ``kevent()`` until it is deleted, with ``data`` 1 each time."""
    target_ms = int((time.time() + 0.05) * 1000)
    kq.change((4, TIMER, EV_ADD, ABSTIME | MSECONDS, target_ms, 9))
    first = timers(kq.wait(8, 2.0), 4)
    assert len(first) == 1
    assert not first[0].flags & EV_CLEAR
    assert (first[0].data, first[0].udata) == (1, 9)
    for _ in range(3):
        again = timers(kq.poll(), 4)
        assert [(e.data, e.udata) for e in again] == [(1, 9)]
    kq.change((4, TIMER, EV_DELETE))
    assert timers(kq.poll(), 4) == []


def test_absolute_timer_with_clear_is_reported_once(kq):
    """With ``EV_CLEAR`` asked for, ``filt_timertouch`` (``EVENT_PROCESS``)
    zeroes ``kn_data`` at the report, so ``filt_timer`` says no more."""
    kq.change((5, TIMER, EV_ADD | EV_CLEAR, ABSTIME | SECONDS, int(time.time()) - 5))
    assert len(timers(kq.wait(8, 2.0), 5)) == 1
    assert timers(kq.wait(8, 0.05), 5) == []


def test_absolute_timer_dispatch_reports_again_when_enabled(kq):
    """``EV_DISPATCH`` disables after the report; ``EV_ENABLE`` runs
    ``f_event`` again (``kqueue_register``), which still finds ``kn_data``."""
    kq.change((6, TIMER, EV_ADD | EV_DISPATCH, ABSTIME | SECONDS, int(time.time()) - 5))
    assert len(timers(kq.wait(8, 2.0), 6)) == 1
    assert timers(kq.poll(), 6) == []
    kq.change((6, TIMER, EV_ENABLE))
    assert [e.data for e in timers(kq.poll(), 6)] == [1]


@pytest.mark.parametrize("fflags", [0, SECONDS, USECONDS, ABSTIME | MSECONDS])
def test_timer_events_carry_fflags_zero(kq, fflags):
    """``kqueue_register`` stores the change's fflags apart (``kn_sfflags =
    kev->fflags; ... kev->fflags = 0; kn->kn_kevent = *kev;``) and a timer
    never sets ``kn_fflags``: its events carry ``fflags`` 0, whatever unit
    it was registered with."""
    data = int(time.time() * 1000) - 10 if fflags & ABSTIME else 1
    kq.change((11, TIMER, EV_ADD | EV_ONESHOT, fflags, data, 3))
    evs = timers(kq.wait(8, 3.0), 11)
    assert [(e.fflags, e.data, e.udata) for e in evs] == [(0, 1, 3)]


def test_relative_timer_still_implies_clear(kq):
    kq.change((7, TIMER, EV_ADD | EV_ONESHOT, 0, 1))
    evs = timers(kq.wait(8, 2.0), 7)
    assert len(evs) == 1 and evs[0].flags & EV_CLEAR


@pytest.mark.parametrize("fflags", [0x20, TRIGGER, lib.NOTE_NODATA, 0x80000000, SECONDS | 0x100])
def test_timer_unknown_fflags_are_einval(kq, fflags):
    """``filt_timervalidate``: ``if ((kn->kn_sfflags & ~(NOTE_TIMER_PRECMASK |
    NOTE_ABSTIME)) != 0) return (EINVAL);``"""
    rc, err, _ = h.kevent_raw(kq, [(8, TIMER, EV_ADD, fflags, 10)])
    assert (rc, err) == (-1, errno.EINVAL)
    rc, err, _ = h.kevent_raw(kq, [(8, TIMER, EV_DELETE)])
    assert (rc, err) == (-1, errno.ENOENT), "the refused timer was registered"


def test_timer_known_fflags_still_accepted(kq):
    for i, unit in enumerate((0, SECONDS, MSECONDS, USECONDS, NSECONDS)):
        kq.change((100 + i, TIMER, EV_ADD, unit, 3600))
    kq.change((110, TIMER, EV_ADD, ABSTIME | SECONDS, int(time.time()) + 3600))


# ---------------------------------------------------------------------------
# The change loop


def test_change_with_filter_zero_is_skipped(kq):
    """``kqueue_kevent``: ``if (!kevp->filter) continue;`` -- no error
    entry, no receipt; the other changes are applied, and with no entry
    written the call goes on to collect events (here: none)."""
    rc, err, evs = h.kevent_raw(kq, [(1, 0, EV_ADD), (2, USER, EV_ADD | EV_CLEAR)], 4)
    assert (rc, err, evs) == (0, 0, [])
    kq.change((2, USER, 0, TRIGGER))
    assert [(e.ident, e.filter) for e in kq.poll()] == [(2, USER)]
    rc, err, evs = h.kevent_raw(kq, [(3, 0, EV_ADD | EV_RECEIPT, 0, 0, 5)], 4)
    assert (rc, evs) == (0, []), "a filter-0 change with EV_RECEIPT got a receipt"


def test_only_filter_zero_changes_then_collects_events(kq):
    kq.change((9, USER, EV_ADD, TRIGGER))
    rc, err, evs = h.kevent_raw(kq, [(1, 0, EV_ADD)], 4)
    assert rc == 1 and [(e.ident, e.filter) for e in evs] == [(9, USER)]


@pytest.mark.parametrize("flags", [EV_ADD | EV_RECEIPT, EV_ADD | EV_ONESHOT | EV_RECEIPT,
                                   EV_ADD | EV_CLEAR | EV_DISPATCH | EV_RECEIPT,
                                   EV_ADD | EV_DISABLE | EV_RECEIPT])
def test_receipt_flags_are_ev_error_exactly(kq, flags):
    """``kqueue_kevent``: ``kevp->flags = EV_ERROR;`` -- receipts carry
    nothing of the change's flags (xnu ORs them in; FreeBSD does not)."""
    evs = kq.changes([(1, USER, flags, 0, 0, 7)])
    assert [(e.ident, e.flags, e.data, e.udata) for e in evs] == [(1, EV_ERROR, 0, 7)]


@pytest.mark.parametrize("change,want", [
    ((1, USER, EV_DELETE | EV_ONESHOT), errno.ENOENT),
    ((1, TIMER, EV_ADD | EV_CLEAR, 0x20, 5), errno.EINVAL),
    ((1, -100, EV_ADD | EV_ONESHOT), errno.EINVAL),
])
def test_error_entry_flags_are_ev_error_exactly(kq, change, want):
    evs = kq.changes([change])
    assert [(e.flags, e.data) for e in evs] == [(EV_ERROR, want)]


def test_compat_receipts_are_ev_error_exactly():
    """The stdlib-compatible layer hands the entries over as they are."""
    from kqueue_py import compat

    q = compat.kqueue()
    try:
        got = q.control([compat.kevent(1, USER, EV_ADD | EV_RECEIPT | EV_CLEAR),
                         compat.kevent(2, USER, EV_DELETE | EV_RECEIPT)], 4, 0)
        assert [(e.flags, e.data) for e in got] == [(EV_ERROR, 0), (EV_ERROR, errno.ENOENT)]
    finally:
        q.close()


def test_kqueue_apply_skips_filter_zero_changes():
    """KQueue.apply pairs each change with its receipt: a filter-0 change,
    skipped by the kernel without one, must not shift the others."""
    from kqueue_py import KQueue

    with KQueue() as q:
        assert q.apply([(5, 0, EV_ADD, 0, 0, "skipped"), (6, USER, EV_ADD, 0, 0, "six")],
                       raise_errors=False) == []
        q.trigger(6)
        assert [(e.ident, e.udata) for e in q.wait(0)] == [(6, "six")]
        q.apply([(5, 0, EV_DELETE)])   # skipped too: no error


# ---------------------------------------------------------------------------
# A queue's own descriptor


def test_read_on_a_queue_reports_its_pending_events(make_kq):
    """``filt_kqueue``: ``kn->kn_data = kq->kq_count;`` -- READ on a queue's
    descriptor carries the number of events pending in it."""
    inner, outer = make_kq(), make_kq()
    inner.change(*[(i, USER, EV_ADD | EV_CLEAR) for i in (1, 2, 3)])
    outer.change((inner, READ, EV_ADD))
    inner.change((1, USER, 0, TRIGGER), (2, USER, 0, TRIGGER))
    assert [(e.ident, e.data) for e in outer.wait(8, 1.0)] == [(inner, 2)]
    inner.change((3, USER, 0, TRIGGER))
    assert [e.data for e in outer.poll()] == [3]
    assert len(inner.poll()) == 3
    assert outer.poll() == []


def test_read_on_a_queue_counts_fired_timers(make_kq):
    """Timers fire into the queue's active list on FreeBSD (the callout),
    so they count before the watched queue's own ``kevent()`` runs."""
    inner, outer = make_kq(), make_kq()
    inner.change((1, TIMER, EV_ADD | EV_ONESHOT, 0, 1), (2, TIMER, EV_ADD | EV_ONESHOT, 0, 1))
    outer.change((inner, READ, EV_ADD))
    time.sleep(0.02)
    assert [e.data for e in outer.wait(8, 1.0)] == [2]


def test_read_on_a_queue_with_a_ready_socket_is_at_least_one(make_kq, fds):
    """Events still inside the watched queue's epoll set count as one at
    least (documented: they cannot be counted without being taken)."""
    inner, outer = make_kq(), make_kq()
    a, b = fds.socketpair()
    inner.change((a.fileno(), READ, EV_ADD))
    outer.change((inner, READ, EV_ADD))
    b.send(b"x")
    evs = outer.wait(8, 1.0)
    assert len(evs) == 1 and evs[0].data >= 1


@pytest.mark.parametrize("filt,flags", [(READ, EV_ADD), (WRITE, EV_ADD), (READ, EV_DELETE),
                                        (VNODE, EV_ADD)])
def test_queue_watching_itself_is_einval(kq, filt, flags):
    """``kqueue_register``: ``if (fp->f_data == kq) { error = EINVAL; ...}``
    (Linux's epoll would say ``ELOOP``)."""
    fflags = lib.NOTE_WRITE if filt == VNODE else 0
    rc, err, _ = h.kevent_raw(kq, [(kq, filt, flags, fflags)])
    assert (rc, err) == (-1, errno.EINVAL)


@pytest.mark.parametrize("filt", [WRITE, VNODE])
def test_only_read_on_another_queue(make_kq, filt):
    """``kqueue_kqfilter``: ``if (kn->kn_filter != EVFILT_READ) return
    (EINVAL);``"""
    inner, outer = make_kq(), make_kq()
    fflags = lib.NOTE_WRITE if filt == VNODE else 0
    rc, err, _ = h.kevent_raw(outer, [(inner, filt, EV_ADD, fflags)])
    assert (rc, err) == (-1, errno.EINVAL)
    outer.change((inner, READ, EV_ADD))


def test_read_on_a_queue_busy_in_another_thread(make_kq):
    """The watching queue's lock is held while it looks into the watched
    one, whose lock is then only tried: a thread inside ``kevent()`` on the
    watched queue at that moment makes the count 1 (the lower bound), never
    a deadlock or a wrong sign."""
    import threading

    inner, outer = make_kq(), make_kq()
    inner.change((1, USER, EV_ADD, TRIGGER))
    outer.change((inner, READ, EV_ADD))
    stop = time.monotonic() + 0.3
    seen = set()

    def spin():
        while time.monotonic() < stop:
            inner.poll()

    t = threading.Thread(target=spin)
    t.start()
    while time.monotonic() < stop:
        seen.update(e.data for e in outer.poll())
    t.join(10)
    assert not t.is_alive()
    assert seen <= {1} and seen, seen


def test_socket_descriptor_read_data_unchanged(kq, fds):
    """Not a queue: READ data is still FIONREAD."""
    a, b = fds.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.send(b"hello")
    kq.change((a.fileno(), READ, EV_ADD))
    assert [e.data for e in kq.wait(8, 1.0)] == [5]
