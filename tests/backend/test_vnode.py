"""EVFILT_VNODE on real files and directories: each NOTE_*, only the
requested bits, accumulation, EV_CLEAR vs level, several descriptors and
queues, stale descriptors, scale (1,000 watches, one inotify per queue)."""
from __future__ import annotations

import errno
import os
import resource
import sys

import pytest

from kqueue_py import lib

from helpers import descriptors_named

VNODE = lib.EVFILT_VNODE
EV_ADD, EV_DELETE, EV_CLEAR = lib.EV_ADD, lib.EV_DELETE, lib.EV_CLEAR
DELETE, WRITE, EXTEND, ATTRIB = lib.NOTE_DELETE, lib.NOTE_WRITE, lib.NOTE_EXTEND, lib.NOTE_ATTRIB
LINK, RENAME, REVOKE = lib.NOTE_LINK, lib.NOTE_RENAME, lib.NOTE_REVOKE
ALL = DELETE | WRITE | EXTEND | ATTRIB | LINK | RENAME | REVOKE
LINUX = sys.platform.startswith("linux")


@pytest.fixture
def opened():
    """open() files and directories; close them all at teardown."""
    fds = []

    def do(path, flags=os.O_RDONLY):
        fd = os.open(path, flags)
        fds.append(fd)
        return fd

    yield do
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def make_file(path, data=b""):
    with open(path, "wb") as f:
        f.write(data)
    return path


def watch(kq, fd, fflags=ALL, flags=EV_CLEAR, udata=0):
    kq.change((fd, VNODE, EV_ADD | flags, fflags, 0, udata))


def notes(kq):
    """OR of the fflags of all events now pending, per ident."""
    out = {}
    for e in kq.poll():
        assert e.filter == VNODE
        out[e.ident] = out.get(e.ident, 0) | e.fflags
    return out


def inotify_instances():
    return len(descriptors_named("anon_inode:inotify"))


# --------------------------------------------------------------------------
# Files.


def test_append_is_write_and_extend(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd, udata=5)
    assert kq.poll() == []
    with open(tmp_path / "f", "ab") as f:
        f.write(b"hello")
    ev = kq.wait_one()
    assert (ev.ident, ev.filter, ev.fflags, ev.udata) == (fd, VNODE, WRITE | EXTEND, 5)
    assert ev.flags & EV_CLEAR
    assert kq.poll() == []                   # EV_CLEAR: reported once


def test_overwrite_in_place_is_write_only(kq, tmp_path, opened):
    path = make_file(tmp_path / "f", b"0123456789")
    fd = opened(path)
    watch(kq, fd)
    wfd = opened(path, os.O_WRONLY)
    os.pwrite(wfd, b"ab", 0)
    assert notes(kq) == {fd: WRITE}


def test_chmod_is_attrib(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd)
    os.chmod(tmp_path / "f", 0o600)
    assert notes(kq) == {fd: ATTRIB}
    os.utime(tmp_path / "f", (1, 1))
    assert notes(kq) == {fd: ATTRIB}


def test_unlink_is_delete(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd)
    os.unlink(tmp_path / "f")
    got = notes(kq)[fd]
    assert got & DELETE
    assert not got & (WRITE | ATTRIB)


def test_link_and_unlink_of_a_link(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd)
    os.link(tmp_path / "f", tmp_path / "g")
    assert notes(kq) == {fd: LINK}
    os.unlink(tmp_path / "g")
    assert notes(kq)[fd] & (LINK | DELETE) == LINK | DELETE


def test_rename_is_rename(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd)
    os.rename(tmp_path / "f", tmp_path / "g")
    assert notes(kq) == {fd: RENAME}
    # The watch follows the file, not the old name.
    with open(tmp_path / "g", "ab") as f:
        f.write(b"x")
    assert notes(kq) == {fd: WRITE | EXTEND}


