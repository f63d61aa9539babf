"""EVFILT_USER: triggers, coalescing, fflags control, data, and wake-ups."""
from __future__ import annotations

import errno
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from kqueue_py import lib

import helpers as h

USER = lib.EVFILT_USER
EV_ADD, EV_DELETE, EV_ENABLE, EV_DISABLE = lib.EV_ADD, lib.EV_DELETE, lib.EV_ENABLE, lib.EV_DISABLE
EV_ONESHOT, EV_CLEAR, EV_DISPATCH, EV_KEEPUDATA = lib.EV_ONESHOT, lib.EV_CLEAR, lib.EV_DISPATCH, lib.EV_KEEPUDATA
TRIGGER = lib.NOTE_TRIGGER
FFNOP, FFAND, FFOR, FFCOPY = lib.NOTE_FFNOP, lib.NOTE_FFAND, lib.NOTE_FFOR, lib.NOTE_FFCOPY
FFLAGSMASK = lib.NOTE_FFLAGSMASK

ID = 7


def trigger(kq, ident=ID, fflags=0, data=0, udata=0, flags=0):
    kq.change((ident, USER, flags, TRIGGER | fflags, data, udata))


def test_user_trigger_fires(kq):
    kq.change((ID, USER, EV_ADD | EV_CLEAR, 0, 0, 99))
    assert kq.wait(64, 0.03) == []
    trigger(kq, udata=99)
    evs = kq.wait()
    assert [(e.ident, e.filter, e.udata) for e in evs] == [(ID, USER, 99)]
    assert evs[0].flags & EV_CLEAR


def test_user_add_with_trigger_fires_at_once(kq):
    kq.change((ID, USER, EV_ADD | EV_CLEAR, TRIGGER, 0, 5))
    evs = kq.poll()
    assert [(e.ident, e.udata) for e in evs] == [(ID, 5)]


def test_user_not_triggered_is_silent(kq):
    kq.change((ID, USER, EV_ADD))
    assert kq.wait(64, 0.05) == []
    assert not kq.readable()


def test_user_triggers_before_delivery_coalesce_into_one_event(kq):
    kq.change((ID, USER, EV_ADD | EV_CLEAR))
    for _ in range(5):
        trigger(kq)
    assert len(kq.wait()) == 1
    assert kq.wait(64, 0.03) == []


def test_user_without_clear_stays_triggered_and_is_reported_again(kq):
    kq.change((ID, USER, EV_ADD))
    trigger(kq)
    for _ in range(3):
        evs = kq.poll()
        assert [(e.ident, e.filter) for e in evs] == [(ID, USER)]


def test_user_level_triggered_event_is_reported_once_per_call(kq):
    # A level-triggered event stays triggered, but one kevent() call reports
    # each registration at most once.
    kq.change((ID, USER, EV_ADD))
    trigger(kq)
    evs = kq.wait(10, 0.5)
    assert [(e.ident, e.filter) for e in evs] == [(ID, USER)]


def test_user_clear_resets_after_delivery(kq):
    kq.change((ID, USER, EV_ADD | EV_CLEAR))
    trigger(kq)
    assert len(kq.poll()) == 1
    assert kq.poll() == []
    trigger(kq)
    assert len(kq.poll()) == 1


def test_user_fflags_ffnop_ffand_ffor_ffcopy_on_low_24_bits(kq):
    kq.change((ID, USER, EV_ADD | EV_CLEAR, FFCOPY | 0x00FF00))

    def fire(fflags):
        trigger(kq, fflags=fflags)
        evs = kq.poll()
        assert len(evs) == 1
        return evs[0].fflags

    assert fire(FFNOP) == 0x00FF00
    assert fire(FFOR | 0x00000F) == 0x00FF0F
    assert fire(FFAND | 0x0F0F0F) == 0x000F0F
    assert fire(FFNOP | 0xFFFFFF) == 0x000F0F          # NOP ignores the value
    assert fire(FFCOPY | 0x123456) == 0x123456
    assert fire(FFCOPY | FFLAGSMASK) == 0xFFFFFF      # no control or trigger bit leaks
    assert fire(FFAND | 0x800001) == 0x800001
    assert fire(FFCOPY) == 0


def test_user_fflags_change_without_trigger_is_kept_for_next_trigger(kq):
    kq.change((ID, USER, EV_ADD | EV_CLEAR))
    kq.change((ID, USER, 0, FFOR | 0x10))
    kq.change((ID, USER, 0, FFOR | 0x01))
    assert kq.poll() == []
    trigger(kq)
    evs = kq.poll()
    assert [e.fflags for e in evs] == [0x11]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from([FFNOP, FFAND, FFOR, FFCOPY]),
                              st.integers(0, 0xFFFFFF)), min_size=1, max_size=12))
def test_user_fflags_follow_the_model(kq, ops):
    ident = 1000 + (hash(tuple(ops)) & 0xFFFF)
    kq.change((ident, USER, EV_ADD | EV_CLEAR, FFCOPY))   # start from 0
    model = 0
    try:
        for ctrl, value in ops:
            kq.change((ident, USER, 0, ctrl | value))
            if ctrl == FFAND:
                model &= value
            elif ctrl == FFOR:
                model |= value
            elif ctrl == FFCOPY:
                model = value
        trigger(kq, ident)
        evs = [e for e in kq.poll() if e.ident == ident]
        assert [e.fflags for e in evs] == [model]
    finally:
        kq.change((ident, USER, EV_DELETE))


