"""The kqueue(2) behaviour checklist, run for every filter where it applies.

Each *source* knows how to register one event of its filter and how to make
its condition true ("arm").  The same test then runs for READ on a pipe and
on a socket, WRITE on a pipe and on a socket, USER and TIMER.
"""
from __future__ import annotations

import errno
import os
import socket
import time

import pytest

from kqueue_py import lib

import helpers as h

EV_ADD, EV_DELETE, EV_ENABLE, EV_DISABLE = lib.EV_ADD, lib.EV_DELETE, lib.EV_ENABLE, lib.EV_DISABLE
EV_ONESHOT, EV_CLEAR, EV_DISPATCH, EV_RECEIPT = lib.EV_ONESHOT, lib.EV_CLEAR, lib.EV_DISPATCH, lib.EV_RECEIPT
EV_ERROR = lib.EV_ERROR

SILENCE = 0.05   # how long "nothing is reported" is watched, in seconds


def _fill(fd_or_sock):
    """Write until the descriptor would block."""
    chunk = b"\0" * 65536
    while True:
        try:
            if isinstance(fd_or_sock, socket.socket):
                fd_or_sock.send(chunk)
            else:
                os.write(fd_or_sock, chunk)
        except BlockingIOError:
            return


def _drain(fd_or_sock):
    while True:
        try:
            if isinstance(fd_or_sock, socket.socket):
                data = fd_or_sock.recv(1 << 20)
            else:
                data = os.read(fd_or_sock, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            return


class Source:
    filter: int
    ident: int
    fflags = 0
    data = 0
    #: False when the condition is already true at registration.
    needs_arm = True

    def add(self, flags=0, udata=0):
        return (self.ident, self.filter, EV_ADD | flags, self.fflags, self.data, udata)

    def ch(self, flags, udata=0):
        return (self.ident, self.filter, flags, 0, 0, udata)

    def arm(self, *queues):
        """Make the condition true (again), producing a new edge."""

    def await_pending(self):
        """Return once the armed condition is pending in the queue."""


class ReadPipe(Source):
    filter = lib.EVFILT_READ

    def __init__(self, fds):
        self.r, self.w = fds.pipe()
        self.ident = self.r

    def arm(self, *queues):
        os.write(self.w, b"x")


class ReadSocket(Source):
    filter = lib.EVFILT_READ

    def __init__(self, fds):
        self.a, self.b = fds.socketpair()
        self.ident = self.a.fileno()

    def arm(self, *queues):
        self.b.send(b"x")


class WritePipe(Source):
    filter = lib.EVFILT_WRITE
    needs_arm = False

    def __init__(self, fds):
        self.r, self.w = fds.pipe()
        self.ident = self.w

    def arm(self, *queues):
        # From full to empty: a fresh writability edge.
        _fill(self.w)
        _drain(self.r)


class WriteSocket(Source):
    filter = lib.EVFILT_WRITE
    needs_arm = False

    def __init__(self, fds):
        self.a, self.b = fds.socketpair()
        self.ident = self.a.fileno()

    def arm(self, *queues):
        _fill(self.a)
        _drain(self.b)


class User(Source):
    filter = lib.EVFILT_USER
    ident = 4242

    def __init__(self, fds):
        pass

    def arm(self, *queues):
        # Trigger where registered; a queue without the event answers ENOENT.
        for q in queues:
            try:
                q.change((self.ident, self.filter, lib.EV_KEEPUDATA, lib.NOTE_TRIGGER))
            except FileNotFoundError:
                pass


class Timer(Source):
    """A periodic 5 ms timer: armed by the passage of time."""
    filter = lib.EVFILT_TIMER
    ident = 77
    data = 5
    needs_arm = False

    def __init__(self, fds):
        pass

    def await_pending(self):
        time.sleep(0.03)


SOURCES = {
    "read-pipe": ReadPipe,
    "read-socket": ReadSocket,
    "write-pipe": WritePipe,
    "write-socket": WriteSocket,
    "user": User,
    "timer": Timer,
}


@pytest.fixture(params=list(SOURCES))
def src(request, fds):
    return SOURCES[request.param](fds)


def only(evs, src):
    return [e for e in evs if (e.ident, e.filter) == (src.ident, src.filter)]


def assert_silent(kq, src, timeout=SILENCE):
    evs = kq.wait(64, timeout)
    assert only(evs, src) == [], f"unexpected events {evs}"


# ---------------------------------------------------------------------------


def test_add_then_event_reports_ident_filter_and_udata(kq, src):
    kq.change(src.add(udata=0x1234))
    src.arm(kq)
    ev = kq.wait_one()
    assert (ev.ident, ev.filter, ev.udata) == (src.ident, src.filter, 0x1234)
    assert not ev.flags & (EV_ERROR | EV_ADD | EV_DELETE)


def test_delete_stops_events(kq, src):
    kq.change(src.add())
    src.arm(kq)
    assert only(kq.wait(), src)
    kq.change(src.ch(EV_DELETE))
    src.arm(kq)
    src.await_pending()
    assert_silent(kq, src)


def test_delete_of_missing_registration_is_enoent_event_with_room(kq, src):
    evs = kq.changes([src.ch(EV_DELETE, udata=5)], nevents=4, timeout=None)
    assert len(evs) == 1
    ev = evs[0]
    assert (ev.ident, ev.filter) == (src.ident, src.filter)
    assert ev.flags & EV_ERROR
    assert ev.data == errno.ENOENT
    assert ev.udata == 5


def test_delete_of_missing_registration_is_enoent_errno_without_room(kq, src):
    rc, err, evs = h.kevent_raw(kq, [src.ch(EV_DELETE)], 0, None)
    assert (rc, err) == (-1, errno.ENOENT)


def test_delete_twice_second_is_enoent(kq, src):
    kq.change(src.add())
    kq.change(src.ch(EV_DELETE))
    with pytest.raises(OSError) as ei:
        kq.change(src.ch(EV_DELETE))
    assert ei.value.errno == errno.ENOENT


def test_readd_modifies_and_replaces_udata(kq, src):
    kq.change(src.add(udata=1))
    kq.change(src.add(udata=2))
    src.arm(kq)
    evs = only(kq.wait(), src)
    assert len(evs) == 1, "re-add must modify the registration, not add a second one"
    assert evs[0].udata == 2
    # Still exactly one registration: one delete succeeds, the next is ENOENT.
    kq.change(src.ch(EV_DELETE))
    with pytest.raises(OSError) as ei:
        kq.change(src.ch(EV_DELETE))
    assert ei.value.errno == errno.ENOENT


@pytest.mark.parametrize("udata", [0, 1, 0x7FFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF, 0xDEAD_BEEF_CAFE_F00D])
def test_udata_preserved_in_events(kq, src, udata):
    kq.change(src.add(udata=udata))
    src.arm(kq)
    ev = kq.wait_one()
    assert ev.udata == udata


def test_enable_without_udata_change_replaces_udata_too(kq, src):
    # As on BSD, any change without EV_KEEPUDATA stores the change's udata.
    kq.change(src.add(EV_DISABLE, udata=1))
    kq.change(src.ch(EV_ENABLE, udata=9))
    src.arm(kq)
    assert kq.wait_one().udata == 9


def test_disable_then_enable(kq, src):
    kq.change(src.add(udata=3))
    kq.change(src.ch(EV_DISABLE, udata=3))
    src.arm(kq)
    src.await_pending()
    assert_silent(kq, src)
    kq.change(src.ch(EV_ENABLE, udata=3))
    ev = kq.wait_one()
    assert (ev.ident, ev.filter, ev.udata) == (src.ident, src.filter, 3)


def test_add_disabled_is_silent_until_enabled(kq, src):
    kq.change(src.add(EV_DISABLE))
    src.arm(kq)
    src.await_pending()
    assert_silent(kq, src)
    kq.change(src.ch(EV_ENABLE))
    assert only(kq.wait(), src)


def test_disable_drains_a_pending_event(kq, src):
    kq.change(src.add())
    src.arm(kq)
    src.await_pending()
    assert kq.readable(), "the queue should have an event pending"
    kq.change(src.ch(EV_DISABLE))
    assert only(kq.poll(), src) == []
    assert_silent(kq, src)


def test_delete_drains_a_pending_event(kq, src):
    kq.change(src.add())
    src.arm(kq)
    src.await_pending()
    assert kq.readable(), "the queue should have an event pending"
    kq.change(src.ch(EV_DELETE))
    assert only(kq.poll(), src) == []
    assert_silent(kq, src)
    assert not kq.readable()


def test_oneshot_reported_once_then_gone(kq, src):
    kq.change(src.add(EV_ONESHOT, udata=8))
    src.arm(kq)
    evs = only(kq.wait(), src)
    assert len(evs) == 1 and evs[0].udata == 8
    assert evs[0].flags & EV_ONESHOT
    src.arm(kq)
    src.await_pending()
    assert_silent(kq, src)
    with pytest.raises(OSError) as ei:
        kq.change(src.ch(EV_DELETE))
    assert ei.value.errno == errno.ENOENT


def test_dispatch_reported_once_then_silent_until_enable(kq, src):
    kq.change(src.add(EV_DISPATCH, udata=6))
    src.arm(kq)
    evs = only(kq.wait(), src)
    assert len(evs) == 1 and evs[0].udata == 6
    assert evs[0].flags & EV_DISPATCH
    src.arm(kq)
    src.await_pending()
    assert_silent(kq, src)
    kq.change(src.ch(EV_ENABLE, udata=6))
    src.arm(kq)
    evs = only(kq.wait(), src)
    assert len(evs) == 1 and evs[0].udata == 6
    # Dispatched again: silent once more; still registered (delete works).
    src.arm(kq)
    src.await_pending()
    assert_silent(kq, src)
    kq.change(src.ch(EV_DELETE))


@pytest.mark.parametrize("name", ["read-pipe", "read-socket", "write-pipe", "write-socket", "user"])
def test_clear_reports_once_per_state_change(kq, fds, name):
    src = SOURCES[name](fds)
    kq.change(src.add(EV_CLEAR, udata=4))
    src.arm(kq)
    evs = only(kq.wait(), src)
    assert len(evs) == 1 and evs[0].udata == 4
    assert evs[0].flags & EV_CLEAR
    # The condition still holds, but nothing changed: not reported again.
    assert_silent(kq, src)
    # A new change of state: reported again.
    src.arm(kq)
    assert len(only(kq.wait(), src)) == 1
    assert_silent(kq, src)


@pytest.mark.parametrize("name", ["read-pipe", "read-socket", "write-pipe", "write-socket", "user"])
def test_level_triggered_reported_on_every_call(kq, fds, name):
    src = SOURCES[name](fds)
    kq.change(src.add(udata=4))
    src.arm(kq)
    for _ in range(3):
        evs = only(kq.wait(), src)
        assert len(evs) == 1 and evs[0].udata == 4


def test_receipt_reports_every_change_without_waiting(kq, src):
    # Make something pending first: receipts must not drain it.
    kq.change((9999, lib.EVFILT_USER, EV_ADD, lib.NOTE_TRIGGER))
    changes = [
        src.add(EV_RECEIPT, udata=11),
        src.ch(EV_DISABLE | EV_RECEIPT, udata=12),
        src.ch(EV_ENABLE | EV_RECEIPT, udata=13),
    ]
    t0 = time.monotonic()
    evs = kq.changes(changes, nevents=8, timeout=None)   # NULL timeout: must not block
    assert time.monotonic() - t0 < 1.0
    assert len(evs) == 3
    for ev, udata in zip(evs, (11, 12, 13)):
        assert (ev.ident, ev.filter, ev.udata) == (src.ident, src.filter, udata)
        assert ev.flags & EV_ERROR
        assert ev.data == 0
    # The pending user event was not drained by the receipt call.
    assert (9999, lib.EVFILT_USER) in [(e.ident, e.filter) for e in kq.poll()]


def test_receipt_mixed_with_a_failing_change(kq, src):
    evs = kq.changes([
        src.add(EV_RECEIPT, udata=1),
        (31337, lib.EVFILT_USER, EV_DELETE | EV_RECEIPT, 0, 0, 2),   # not registered
        src.ch(EV_DELETE | EV_RECEIPT, udata=3),
    ], nevents=3, timeout=None)
    assert [(e.udata, e.data) for e in evs] == [(1, 0), (2, errno.ENOENT), (3, 0)]
    assert all(e.flags & EV_ERROR for e in evs)


def test_registration_in_several_queues_is_independent(make_kq, src):
    kq1, kq2 = make_kq(), make_kq()
    kq1.change(src.add(EV_ONESHOT, udata=1))
    kq2.change(src.add(udata=2))
    src.arm(kq1, kq2)
    e1 = only(kq1.wait(), src)
    e2 = only(kq2.wait(), src)
    assert [e.udata for e in e1] == [1]
    assert [e.udata for e in e2] == [2]
    # kq1's oneshot is gone; kq2's registration is untouched.
    with pytest.raises(OSError) as ei:
        kq1.change(src.ch(EV_DELETE))
    assert ei.value.errno == errno.ENOENT
    src.arm(kq2)
    assert [e.udata for e in only(kq2.wait(), src)] == [2]
    # Deleting in kq2 does not disturb a new registration in kq1.
    kq1.change(src.add(udata=3))
    kq2.change(src.ch(EV_DELETE))
    src.arm(kq1, kq2)
    assert [e.udata for e in only(kq1.wait(), src)] == [3]
    assert_silent(kq2, src)


def test_disable_in_one_queue_leaves_the_other_reporting(make_kq, src):
    kq1, kq2 = make_kq(), make_kq()
    kq1.change(src.add(udata=1))
    kq2.change(src.add(udata=2))
    kq1.change(src.ch(EV_DISABLE, udata=1))
    src.arm(kq1, kq2)
    assert [e.udata for e in only(kq2.wait(), src)] == [2]
    src.await_pending()
    assert_silent(kq1, src)