def test_renamed_over_is_delete(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    make_file(tmp_path / "new")
    watch(kq, fd)
    os.rename(tmp_path / "new", tmp_path / "f")
    assert notes(kq)[fd] & DELETE


def test_only_requested_bits(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd, DELETE)
    with open(tmp_path / "f", "ab") as f:
        f.write(b"x")
    os.chmod(tmp_path / "f", 0o600)
    assert kq.poll() == []
    os.unlink(tmp_path / "f")
    assert notes(kq) == {fd: DELETE}


def test_changes_accumulate_until_reported(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd)
    with open(tmp_path / "f", "ab") as f:
        f.write(b"x")
    os.chmod(tmp_path / "f", 0o600)
    os.rename(tmp_path / "f", tmp_path / "g")
    evs = kq.poll()
    assert len(evs) == 1 and evs[0].fflags == WRITE | EXTEND | ATTRIB | RENAME


def test_without_clear_stays_reported(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd, ATTRIB, flags=0)
    os.chmod(tmp_path / "f", 0o600)
    assert notes(kq) == {fd: ATTRIB}
    assert notes(kq) == {fd: ATTRIB}         # level, as on BSD without EV_CLEAR
    kq.change((fd, VNODE, EV_DELETE))
    assert kq.poll() == []


def test_oneshot_and_dispatch(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd, ATTRIB, flags=lib.EV_ONESHOT)
    os.chmod(tmp_path / "f", 0o600)
    assert notes(kq) == {fd: ATTRIB}
    with pytest.raises(OSError):
        kq.change((fd, VNODE, EV_DELETE))
    watch(kq, fd, ATTRIB, flags=lib.EV_DISPATCH)
    os.chmod(tmp_path / "f", 0o644)
    assert notes(kq) == {fd: ATTRIB}
    os.chmod(tmp_path / "f", 0o600)
    assert kq.poll() == []                   # disabled after dispatch
    kq.change((fd, VNODE, lib.EV_ENABLE, ATTRIB))   # fflags follow every change
    assert notes(kq) == {fd: ATTRIB}


def test_disabled_accumulates_reports_on_enable(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd, flags=EV_CLEAR | lib.EV_DISABLE)
    os.chmod(tmp_path / "f", 0o600)
    assert kq.poll() == []
    kq.change((fd, VNODE, lib.EV_ENABLE))    # what was seen is kept
    assert notes(kq) == {fd: ATTRIB}


def test_delete_stops_reporting(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd)
    os.chmod(tmp_path / "f", 0o600)
    kq.change((fd, VNODE, EV_DELETE))        # drains the pending event
    assert kq.poll() == []
    os.chmod(tmp_path / "f", 0o644)
    assert kq.poll() == []


def test_readd_changes_fflags(kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd, WRITE)
    os.chmod(tmp_path / "f", 0o600)
    assert kq.poll() == []
    watch(kq, fd, ATTRIB)
    os.chmod(tmp_path / "f", 0o644)
    assert notes(kq) == {fd: ATTRIB}


def test_two_descriptors_of_one_file(kq, tmp_path, opened):
    path = make_file(tmp_path / "f")
    a, b = opened(path), opened(path)
    watch(kq, a, ATTRIB, udata=1)
    watch(kq, b, ATTRIB, udata=2)
    os.chmod(path, 0o600)
    assert notes(kq) == {a: ATTRIB, b: ATTRIB}
    kq.change((a, VNODE, EV_DELETE))         # the shared watch stays for b
    os.chmod(path, 0o644)
    assert notes(kq) == {b: ATTRIB}


def test_two_queues_watch_one_file(make_kq, tmp_path, opened):
    fd = opened(make_file(tmp_path / "f"))
    q1, q2 = make_kq(), make_kq()
    watch(q1, fd)
    watch(q2, fd)
    os.chmod(tmp_path / "f", 0o600)
    assert notes(q1) == {fd: ATTRIB}
    assert notes(q2) == {fd: ATTRIB}


def test_queue_fd_readable_and_wait_wakes(kq, tmp_path, opened):
    import threading
    fd = opened(make_file(tmp_path / "f"))
    watch(kq, fd)
    assert not kq.readable()
    t = threading.Timer(0.02, os.chmod, (tmp_path / "f", 0o600))
    t.start()
    ev = kq.wait_one(5.0)
    t.join()
    assert ev.fflags == ATTRIB
    os.chmod(tmp_path / "f", 0o644)
    assert kq.readable()


# --------------------------------------------------------------------------
# Directories.


def test_directory_entries(kq, tmp_path, opened):
    d = tmp_path / "d"
    d.mkdir()
    fd = opened(d, os.O_RDONLY | os.O_DIRECTORY)
    watch(kq, fd)
    make_file(d / "f")
    assert notes(kq) == {fd: WRITE}
    os.rename(d / "f", d / "g")
    assert notes(kq) == {fd: WRITE}
    os.unlink(d / "g")
    assert notes(kq) == {fd: WRITE}
    (d / "sub").mkdir()
    assert notes(kq) == {fd: WRITE | LINK}
    (d / "sub").rmdir()
    assert notes(kq) == {fd: WRITE | LINK}


def test_directory_quiet_when_an_entry_is_written(kq, tmp_path, opened):
    d = tmp_path / "d"
    d.mkdir()
    make_file(d / "f")
    fd = opened(d, os.O_RDONLY | os.O_DIRECTORY)
    watch(kq, fd)
    with open(d / "f", "ab") as f:
        f.write(b"data")
    os.chmod(d / "f", 0o600)
    assert kq.poll() == []


def test_directory_rename_and_attrib(kq, tmp_path, opened):
    d = tmp_path / "d"
    d.mkdir()
    fd = opened(d, os.O_RDONLY | os.O_DIRECTORY)
    watch(kq, fd)
    os.chmod(d, 0o700)
    assert notes(kq) == {fd: ATTRIB}
    os.rename(d, tmp_path / "e")
    assert notes(kq) == {fd: RENAME}


def test_moves_between_directories(kq, tmp_path, opened):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    make_file(a / "f")
    fa = opened(a, os.O_RDONLY | os.O_DIRECTORY)
    fb = opened(b, os.O_RDONLY | os.O_DIRECTORY)
    ff = opened(a / "f")
    watch(kq, fa)
    watch(kq, fb)
    watch(kq, ff)
    os.rename(a / "f", b / "f")
    assert notes(kq) == {fa: WRITE, fb: WRITE, ff: RENAME}


# --------------------------------------------------------------------------
# Errors and descriptors.


def test_pipe_and_socket_are_einval(kq, fds):
    r, w = fds.pipe()
    s1, s2 = fds.socketpair()
    evs = kq.changes([(r, VNODE, EV_ADD, ALL), (s1.fileno(), VNODE, EV_ADD, ALL)])
    assert [(e.flags & lib.EV_ERROR != 0, e.data) for e in evs] == [(True, errno.EINVAL)] * 2


def test_closed_descriptor_is_ebadf(kq, fds):
    r, w = fds.pipe()
    fds.close(r)
    evs = kq.changes([(r, VNODE, EV_ADD, ALL)])
    assert evs[0].flags & lib.EV_ERROR and evs[0].data == errno.EBADF
    with pytest.raises(OSError):
        os.fstat(r)                          # the backend took no descriptor there


def test_closed_then_reused_number(kq, tmp_path, lowest_free):
    a = make_file(tmp_path / "a")
    b = make_file(tmp_path / "b")
    fd = os.open(a, os.O_RDONLY)
    try:
        watch(kq, fd, ATTRIB)
        os.close(fd)                         # without EV_DELETE
        lowest_free.next_is(fd)
        fd2 = os.open(b, os.O_RDONLY)
        assert fd2 == fd
        os.chmod(a, 0o600)                   # the old file: stale, not reported
        assert kq.poll() == []
        watch(kq, fd, ATTRIB)                # re-add watches what the number names now
        os.chmod(b, 0o600)
        assert notes(kq) == {fd: ATTRIB}
        os.chmod(a, 0o644)
        assert kq.poll() == []
    finally:
        os.close(fd)


@pytest.mark.skipif(not LINUX, reason="inotify accounting")
def test_one_inotify_per_queue_created_lazily(make_kq, tmp_path, opened):
    base = inotify_instances()
    queues = [make_kq() for _ in range(200)]   # more than max_user_instances (128)
    assert inotify_instances() == base        # none without a VNODE registration
    fds = [opened(make_file(tmp_path / f"f{i}")) for i in range(3)]
    for q in queues[:2]:
        for fd in fds:
            watch(q, fd)
    assert inotify_instances() == base + 2    # one per queue, not per watch
    os.chmod(tmp_path / "f1", 0o600)
    assert notes(queues[0]) == {fds[1]: ATTRIB}
    assert notes(queues[1]) == {fds[1]: ATTRIB}


def test_thousand_files_in_one_queue(kq, tmp_path, opened):
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 200:
        if hard != resource.RLIM_INFINITY and hard < n + 200:
            pytest.skip("not enough descriptors")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n + 200, hard))
    try:
        fds = [opened(make_file(tmp_path / f"f{i}")) for i in range(n)]
        kq.changes([(fd, VNODE, EV_ADD | EV_CLEAR, ATTRIB, 0, i) for i, fd in enumerate(fds)], 0)
        for i in range(n):
            os.chmod(tmp_path / f"f{i}", 0o600)
        got = {}
        while len(got) < n:
            evs = kq.wait(256, 2.0)
            assert evs, f"only {len(got)} of {n} reported"
            for e in evs:
                assert e.ident not in got
                got[e.ident] = (e.fflags, e.udata)
        assert got == {fd: (ATTRIB, i) for i, fd in enumerate(fds)}
        if LINUX:
            assert inotify_instances() >= 1
    finally:
        for fd in list(locals().get("fds", [])):
            try:
                kq.change((fd, VNODE, EV_DELETE))
            except OSError:
                pass
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------------
# FreeBSD's order of an unlink's and an rmdir's notes (``sys/kern/vfs_subr.c``)


