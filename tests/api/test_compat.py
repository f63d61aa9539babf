"""kqueue_py.compat: select.kqueue / select.kevent work-alikes.

The first group re-states, in our own words, what CPython's
Lib/test/test_kqueue.py checks of select.kqueue, run here against
kqueue_py.compat; the rest pin down argument parsing, error types and
messages, PEP 475 retries, fork and fromfd as the library reference (and
CPython's select module) define them.
"""
from __future__ import annotations

import errno
import operator
import os
import signal
import socket
import sys
import threading
import time
from decimal import Decimal

from helpers import wait_blocked_in_kevent
from fractions import Fraction

import pytest

from kqueue_py import compat, lib
from kqueue_py.compat import kevent, kqueue

MAIN_THREAD = threading.current_thread() is threading.main_thread()
needs_main_thread = pytest.mark.skipif(not MAIN_THREAD, reason="signal handlers need the main thread")


@pytest.fixture
def kq():
    q = kqueue()
    yield q
    q.close()


# --------------------------------------------------------------------------
# Ported from CPython's test_kqueue.py (behaviours, rewritten).


def test_queue_lifecycle():
    q = kqueue()
    assert q.fileno() > 0
    assert q.closed is False
    q.close()
    assert q.closed is True
    with pytest.raises(ValueError, match="I/O operation on closed kqueue object"):
        q.fileno()
    q.close()   # a second close is fine
    with pytest.raises(ValueError, match="I/O operation on closed kqueue object"):
        q.control(None, 4)


def test_kevent_defaults_fields_and_ordering(tmp_path):
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        ev = kevent(fd)
        assert (ev.ident, ev.filter, ev.flags, ev.fflags, ev.data, ev.udata) == (
            fd, compat.KQ_FILTER_READ, compat.KQ_EV_ADD, 0, 0, 0)
        other = kevent(1000)
        assert ev == ev and not ev != ev
        assert ev != other and ev < other and ev <= other
        assert other >= ev and other > ev
        for op in (operator.lt, operator.le, operator.gt, operator.ge):
            for bad in (None, 1, "ev"):
                with pytest.raises(TypeError):
                    op(ev, bad)
        assert (ev == 1) is False and (ev != "x") is True

        ev = kevent(fd, compat.KQ_FILTER_WRITE)
        assert (ev.filter, ev.flags) == (compat.KQ_FILTER_WRITE, compat.KQ_EV_ADD)
        ev = kevent(fd, compat.KQ_FILTER_WRITE, compat.KQ_EV_ONESHOT)
        assert ev.flags == compat.KQ_EV_ONESHOT
    finally:
        os.close(fd)

    ev = kevent(1, 2, 3, 4, 5, 6)
    assert (ev.ident, ev.filter, ev.flags, ev.fflags, ev.data, ev.udata) == (1, 2, 3, 4, 5, 6)
    ev = kevent(0x7FFF, 1, 2, 3, 0x7FFF - 1, 0x7FFF)
    assert (ev.ident, ev.data, ev.udata) == (0x7FFF, 0x7FFE, 0x7FFF)
    assert kevent(0, 1, 0xFFFF).flags == 0xFFFF                 # bpo-11973
    assert kevent(0, 1, 2, 0xFFFFFFFF).fflags == 0xFFFFFFFF     # bpo-11973


