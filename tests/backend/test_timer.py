"""EVFILT_TIMER: periodic, one-shot, units, absolute time, overruns, errors.

"Late" is never an upper bound on elapsed time (a loaded machine is slow):
a timer that must fire at once fires before a 300 ms yardstick timer, and
one that fires late shows as no event within the wait's timeout.  A lower
bound is asserted where firing early would be wrong.  The last part pins
FreeBSD's filt_timervalidate / filt_timerattach / filt_timertouch.
"""
from __future__ import annotations

import errno
import time

import pytest

from kqueue_py import lib

import helpers as h

TIMER = lib.EVFILT_TIMER
EV_ADD, EV_DELETE, EV_ENABLE, EV_DISABLE = lib.EV_ADD, lib.EV_DELETE, lib.EV_ENABLE, lib.EV_DISABLE
EV_ONESHOT, EV_CLEAR, EV_ERROR = lib.EV_ONESHOT, lib.EV_CLEAR, lib.EV_ERROR
SECONDS, MSECONDS, USECONDS, NSECONDS = lib.NOTE_SECONDS, lib.NOTE_MSECONDS, lib.NOTE_USECONDS, lib.NOTE_NSECONDS
ABSTIME = lib.NOTE_ABSTIME
EV_DISPATCH, TRIGGER = lib.EV_DISPATCH, lib.NOTE_TRIGGER

ID = 3
EARLY = 0.002    # clock granularity allowance for "not before"


def timers(evs, ident=ID):
    return [e for e in evs if (e.ident, e.filter) == (ident, TIMER)]


def test_timer_periodic_fires_several_times(kq):
    t0 = time.monotonic()
    kq.change((ID, TIMER, EV_ADD, 0, 10, 8))
    total = 0
    for _ in range(4):
        evs = timers(kq.wait(8, 2.0))
        assert len(evs) == 1
        assert evs[0].data >= 1 and evs[0].udata == 8
        total += evs[0].data
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.04 - EARLY
    assert total >= 4
    assert total <= elapsed / 0.010 + 1, "more expirations than periods elapsed"


def test_timer_oneshot_fires_once_and_is_gone(kq):
    t0 = time.monotonic()
    kq.change((ID, TIMER, EV_ADD | EV_ONESHOT, 0, 20))
    evs = timers(kq.wait(8, 2.0))
    assert time.monotonic() - t0 >= 0.02 - EARLY
    assert len(evs) == 1 and evs[0].data == 1
    assert evs[0].flags & EV_ONESHOT
    assert kq.wait(8, 0.06) == []
    with pytest.raises(OSError) as ei:
        kq.change((ID, TIMER, EV_DELETE))
    assert ei.value.errno == errno.ENOENT


@pytest.mark.parametrize("unit,data,seconds", [
    (0, 30, 0.030),                    # default: milliseconds
    (MSECONDS, 30, 0.030),
    (USECONDS, 30_000, 0.030),
    (NSECONDS, 30_000_000, 0.030),
    (SECONDS, 1, 1.0),
], ids=["default-ms", "ms", "us", "ns", "s"])
def test_timer_units(kq, unit, data, seconds):
    t0 = time.monotonic()
    kq.change((ID, TIMER, EV_ADD | EV_ONESHOT, unit, data))
    evs = timers(kq.wait(8, seconds + 2.0))
    elapsed = time.monotonic() - t0
    assert len(evs) == 1
    assert elapsed >= seconds - EARLY, f"fired after {elapsed:.4f}s, before {seconds}s"
    # Late (a wrong unit) shows as no event within the wait's timeout.


def test_timer_microsecond_period_counts_many_expirations(kq):
    kq.change((ID, TIMER, EV_ADD, USECONDS, 500))
    time.sleep(0.05)
    evs = timers(kq.poll())
    assert len(evs) == 1
    assert evs[0].data >= 50


def test_timer_abstime_in_the_past_fires_at_once(kq):
    past = int(time.time()) - 10
    kq.change((ID, TIMER, EV_ADD | EV_ONESHOT, ABSTIME | SECONDS, past, 4))
    kq.change((ID + 1, TIMER, EV_ADD | EV_ONESHOT, 0, 300))     # the yardstick
    evs = kq.wait(8, 5.0)
    assert [(e.ident, e.udata, e.data) for e in evs] == [(ID, 4, 1)], "not before a 300 ms timer"