def test_user_data_reported_is_data_of_the_last_change(kq):
    kq.change((ID, USER, EV_ADD | EV_CLEAR, 0, 5))
    trigger(kq, data=7)
    assert [e.data for e in kq.poll()] == [7]
    kq.change((ID, USER, 0, 0, 9))
    trigger(kq, data=-3)
    assert [e.data for e in kq.poll()] == [-3]
    trigger(kq, data=123)
    kq.change((ID, USER, 0, 0, 456))       # a later change without trigger
    assert [e.data for e in kq.poll()] == [456]


def test_user_enable_and_trigger_together_on_disabled_event_fires(kq):
    kq.change((ID, USER, EV_ADD | EV_CLEAR | EV_DISABLE))
    assert kq.poll() == []
    kq.change((ID, USER, EV_ENABLE, TRIGGER, 0, 3))
    evs = kq.poll()
    assert [(e.ident, e.udata) for e in evs] == [(ID, 3)]


def test_user_trigger_while_disabled_is_reported_on_enable(kq):
    kq.change((ID, USER, EV_ADD | EV_CLEAR))
    kq.change((ID, USER, EV_DISABLE))
    trigger(kq)
    assert kq.wait(64, 0.03) == []
    kq.change((ID, USER, EV_ENABLE))
    assert len(kq.poll()) == 1


def test_user_dispatch_retrigger_waits_for_enable(kq):
    kq.change((ID, USER, EV_ADD | EV_CLEAR | EV_DISPATCH))
    trigger(kq)
    assert len(kq.poll()) == 1
    trigger(kq)
    assert kq.wait(64, 0.03) == []
    kq.change((ID, USER, EV_ENABLE))
    assert len(kq.poll()) == 1
    assert kq.poll() == []


def test_user_oneshot_fires_once_then_trigger_is_enoent(kq):
    kq.change((ID, USER, EV_ADD | EV_ONESHOT))
    trigger(kq)
    assert len(kq.poll()) == 1
    assert kq.poll() == []
    with pytest.raises(OSError) as ei:
        trigger(kq)
    assert ei.value.errno == errno.ENOENT


def test_user_trigger_of_missing_event_is_enoent(kq):
    with pytest.raises(OSError) as ei:
        trigger(kq, ident=12345)
    assert ei.value.errno == errno.ENOENT


def test_user_readd_after_delete_starts_untriggered(kq):
    kq.change((ID, USER, EV_ADD))
    trigger(kq)
    kq.change((ID, USER, EV_DELETE))
    kq.change((ID, USER, EV_ADD))
    assert kq.wait(64, 0.03) == []


def test_user_idents_are_independent(kq):
    kq.change(*[(i, USER, EV_ADD | EV_CLEAR, 0, 0, i) for i in (1, 2, 3)])
    trigger(kq, ident=2, udata=2)
    assert [(e.ident, e.udata) for e in kq.poll()] == [(2, 2)]
    trigger(kq, ident=1, udata=1)
    trigger(kq, ident=3, udata=3)
    assert sorted(e.ident for e in kq.poll()) == [1, 3]


def test_user_trigger_from_another_thread_wakes_blocked_waiter(kq):
    kq.change((ID, USER, EV_ADD | EV_CLEAR, 0, 0, 42))
    result = {}
    started = threading.Event()

    def waiter():
        started.set()
        # timeout NULL: blocks until something happens
        result["rc"], result["errno"], result["evs"] = h.kevent_raw(kq, (), 4, None)

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    started.wait()
    h.wait_blocked_in_kevent(t)
    assert "rc" not in result, "kevent returned with nothing pending"
    trigger(kq, udata=42)
    t.join(2.0)
    assert not t.is_alive(), "trigger from another thread did not wake the waiter"
    assert result["rc"] == 1
    assert [(e.ident, e.udata) for e in result["evs"]] == [(ID, 42)]


def test_user_triggers_from_many_threads_while_waiting(kq):
    """Cross-thread triggers must not be blocked by a waiter (no lock held
    across the wait): 4 threads x 50 triggers, one waiter collecting."""
    idents = list(range(100, 104))
    kq.change(*[(i, USER, EV_ADD | EV_CLEAR) for i in idents])
    stop = threading.Event()
    seen = set()

    def collector():
        while not stop.is_set():
            for e in kq.wait(16, 0.5):
                seen.add(e.ident)

    def producer(i):
        for _ in range(50):
            trigger(kq, ident=i)

    c = threading.Thread(target=collector, daemon=True)
    c.start()
    ps = [threading.Thread(target=producer, args=(i,)) for i in idents]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    for p in ps:
        p.join(5)
    assert time.monotonic() - t0 < 5
    deadline = time.monotonic() + 2
    while seen != set(idents) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    c.join(2)
    assert seen == set(idents)
