"""Returned flags as FreeBSD's kqueue(2) returns them.

FreeBSD's kqueue_register() stores the change's flags minus EV_ADD,
EV_DELETE, EV_ENABLE and EV_DISABLE, and every event copies them: so a
registration made with EV_RECEIPT (or EV_KEEPUDATA) reports it back, on
every filter.  EVFILT_PROC sets EV_CLEAR itself (filt_procattach) and adds
EV_EOF | EV_ONESHOT at exit (filt_proc).  EVFILT_VNODE records a write as
one hint, NOTE_WRITE | NOTE_EXTEND when the file grew (VOP_WRITE_POST), and
filt_vfsvnode() keeps the whole hint once any of its bits was asked for.
"""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from kqueue_py import lib

from helpers import fork_waiting_child

EV_ADD, EV_DELETE = lib.EV_ADD, lib.EV_DELETE
EV_ENABLE, EV_DISABLE = lib.EV_ENABLE, lib.EV_DISABLE
EV_RECEIPT, EV_KEEPUDATA = lib.EV_RECEIPT, lib.EV_KEEPUDATA
EV_ONESHOT, EV_CLEAR, EV_EOF, EV_ERROR = lib.EV_ONESHOT, lib.EV_CLEAR, lib.EV_EOF, lib.EV_ERROR
NOTE_WRITE, NOTE_EXTEND, NOTE_ATTRIB = lib.NOTE_WRITE, lib.NOTE_EXTEND, lib.NOTE_ATTRIB

ACTIONS = EV_ADD | EV_DELETE | EV_ENABLE | EV_DISABLE


def register(kq, ident, filt, flags, fflags=0, data=0, udata=0):
    """EV_ADD with EV_RECEIPT and room for the receipt; the receipt must be clean."""
    evs = kq.changes([(ident, filt, EV_ADD | EV_RECEIPT | flags, fflags, data, udata)])
    assert len(evs) == 1 and evs[0].flags == EV_ERROR and evs[0].data == 0, evs


def kept(ev, flags):
    """The registration's flags that are not actions are all in the event."""
    want = (EV_RECEIPT | flags) & ~ACTIONS
    return ev.flags & want == want


def test_receipt_kept_on_user_events(kq):
    register(kq, 5, lib.EVFILT_USER, EV_CLEAR, udata=1)
    kq.change((5, lib.EVFILT_USER, 0, lib.NOTE_TRIGGER, 0, 1))
    ev = kq.wait_one()
    assert ev.filter == lib.EVFILT_USER and kept(ev, EV_CLEAR), hex(ev.flags)


def test_receipt_kept_on_timer_events(kq):
    register(kq, 9, lib.EVFILT_TIMER, 0, lib.NOTE_MSECONDS, 5)
    ev = kq.wait_one()
    assert ev.filter == lib.EVFILT_TIMER and kept(ev, EV_CLEAR), hex(ev.flags)


def test_receipt_kept_on_oneshot_timer(kq):
    register(kq, 9, lib.EVFILT_TIMER, EV_ONESHOT, lib.NOTE_MSECONDS, 5)
    ev = kq.wait_one()
    assert kept(ev, EV_ONESHOT | EV_CLEAR), hex(ev.flags)


def test_receipt_kept_on_signal_events(kq):
    old = signal.signal(signal.SIGUSR2, lambda *a: None)
    try:
        register(kq, signal.SIGUSR2, lib.EVFILT_SIGNAL, 0)
        os.kill(os.getpid(), signal.SIGUSR2)
        ev = kq.wait_one()
        assert ev.filter == lib.EVFILT_SIGNAL and ev.data == 1
        assert kept(ev, EV_CLEAR), hex(ev.flags)
        kq.change((signal.SIGUSR2, lib.EVFILT_SIGNAL, EV_DELETE))
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_receipt_kept_on_read_and_write_events(kq, fds):
    a, b = fds.socketpair()
    register(kq, a.fileno(), lib.EVFILT_READ, 0)
    register(kq, b.fileno(), lib.EVFILT_WRITE, EV_CLEAR)
    b.send(b"x")
    evs = {e.filter: e for e in kq.wait(8, 2.0)}
    if lib.EVFILT_READ not in evs:
        evs.update({e.filter: e for e in kq.wait(8, 2.0)})
    assert kept(evs[lib.EVFILT_READ], 0), hex(evs[lib.EVFILT_READ].flags)
    assert kept(evs[lib.EVFILT_WRITE], EV_CLEAR), hex(evs[lib.EVFILT_WRITE].flags)