def test_timer_abstime_zero_fires_at_once(kq):
    kq.change((ID, TIMER, EV_ADD, ABSTIME, 0))
    kq.change((ID + 1, TIMER, EV_ADD | EV_ONESHOT, 0, 300))     # the yardstick
    assert [e.ident for e in kq.wait(8, 5.0)] == [ID], "not before a 300 ms timer"


@pytest.mark.parametrize("unit,scale", [(0, 1e3), (MSECONDS, 1e3), (USECONDS, 1e6), (NSECONDS, 1e9)],
                         ids=["default-ms", "ms", "us", "ns"])
def test_timer_abstime_near_future_fires_at_about_that_time(kq, unit, scale):
    target = time.time() + 0.15
    t0 = time.monotonic()
    kq.change((ID, TIMER, EV_ADD, ABSTIME | unit, int(target * scale)))
    evs = timers(kq.wait(8, 2.0))
    elapsed = time.monotonic() - t0
    assert len(evs) == 1 and evs[0].data == 1
    assert time.time() >= target - 0.005
    assert elapsed >= 0.13          # late shows as no event within the wait
    # An absolute time fires once; without EV_CLEAR (not implied for it:
    # FreeBSD's filt_timerattach) it stays reported, data 1, until deleted.
    assert [e.data for e in timers(kq.wait(8, 0.05))] == [1]
    kq.change((ID, TIMER, EV_DELETE))
    assert kq.wait(8, 0.05) == []


def test_timer_overrun_count(kq):
    kq.change((ID, TIMER, EV_ADD, 0, 10))
    t0 = time.monotonic()
    time.sleep(0.1)
    evs = timers(kq.poll())
    elapsed = time.monotonic() - t0
    assert len(evs) == 1
    assert evs[0].data >= 5
    assert evs[0].data <= elapsed / 0.010 + 1
    # Counting restarts after a report.
    evs = timers(kq.wait(8, 1.0))
    assert len(evs) == 1 and 1 <= evs[0].data <= 3


def test_timer_readd_restarts_resets_count_and_changes_period(kq):
    kq.change((ID, TIMER, EV_ADD, 0, 10, 1))
    time.sleep(0.06)          # ~6 expirations pending, not collected
    t0 = time.monotonic()
    kq.change((ID, TIMER, EV_ADD, 0, 100, 2))
    assert timers(kq.poll()) == [], "re-add must throw away unreported expirations"
    evs = timers(kq.wait(8, 2.0))
    elapsed = time.monotonic() - t0
    assert len(evs) == 1
    assert evs[0].data == 1 and evs[0].udata == 2
    assert elapsed >= 0.1 - EARLY, "the restarted timer fired early"
    # The new period holds for the following expiration too.
    t1 = time.monotonic()
    assert len(timers(kq.wait(8, 2.0))) == 1
    assert time.monotonic() - t1 >= 0.09 - EARLY


def test_timer_readd_with_longer_period_does_not_fire_at_old_deadline(kq):
    kq.change((ID, TIMER, EV_ADD | EV_ONESHOT, 0, 20))
    kq.change((ID, TIMER, EV_ADD | EV_ONESHOT, 0, 150))
    assert kq.wait(8, 0.08) == []
    assert len(timers(kq.wait(8, 1.0))) == 1


@pytest.mark.parametrize("flags", [EV_ADD, EV_ADD | EV_ONESHOT])
def test_timer_negative_data_is_einval(kq, flags):
    evs = kq.changes([(ID, TIMER, flags, 0, -1, 6)], nevents=2, timeout=None)
    assert len(evs) == 1
    assert evs[0].flags & EV_ERROR and evs[0].data == errno.EINVAL
    assert (evs[0].ident, evs[0].filter, evs[0].udata) == (ID, TIMER, 6)
    rc, err, _ = h.kevent_raw(kq, [(ID, TIMER, flags, 0, -5)], 0, None)
    assert (rc, err) == (-1, errno.EINVAL)
    # Nothing was registered.
    with pytest.raises(OSError) as ei:
        kq.change((ID, TIMER, EV_DELETE))
    assert ei.value.errno == errno.ENOENT


@pytest.mark.parametrize("units", [SECONDS | MSECONDS, USECONDS | NSECONDS, MSECONDS | NSECONDS,
                                   SECONDS | MSECONDS | USECONDS | NSECONDS])
def test_timer_two_unit_bits_is_einval(kq, units):
    evs = kq.changes([(ID, TIMER, EV_ADD, units, 10)], nevents=1, timeout=None)
    assert len(evs) == 1 and evs[0].flags & EV_ERROR and evs[0].data == errno.EINVAL
    rc, err, _ = h.kevent_raw(kq, [(ID, TIMER, EV_ADD, units, 10)], 0, None)
    assert (rc, err) == (-1, errno.EINVAL)


