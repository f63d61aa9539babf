"""EVFILT_PROC / NOTE_EXIT with real processes: exit status without reaping,
killed children, zombies, non-children, ESRCH/EINVAL, enable/disable, and
no descriptor leaks."""
from __future__ import annotations

import errno
import os
import time
import signal
import subprocess
import sys

import pytest

from kqueue_py import lib

PROC = lib.EVFILT_PROC
EV_ADD, EV_DELETE, EV_EOF, EV_ONESHOT = lib.EV_ADD, lib.EV_DELETE, lib.EV_EOF, lib.EV_ONESHOT
NOTE_EXIT = lib.NOTE_EXIT
LINUX = sys.platform.startswith("linux")


def fork_child(code=0, wait_fd=None):
    """A child that exits with ``code`` (after reading one byte from wait_fd)."""
    pid = os.fork()
    if pid == 0:
        try:
            if wait_fd is not None:
                os.read(wait_fd, 1)
        finally:
            os._exit(code)
    return pid


def reap(pid):
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def open_fds():
    return len(os.listdir("/proc/self/fd")) if LINUX else 0



def wait_for_zombie(pid: int, timeout: float = 10.0) -> None:
    """Wait until the child has exited, without reaping it (os.waitid with
    WNOWAIT where the interpreter has it — PyPy 3.9 does not)."""
    if hasattr(os, "waitid"):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.005)
    raise TimeoutError(f"child {pid} did not exit")

def test_exit_status_and_child_still_waitable(kq):
    pid = fork_child(7)
    try:
        kq.change((pid, PROC, EV_ADD, NOTE_EXIT, 0, 42))
        ev = kq.wait_one(5.0)
        assert (ev.ident, ev.filter, ev.fflags, ev.udata) == (pid, PROC, NOTE_EXIT, 42)
        assert ev.flags & EV_EOF and ev.flags & EV_ONESHOT
        assert os.waitstatus_to_exitcode(ev.data) == 7
        # Not reaped by the backend: the program can still wait for it.
        assert os.waitpid(pid, 0) == (pid, ev.data)
    finally:
        reap(pid)
    # Delivered once, then gone (EV_ONESHOT semantics, as on FreeBSD).
    assert kq.poll() == []
    with pytest.raises(OSError) as ei:
        kq.change((pid, PROC, EV_DELETE))
    assert ei.value.errno == errno.ENOENT


def test_killed_child_status(kq, fds):
    r, w = fds.pipe(nonblock=False)
    pid = fork_child(0, wait_fd=r)
    try:
        kq.change((pid, PROC, EV_ADD, NOTE_EXIT))
        assert kq.poll() == []
        os.kill(pid, signal.SIGKILL)
        ev = kq.wait_one(5.0)
        assert os.waitstatus_to_exitcode(ev.data) == -signal.SIGKILL
        assert os.WIFSIGNALED(ev.data) and not os.WCOREDUMP(ev.data)
    finally:
        reap(pid)


def test_waits_for_exit(kq, fds):
    r, w = fds.pipe(nonblock=False)
    pid = fork_child(3, wait_fd=r)
    try:
        kq.change((pid, PROC, EV_ADD, NOTE_EXIT))
        assert kq.wait(64, 0.05) == []        # still running
        os.write(w, b"x")
        ev = kq.wait_one(5.0)
        assert os.waitstatus_to_exitcode(ev.data) == 3
    finally:
        reap(pid)


def test_zombie_fires_at_once(kq):
    pid = fork_child(5)
    try:
        # Wait for the exit without reaping: the child is now a zombie.
        wait_for_zombie(pid)
        kq.change((pid, PROC, EV_ADD, NOTE_EXIT))
        ev = kq.wait_one(2.0)
        assert os.waitstatus_to_exitcode(ev.data) == 5
    finally:
        reap(pid)


def test_subprocess_exit_code(kq):
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    try:
        kq.change((p.pid, PROC, EV_ADD, NOTE_EXIT))
        ev = kq.wait_one(10.0)
        assert os.waitstatus_to_exitcode(ev.data) == 3
    finally:
        assert p.wait() == 3


def test_not_our_child_reports_exit_with_data_0(kq, fds):
    # A grandchild: Linux lets only the parent read the status.
    r, w = fds.pipe(nonblock=False)
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            grandchild = os.fork()
            if grandchild == 0:
                signal.pause()
                os._exit(0)
            os.write(w, str(grandchild).encode() + b"\n")
            os.waitpid(grandchild, 0)
        finally:
            os._exit(0)
    try:
        grandchild = int(os.read(r, 64).strip())
        kq.change((grandchild, PROC, EV_ADD, NOTE_EXIT))
        os.kill(grandchild, signal.SIGKILL)
        ev = kq.wait_one(5.0)
        assert (ev.ident, ev.fflags) == (grandchild, NOTE_EXIT)
        assert ev.flags & EV_EOF
        if LINUX:
            assert ev.data == 0               # documented: no status for non-children
    finally:
        reap(child)


