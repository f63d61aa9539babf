"""The shared core under KQueue, compat.kqueue, KqueueSelector and raw.kq_wait:
PEP 475 in the selector, udata that lives exactly as long as its
registration, cap checks in the raw helpers, readable argument errors, and
the import error of an unbuilt source tree.
"""
from __future__ import annotations

import errno
import gc
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import weakref

import pytest

from kqueue_py import KEEP, Change, KQueue, compat, lib

from helpers import fork_waiting_child
from kqueue_py.selectors import KqueueSelector

TIMER, USER, READ, PROC = lib.EVFILT_TIMER, lib.EVFILT_USER, lib.EVFILT_READ, lib.EVFILT_PROC
EV_ADD, EV_DELETE, EV_ONESHOT = lib.EV_ADD, lib.EV_DELETE, lib.EV_ONESHOT


class Tag:
    """A weakly referenceable udata object."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Tag({self.name})"


def collected(ref: weakref.ref) -> bool:
    for _ in range(3):
        gc.collect()
        if ref() is None:
            return True
    return False


# -- 1. PEP 475 in the selector ---------------------------------------------

@pytest.mark.parametrize("cls", [KqueueSelector, getattr(selectors, "EpollSelector", None)],
                         ids=["KqueueSelector", "EpollSelector"])
def test_selector_select_retries_eintr_with_the_remaining_time(cls):
    if cls is None:
        pytest.skip("no EpollSelector here (the oracle)")
    r, w = os.pipe()
    sel = cls()
    old = signal.signal(signal.SIGALRM, lambda *a: None)
    try:
        sel.register(r, selectors.EVENT_READ)
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        t0 = time.monotonic()
        assert sel.select(1.0) == []
        elapsed = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        sel.close()
        os.close(r)
        os.close(w)
    assert 0.99 <= elapsed < 2.0, elapsed


def test_selector_handler_exception_propagates():
    class Boom(Exception):
        pass

    def handler(*a):
        raise Boom

    r, w = os.pipe()
    old = signal.signal(signal.SIGALRM, handler)
    try:
        with KqueueSelector() as sel:
            sel.register(r, selectors.EVENT_READ)
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            t0 = time.monotonic()
            with pytest.raises(Boom):
                sel.select(5.0)
            assert time.monotonic() - t0 < 2.0
            os.write(w, b"x")
            assert [(k.fd, m) for k, m in sel.select(1.0)] == [(r, selectors.EVENT_READ)]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(r)
        os.close(w)


# -- 2. A change that never happened changes no udata -------------------------

def test_udata_unchanged_by_a_change_refused_before_kevent():
    with KQueue() as q:
        q.add_timer(1, 0.05, udata="A")
        with pytest.raises(ValueError, match="interval"):
            q.add_timer(1, 1e12, udata="B")
        (ev,) = q.wait(2.0)
        assert (ev.ident, ev.udata) == (1, "A")


def test_udata_unchanged_by_a_change_out_of_range():
    with KQueue() as q:
        q.add_user(1, udata="A")
        with pytest.raises(OverflowError, match=r"changes\[1\]\.data"):
            q.apply([Change(1, USER, EV_ADD, 0, 0, "B"), Change(2, USER, EV_ADD, 0, 2**80, "C")])
        q.trigger(1)
        assert [(e.ident, e.udata) for e in q.wait(1.0)] == [(1, "A")]


def test_failed_batches_for_new_keys_keep_no_objects():
    with KQueue() as q:
        refs = []
        for i in range(200):
            tag = Tag(str(i))
            refs.append(weakref.ref(tag))
            with pytest.raises(ValueError):
                q.add_timer(100 + i, 1e12, udata=tag)
            del tag
        gc.collect()
        assert all(collected(r) for r in refs)


# -- 3. Receipts applied change by change, in order -----------------------------

def test_delete_then_add_in_one_batch_keeps_the_new_udata():
    with KQueue() as q:
        q.add_timer(1, 60, udata="old")
        q.apply([Change(1, TIMER, EV_DELETE),
                 Change(1, TIMER, EV_ADD | EV_ONESHOT, lib.NOTE_MSECONDS, 10, "new")])
        assert [(e.ident, e.udata) for e in q.wait(2.0)] == [(1, "new")]


def test_add_then_failing_add_in_one_batch_keeps_the_first_udata():
    with KQueue() as q:
        failures = q.apply([Change(1, TIMER, EV_ADD, lib.NOTE_MSECONDS, 10, "T"),
                            Change(1, TIMER, EV_ADD, lib.NOTE_MSECONDS, -5, "X")],
                           raise_errors=False)
        assert [e.errno for _c, e in failures] == [22]   # EINVAL
        assert [(e.ident, e.udata) for e in q.wait(2.0)] == [(1, "T")]


def test_enable_disable_trigger_keep_udata():
    with KQueue() as q:
        q.add_user(5, udata="u")
        q.disable(5, USER)
        q.enable(5, USER)
        q.trigger(5)
        assert [(e.ident, e.udata) for e in q.wait(1.0)] == [(5, "u")]
        q.apply([Change(5, USER, lib.EV_ADD, udata=KEEP)])
        q.trigger(5)
        assert [(e.ident, e.udata) for e in q.wait(1.0)] == [(5, "u")]


# -- 4. udata released exactly when its registration ends -----------------------

def test_udata_released_after_a_delivered_oneshot():
    with KQueue() as q:
        tag = Tag("oneshot")
        ref = weakref.ref(tag)
        q.add_timer(1, 0.001, udata=tag, oneshot=True)
        del tag
        (ev,) = q.wait(2.0)
        assert ev.udata is ref()
        del ev
        assert collected(ref)


def test_udata_released_after_a_process_exit_without_oneshot():
    # EVFILT_PROC added through apply() without EV_ONESHOT: the registration
    # ends with NOTE_EXIT all the same.
    with KQueue() as q:
        refs = []
        for i in range(20):
            pid, w = fork_waiting_child()
            tag = Tag(f"child{i}")
            refs.append(weakref.ref(tag))
            q.apply([Change(pid, PROC, EV_ADD, lib.NOTE_EXIT, 0, tag)])
            del tag
            os.write(w, b"x")
            os.close(w)
            (ev,) = q.wait(5.0)
            assert ev.ident == pid and ev.fflags & lib.NOTE_EXIT
            assert ev.udata is refs[-1]()
            os.waitpid(pid, 0)
            del ev
        assert all(collected(r) for r in refs)


def test_udata_released_after_the_exit_of_a_process_watched_without_note_exit():
    # fflags=0 asks for no event: at exit the registration goes without a
    # report (FreeBSD's EV_DROP), and its udata must go with it.
    with KQueue() as q:
        pid, w = fork_waiting_child()
        tag = Tag("no NOTE_EXIT")
        ref = weakref.ref(tag)
        q.add_process(pid, udata=tag, fflags=0)
        del tag
        os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)
        assert q.wait(0.3) == []           # nothing asked for, nothing reported
        q.add_user(99, udata="x")          # a change batch collects what was dropped
        assert collected(ref)
        with pytest.raises(FileNotFoundError):
            q.remove(pid, PROC)            # the registration is gone


def test_udata_released_by_ev_delete():
    with KQueue() as q:
        tag = Tag("deleted")
        ref = weakref.ref(tag)
        q.add_user(1, udata=tag)
        del tag
        q.remove(1, USER)
        assert collected(ref)


def test_udata_released_by_a_failed_add_of_a_new_key():
    r = 10**6    # no such descriptor
    with KQueue() as q:
        tag = Tag("failed")
        ref = weakref.ref(tag)
        failures = q.apply([Change(r, READ, EV_ADD, 0, 0, tag)], raise_errors=False)
        assert [e.errno for _c, e in failures] == [9]   # EBADF
        del tag, failures
        assert collected(ref)


def test_udata_released_by_close():
    q = KQueue()
    tag = Tag("closed")
    ref = weakref.ref(tag)
    q.add_user(1, udata=tag)
    q.add_timer(2, 60, udata=tag)
    del tag
    q.close()
    assert collected(ref)
    del q


def test_udata_replaced_releases_the_old_object():
    with KQueue() as q:
        old, new = Tag("old"), Tag("new")
        ref = weakref.ref(old)
        q.add_user(1, udata=old)
        q.add_user(1, udata=new)
        del old
        assert collected(ref)
        q.trigger(1)
        assert [e.udata for e in q.wait(1.0)] == [new]


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the kernel's kqueue drops such registrations without telling")
def test_udata_released_when_the_backend_drops_a_closed_descriptor():
    with KQueue() as q:
        r, w = os.pipe()
        keep = os.dup(r)           # the file outlives the registered number
        try:
            tag = Tag("closed fd")
            ref = weakref.ref(tag)
            q.add_reader(r, udata=tag)
            del tag
            os.close(r)            # no EV_DELETE
            os.write(w, b"x")      # the file is ready: its lingering item fires
            assert q.wait(0) == []     # the backend notices the close, reports nothing
            q.add_user(99, udata="x")  # a change batch collects what it dropped
            assert collected(ref)
        finally:
            os.close(keep)
            os.close(w)


# -- 5. The raw helpers check cap against the buffer ---------------------------

def test_kq_wait_cap_larger_than_the_buffer_is_refused():
    # In a subprocess: the unchecked version writes past the buffer and crashes.
    code = textwrap.dedent("""
        import errno
        from kqueue_py import ffi, kq_wait, new_events, kq_apply, kev_change, lib
        kq = lib.kqueue()
        for i in range(2000):
            assert kq_apply(kq, kev_change(i, lib.EVFILT_USER, lib.EV_ADD,
                                           fflags=lib.NOTE_TRIGGER))
        try:
            kq_wait(kq, new_events(1), 2000, 0)
        except ValueError as e:
            print("ValueError:", e)
        assert kq_wait(kq, new_events(2000), 2000, 0) == 2000
        p = ffi.new("struct kevent *")
        try:
            kq_wait(kq, p, 2, 0)
        except ValueError as e:
            print("ValueError:", e)
        assert kq_wait(kq, p, 1, 0) == 1
        assert kq_wait(kq, new_events(4), -1, 0) == -1 and ffi.errno == errno.EINVAL
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("ValueError: cap") for line in lines), lines