def _vnodes(evs):
    return [(e.ident, e.fflags) for e in evs if e.filter == VNODE]


def test_unlink_reports_the_directory_before_the_file(kq, tmp_path):
    """``vop_remove_post``: ``VFS_KNOTE_LOCKED(a->a_dvp, NOTE_WRITE);
    VFS_KNOTE_LOCKED(a->a_vp, NOTE_DELETE);`` -- the directory's knote is
    activated first, so one ``kevent()`` returns its ``NOTE_WRITE`` before
    the file's ``NOTE_DELETE``, each once (inotify queues the file's link
    count change before the directory's entry removal)."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_bytes(b"x")
    dfd = os.open(d, os.O_RDONLY)
    ffd = os.open(d / "f", os.O_RDONLY)
    try:
        kq.change((dfd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_WRITE),
                  (ffd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_DELETE))
        os.unlink(d / "f")
        evs = kq.wait(8, 1.0)
        assert _vnodes(evs) == [(dfd, lib.NOTE_WRITE), (ffd, lib.NOTE_DELETE)]
        assert kq.poll() == []
    finally:
        os.close(ffd)
        os.close(dfd)


def test_unlink_order_with_the_file_registered_first_and_a_later_write(kq, tmp_path):
    """Only the removal's own two hints are reordered: a change made before
    it keeps its place (FreeBSD queues a knote where it was first
    activated), and one made after it comes after."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_bytes(b"x")
    (d / "g").write_bytes(b"")
    gfd = os.open(d / "g", os.O_RDWR)
    ffd = os.open(d / "f", os.O_RDONLY)
    dfd = os.open(d, os.O_RDONLY)
    try:
        kq.change((gfd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_WRITE),
                  (ffd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_DELETE),
                  (dfd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_WRITE))
        os.write(gfd, b"1")
        os.unlink(d / "f")
        os.write(gfd, b"2")
        evs = kq.wait(8, 1.0)
        assert [i for i, _ in _vnodes(evs)] == [gfd, dfd, ffd]
        # A file of another (unwatched) directory unlinked just before an
        # entry of the watched one: two removals, each in its own order.
        other = tmp_path / "other"
        other.mkdir()
        (other / "h").write_bytes(b"")
        (d / "i").write_bytes(b"")
        hfd = os.open(other / "h", os.O_RDONLY)
        try:
            kq.change((hfd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_DELETE))
            assert _vnodes(kq.poll()) == [(dfd, lib.NOTE_WRITE)]   # i's creation
            os.unlink(other / "h")
            os.unlink(d / "i")
            assert [i for i, _ in _vnodes(kq.wait(8, 1.0))] == [hfd, dfd]
        finally:
            os.close(hfd)
    finally:
        for fd in (gfd, ffd, dfd):
            os.close(fd)