def test_receipt_kept_on_vnode_events(kq, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    try:
        register(kq, fd, lib.EVFILT_VNODE, EV_CLEAR, NOTE_WRITE)
        os.write(fd, b"abc")
        ev = kq.wait_one()
        assert kept(ev, EV_CLEAR), hex(ev.flags)
        kq.change((fd, lib.EVFILT_VNODE, EV_DELETE))
    finally:
        os.close(fd)


def test_keepudata_given_at_registration_is_kept(kq):
    kq.change((3, lib.EVFILT_USER, EV_ADD | EV_CLEAR | EV_KEEPUDATA, lib.NOTE_TRIGGER, 0, 0))
    ev = kq.wait_one()
    assert ev.flags & EV_KEEPUDATA and ev.flags & EV_CLEAR


def test_actions_are_never_reported(kq):
    kq.change((3, lib.EVFILT_USER, EV_ADD | EV_ENABLE | EV_CLEAR, lib.NOTE_TRIGGER, 0, 0))
    ev = kq.wait_one()
    assert ev.flags & ACTIONS == 0, hex(ev.flags)


def test_receipt_on_a_change_of_an_existing_registration_changes_nothing(kq):
    # FreeBSD stores flags only when the knote is made; later changes keep them.
    kq.change((4, lib.EVFILT_USER, EV_ADD | EV_CLEAR))
    evs = kq.changes([(4, lib.EVFILT_USER, EV_RECEIPT, lib.NOTE_TRIGGER)])
    assert evs[0].flags == EV_ERROR and evs[0].data == 0
    ev = kq.wait_one()
    assert not ev.flags & EV_RECEIPT


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_proc_exit_carries_oneshot_clear_eof(kq):
    pid, w = fork_waiting_child(3)
    try:
        kq.change((pid, lib.EVFILT_PROC, EV_ADD, lib.NOTE_EXIT, 0, 7))
        os.write(w, b"x")
        ev = kq.wait_one(5.0)
        assert ev.ident == pid and ev.fflags == lib.NOTE_EXIT
        assert ev.flags & (EV_ONESHOT | EV_CLEAR | EV_EOF) == EV_ONESHOT | EV_CLEAR | EV_EOF, \
            hex(ev.flags)
        assert os.waitstatus_to_exitcode(ev.data) == 3
    finally:
        os.close(w)
        os.waitpid(pid, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_proc_exit_with_receipt_keeps_it(kq):
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        time.sleep(0.05)
        os._exit(0)
    try:
        register(kq, pid, lib.EVFILT_PROC, 0, lib.NOTE_EXIT)
        ev = kq.wait_one(5.0)
        assert kept(ev, EV_ONESHOT | EV_CLEAR | EV_EOF), hex(ev.flags)
    finally:
        os.waitpid(pid, 0)


# --- VNODE: a write is one hint ------------------------------------------------


@pytest.fixture
def vfile(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDWR)
    yield fd
    os.close(fd)


def vnode_event(kq, fd, fflags, action):
    kq.change((fd, lib.EVFILT_VNODE, EV_ADD | EV_CLEAR, fflags, 0, 0))
    action()
    evs = kq.wait(8, 0.5)
    kq.change((fd, lib.EVFILT_VNODE, EV_DELETE))
    return evs


def test_vnode_append_to_note_write_registration_carries_extend(kq, vfile):
    evs = vnode_event(kq, vfile, NOTE_WRITE, lambda: os.pwrite(vfile, b"more", 10))
    assert [e.fflags for e in evs] == [NOTE_WRITE | NOTE_EXTEND]


def test_vnode_append_to_note_extend_registration_carries_write(kq, vfile):
    evs = vnode_event(kq, vfile, NOTE_EXTEND, lambda: os.pwrite(vfile, b"more", 10))
    assert [e.fflags for e in evs] == [NOTE_WRITE | NOTE_EXTEND]


def test_vnode_overwrite_is_write_only(kq, vfile):
    evs = vnode_event(kq, vfile, NOTE_WRITE | NOTE_EXTEND, lambda: os.pwrite(vfile, b"ab", 0))
    assert [e.fflags for e in evs] == [NOTE_WRITE]


def test_vnode_overwrite_not_reported_to_note_extend_registration(kq, vfile):
    evs = vnode_event(kq, vfile, NOTE_EXTEND, lambda: os.pwrite(vfile, b"ab", 0))
    assert evs == []


def test_vnode_write_not_reported_to_note_attrib_registration(kq, vfile):
    # Unrelated hints stay out: a write's hint has no NOTE_ATTRIB.
    evs = vnode_event(kq, vfile, NOTE_ATTRIB, lambda: os.pwrite(vfile, b"more", 10))
    assert all(not e.fflags & (NOTE_WRITE | NOTE_EXTEND) for e in evs), evs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="directory hint detail")
def test_vnode_mkdir_reports_write_and_link_to_note_write_registration(kq, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY)
    try:
        evs = vnode_event(kq, fd, NOTE_WRITE, lambda: (d / "sub").mkdir())
        assert [e.fflags for e in evs] == [NOTE_WRITE | lib.NOTE_LINK]
    finally:
        os.close(fd)
