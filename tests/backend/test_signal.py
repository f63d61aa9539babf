"""EVFILT_SIGNAL with real signals: counting, coalescing, coexisting with
Python handlers, SIG_IGN / SIG_DFL, threads, child processes, several queues.

On Linux the backend counts deliveries with a chained sigaction hook (see
csrc/filter_signal.c); these tests pin the behaviour that design promises.
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys
import threading

import pytest

from kqueue_py import lib

from helpers import wait_until

LINUX = sys.platform.startswith("linux")

EV_ADD, EV_DELETE, EV_CLEAR = lib.EV_ADD, lib.EV_DELETE, lib.EV_CLEAR
SIG = lib.EVFILT_SIGNAL
USR1, USR2 = signal.SIGUSR1, signal.SIGUSR2

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX signals")


@pytest.fixture
def handled():
    """Install counting Python handlers; restore the old ones afterwards."""
    saved = {}
    counts: dict[int, int] = {}

    def install(signum, handler=None):
        if signum not in saved:
            saved[signum] = signal.getsignal(signum)
        counts[signum] = 0

        def count(s, frame):
            counts[s] += 1

        signal.signal(signum, handler if handler is not None else count)
        return counts

    yield install
    for signum, old in saved.items():
        signal.signal(signum, old if old is not None else signal.SIG_DFL)




def wait_retry(kq, nevents=64, timeout=2.0):
    """kq.wait, retried when a signal interrupts it (EINTR, as on BSD)."""
    for _ in range(100):
        try:
            return kq.wait(nevents, timeout)
        except OSError as e:
            assert e.errno == errno.EINTR, e
    raise AssertionError("kevent kept failing with EINTR")


def c_handler(signum: int) -> int:
    """The C-level disposition's handler address (0 = SIG_DFL, 1 = SIG_IGN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)   # larger than any struct sigaction
    assert libc.sigaction(signum, None, buf) == 0
    return ctypes.c_void_p.from_buffer(buf).value or 0


def kill_self(signum, times=1):
    for _ in range(times):
        os.kill(os.getpid(), signum)


# --------------------------------------------------------------------------


def test_counts_coalesce_before_wait_and_handler_runs(kq, handled):
    counts = handled(USR1)
    kq.change((USR1, SIG, EV_ADD, 0, 0, 77))
    kill_self(USR1, 3)
    evs = kq.poll()
    assert len(evs) == 1
    ev = evs[0]
    assert (ev.ident, ev.filter, ev.data, ev.udata) == (USR1, SIG, 3, 77)
    assert ev.flags & EV_CLEAR            # implied, as on FreeBSD
    assert wait_until(lambda: counts[USR1] == 3)
    assert kq.poll() == []                # EV_CLEAR: reported once


def test_only_deliveries_after_registration_count(kq, handled):
    handled(USR1)
    kill_self(USR1, 2)
    kq.change((USR1, SIG, EV_ADD))
    assert kq.poll() == []
    kill_self(USR1)
    assert [e.data for e in kq.poll()] == [1]


def test_queue_fd_polls_readable_on_signal(kq, handled):
    handled(USR1)
    kq.change((USR1, SIG, EV_ADD))
    # Linux: the first signal registration of a queue may leave one spurious
    # wake-up (the shared eventfd is already readable); a poll absorbs it.
    assert kq.poll() == []
    assert not kq.readable()
    kill_self(USR1)
    assert kq.readable()
    assert [e.data for e in kq.poll()] == [1]


def test_kill_while_another_thread_waits(kq, handled):
    counts = handled(USR1)
    kq.change((USR1, SIG, EV_ADD))
    got = []
    t = threading.Thread(target=lambda: got.extend(wait_retry(kq, timeout=5.0)))
    t.start()
    kill_self(USR1)                       # lands in the main thread
    t.join()
    assert [(e.ident, e.data) for e in got] == [(USR1, 1)]
    assert wait_until(lambda: counts[USR1] == 1)