def test_timer_readd_with_invalid_data_is_einval_and_keeps_old_timer(kq):
    kq.change((ID, TIMER, EV_ADD, 0, 10))
    rc, err, _ = h.kevent_raw(kq, [(ID, TIMER, EV_ADD, 0, -1)], 0, None)
    assert (rc, err) == (-1, errno.EINVAL)
    assert len(timers(kq.wait(8, 1.0))) == 1


def test_timer_data_zero_periodic_fires_repeatedly(kq):
    kq.change((ID, TIMER, EV_ADD, 0, 0))
    for _ in range(3):
        evs = timers(kq.wait(1, 1.0))
        assert len(evs) == 1 and evs[0].data >= 1


@pytest.mark.parametrize("unit,data", [(0, 0), (USECONDS, 1), (NSECONDS, 1)], ids=["0ms", "1us", "1ns"])
def test_timer_fast_periodic_reported_at_most_once_per_call(kq, unit, data):
    # One registration yields at most one event per kevent() call; the
    # expirations are summed in data.
    kq.change((ID, TIMER, EV_ADD, unit, data))
    for _ in range(5):
        evs = kq.wait(8, 1.0)
        assert len(evs) == 1, f"one timer reported {len(evs)} times in one call: {evs}"
        assert evs[0].data >= 1


def test_timer_data_zero_oneshot_fires_at_once(kq):
    kq.change((ID, TIMER, EV_ADD | EV_ONESHOT, 0, 0))
    kq.change((ID + 1, TIMER, EV_ADD | EV_ONESHOT, 0, 300))     # the yardstick
    evs = kq.wait(8, 5.0)
    assert [(e.ident, e.data) for e in evs] == [(ID, 1)], "not before a 300 ms timer"
    kq.change((ID + 1, TIMER, EV_DELETE))
    assert kq.wait(8, 0.03) == []


@pytest.mark.parametrize("flags", [EV_ADD, EV_ADD | EV_ONESHOT])
def test_timer_returned_flags_include_clear(kq, flags):
    kq.change((ID, TIMER, flags, 0, 5))
    evs = timers(kq.wait(8, 1.0))
    assert len(evs) == 1
    assert evs[0].flags & EV_CLEAR
    assert not evs[0].flags & (EV_ADD | EV_ERROR)


def test_timer_fflags_not_reported_back(kq):
    # FreeBSD's kqueue_register() keeps the unit in kn_sfflags and reports
    # kn_kevent.fflags, which it zeroed (more below, by FreeBSD's function names).
    kq.change((ID, TIMER, EV_ADD | EV_ONESHOT, USECONDS, 5000))
    evs = timers(kq.wait(8, 1.0))
    assert len(evs) == 1
    assert evs[0].fflags == 0


def test_timer_many_timers_each_fire_once(kq):
    n = 300
    kq.change(*[(i, TIMER, EV_ADD | EV_ONESHOT, 0, 1 + i % 30, i) for i in range(n)])
    got = []
    deadline = time.monotonic() + 3
    while len(got) < n and time.monotonic() < deadline:
        got.extend(kq.wait(64, 0.2))
    assert sorted(e.ident for e in got) == list(range(n))
    assert all(e.udata == e.ident and e.data == 1 for e in got)
    assert kq.wait(64, 0.05) == []


def test_timers_fire_in_deadline_order(kq):
    kq.change((1, TIMER, EV_ADD | EV_ONESHOT, 0, 60),
              (2, TIMER, EV_ADD | EV_ONESHOT, 0, 20),
              (3, TIMER, EV_ADD | EV_ONESHOT, 0, 40))
    order = []
    while len(order) < 3:
        evs = kq.wait(1, 1.0)
        assert evs
        order.append(evs[0].ident)
    assert order == [2, 3, 1]


def test_timer_delete_of_one_leaves_others_running(kq):
    kq.change((1, TIMER, EV_ADD | EV_ONESHOT, 0, 20), (2, TIMER, EV_ADD | EV_ONESHOT, 0, 30))
    kq.change((1, TIMER, EV_DELETE))
    evs = kq.wait(8, 1.0)
    assert [e.ident for e in evs] == [2]


# ---------------------------------------------------------------------------
# Timers as FreeBSD validates and attaches them (filt_timervalidate,
# filt_timerattach, filt_timertouch in sys/kern/kern_event.c)


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
