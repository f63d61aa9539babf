"""kevent(2) argument and change errors: EBADF, EINVAL, ENOENT, and how a
changelist error is reported (EV_ERROR event with room, -1/errno without)."""
from __future__ import annotations

import errno
import os

import pytest

from kqueue_py import ffi, lib

import helpers as h

READ, WRITE, USER, TIMER = lib.EVFILT_READ, lib.EVFILT_WRITE, lib.EVFILT_USER, lib.EVFILT_TIMER
EV_ADD, EV_DELETE, EV_ENABLE, EV_DISABLE = lib.EV_ADD, lib.EV_DELETE, lib.EV_ENABLE, lib.EV_DISABLE
EV_ERROR, EV_RECEIPT, EV_CLEAR = lib.EV_ERROR, lib.EV_RECEIPT, lib.EV_CLEAR
EV_ONESHOT, EV_DISPATCH, TRIGGER = lib.EV_ONESHOT, lib.EV_DISPATCH, lib.NOTE_TRIGGER


def raw(kq, *, changes=ffi.NULL, nchanges=0, events=ffi.NULL, nevents=0, timeout=ffi.NULL):
    ffi.errno = 0
    rc = lib.kevent(kq, changes, nchanges, events, nevents, timeout)
    return rc, ffi.errno


# ---------------------------------------------------------------------------
# The queue descriptor


@pytest.mark.parametrize("bad", [-1, 99999, 2**31 - 1])
def test_kevent_on_garbage_fd_is_ebadf(bad):
    assert raw(bad) == (-1, errno.EBADF)
    evs = ffi.new("struct kevent[]", 1)
    assert raw(bad, events=evs, nevents=1, timeout=ffi.new("struct timespec *")) == (-1, errno.EBADF)


def test_kevent_on_a_non_kqueue_fd_is_ebadf(fds):
    r, w = fds.pipe()
    evs = ffi.new("struct kevent[]", 1)
    assert raw(r, events=evs, nevents=1, timeout=ffi.new("struct timespec *")) == (-1, errno.EBADF)


def test_kevent_on_closed_kqueue_is_ebadf():
    kq = lib.kqueue()
    assert kq >= 0
    assert lib.kqueue_close(kq) == 0
    assert raw(kq) == (-1, errno.EBADF)
    evs = ffi.new("struct kevent[]", 1)
    assert raw(kq, events=evs, nevents=1, timeout=ffi.new("struct timespec *")) == (-1, errno.EBADF)
    rc, err, _ = h.kevent_raw(kq, [(1, USER, EV_ADD)], 0, 0)
    assert (rc, err) == (-1, errno.EBADF)


def test_kqueue_close_twice_is_ebadf():
    kq = lib.kqueue()
    assert lib.kqueue_close(kq) == 0
    ffi.errno = 0
    assert lib.kqueue_close(kq) == -1
    assert ffi.errno == errno.EBADF


def test_kqueue_close_on_a_non_kqueue_fd_is_ebadf_and_leaves_it_open(fds):
    r, w = fds.pipe()
    ffi.errno = 0
    assert lib.kqueue_close(r) == -1
    assert ffi.errno == errno.EBADF
    os.write(w, b"x")
    assert os.read(r, 1) == b"x"


# ---------------------------------------------------------------------------
# Arguments


def test_negative_nchanges_is_einval(kq):
    ch = ffi.new("struct kevent[]", 1)
    assert raw(kq, changes=ch, nchanges=-1) == (-1, errno.EINVAL)


def test_negative_nevents_is_einval(kq):
    evs = ffi.new("struct kevent[]", 1)
    assert raw(kq, events=evs, nevents=-1) == (-1, errno.EINVAL)


@pytest.mark.parametrize("sec,nsec", [(0, 1_000_000_000), (0, 2_000_000_000), (0, -1), (1, -5), (-1, 0)])
def test_bad_timespec_is_einval(kq, sec, nsec):
    ts = ffi.new("struct timespec *")
    ts.tv_sec, ts.tv_nsec = sec, nsec
    evs = ffi.new("struct kevent[]", 1)
    assert raw(kq, events=evs, nevents=1, timeout=ts) == (-1, errno.EINVAL)


