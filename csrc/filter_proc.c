/*
 * EVFILT_PROC: ident is a process id; NOTE_EXIT reports its exit.
 *
 * Each registration holds a pidfd (pidfd_open(2), Linux 5.3), added to
 * the queue's epoll set with EPOLLONESHOT: a pidfd turns readable once,
 * when the process has exited (at once for a zombie), and exit happens
 * only once.  Events are then reported from the pending list, so a
 * disabled registration reports the exit when enabled.
 *
 * As on FreeBSD, EV_CLEAR is implied, the exit event carries
 * EV_EOF | EV_ONESHOT (so EV_ONESHOT | EV_CLEAR | EV_EOF) and the
 * registration is gone after it is reported; fflags = NOTE_EXIT and data =
 * the wait status (so os.waitstatus_to_exitcode(data) works).  A
 * registration without NOTE_EXIT is dropped silently at exit (FreeBSD's
 * EV_DROP).  The status is read with waitid(P_PIDFD, WNOWAIT): the child
 * is not reaped and the program can still wait for it.  Linux only lets a
 * parent read the status, so for a process that is not our child -- or a
 * child already reaped, or auto-reaped because SIGCHLD is ignored --
 * data is 0.
 *
 * NOTE_FORK, NOTE_EXEC and NOTE_TRACK fail with EINVAL: Linux reports
 * them only through the proc connector (netlink, needs CAP_NET_ADMIN) or
 * ptrace, neither cheap nor harmless.  A pid that does not exist fails
 * with ESRCH; a kernel without pidfd_open with ENOSYS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kq_internal.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434      /* same number on every architecture */
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define NOTE_UNSUPPORTED (NOTE_FORK | NOTE_EXEC | NOTE_TRACK | NOTE_TRACKERR | NOTE_CHILD)

static int proc_check(const struct kevent *kev)
{
    return (kev->fflags & NOTE_UNSUPPORTED) ? -EINVAL : 0;
}

static int proc_attach(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    int err = proc_check(kev);
    if (err)
        return err;
    if (kev->ident == 0 || kev->ident > INT_MAX)
        return -ESRCH;
    pid_t pid = (pid_t)kev->ident;
    /* pidfd_open sets close-on-exec itself. */
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0)
        return errno == EINVAL ? -ESRCH : -errno;
    kn->u.proc.pidfd = pidfd;
    kn->kev.flags |= EV_CLEAR;      /* implied, as on FreeBSD */
    kn->u.proc.gen = kq_next_gen(kq);
    kn->kev.fflags = kev->fflags;
    kn->kev.data = 0;
    err = kq_watch_internal(kq, pidfd, EPOLLIN | EPOLLONESHOT,
                            EP_DATA(TAG_PROC, kn->u.proc.gen, pid));
    if (err)
        kn->u.proc.pidfd = -1;
    return err;
}

static int proc_modify(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    (void)kq;
    int err = proc_check(kev);
    if (err)
        return err;
    kn->kev.fflags = kev->fflags;
    return 0;
}

static void proc_detach(struct kq *kq, struct knote *kn)
{
    if (kn->u.proc.pidfd < 0)
        return;
    (void)kq_unwatch(kq, kn->u.proc.pidfd);
    close(kn->u.proc.pidfd);
    kn->u.proc.pidfd = -1;
}

/* The queue's descriptors are closed (its end, or a fork() child, which
 * must not hold the parent's pidfds). */
static void pidfd_close(struct kq *kq, struct knote *kn)
{
    (void)kq;
    if (kn->u.proc.pidfd >= 0)
        close(kn->u.proc.pidfd);
    kn->u.proc.pidfd = -1;
}

static void proc_close_fds(struct kq *kq)
{
    kq_knote_foreach(kq, EVFILT_PROC, pidfd_close);
}

/* A pidfd turned readable: the process exited.  Lock held. */
static int proc_ready(struct kq *kq, uint64_t data, uint32_t revents, struct kevent *out,
                      int room)
{
    (void)revents;
    (void)out;
    (void)room;
    uintptr_t pid = (uint32_t)EP_FD_OF(data);
    struct knote *kn = kq_knote_find(kq, pid, EVFILT_PROC);
    /* Deleted, or re-registered since epoll saw the old pidfd. */
    if (kn == NULL || (kn->u.proc.gen & 0xffffff) != EP_GEN_OF(data))
        return 0;
    if (!(kn->kev.fflags & NOTE_EXIT)) {
        /* Nothing asked for: FreeBSD drops it without a report (EV_DROP);
         * its owner gets the udata back (kqueue_py_take_dropped). */
        kq_knote_stale(kq, kn);
        return 0;
    }
    kn->status |= KN_ACTIVE;
    if (!(kn->status & KN_DISABLED))
        kq_enqueue(kq, kn);
    return 0;
}

/* The classic wait status of an exited child, without reaping it; 0 when
 * it cannot be had (not our child, or already reaped). */
static intptr_t exit_status(int pidfd)
{
    siginfo_t info;
    info.si_pid = 0;
    if (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED | WNOWAIT | WNOHANG) < 0 ||
        info.si_pid == 0)
        return 0;
    switch (info.si_code) {
    case CLD_EXITED: return (intptr_t)(info.si_status & 0xff) << 8;
    case CLD_KILLED: return info.si_status & 0x7f;
    case CLD_DUMPED: return (info.si_status & 0x7f) | 0x80;
    default:         return 0;
    }
}

static int proc_deliver(struct kq *kq, struct knote *kn, struct kevent *out)
{
    (void)kq;
    if (!(kn->status & KN_ACTIVE))
        return 0;
    /* The process is gone: this is the last event (after_delivery drops
     * the registration because of EV_ONESHOT). */
    kn->kev.flags |= EV_EOF | EV_ONESHOT;
    *out = kn->kev;
    out->fflags = NOTE_EXIT;
    out->data = exit_status(kn->u.proc.pidfd);
    return 1;
}

const struct filter_ops kq_proc_ops = {
    .filter = EVFILT_PROC,
    .tag = TAG_PROC,
    .flags = FILT_NEEDS_WAKE,
    .close_fds = proc_close_fds,
    .attach = proc_attach,
    .modify = proc_modify,
    .detach = proc_detach,
    .deliver = proc_deliver,
    .ready = proc_ready,
};