# -- 6. Errors a Python user can read --------------------------------------------

class NoFileno:
    pass


@pytest.mark.parametrize("call, exc, words", [
    (lambda q: q.add_reader("x"), TypeError, ["fd", "str"]),
    (lambda q: q.add_reader(NoFileno()), TypeError, ["fd", "fileno"]),
    (lambda q: q.add_reader(True), TypeError, ["fd", "bool"]),
    (lambda q: q.add_writer(False), TypeError, ["fd", "bool"]),
    (lambda q: q.add_reader(-1), ValueError, ["fd", "-1"]),
    (lambda q: q.add_timer(1, "x"), TypeError, ["interval", "str"]),
    (lambda q: q.add_timer(1, math.nan), ValueError, ["interval", "NaN"]),
    (lambda q: q.add_timer(1, -1), ValueError, ["interval", "non-negative"]),
    (lambda q: q.add_timer(1, 1e20), ValueError, ["interval", "too long"]),
    (lambda q: q.wait(timeout="1"), TypeError, ["timeout", "str"]),
    (lambda q: q.wait(timeout=math.nan), ValueError, ["timeout", "NaN"]),
    (lambda q: q.wait(timeout=-1), ValueError, ["timeout", "non-negative"]),
    (lambda q: q.wait(0, max_events="x"), TypeError, ["max_events", "str"]),
    (lambda q: q.wait(0, max_events=-1), ValueError, ["max_events"]),
    (lambda q: q.wait_tuples(timeout=[]), TypeError, ["timeout", "list"]),
    (lambda q: q.apply([Change("x", USER)]), TypeError, ["changes[0].ident", "str"]),
    (lambda q: q.apply([Change(1, USER, 2**20)]), OverflowError, ["changes[0].flags"]),
    (lambda q: q.apply(5), TypeError, ["changes", "int"]),
    (lambda q: q.trigger(1, fflags="x"), TypeError, ["fflags"]),
    (lambda q: q.add_process("1"), TypeError, ["pid"]),
    (lambda q: KQueue(max_events="x"), TypeError, ["max_events", "str"]),
    (lambda q: KQueue(max_events=2**40), ValueError, ["max_events", str(2**40)]),
    (lambda q: KQueue(max_events=0), ValueError, ["max_events"]),
    (lambda q: KQueue(max_events=True), TypeError, ["max_events", "bool"]),
])
def test_bad_arguments_name_the_parameter(call, exc, words):
    with KQueue() as q:
        with pytest.raises(exc) as info:
            call(q)
    msg = str(info.value)
    for word in words:
        assert word in msg, (word, msg)
    assert len(msg) < 200 and not re.search(r"\d{21}", msg), msg