def test_pthread_kill_to_the_waiting_thread(kq, handled):
    counts = handled(USR1)
    kq.change((USR1, SIG, EV_ADD))
    got = []
    started = threading.Event()

    def waiter():
        started.set()
        got.extend(wait_retry(kq, timeout=5.0))   # its epoll_wait may see EINTR

    t = threading.Thread(target=waiter)
    t.start()
    started.wait()
    signal.pthread_kill(t.ident, USR1)
    t.join()
    assert [(e.ident, e.data) for e in got] == [(USR1, 1)]
    assert wait_until(lambda: counts[USR1] == 1)   # Python runs it in the main thread


def test_signal_from_child_process_realtime_exact(kq, handled):
    # Realtime signals queue (no merging), so the count from another
    # process is exact.
    sig = signal.SIGRTMIN + 2
    handled(sig)
    kq.change((sig, SIG, EV_ADD))
    # Another process (a fresh interpreter: no fork() of this threaded one).
    subprocess.run([sys.executable, "-c", f"import os\nfor _ in range(3): os.kill({os.getpid()}, {sig})"],
                   check=True, timeout=60)
    total = 0
    while total < 3:
        evs = wait_retry(kq, timeout=2.0)
        assert evs, "signals from the child were not all counted"
        total += sum(e.data for e in evs)
    assert total == 3


def test_signal_from_child_process_standard(kq, handled):
    counts = handled(USR2)
    kq.change((USR2, SIG, EV_ADD))
    child = subprocess.Popen([sys.executable, "-c", f"import os; os.kill({os.getpid()}, {USR2})"])
    evs = wait_retry(kq, timeout=10.0)
    assert child.wait(timeout=60) == 0
    assert [(e.ident, e.data) for e in evs] == [(USR2, 1)]
    assert wait_until(lambda: counts[USR2] == 1)


def test_delete_stops_counting_handler_still_runs(kq, handled):
    counts = handled(USR1)
    kq.change((USR1, SIG, EV_ADD))
    kill_self(USR1)
    kq.change((USR1, SIG, EV_DELETE))     # drains the pending event too
    assert kq.poll() == []
    kill_self(USR1)
    assert kq.poll() == []
    assert wait_until(lambda: counts[USR1] == 2)
    with pytest.raises(OSError) as ei:
        kq.change((USR1, SIG, EV_DELETE))
    assert ei.value.errno == errno.ENOENT


def test_two_queues_each_count(make_kq, handled):
    handled(USR1)
    a, b = make_kq(), make_kq()
    a.change((USR1, SIG, EV_ADD))
    b.change((USR1, SIG, EV_ADD))
    kill_self(USR1, 2)
    assert [e.data for e in a.poll()] == [2]
    kill_self(USR1)
    assert [e.data for e in b.poll()] == [3]
    assert [e.data for e in a.poll()] == [1]
    b.change((USR1, SIG, EV_DELETE))
    kill_self(USR1)
    assert [e.data for e in a.poll()] == [1]
    assert b.poll() == []


def test_two_signals_in_one_queue(kq, handled):
    handled(USR1)
    handled(USR2)
    kq.change((USR1, SIG, EV_ADD), (USR2, SIG, EV_ADD))
    kill_self(USR1)
    kill_self(USR2, 2)
    assert sorted((e.ident, e.data) for e in kq.poll()) == [(USR1, 1), (USR2, 2)]


def test_disabled_keeps_counting_reports_on_enable(kq, handled):
    handled(USR1)
    kq.change((USR1, SIG, EV_ADD | lib.EV_DISABLE))
    kill_self(USR1, 2)
    assert kq.poll() == []
    kq.change((USR1, SIG, lib.EV_ENABLE))
    assert [e.data for e in kq.poll()] == [2]


def test_oneshot_and_dispatch(kq, handled):
    handled(USR1)
    kq.change((USR1, SIG, EV_ADD | lib.EV_ONESHOT))
    kill_self(USR1)
    assert [e.data for e in kq.poll()] == [1]
    with pytest.raises(OSError):
        kq.change((USR1, SIG, EV_DELETE))
    kq.change((USR1, SIG, EV_ADD | lib.EV_DISPATCH))
    kill_self(USR1)
    assert [e.data for e in kq.poll()] == [1]
    kill_self(USR1)
    assert kq.poll() == []                # dispatched: disabled, still counting
    kq.change((USR1, SIG, lib.EV_ENABLE))
    assert [e.data for e in kq.poll()] == [1]