def test_no_such_process_is_esrch(kq):
    pid = fork_child(0)
    os.waitpid(pid, 0)                        # gone for good (pid reuse aside)
    evs = kq.changes([(pid, PROC, EV_ADD, NOTE_EXIT)])
    assert len(evs) == 1 and evs[0].flags & lib.EV_ERROR and evs[0].data == errno.ESRCH


@pytest.mark.skipif(not LINUX, reason="Linux backend: no NOTE_FORK/EXEC/TRACK")
@pytest.mark.parametrize("note", ["NOTE_FORK", "NOTE_EXEC", "NOTE_TRACK"])
def test_fork_exec_track_are_einval(kq, note):
    evs = kq.changes([(os.getpid(), PROC, EV_ADD, NOTE_EXIT | getattr(lib, note))])
    assert evs[0].flags & lib.EV_ERROR and evs[0].data == errno.EINVAL


def test_disabled_reports_exit_on_enable(kq):
    pid = fork_child(9)
    try:
        kq.change((pid, PROC, EV_ADD | lib.EV_DISABLE, NOTE_EXIT))
        wait_for_zombie(pid)
        assert kq.wait(64, 0.05) == []
        kq.change((pid, PROC, lib.EV_ENABLE))
        ev = kq.wait_one(2.0)
        assert os.waitstatus_to_exitcode(ev.data) == 9
    finally:
        reap(pid)


def prime(kq):
    """Make the queue create its descriptors made on first use (wake_fd)."""
    kq.change((1, lib.EVFILT_USER, EV_ADD))


def test_delete_before_exit_no_event_no_leak(kq, fds):
    r, w = fds.pipe(nonblock=False)
    prime(kq)
    before = open_fds()
    pid = fork_child(0, wait_fd=r)
    try:
        kq.change((pid, PROC, EV_ADD, NOTE_EXIT))
        kq.change((pid, PROC, EV_DELETE))
        assert open_fds() == before
        os.write(w, b"x")
        wait_for_zombie(pid)
        assert kq.wait(64, 0.05) == []
    finally:
        reap(pid)


def test_no_descriptor_left_after_delivery(kq):
    prime(kq)
    before = open_fds()
    pid = fork_child(0)
    try:
        kq.change((pid, PROC, EV_ADD, NOTE_EXIT))
        kq.wait_one(5.0)
        assert open_fds() == before
    finally:
        reap(pid)


def test_two_queues_both_see_exit(make_kq):
    a, b = make_kq(), make_kq()
    pid = fork_child(4)
    try:
        a.change((pid, PROC, EV_ADD, NOTE_EXIT))
        b.change((pid, PROC, EV_ADD, NOTE_EXIT))
        for q in (a, b):
            assert os.waitstatus_to_exitcode(q.wait_one(5.0).data) == 4
    finally:
        reap(pid)


def test_without_note_exit_is_dropped_silently(kq):
    pid = fork_child(0)
    try:
        kq.change((pid, PROC, EV_ADD, 0))
        wait_for_zombie(pid)
        assert kq.wait(64, 0.05) == []
        with pytest.raises(OSError) as ei:
            kq.change((pid, PROC, EV_DELETE))
        assert ei.value.errno == errno.ENOENT
    finally:
        reap(pid)


def test_readd_after_delete_and_many_children(kq):
    pids = [fork_child(i) for i in range(20)]
    try:
        kq.changes([(p, PROC, EV_ADD, NOTE_EXIT, 0, i) for i, p in enumerate(pids)], 0)
        seen = {}
        while len(seen) < len(pids):
            evs = kq.wait(64, 5.0)
            assert evs, "missing exits"
            for e in evs:
                assert e.ident not in seen
                seen[e.ident] = os.waitstatus_to_exitcode(e.data)
        assert seen == {p: i for i, p in enumerate(pids)}
    finally:
        for p in pids:
            reap(p)


def test_closing_queue_closes_pidfds(make_kq, fds):
    r, w = fds.pipe(nonblock=False)
    before = open_fds()
    q = make_kq()
    pid = fork_child(0, wait_fd=r)
    try:
        q.change((pid, PROC, EV_ADD, NOTE_EXIT))
        lib.kqueue_close(q)
        assert open_fds() == before
    finally:
        os.write(w, b"x")
        reap(pid)