def test_rmdir_of_a_watched_directory_in_a_watched_parent(kq, tmp_path):
    """``vop_rmdir_post``: ``VFS_KNOTE_LOCKED(a->a_dvp, NOTE_WRITE |
    NOTE_LINK); VFS_KNOTE_LOCKED(a->a_vp, NOTE_DELETE);`` -- inotify says
    nothing about the removed directory while the watching descriptor keeps
    it open, so the parent's entry removal is the cue to look at it
    (``fstat``: ``st_nlink`` 0)."""
    parent = tmp_path / "p"
    (parent / "s").mkdir(parents=True)
    pfd = os.open(parent, os.O_RDONLY)
    sfd = os.open(parent / "s", os.O_RDONLY)
    try:
        kq.change((pfd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_WRITE | lib.NOTE_LINK),
                  (sfd, VNODE, EV_ADD | EV_CLEAR, lib.NOTE_DELETE | lib.NOTE_WRITE))
        os.rmdir(parent / "s")
        evs = kq.wait(8, 1.0)
        assert _vnodes(evs) == [(pfd, lib.NOTE_WRITE | lib.NOTE_LINK), (sfd, lib.NOTE_DELETE)]
        assert kq.poll() == []
    finally:
        os.close(sfd)
        os.close(pfd)