def test_ignored_signal_is_recorded_and_stays_ignored(kq, handled):
    handled(USR2, signal.SIG_IGN)
    kq.change((USR2, SIG, EV_ADD))
    kill_self(USR2, 2)                    # would kill us if not ignored
    assert [e.data for e in kq.poll()] == [2]
    kq.change((USR2, SIG, EV_DELETE))
    assert c_handler(USR2) == 1           # SIG_IGN put back
    kill_self(USR2)


def test_default_ignored_signal_is_recorded(kq, handled):
    handled(signal.SIGWINCH, signal.SIG_DFL)
    kq.change((signal.SIGWINCH, SIG, EV_ADD))
    kill_self(signal.SIGWINCH)
    assert [e.data for e in kq.poll()] == [1]
    kq.change((signal.SIGWINCH, SIG, EV_DELETE))
    assert c_handler(signal.SIGWINCH) == 0   # SIG_DFL put back


@pytest.mark.skipif(not LINUX, reason="Linux backend specifics")
def test_default_terminating_signal_is_left_alone(kq, handled):
    handled(signal.SIGTERM, signal.SIG_DFL)
    kq.change((signal.SIGTERM, SIG, EV_ADD))   # accepted; delivery would kill, as on BSD
    assert c_handler(signal.SIGTERM) == 0


@pytest.mark.skipif(not LINUX, reason="Linux backend specifics")
def test_handler_installed_after_add_needs_re_add(kq, handled):
    handled(USR1)
    kq.change((USR1, SIG, EV_ADD))
    counts = handled(USR1)                # signal.signal() replaces the hook
    kill_self(USR1)
    assert wait_until(lambda: counts[USR1] == 1)
    assert kq.poll() == []                # documented: not counted
    kq.change((USR1, SIG, EV_ADD))        # re-add re-installs the hook
    kill_self(USR1, 2)
    assert [e.data for e in kq.poll()] == [2]
    assert wait_until(lambda: counts[USR1] == 3)


@pytest.mark.skipif(not LINUX, reason="Linux backend specifics")
def test_previous_handler_restored_after_last_delete(make_kq, handled):
    handled(USR1)
    before = c_handler(USR1)              # Python's C-level handler
    a, b = make_kq(), make_kq()
    a.change((USR1, SIG, EV_ADD))
    b.change((USR1, SIG, EV_ADD))
    hooked = c_handler(USR1)
    assert hooked != before
    a.change((USR1, SIG, EV_DELETE))
    assert c_handler(USR1) == hooked      # b still watches
    lib.kqueue_close(b)                   # closing the queue releases it too
    assert c_handler(USR1) == before


@pytest.mark.skipif(not LINUX, reason="Linux backend specifics")
def test_fork_child_gets_original_disposition(kq, handled):
    handled(USR2, signal.SIG_IGN)
    kq.change((USR2, SIG, EV_ADD))
    assert c_handler(USR2) not in (0, 1)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if c_handler(USR2) == 1 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    kill_self(USR2)
    assert [e.data for e in kq.poll()] == [1]   # the parent still counts


@pytest.mark.parametrize("ident", [0, -1, 65, 1000, signal.SIGKILL, signal.SIGSTOP])
def test_invalid_signal_numbers(kq, ident):
    evs = kq.changes([(ident & (2**64 - 1), SIG, EV_ADD)])
    assert len(evs) == 1 and evs[0].flags & lib.EV_ERROR and evs[0].data == errno.EINVAL


def test_signal_interrupts_wait_in_main_thread_then_reported(kq, handled):
    counts = handled(USR1)
    kq.change((USR1, SIG, EV_ADD))
    timer = threading.Timer(0.05, lambda: signal.pthread_kill(threading.main_thread().ident, USR1))
    timer.start()
    try:
        evs = wait_retry(kq, timeout=5.0)
    finally:
        timer.join()
    assert [(e.ident, e.data) for e in evs] == [(USR1, 1)]
    assert wait_until(lambda: counts[USR1] == 1)