def test_compat_control_too_many_events_names_maxevents():
    kq = compat.kqueue()
    try:
        with pytest.raises(ValueError, match="maxevents"):
            kq.control(None, 2**26)
        assert kq.control(None, 4, 0) == []
    finally:
        kq.close()


def test_closed_queue_has_one_message_everywhere():
    q = KQueue()
    q.close()
    c = compat.kqueue()
    c.close()
    sel = KqueueSelector()
    sel.close()
    msgs = set()
    for call in (q.fileno, lambda: q.wait(0), lambda: q.add_user(1), c.fileno,
                 lambda: c.control(None, 1, 0)):
        with pytest.raises(ValueError) as info:
            call()
        msgs.add(str(info.value))
    assert msgs == {"I/O operation on closed kqueue object"}


def test_objects_with_fileno_are_accepted(fds):
    r, w = fds.pipe()
    with open(r, "rb", closefd=False) as f, KQueue() as q:
        q.add_reader(f, udata="file")
        os.write(w, b"x")
        assert [(e.ident, e.udata) for e in q.wait(1.0)] == [(r, "file")]


# -- the fork registry ------------------------------------------------------------

def test_every_layer_reads_closed_in_a_forked_child():
    # compat.kqueue as the running interpreter's select.kqueue: closed from
    # CPython 3.12.1 (gh-110395), before that OSError(EBADF) from control()
    # (tests/test_compat.py has the details).
    closed_at_fork = sys.version_info >= (3, 12, 1)
    q, c, sel = KQueue(), compat.kqueue(), KqueueSelector()
    q.add_user(1, udata="x")
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            ok = False
            try:   # whatever happens, the child never returns into pytest
                ok = q.closed and c.closed == closed_at_fork and q._objects == {}
                control = lambda: c.control(None, 1, 0)  # noqa: E731
                for call in (lambda: q.wait(0), control, lambda: sel.select(0), sel.fileno):
                    try:
                        call()
                        ok = False
                    except ValueError as e:
                        ok = (ok and str(e) == "I/O operation on closed kqueue object"
                              and (call is not control or closed_at_fork))
                    except OSError as e:
                        ok = (ok and call is control and not closed_at_fork
                              and e.errno == errno.EBADF)
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        q.trigger(1)
        assert [e.udata for e in q.wait(1.0)] == ["x"]
        assert c.control(None, 1, 0) == [] and sel.select(0) == []
    finally:
        q.close()
        c.close()
        sel.close()