def test_queue_events_with_fromfd_sharing_the_queue():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setblocking(False)
    try:
        client.connect(listener.getsockname())
    except BlockingIOError:
        pass
    server, _ = listener.accept()
    q = kqueue()
    q2 = kqueue.fromfd(q.fileno())
    try:
        add = compat.KQ_EV_ADD | compat.KQ_EV_ENABLE
        q.control([kevent(server.fileno(), compat.KQ_FILTER_WRITE, add)], 0)
        q.control([kevent(server.fileno(), compat.KQ_FILTER_READ, add)], 0)
        q2.control([kevent(client.fileno(), compat.KQ_FILTER_WRITE, add)], 0)
        q2.control([kevent(client.fileno(), compat.KQ_FILTER_READ, add)], 0)

        got = {(e.ident, e.filter) for e in q.control(None, 4, 1)}
        assert got == {(client.fileno(), compat.KQ_FILTER_WRITE),
                       (server.fileno(), compat.KQ_FILTER_WRITE)}
        client.send(b"Hello!")
        server.send(b"world!!!")
        for _ in range(20):
            events = q.control(None, 4, 1)
            if len(events) == 4:
                break
            time.sleep(0.05)
        assert {(e.ident, e.filter) for e in events} == {
            (client.fileno(), compat.KQ_FILTER_WRITE), (client.fileno(), compat.KQ_FILTER_READ),
            (server.fileno(), compat.KQ_FILTER_WRITE), (server.fileno(), compat.KQ_FILTER_READ)}

        q.control([kevent(client.fileno(), compat.KQ_FILTER_WRITE, compat.KQ_EV_DELETE)], 0)
        q.control([kevent(client.fileno(), compat.KQ_FILTER_READ, compat.KQ_EV_DELETE)], 0)
        q.control([kevent(server.fileno(), compat.KQ_FILTER_READ, compat.KQ_EV_DELETE)], 0, 0)
        got = {(e.ident, e.filter) for e in q.control([], 4, 0.99)}
        assert got == {(server.fileno(), compat.KQ_FILTER_WRITE)}
    finally:
        q.close()
        q2.close()     # the shared descriptor is already gone: no error
        for s in (client, server, listener):
            s.close()


def test_socket_pair_read_data():
    q = kqueue()
    a, b = socket.socketpair()
    try:
        a.send(b"foo")
        add = compat.KQ_EV_ADD | compat.KQ_EV_ENABLE
        r = q.control([kevent(a, compat.KQ_FILTER_READ, add), kevent(b, compat.KQ_FILTER_READ, add)], 1, 1)
        assert r
        assert not r[0].flags & compat.KQ_EV_ERROR
        assert b.recv(r[0].data) == b"foo"
    finally:
        a.close()
        b.close()
        q.close()


def test_changelist_any_iterable(kq):
    """bpo-30058: any iterable, even one whose __len__ lies, or an iterator."""
    a, b = socket.socketpair()
    try:
        ev = kevent(a, compat.KQ_FILTER_READ, compat.KQ_EV_ADD | compat.KQ_EV_ENABLE)
        kq.control([ev], 0)
        kq.control((ev,), 0)

        class LyingLength:
            def __len__(self):
                return 0

            def __iter__(self):
                for _ in range(100):
                    yield ev

        kq.control(LyingLength(), 0)
        kq.control(iter([ev]), 0)
        kq.control((e for e in [ev]), 0)
        # Every form was applied (none raised) and the registration works.
        b.send(b"x")
        got = kq.control(None, 4, 5)
        assert [(e.ident, e.filter) for e in got] == [(a.fileno(), compat.KQ_FILTER_READ)]
    finally:
        a.close()
        b.close()


def test_descriptor_not_inheritable(kq):
    assert os.get_inheritable(kq.fileno()) is False


#: CPython 3.12.1 invalidates select.kqueue objects in a fork child
#: (gh-110395, "invalidate open kqueues after fork"); before, they keep the
#: dead number and control() fails with EBADF.
CLOSED_AT_FORK = sys.version_info >= (3, 12, 1)