def test_largest_valid_timespec_nsec_is_accepted(kq):
    ts = ffi.new("struct timespec *")
    ts.tv_sec, ts.tv_nsec = 0, 999_999_999
    kq.change((1, USER, EV_ADD, lib.NOTE_TRIGGER))
    evs = ffi.new("struct kevent[]", 1)
    assert raw(kq, events=evs, nevents=1, timeout=ts)[0] == 1


# ---------------------------------------------------------------------------
# Filters


@pytest.mark.parametrize("filt", [-100, -3, 1, 100, -32768])
def test_unknown_filter_is_einval(kq, filt):
    rc, err, _ = h.kevent_raw(kq, [(1, filt, EV_ADD)], 0, None)
    assert (rc, err) == (-1, errno.EINVAL)
    evs = kq.changes([(1, filt, EV_ADD, 0, 0, 7)], nevents=1, timeout=None)
    assert len(evs) == 1
    assert evs[0].flags & EV_ERROR and evs[0].data == errno.EINVAL
    assert (evs[0].ident, evs[0].filter, evs[0].udata) == (1, filt, 7)


@pytest.mark.parametrize("filt", [READ, WRITE])
def test_fd_filter_on_closed_fd_number_is_ebadf(kq, fds, filt):
    r, w = fds.pipe()
    fds.close(r)
    rc, err, _ = h.kevent_raw(kq, [(r, filt, EV_ADD)], 0, None)
    assert (rc, err) == (-1, errno.EBADF)
    evs = kq.changes([(r, filt, EV_ADD)], nevents=1, timeout=None)
    assert [(e.flags & EV_ERROR, e.data) for e in evs] == [(EV_ERROR, errno.EBADF)]


_NEVER_OPENED = """
import errno, sys
from kqueue_py import ffi, lib
kq = lib.kqueue()
ch = ffi.new("struct kevent[]", 1)
ch[0].ident = {ident}
ch[0].filter = {filt}
ch[0].flags = lib.EV_ADD
rc = lib.kevent(kq, ch, 1, ffi.NULL, 0, ffi.NULL)
print(rc, errno.errorcode.get(ffi.errno, ffi.errno))
"""


@pytest.mark.parametrize("filt", [READ, WRITE])
@pytest.mark.parametrize("ident", [100_000, 2**31 - 1, 2**32 + 3, 2**64 - 1])
def test_fd_filter_on_fd_number_never_opened_is_ebadf(filt, ident):
    # In a child process: a backend that loops or crashes on a huge ident
    # must fail this test, not take the whole run down.
    import subprocess
    import sys
    try:
        out = subprocess.run([sys.executable, "-c", _NEVER_OPENED.format(ident=ident, filt=filt)],
                             capture_output=True, text=True, timeout=3, cwd="/")
    except subprocess.TimeoutExpired:
        pytest.fail(f"kevent(EV_ADD) of fd {ident} hung")
    assert out.returncode == 0, f"child died ({out.returncode}): {out.stderr[-500:]}"
    assert out.stdout.split() == ["-1", "EBADF"]


@pytest.mark.parametrize("filt", [READ, WRITE])
def test_fd_filter_delete_on_closed_fd_number_is_ebadf(kq, fds, filt):
    r, w = fds.pipe()
    fds.close(r)
    rc, err, _ = h.kevent_raw(kq, [(r, filt, EV_DELETE)], 0, None)
    assert (rc, err) == (-1, errno.EBADF)


@pytest.mark.parametrize("flags", [EV_DELETE, EV_ENABLE, EV_DISABLE, 0])
@pytest.mark.parametrize("filt", [READ, WRITE, USER, TIMER])
def test_change_without_add_on_missing_registration_is_enoent(kq, fds, filt, flags):
    r, w = fds.pipe()
    ident = {READ: r, WRITE: w}.get(filt, 5)
    rc, err, _ = h.kevent_raw(kq, [(ident, filt, flags)], 0, None)
    assert (rc, err) == (-1, errno.ENOENT)
    evs = kq.changes([(ident, filt, flags, 0, 0, 77)], nevents=1, timeout=None)
    assert len(evs) == 1
    e = evs[0]
    assert (e.ident, e.filter, e.flags & EV_ERROR, e.data, e.udata) == (ident, filt, EV_ERROR, errno.ENOENT, 77)


# ---------------------------------------------------------------------------
# How changelist errors are reported


