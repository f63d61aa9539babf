"""EVFILT_TIMER: periodic, one-shot, units, absolute time, overruns, errors.

Timing assertions use loose upper bounds (a loaded CI box is slow) and a
lower bound only where firing early would be wrong.
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
    # kn_kevent.fflags, which it zeroed (test_freebsd_letter.py has more).
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