def _in_child(check) -> None:
    """Run ``check()`` in a fork child; it must return normally."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            check()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_fork_child_behaves_as_the_interpreters_select_kqueue(kq):
    """As the running interpreter's own select.kqueue in a fork child:
    3.12.1+ (gh-110395): closed, ``fileno()`` and ``control()`` raise
    ``ValueError``; earlier: not closed, ``fileno()`` is the old number and
    ``control()`` raises ``OSError(EBADF)`` (the child has no queue)."""
    shared = kqueue.fromfd(kq.fileno())
    number = kq.fileno()

    def check():
        for q in (kq, shared):
            if CLOSED_AT_FORK:
                assert q.closed
                with pytest.raises(ValueError, match="closed kqueue"):
                    q.fileno()
                with pytest.raises(ValueError, match="closed kqueue"):
                    q.control(None, 1, 0)
            else:
                assert not q.closed
                assert q.fileno() == number
                with pytest.raises(OSError) as ei:
                    q.control(None, 1, 0)
                assert ei.value.errno == errno.EBADF
                with pytest.raises(OSError) as ei:
                    q.control([kevent(1, compat.KQ_FILTER_USER, compat.KQ_EV_ADD)], 0)
                assert ei.value.errno == errno.EBADF
        # What an event loop does on either error: a new queue, which works.
        fresh = kqueue()
        fresh.control([kevent(1, compat.KQ_FILTER_USER, compat.KQ_EV_ADD)], 0)
        fresh.close()

    _in_child(check)
    assert not kq.closed     # the parent's queue is untouched
    kq.control([kevent(1, compat.KQ_FILTER_USER, compat.KQ_EV_ADD)], 0)


@pytest.mark.skipif(CLOSED_AT_FORK, reason="3.12.1+ closes the object at fork")
def test_fork_child_close_of_dead_queue_leaves_a_reused_number_alone(kq):
    """Before 3.12.1 select.kqueue's close() in a child closed whatever
    file had taken the dead number (gh-110395's reproducer); kqueue_py's
    closes nothing there."""
    def check():
        number = kq.fileno()
        fd = os.open(os.devnull, os.O_WRONLY)
        if fd != number:             # the dead number names another file now
            os.dup2(fd, number)
            os.close(fd)
        kq.close()
        assert kq.closed
        assert os.write(number, b"x") == 1      # still open

    _in_child(check)


# --------------------------------------------------------------------------
# kevent: argument parsing, ranges, repr, comparison.


def test_kevent_keywords_and_fileno_objects():
    ev = kevent(ident=3, filter=compat.KQ_FILTER_WRITE, flags=1, fflags=2, data=-3, udata=4)
    assert (ev.ident, ev.filter, ev.flags, ev.fflags, ev.data, ev.udata) == (3, -2, 1, 2, -3, 4)

    class HasFileno:
        def fileno(self):
            return 17

    assert kevent(HasFileno()).ident == 17
    assert kevent(True).ident == 1


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(ident=-1), OverflowError, "can't convert negative value to size_t"),
    (dict(ident=2**64), OverflowError, "Python int too large to convert to C size_t"),
    (dict(ident="x"), TypeError, "argument must be an int, or have a fileno() method."),
    (dict(ident=1.5), TypeError, "argument must be an int, or have a fileno() method."),
    (dict(ident=0, filter=32768), OverflowError, "signed short integer is greater than maximum"),
    (dict(ident=0, filter=-32769), OverflowError, "signed short integer is less than minimum"),
    (dict(ident=0, filter=1.0), TypeError, "'float' object cannot be interpreted as an integer"),
    (dict(ident=0, flags="x"), TypeError, "'str' object cannot be interpreted as an integer"),
    (dict(ident=0, fflags=1.0), TypeError, "'float' object cannot be interpreted as an integer"),
    (dict(ident=0, data=2**63), OverflowError, "int too big to convert"),
    (dict(ident=0, data=-2**63 - 1), OverflowError, "int too big to convert"),
    (dict(ident=0, udata=1.0), TypeError, "must be int, not float"),
])
def test_kevent_argument_errors(kwargs, exc, message):
    with pytest.raises(exc) as info:
        kevent(**kwargs)
    assert message in str(info.value)


def test_kevent_fileno_errors():
    class F:
        def __init__(self, value):
            self.value = value

        def fileno(self):
            return self.value

    with pytest.raises(TypeError, match="fileno\\(\\) returned a non-integer"):
        kevent(F("3"))
    with pytest.raises(ValueError, match="file descriptor cannot be a negative integer \\(-5\\)"):
        kevent(F(-5))
    with pytest.raises(OverflowError, match="Python int too large to convert to C int"):
        kevent(F(2**40))


def test_kevent_truncates_unsigned_fields_like_cpython():
    ev = kevent(0, 0, 0x1_0001, 0x1_0000_0002, 0, 2**64 + 3)
    assert (ev.flags, ev.fflags, ev.udata) == (1, 2, 3)
    assert kevent(0, udata=-1).udata == 2**64 - 1
    assert kevent(0, flags=-1).flags == 0xFFFF


def test_kevent_accepts_index_objects():
    class Idx:
        def __index__(self):
            return 7

    ev = kevent(0, Idx(), Idx(), Idx(), Idx())
    assert (ev.filter, ev.flags, ev.fflags, ev.data) == (7, 7, 7, 7)


def test_kevent_repr():
    ev = kevent(5, compat.KQ_FILTER_WRITE, 0x11, 0x2, -1, 0x10)
    assert repr(ev) == ("<select.kevent ident=5 filter=-2 flags=0x11 fflags=0x2 "
                        "data=0xffffffffffffffff udata=0x10>")


def test_kevent_is_unhashable_and_slotted():
    with pytest.raises(TypeError):
        hash(kevent(0))
    with pytest.raises(AttributeError):
        kevent(0).extra = 1


def test_kevent_ordering_is_field_by_field():
    assert kevent(1, -1) < kevent(1, 1)
    assert kevent(1, 1, 1) < kevent(1, 1, 2)
    assert kevent(1, 1, 1, 1, -5) < kevent(1, 1, 1, 1, 0)
    # udata compares as a signed machine word
    assert kevent(0, udata=2**63) < kevent(0, udata=0)
    assert sorted([kevent(3), kevent(1), kevent(2)]) == [kevent(1), kevent(2), kevent(3)]


def test_kevent_attributes_are_writable(kq):
    ev = kevent(0)
    ev.ident, ev.filter, ev.flags = 1, compat.KQ_FILTER_USER, compat.KQ_EV_ADD | compat.KQ_EV_CLEAR
    ev.fflags = compat.KQ_NOTE_TRIGGER
    ev.udata = 99
    (got,) = kq.control([ev], 1, 0)
    assert (got.ident, got.filter, got.udata) == (1, compat.KQ_FILTER_USER, 99)


def test_kevent_bad_attribute_value_is_reported_by_control(kq):
    ev = kevent(0)
    ev.filter = 10**6
    with pytest.raises(OverflowError):
        kq.control([ev], 0)
    ev = kevent(0)
    ev.ident = "x"
    with pytest.raises(TypeError):
        kq.control([ev], 0)


# --------------------------------------------------------------------------
# kqueue and control(): arguments and errors.


def test_kqueue_takes_no_arguments():
    with pytest.raises(TypeError, match="no positional arguments"):
        kqueue(1)
    with pytest.raises(TypeError, match="no keyword arguments"):
        kqueue(x=1)


def test_control_arguments_are_positional_only(kq):
    with pytest.raises(TypeError):
        kq.control(changelist=None, maxevents=1)
    with pytest.raises(TypeError):
        kq.control(None, 1, timeout=0)
    with pytest.raises(TypeError):
        kq.control(None)
    with pytest.raises(TypeError):
        kq.control(None, 1, 0, 0)


def test_control_maxevents(kq):
    with pytest.raises(ValueError, match="Length of eventlist must be 0 or positive, got -1"):
        kq.control(None, -1)
    with pytest.raises(TypeError, match="'float' object cannot be interpreted as an integer"):
        kq.control(None, 1.0)
    with pytest.raises(OverflowError):
        kq.control(None, 2**31)
    assert kq.control(None, 0) == []


def test_control_closed_check_order():
    q = kqueue()
    q.close()
    with pytest.raises(TypeError):           # the argument conversion comes first
        q.control(None, 1.5)
    with pytest.raises(ValueError, match="closed"):
        q.control(None, -1)                  # then the closed check
    with pytest.raises(ValueError, match="closed"):
        q.control(5, 1, "bad")


@pytest.mark.parametrize("timeout", ["1", Decimal("0.1"), Fraction(1, 10), float("nan"), 1e300, 2**63, [], b"1"])
def test_control_timeout_type_errors(kq, timeout):
    with pytest.raises(TypeError, match="timeout argument must be a number or None, got "
                                        + type(timeout).__name__):
        kq.control(None, 1, timeout)


@pytest.mark.parametrize("timeout", [-1, -0.5, -1e-10])
def test_control_negative_timeout(kq, timeout):
    with pytest.raises(ValueError, match="timeout must be positive or None"):
        kq.control(None, 1, timeout)


def test_control_accepted_timeouts(kq):
    class Idx:
        def __index__(self):
            return 0

    for t in (0, 0.0, -0.0, Idx(), False, 0.001, 1e-12):
        assert kq.control(None, 1, t) == []


def test_control_timeout_waits(kq):
    t0 = time.monotonic()
    assert kq.control(None, 1, 0.05) == []
    assert 0.045 <= time.monotonic() - t0 < 1


def test_control_with_no_room_returns_at_once(kq):
    """As on BSD: with max_events 0 the timeout is not waited."""
    t0 = time.monotonic()
    assert kq.control(None, 0, 5) == []
    assert time.monotonic() - t0 < 1


def test_control_changelist_type_errors(kq):
    with pytest.raises(TypeError, match="changelist is not iterable"):
        kq.control(5, 0)
    with pytest.raises(TypeError, match="changelist must be an iterable of select.kevent objects"):
        kq.control([kevent(0), (1, 2)], 0)
    with pytest.raises(TypeError, match="changelist must be an iterable of select.kevent objects"):
        kq.control("abc", 0)

    def gen():
        yield kevent(1, compat.KQ_FILTER_USER)
        raise TypeError("from inside the iterator")

    with pytest.raises(TypeError, match="from inside the iterator"):
        kq.control(gen(), 0)


def test_control_change_errors_raise_without_room(kq):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        kq.control([kevent(r)], 0)
    assert info.value.errno == errno.EBADF
    with pytest.raises(FileNotFoundError):
        kq.control([kevent(1, compat.KQ_FILTER_USER, compat.KQ_EV_DELETE)], 0)


def test_control_change_errors_returned_with_room(kq):
    changes = [kevent(1, compat.KQ_FILTER_USER, compat.KQ_EV_DELETE, udata=5),
               kevent(2, compat.KQ_FILTER_USER, compat.KQ_EV_ADD | compat.KQ_EV_RECEIPT)]
    got = kq.control(changes, 4, 0)
    assert [(e.ident, e.flags & compat.KQ_EV_ERROR, e.data, e.udata) for e in got] == [
        (1, compat.KQ_EV_ERROR, errno.ENOENT, 5), (2, compat.KQ_EV_ERROR, 0, 0)]


def test_control_returns_kevent_objects(kq):
    kq.control([kevent(9, compat.KQ_FILTER_USER, compat.KQ_EV_ADD | compat.KQ_EV_CLEAR, udata=2**64 - 1)], 0)
    kq.control([kevent(9, compat.KQ_FILTER_USER, 0, compat.KQ_NOTE_TRIGGER | compat.KQ_NOTE_FFCOPY | 0x77,
                       udata=2**64 - 1)], 0)
    (ev,) = kq.control(None, 8, 1)
    assert type(ev) is kevent
    assert (ev.ident, ev.filter, ev.fflags, ev.udata) == (9, compat.KQ_FILTER_USER, 0x77, 2**64 - 1)


def test_timer_units(kq):
    kq.control([kevent(1, compat.KQ_FILTER_TIMER, compat.KQ_EV_ADD | compat.KQ_EV_ONESHOT,
                       compat.KQ_NOTE_USECONDS, 20_000)], 0)
    t0 = time.monotonic()
    (ev,) = kq.control(None, 1, 2)
    assert ev.filter == compat.KQ_FILTER_TIMER and time.monotonic() - t0 >= 0.015


def test_close_never_raises():
    q = kqueue()
    q2 = kqueue.fromfd(q.fileno())
    q.close()
    q2.close()          # its descriptor was already closed
    assert q2.closed


def test_fromfd_shares_queue_state(kq):
    other = kqueue.fromfd(kq.fileno())
    assert other.fileno() == kq.fileno()
    other.control([kevent(4, compat.KQ_FILTER_USER, compat.KQ_EV_ADD | compat.KQ_EV_CLEAR)], 0)
    kq.control([kevent(4, compat.KQ_FILTER_USER, 0, compat.KQ_NOTE_TRIGGER)], 0)
    assert [e.ident for e in other.control(None, 4, 1)] == [4]
    with pytest.raises(TypeError):
        kqueue.fromfd(1.0)
    with pytest.raises(OverflowError):
        kqueue.fromfd(2**40)
    # closing one object closes the descriptor both share
    other.close()
    with pytest.raises(OSError) as info:
        kq.control(None, 1, 0)
    assert info.value.errno == errno.EBADF


def test_fromfd_of_a_closed_descriptor_fails_on_use():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    q = kqueue.fromfd(r)
    assert not q.closed
    with pytest.raises(OSError) as info:
        q.control(None, 1, 0)
    assert info.value.errno == errno.EBADF
    q._fd = -1   # do not close whatever may reuse the number


def test_close_from_another_thread_wakes_control():
    q = kqueue()
    result = []

    def waiter():
        try:
            q.control(None, 1, 10)
            result.append("returned")
        except ValueError as exc:
            result.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    wait_blocked_in_kevent(t)
    q.close()
    t.join(5)
    assert len(result) == 1 and isinstance(result[0], ValueError)


def test_context_manager(kq):
    with kqueue() as q:
        assert not q.closed
    assert q.closed


@needs_main_thread
def test_pep475_retry_with_remaining_timeout(kq):
    calls = []
    old = signal.signal(signal.SIGALRM, lambda *a: calls.append(time.monotonic()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)   # repeatedly
        t0 = time.monotonic()
        assert kq.control(None, 1, 0.3) == []
        elapsed = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(calls) >= 3
    # A timeout restarted at each signal would never end while they come.
    assert 0.29 <= elapsed < 5.0, elapsed


@needs_main_thread
def test_pep475_signal_handler_exception_propagates(kq):
    def handler(*a):
        raise InterruptedError("handler")  # any exception; this one is the PEP 475 name

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        t0 = time.monotonic()
        with pytest.raises(InterruptedError, match="handler"):
            kq.control(None, 1)
        assert time.monotonic() - t0 < 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@needs_main_thread
def test_pep475_changes_applied_once(kq):
    """The changes are applied before the wait: a retry waits again without
    re-applying them (so an EV_DELETE does not turn into ENOENT)."""
    kq.control([kevent(1, compat.KQ_FILTER_USER, compat.KQ_EV_ADD)], 0)
    old = signal.signal(signal.SIGALRM, lambda *a: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.03)
        got = kq.control([kevent(1, compat.KQ_FILTER_USER, compat.KQ_EV_DELETE)], 4, 0.15)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert got == []


# --------------------------------------------------------------------------
# Constants.


STDLIB_NAMES = """KQ_FILTER_READ KQ_FILTER_WRITE KQ_FILTER_AIO KQ_FILTER_VNODE KQ_FILTER_PROC
KQ_FILTER_SIGNAL KQ_FILTER_TIMER KQ_EV_ADD KQ_EV_DELETE KQ_EV_ENABLE KQ_EV_DISABLE KQ_EV_ONESHOT
KQ_EV_CLEAR KQ_EV_SYSFLAGS KQ_EV_FLAG1 KQ_EV_EOF KQ_EV_ERROR KQ_NOTE_LOWAT KQ_NOTE_DELETE
KQ_NOTE_WRITE KQ_NOTE_EXTEND KQ_NOTE_ATTRIB KQ_NOTE_LINK KQ_NOTE_RENAME KQ_NOTE_REVOKE
KQ_NOTE_EXIT KQ_NOTE_FORK KQ_NOTE_EXEC KQ_NOTE_PCTRLMASK KQ_NOTE_PDATAMASK KQ_NOTE_TRACK
KQ_NOTE_CHILD KQ_NOTE_TRACKERR""".split()

EXTRA_NAMES = """KQ_FILTER_USER KQ_EV_RECEIPT KQ_EV_DISPATCH KQ_NOTE_TRIGGER KQ_NOTE_FFNOP
KQ_NOTE_FFAND KQ_NOTE_FFOR KQ_NOTE_FFCOPY KQ_NOTE_FFCTRLMASK KQ_NOTE_FFLAGSMASK
KQ_NOTE_SECONDS KQ_NOTE_MSECONDS KQ_NOTE_USECONDS KQ_NOTE_NSECONDS""".split()


@pytest.mark.parametrize("name", STDLIB_NAMES + EXTRA_NAMES)
def test_constant_exported(name):
    value = getattr(compat, name)
    assert isinstance(value, int)
    assert name in compat.__all__
    c_name = name[3:].replace("FILTER_", "EVFILT_", 1) if name.startswith("KQ_FILTER_") else name[3:]
    if hasattr(lib, c_name):
        assert value == getattr(lib, c_name)


def test_constant_values_are_freebsd_numbering():
    assert (compat.KQ_FILTER_READ, compat.KQ_FILTER_WRITE, compat.KQ_FILTER_AIO, compat.KQ_FILTER_VNODE,
            compat.KQ_FILTER_PROC, compat.KQ_FILTER_SIGNAL, compat.KQ_FILTER_TIMER,
            compat.KQ_FILTER_USER) == (-1, -2, -3, -4, -5, -6, -7, -11)
    assert (compat.KQ_EV_ADD, compat.KQ_EV_DELETE, compat.KQ_EV_ENABLE, compat.KQ_EV_DISABLE,
            compat.KQ_EV_ONESHOT, compat.KQ_EV_CLEAR, compat.KQ_EV_RECEIPT, compat.KQ_EV_DISPATCH,
            compat.KQ_EV_FLAG1, compat.KQ_EV_ERROR, compat.KQ_EV_EOF) == (
        1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x2000, 0x4000, 0x8000)
    assert compat.KQ_NOTE_TRIGGER == 0x01000000
    assert compat.KQ_NOTE_EXIT == 0x80000000


def test_unsupported_filter_is_einval(kq):
    with pytest.raises(OSError) as info:
        kq.control([kevent(1, compat.KQ_FILTER_AIO)], 0)
    assert info.value.errno == errno.EINVAL


def test_user_filter_and_receipt(kq):
    got = kq.control([kevent(1, compat.KQ_FILTER_USER, compat.KQ_EV_ADD | compat.KQ_EV_RECEIPT
                             | compat.KQ_EV_DISPATCH)], 1, 0)
    assert [(e.flags & compat.KQ_EV_ERROR, e.data) for e in got] == [(compat.KQ_EV_ERROR, 0)]
    kq.control([kevent(1, compat.KQ_FILTER_USER, 0, compat.KQ_NOTE_TRIGGER)], 0)
    assert [e.ident for e in kq.control(None, 2, 1)] == [1]
    kq.control([kevent(1, compat.KQ_FILTER_USER, 0, compat.KQ_NOTE_TRIGGER)], 0)
    assert kq.control(None, 2, 0) == []     # dispatched: disabled until re-enabled


def test_closing_a_stale_fromfd_twin_never_closes_a_queue_that_reused_the_number(lowest_free):
    q = kqueue()
    twin = kqueue.fromfd(q.fileno())
    q.close()                                 # the queue is gone; twin still holds the number
    lowest_free.next_is(twin._fd)
    new = kqueue()
    try:
        assert new.fileno() == twin._fd       # the new queue has the stale twin's number
        twin.close()                          # (a late finalizer does the same)
        assert not new.closed
        ev = kevent(1, compat.KQ_FILTER_USER, compat.KQ_EV_ADD | compat.KQ_EV_ONESHOT,
                    compat.KQ_NOTE_TRIGGER)
        assert [e.ident for e in new.control([ev], 1, 0)] == [1]   # still a live queue
    finally:
        new.close()


def _module_from(tmp_path, name: str, source: str):
    import importlib.util

    path = tmp_path / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stdlib_selector_found_whatever_guards_it(tmp_path):
    # The stdlib's selectors source with its kqueue guard worded otherwise,
    # the class moved to the guard's else branch: still the stdlib's class.
    import inspect
    import selectors

    source = inspect.getsource(selectors)
    guard = "\nif hasattr(select, 'kqueue'):\n"
    assert guard in source
    module = _module_from(tmp_path, "selectors_reworded", source.replace(
        guard, "\nif getattr(select, 'kqueue', None) is None:  # no kqueue\n    pass\nelse:\n", 1))
    assert not hasattr(module, "KqueueSelector")
    cls = compat._stdlib_kqueue_selector(module)
    assert (cls.__module__, cls.__qualname__) == ("selectors_reworded", "KqueueSelector")
    assert issubclass(cls, module.BaseSelector)
    assert not hasattr(module, "KqueueSelector")    # install() sets it, not the lookup


def test_stdlib_selector_falls_back_to_kqueue_pys_own(tmp_path):
    from kqueue_py.selectors import KqueueSelector

    base = "import selectors\nBaseSelector = selectors.BaseSelector\n"
    without = _module_from(tmp_path, "no_kqueue_class", base)
    failing = _module_from(tmp_path, "failing_class", base + (          # a NameError
        "import select\nif hasattr(select, 'kqueue'):\n    class KqueueSelector(NoSuchBase):\n"
        "        pass\n"))
    not_a_selector = _module_from(tmp_path, "not_a_selector", base + (
        "try:\n    pass\nfinally:\n    if 0:\n        class KqueueSelector:\n            pass\n"))
    for module in (without, failing, not_a_selector):
        assert compat._stdlib_kqueue_selector(module) is KqueueSelector, module
        assert not hasattr(module, "KqueueSelector")