def test_error_with_room_does_not_stop_later_changes(kq):
    evs = kq.changes([(1, USER, EV_ADD), (2, USER, EV_DELETE), (3, USER, EV_ADD)], nevents=3)
    assert [(e.ident, e.data) for e in evs] == [(2, errno.ENOENT)]
    kq.change((1, USER, EV_DELETE), (3, USER, EV_DELETE))


def test_error_without_room_returns_minus_one_after_applying_earlier_changes(kq):
    rc, err, _ = h.kevent_raw(kq, [(1, USER, EV_ADD), (2, USER, EV_DELETE)], 0, None)
    assert (rc, err) == (-1, errno.ENOENT)
    kq.change((1, USER, EV_DELETE))     # the first change was applied


def test_errors_fill_the_room_then_minus_one(kq):
    # Two errors, room for one: the first is reported, the second fails the call.
    rc, err, evs = h.kevent_raw(kq, [(1, USER, EV_DELETE), (2, USER, EV_DELETE)], 1, None)
    assert (rc, err) == (-1, errno.ENOENT) or (rc == 1 and evs[0].ident == 1)


def test_errors_are_returned_without_draining_pending_events(kq):
    kq.change((9, USER, EV_ADD | EV_CLEAR, lib.NOTE_TRIGGER))
    evs = kq.changes([(2, USER, EV_DELETE)], nevents=8, timeout=None)
    assert [(e.ident, e.flags & EV_ERROR) for e in evs] == [(2, EV_ERROR)]
    assert [e.ident for e in kq.poll()] == [9]


def test_change_error_entry_copies_the_change(kq):
    evs = kq.changes([(12345, USER, EV_DELETE, 0x123, 77, 0xABCDEF)], nevents=1)
    assert len(evs) == 1
    e = evs[0]
    assert (e.ident, e.filter, e.udata) == (12345, USER, 0xABCDEF)
    assert e.flags & EV_ERROR
    assert e.data == errno.ENOENT


def test_successful_changes_without_receipt_return_zero_and_then_scan(kq):
    # No errors and no receipts: the call goes on to collect events.
    evs = kq.changes([(1, USER, EV_ADD | EV_CLEAR, lib.NOTE_TRIGGER, 0, 5)], nevents=4, timeout=1.0)
    assert [(e.ident, e.flags & EV_ERROR, e.udata) for e in evs] == [(1, 0, 5)]


def test_receipt_with_room_for_fewer_receipts_than_changes(kq):
    # Every change is applied; receipts are written while there is room and
    # the ones that do not fit are dropped (no error: the call succeeds).
    rc, err, evs = h.kevent_raw(kq, [(i, USER, EV_ADD | EV_RECEIPT) for i in range(4)], 2, None)
    assert (rc, err) == (2, 0)
    assert [(e.ident, e.flags, e.data) for e in evs[:2]] == [(0, EV_ERROR, 0), (1, EV_ERROR, 0)]
    for i in range(4):
        kq.change((i, USER, EV_DELETE))   # raises ENOENT if i was not registered


def test_failure_after_the_receipts_filled_the_list_fails_the_call(kq):
    # No room left for the error entry: the call fails with that errno
    # (the changes before it stay applied).
    changes = [(0, USER, EV_ADD | EV_RECEIPT), (1, USER, EV_DELETE)]
    rc, err, _ = h.kevent_raw(kq, changes, 1, None)
    assert (rc, err) == (-1, errno.ENOENT)
    kq.change((0, USER, EV_DELETE))


def test_kev_change_and_kq_apply_helpers(kq):
    import kqueue_py
    ch = kqueue_py.kev_change(5, USER, EV_ADD | EV_CLEAR, 0xBEEF, fflags=lib.NOTE_TRIGGER, data=3)
    assert (ch.ident, ch.filter, ch.flags, ch.fflags, ch.data) == (5, USER, EV_ADD | EV_CLEAR, lib.NOTE_TRIGGER, 3)
    assert kqueue_py.kq_apply(kq, ch) is True
    evs = kq.poll()
    assert [(e.ident, e.udata, e.data) for e in evs] == [(5, 0xBEEF, 3)]
    bad = kqueue_py.kev_change(6, USER, EV_DELETE)
    assert kqueue_py.kq_apply(kq, bad) is False
    assert ffi.errno == errno.ENOENT


# ---------------------------------------------------------------------------
# The change loop as FreeBSD runs it (kqueue_kevent in sys/kern/kern_event.c)


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
