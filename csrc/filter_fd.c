/*
 * EVFILT_READ and EVFILT_WRITE.
 *
 * READ registrations sit in the queue's wait set (waitfd), WRITE ones in
 * the nested wr_ep set; so EPOLLET (EV_CLEAR) and EPOLLONESHOT (EV_ONESHOT,
 * EV_DISPATCH) are per filter even on one fd.  A disabled registration is
 * disarmed (EPOLLONESHOT with no events), which also drops any event epoll
 * had ready for it.
 *
 * A registration dies with its descriptor.  epoll keeps an item as long as
 * the open file lives, so after close(fd) a file still held by a dup() or a
 * fork() child would go on reporting under the closed number.  Before an
 * event is reported, one epoll_ctl() on the number confirms that it still
 * names the registered file (epoll items are keyed on file and number):
 * a MOD with the events a level-triggered registration has (a no-op for a
 * ready level item), the disarm of a dispatched one, the removal of a
 * oneshot one, or for EV_CLEAR an EPOLL_CTL_ADD probe that must fail with
 * EEXIST.  A stale registration is dropped and its udata kept for
 * kqueue_py_take_dropped(); its item, which epoll_ctl() can no longer
 * reach, is removed by rebuilding the set when it comes back (rebuild()).
 *
 * Regular files cannot be added to epoll.  As on FreeBSD (filt_vfsread),
 * READ is ready while the offset is not at the end, data = size - offset
 * (negative past the end), and a change of the file (an inotify watch,
 * IN_MODIFY) makes it look again; WRITE is always ready with data 0.
 * Directories and devices epoll refuses (no poll method) are always ready,
 * as poll(2) has them.  With EV_CLEAR each of these reports once, then
 * again when its file changes (inotify), a device never.
 *
 * Socket errors stay with the application: Linux cannot read a socket's
 * pending error without clearing it (SO_ERROR and a failing recv(), even
 * with MSG_PEEK, both consume it), so fflags is always 0 and EV_EOF is set
 * where FreeBSD sets it (the receive or send side is shut down).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kq_internal.h"

/* ------------------------------------------------------------------ */
/* Per-queue state: the knotes by descriptor, the WRITE set, the files'
 * inotify instance.                                                  */

static void read_init(struct kq *kq)
{
    kq->files_ino_fd = -1;
}

static void write_init(struct kq *kq)
{
    kq->wr_ep = -1;
}

static void read_close_fds(struct kq *kq)
{
    if (kq->files_ino_fd >= 0)
        close(kq->files_ino_fd);
    kq->files_ino_fd = -1;
}

static void write_close_fds(struct kq *kq)
{
    if (kq->wr_ep >= 0)
        close(kq->wr_ep);
    kq->wr_ep = -1;
}

/* The queue is freed: its knotes go without detaching (their epoll items
 * die with the queue's descriptors). */
static void read_destroy(struct kq *kq)
{
    for (int fd = 0; fd < kq->fd_cap; fd++)
        free(kq->rd[fd]);
    free(kq->rd);
    kq->rd = NULL;
}

static void write_destroy(struct kq *kq)
{
    for (int fd = 0; fd < kq->fd_cap; fd++)
        free(kq->wr[fd]);
    free(kq->wr);
    kq->wr = NULL;
}

static struct knote **slots_of(const struct kq *kq, int16_t filter)
{
    return filter == EVFILT_READ ? kq->rd : kq->wr;
}

static struct knote *read_find(struct kq *kq, uintptr_t ident)
{
    return ident < (uintptr_t)kq->fd_cap ? kq->rd[ident] : NULL;
}

static struct knote *write_find(struct kq *kq, uintptr_t ident)
{
    return ident < (uintptr_t)kq->fd_cap ? kq->wr[ident] : NULL;
}

/* Room for a knote under ident in both tables (READ and WRITE share the
 * capacity).  Only an open descriptor grows them (open ones are bounded by
 * RLIMIT_NOFILE; a huge closed number must not allocate). */
static int fd_reserve(struct kq *kq, uintptr_t ident)
{
    int fd = (int)ident;
    if (fd < kq->fd_cap)
        return 0;
    if (fcntl(fd, F_GETFD) < 0)
        return -EBADF;
    int cap = kq->fd_cap ? kq->fd_cap : 64;
    while (cap <= fd)
        cap = cap > INT_MAX / 2 ? INT_MAX : cap * 2;
    struct knote **rd = realloc(kq->rd, (size_t)cap * sizeof *rd);
    if (rd == NULL)
        return -ENOMEM;
    kq->rd = rd;
    struct knote **wr = realloc(kq->wr, (size_t)cap * sizeof *wr);
    if (wr == NULL)
        return -ENOMEM;
    kq->wr = wr;
    memset(rd + kq->fd_cap, 0, (size_t)(cap - kq->fd_cap) * sizeof *rd);
    memset(wr + kq->fd_cap, 0, (size_t)(cap - kq->fd_cap) * sizeof *wr);
    kq->fd_cap = cap;
    return 0;
}

static void fd_insert(struct kq *kq, struct knote *kn)
{
    slots_of(kq, kn->kev.filter)[kn->kev.ident] = kn;
}

static void fd_unlink(struct kq *kq, struct knote *kn)
{
    slots_of(kq, kn->kev.filter)[kn->kev.ident] = NULL;
}

/* An internal descriptor is about to join the queue's epoll set under the
 * number fd.  A registration still recorded under that number was made on
 * a file since closed (the kernel just handed the number out again), so it
 * is stale: drop it now, before an epoll_ctl() confirming it could reach
 * the internal item.  Lock held (or the queue not yet shared). */
static void fd_reused(struct kq *kq, struct knote **slots, int fd)
{
    if (fd < 0 || fd >= kq->fd_cap || slots[fd] == NULL)
        return;
    slots[fd]->status &= ~KN_INEPOLL;     /* no epoll_ctl() on the number */
    kq_knote_stale(kq, slots[fd]);
}

static void read_fd_reused(struct kq *kq, int fd)
{
    fd_reused(kq, kq->rd, fd);
}

static void write_fd_reused(struct kq *kq, int fd)
{
    fd_reused(kq, kq->wr, fd);
}

/* The nested set for WRITE registrations, made by the first one. */
static int wr_ep_ensure(struct kq *kq, const struct knote *kn)
{
    if (kq->wr_ep >= 0)
        return 0;
    /* Only with the user's descriptor known open may a new descriptor be
     * made: it cannot take the number being registered. */
    if (fcntl((int)kn->kev.ident, F_GETFD) < 0)
        return -EBADF;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int err = kq_watch_internal(kq, ep, EPOLLIN, EP_DATA(TAG_WRITES, 0, 0));
    if (err == 0)
        kq->wr_ep = ep;
    return err;
}

static int set_of(const struct kq *kq, const struct knote *kn)
{
    return kn->kev.filter == EVFILT_READ ? kq->waitfd : kq->wr_ep;
}

/* The epoll registration for a knote's current state.  A disabled (or
 * dispatched) knote stays registered but disarmed (EPOLLONESHOT with no
 * events: at most one EPOLLERR/EPOLLHUP, which delivery drops), so that a
 * later change can still tell whether its descriptor was closed. */
static struct epoll_event wanted(const struct knote *kn)
{
    struct epoll_event ev;
    int fd = (int)kn->kev.ident;
    if (kn->kev.filter == EVFILT_READ) {
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.u64 = EP_DATA(TAG_READ, kn->u.fd.gen, fd);
    } else {
        ev.events = EPOLLOUT;
        ev.data.u64 = EP_DATA(TAG_WRITE, kn->u.fd.gen, fd);
    }
    if (kn->kev.fflags & NOTE_LOWAT) {
        /* Judged at delivery.  Edge-triggered, so that a reading below the
         * mark neither spins nor (with EPOLLONESHOT) disarms: the next
         * arrival of data -- or for WRITE the wait loop's re-poll -- looks
         * again.  ONESHOT/DISPATCH are applied when an event is reported,
         * level semantics by re-arming after each report. */
        ev.events |= EPOLLET;
    } else if (kn->kev.flags & EV_CLEAR) {
        ev.events |= EPOLLET;
        if (kn->kev.flags & (EV_ONESHOT | EV_DISPATCH))
            ev.events |= EPOLLONESHOT;
    } else if (kn->kev.flags & (EV_ONESHOT | EV_DISPATCH)) {
        ev.events |= EPOLLONESHOT;
    }
    if (kn->status & KN_DISABLED)
        ev.events = EPOLLONESHOT;
    return ev;
}

/* The error BSD reports for a registration whose fd went away: EBADF if
 * the number is closed, ENOENT if it now names another file (negative). */
static int stale_error(int epoll_errno)
{
    return epoll_errno == EBADF ? -EBADF : -ENOENT;
}

static void orphan_record(struct kq *kq, uint64_t data);

/* ------------------------------------------------------------------ */
/* Side lists: regular files, WRITE knotes waiting for their mark.     */

static void list_remove(struct knote **head, struct knote *kn)
{
    for (struct knote **pp = head; *pp != NULL; pp = &(*pp)->u.fd.next) {
        if (*pp == kn) {
            *pp = kn->u.fd.next;
            break;
        }
    }
    kn->u.fd.next = NULL;
}

static void lowat_unwait(struct kq *kq, struct knote *kn)
{
    if (kn->status & KN_LOWWAIT) {
        kn->status &= ~KN_LOWWAIT;
        list_remove(&kq->lowat_wait, kn);
        if (kq->lowat_wait == NULL)
            kq_attention(kq, TAG_WRITE, 0);
    }
}

static void lowat_wait(struct kq *kq, struct knote *kn)
{
    if (kn->status & KN_LOWWAIT)
        return;
    if (kq->lowat_wait == NULL) {
        kq->lowat_next = kq_now() + KQ_LOWAT_POLL_NS;
        kq_attention(kq, TAG_WRITE, 1);
    }
    kn->status |= KN_LOWWAIT;
    kn->u.fd.next = kq->lowat_wait;
    kq->lowat_wait = kn;
}

/* The wait loop's periodic look at WRITE knotes below their NOTE_LOWAT
 * mark: re-arming one makes epoll report it again if it is writable at
 * all, and delivery compares the free space with the mark.  Lock held. */
static void lowat_repoll(struct kq *kq, int64_t now)
{
    if (kq->lowat_wait == NULL || now < kq->lowat_next)
        return;
    struct knote *kn = kq->lowat_wait;
    kq->lowat_wait = NULL;
    while (kn != NULL) {
        struct knote *next = kn->u.fd.next;
        kn->status &= ~KN_LOWWAIT;
        kn->u.fd.next = NULL;
        if ((kn->status & (KN_INEPOLL | KN_DISABLED)) == KN_INEPOLL) {
            struct epoll_event ev = wanted(kn);
            if (epoll_ctl(set_of(kq, kn), EPOLL_CTL_MOD, (int)kn->kev.ident, &ev) < 0) {
                /* Its number no longer names the file: it died with it. */
                kn->status &= ~KN_INEPOLL;
                orphan_record(kq, ev.data.u64);
                kq_knote_stale(kq, kn);
            }
        }
        kn = next;
    }
    kq->lowat_next = now + KQ_LOWAT_POLL_NS;
    if (kq->lowat_wait == NULL)
        kq_attention(kq, TAG_WRITE, 0);
}

/* polled / next_look: nothing wakes epoll when free space grows past a
 * WRITE registration's mark, so the wait looks again every
 * KQ_LOWAT_POLL_NS while one waits below it. */
static int write_polled(const struct kq *kq)
{
    return __atomic_load_n(&kq->lowat_wait, __ATOMIC_RELAXED) != NULL;
}

static int64_t write_next_look(struct kq *kq, int64_t now)
{
    lowat_repoll(kq, now);
    return kq->lowat_wait != NULL ? kq->lowat_next : -1;
}

/* Files epoll refuses whose report depends on their changes (a regular
 * file's READ; with EV_CLEAR, a regular file's WRITE and a directory's
 * READ): one inotify instance per queue, created on the first, watching
 * each such file.  mask: IN_MODIFY for a regular file (write, truncate),
 * the entry changes for a directory -- one file is never both, so the
 * registrations sharing a watch (inotify has one per file and instance)
 * agree on it. */
static int files_watch(struct kq *kq, struct knote *kn, uint32_t mask)
{
    if (kq->files_ino_fd < 0) {
        int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        int err = kq_watch_internal(kq, fd, EPOLLIN, EP_DATA(TAG_FILES, 0, 0));
        if (err != 0)
            return err;
        kq->files_ino_fd = fd;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", (int)kn->kev.ident);
    int wd = inotify_add_watch(kq->files_ino_fd, path, mask);
    if (wd < 0)
        return -errno;
    kn->u.fd.wd = wd;
    return 0;
}

static void files_unwatch(struct kq *kq, struct knote *kn)
{
    int wd = kn->u.fd.wd;
    kn->u.fd.wd = -1;
    if (wd < 0)
        return;
    /* inotify gives every registration of one file the same watch. */
    for (struct knote *o = kq->files; o != NULL; o = o->u.fd.next)
        if (o != kn && o->u.fd.wd == wd)
            return;
    inotify_rm_watch(kq->files_ino_fd, wd);
}

/* A watched file changed: its knotes look again (a WRITE knote or a
 * directory's has a watch only with EV_CLEAR: reported once more). */
static void files_ready(struct kq *kq)
{
    union {
        struct inotify_event ev;
        char bytes[4096];
    } buf;
    ssize_t len;
    while ((len = read(kq->files_ino_fd, &buf, sizeof buf)) > 0) {
        for (ssize_t off = 0; off < len;) {
            struct inotify_event *ev = (struct inotify_event *)(buf.bytes + off);
            for (struct knote *kn = kq->files; kn != NULL; kn = kn->u.fd.next) {
                if (kn->u.fd.wd == ev->wd) {
                    kn->status |= KN_ACTIVE;
                    if (!(kn->status & KN_DISABLED))
                        kq_enqueue(kq, kn);
                }
            }
            off += (ssize_t)sizeof *ev + ev->len;
        }
    }
}

/* Start treating kn as a regular file (epoll refused its descriptor). */
static int file_attach(struct kq *kq, struct knote *kn)
{
    struct stat st;
    if (fstat((int)kn->kev.ident, &st) < 0)
        return -errno;
    kn->u.fd.kind = FDK_REGULAR;
    kn->u.fd.dev = (uint64_t)st.st_dev;
    kn->u.fd.ino = (uint64_t)st.st_ino;
    kn->u.fd.mode = (uint32_t)(st.st_mode & S_IFMT);
    kn->u.fd.wd = -1;
    uint32_t mask = 0;
    if (S_ISREG(st.st_mode) && (kn->kev.filter == EVFILT_READ || (kn->kev.flags & EV_CLEAR)))
        mask = IN_MODIFY;
    else if (S_ISDIR(st.st_mode) && (kn->kev.flags & EV_CLEAR))
        mask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO;
    if (mask != 0) {
        int err = files_watch(kq, kn, mask);
        if (err != 0)
            return err;
    }
    kn->u.fd.next = kq->files;
    kq->files = kn;
    kn->status |= KN_ACTIVE;        /* look once; queued when enabled */
    return 0;
}

static void file_detach(struct kq *kq, struct knote *kn)
{
    if (kn->u.fd.kind != FDK_REGULAR)
        return;
    list_remove(&kq->files, kn);
    files_unwatch(kq, kn);
    kn->u.fd.kind = FDK_UNKNOWN;
    kn->status &= ~KN_ACTIVE;
}

/*
 * Bring the epoll registration in line with the knote's state.
 * Returns 0 or -errno; KN_STALE set when the registration turned out to be
 * stale (its descriptor was closed behind our back).
 */
static int fd_sync(struct kq *kq, struct knote *kn)
{
    int fd = (int)kn->kev.ident;
    if (kn->u.fd.kind == FDK_REGULAR) {
        kn->status |= KN_ACTIVE;    /* look again; queued when enabled */
        return 0;
    }
    lowat_unwait(kq, kn);
    struct epoll_event ev = wanted(kn);
    if (kn->status & KN_INEPOLL) {
        /* MOD re-arms a dispatched registration and re-checks readiness. */
        if (epoll_ctl(set_of(kq, kn), EPOLL_CTL_MOD, fd, &ev) == 0)
            return 0;
        kn->status &= ~KN_INEPOLL;
        kn->status |= KN_STALE;
        return stale_error(errno);
    }
    if (epoll_ctl(set_of(kq, kn), EPOLL_CTL_ADD, fd, &ev) == 0) {
        kn->status |= KN_INEPOLL;
        return 0;
    }
    if (errno == EPERM)             /* a regular file or directory */
        return file_attach(kq, kn);
    return -errno;
}

/* A registration on a file epoll refuses (a regular file) reports from the
 * pending list: it needs wake_fd after all. */
static int pending_check(struct kq *kq, const struct knote *kn)
{
    if (!(kn->status & KN_ACTIVE))
        return 0;
    return kq_wake_fd_ensure(kq);
}

static void fd_detach(struct kq *kq, struct knote *kn);

static int fd_attach(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    (void)kev;
    int err;
    if (kn->kev.filter == EVFILT_WRITE && (err = wr_ep_ensure(kq, kn)) != 0)
        return err;
    kn->u.fd.kind = FDK_UNKNOWN;
    kn->u.fd.wd = -1;
    kn->u.fd.gen = ++kq->fd_gen;
    err = fd_sync(kq, kn);
    if (err == 0 && (err = pending_check(kq, kn)) != 0)
        fd_detach(kq, kn);
    return err;
}

/* Is the regular file kn registered still what its number names? */
static int file_current(const struct knote *kn, struct stat *st)
{
    return fstat((int)kn->kev.ident, st) == 0 && (uint64_t)st->st_dev == kn->u.fd.dev &&
           (uint64_t)st->st_ino == kn->u.fd.ino && (st->st_mode & S_IFMT) == kn->u.fd.mode;
}

static int fd_modify(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    /* As on BSD, fflags and data (NOTE_LOWAT's mark) follow every change. */
    kn->kev.fflags = kev->fflags;
    kn->kev.data = kev->data;
    int err;
    struct stat st;
    if (kn->u.fd.kind == FDK_REGULAR && !file_current(kn, &st)) {
        /* Closed, or the number names another file now. */
        err = fcntl((int)kn->kev.ident, F_GETFD) < 0 ? -EBADF : -ENOENT;
        kn->status |= KN_STALE;
        file_detach(kq, kn);
    } else {
        err = fd_sync(kq, kn);
    }
    if (err == -ENOENT && (kn->status & KN_STALE) && (kev->flags & EV_ADD)) {
        /* The old descriptor was closed and its number now names another
         * file: this EV_ADD starts a new registration from scratch. */
        void *udata = kn->kev.udata;
        kn->kev = *kev;
        kn->kev.udata = udata;              /* already set (or kept) by caller */
        kn->kev.flags &= (uint16_t)~KN_INPUT_ONLY;
        /* Off the lists the old registration was on (its first report may
         * still be pending) before its state is cleared: KN_QUEUED and
         * KN_LOWWAIT are what says a knote is linked there. */
        kq_dequeue(kq, kn);
        lowat_unwait(kq, kn);
        kn->status = (kev->flags & EV_DISABLE) ? KN_DISABLED : 0;
        kn->u.fd.kind = FDK_UNKNOWN;
        kn->u.fd.pipe_size = 0;
        kn->u.fd.sock = 0;
        kn->u.fd.gen = ++kq->fd_gen;
        err = fd_sync(kq, kn);
        if (err != 0)
            kn->status |= KN_STALE;         /* could not add: forget it */
    }
    if (err == 0 && (err = pending_check(kq, kn)) != 0)
        kn->status |= KN_STALE;             /* cannot report it: forget it */
    return err;
}

static void fd_detach(struct kq *kq, struct knote *kn)
{
    lowat_unwait(kq, kn);
    file_detach(kq, kn);
    if (!(kn->status & KN_INEPOLL))
        return;
    epoll_ctl(set_of(kq, kn), EPOLL_CTL_DEL, (int)kn->kev.ident, NULL);
    kn->status &= ~KN_INEPOLL;
}

/* EV_DELETE: remove, and say whether the registration was still live. */
static int fd_remove(struct kq *kq, struct knote *kn)
{
    int fd = (int)kn->kev.ident;
    lowat_unwait(kq, kn);
    if (kn->u.fd.kind == FDK_REGULAR) {
        struct stat st;
        int current = file_current(kn, &st);
        file_detach(kq, kn);
        if (!current)
            return fcntl(fd, F_GETFD) < 0 ? -EBADF : -ENOENT;
        return 0;
    }
    if (kn->status & KN_INEPOLL) {
        kn->status &= ~KN_INEPOLL;
        if (epoll_ctl(set_of(kq, kn), EPOLL_CTL_DEL, fd, NULL) < 0)
            return stale_error(errno);
        return 0;
    }
    if (fcntl(fd, F_GETFD) < 0)
        return -EBADF;
    return 0;
}

/* ------------------------------------------------------------------ */
/* data and fflags.                                                    */

static enum fd_kind learn_kind(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return FDK_NODATA;
    if (S_ISSOCK(st.st_mode))
        return FDK_SOCKET;
    if (S_ISFIFO(st.st_mode))
        return FDK_FIFO;
    if (S_ISREG(st.st_mode))
        return FDK_REGULAR;
    if (kqueue_py_queue_id(fd) != 0)
        return FDK_QUEUE;
    return FDK_OTHER;
}

static intptr_t listen_backlog(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_state == TCP_LISTEN)
        return (intptr_t)ti.tcpi_unacked;   /* the accept queue, for a listener */
    return -1;
}

/* Pending connections on a listening AF_UNIX socket.  Linux has no ioctl
 * for it; sock_diag reports the listener's queue (UNIX_DIAG_RQLEN). */
static intptr_t unix_listen_backlog(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -1;
    int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (nl < 0)
        return -1;
    struct {
        struct nlmsghdr nlh;
        struct unix_diag_req req;
    } msg;
    memset(&msg, 0, sizeof msg);
    msg.nlh.nlmsg_len = sizeof msg;
    msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    msg.nlh.nlmsg_flags = NLM_F_REQUEST;
    msg.req.sdiag_family = AF_UNIX;
    msg.req.udiag_states = ~0U;
    msg.req.udiag_ino = (uint32_t)st.st_ino;
    msg.req.udiag_show = UDIAG_SHOW_RQLEN;
    msg.req.udiag_cookie[0] = msg.req.udiag_cookie[1] = ~0U;   /* no cookie */
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    union {
        struct nlmsghdr nlh;
        char bytes[1024];
    } reply;
    intptr_t backlog = -1;
    ssize_t len = -1;
    if (sendto(nl, &msg, sizeof msg, 0, (struct sockaddr *)&kernel, sizeof kernel) == (ssize_t)sizeof msg)
        len = recv(nl, &reply, sizeof reply, 0);
    close(nl);
    struct nlmsghdr *nlh = &reply.nlh;
    if (len < 0 || !NLMSG_OK(nlh, (size_t)len) || nlh->nlmsg_type != SOCK_DIAG_BY_FAMILY)
        return -1;
    struct unix_diag_msg *m = NLMSG_DATA(nlh);
    struct rtattr *rta = (struct rtattr *)(m + 1);
    int attrlen = (int)nlh->nlmsg_len - (int)NLMSG_LENGTH(sizeof *m);
    while (RTA_OK(rta, attrlen)) {
        if (rta->rta_type == UNIX_DIAG_RQLEN) {
            struct unix_diag_rqlen rq;
            memcpy(&rq, RTA_DATA(rta), sizeof rq);
            backlog = (intptr_t)rq.udiag_rqueue;
        }
        /* RTA_NEXT, without its int/unsigned mix: rta_len <= attrlen. */
        int step = (int)RTA_ALIGN(rta->rta_len);
        attrlen -= step;
        rta = (struct rtattr *)((char *)rta + step);
    }
    return backlog;
}

/* Bytes readable (or pending connections).  Learns and caches the kind. */
static intptr_t read_data(struct knote *kn, int fd)
{
    int v = 0;
    intptr_t backlog;
    switch (kn->u.fd.kind) {
    case FDK_SOCKET:
        if (ioctl(fd, FIONREAD, &v) == 0)
            return v;
        if (errno != EINVAL)
            return 0;
        /* A listening socket: FIONREAD is refused. */
        backlog = listen_backlog(fd);
        if (backlog >= 0) {
            kn->u.fd.kind = FDK_LISTEN;
            return backlog;
        }
        kn->u.fd.kind = FDK_LISTEN_OTHER;
        backlog = unix_listen_backlog(fd);
        return backlog > 0 ? backlog : 1;
    case FDK_LISTEN:
        backlog = listen_backlog(fd);
        return backlog >= 0 ? backlog : 1;
    case FDK_LISTEN_OTHER:
        backlog = unix_listen_backlog(fd);
        return backlog > 0 ? backlog : 1;
    case FDK_QUEUE:
        backlog = kq_queue_pending(fd);
        return backlog >= 0 ? backlog : 0;
    case FDK_FIFO:
    case FDK_OTHER:
        if (ioctl(fd, FIONREAD, &v) == 0)
            return v;
        if (kn->u.fd.kind == FDK_OTHER)
            kn->u.fd.kind = FDK_NODATA;
        return 0;
    default:
        return 0;
    }
}

/* Free space in the send buffer or pipe. */
static intptr_t write_data(struct knote *kn, int fd)
{
    int queued = 0;
    if (kn->u.fd.kind == FDK_SOCKET) {
        int sndbuf = 0;
        socklen_t len = sizeof sndbuf;
        if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) < 0 ||
            ioctl(fd, SIOCOUTQ, &queued) < 0)
            return 0;
        return sndbuf > queued ? sndbuf - queued : 0;
    }
    if (kn->u.fd.kind == FDK_FIFO) {
        if (kn->u.fd.pipe_size == 0)
            kn->u.fd.pipe_size = fcntl(fd, F_GETPIPE_SZ);
        if (kn->u.fd.pipe_size <= 0 || ioctl(fd, FIONREAD, &queued) < 0)
            return 0;
        return kn->u.fd.pipe_size > queued ? kn->u.fd.pipe_size - queued : 0;
    }
    return 0;
}

/* What a WRITE registration on a socket checks for a local shutdown. */
enum { FDS_UNKNOWN = 0, FDS_TCP, FDS_UNIX_STREAM, FDS_OTHER };

static int sock_class(int fd)
{
    int domain = 0, type = 0;
    socklen_t len = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0)
        return FDS_OTHER;
    len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return FDS_OTHER;
    if ((domain == AF_INET || domain == AF_INET6) && type == SOCK_STREAM)
        return FDS_TCP;
    if (domain == AF_UNIX && type == SOCK_STREAM)
        return FDS_UNIX_STREAM;
    return FDS_OTHER;
}

/* FreeBSD's filt_sowrite sets EV_EOF once the send side is shut down
 * (SBS_CANTSENDMORE), a local shutdown(SHUT_WR) included; epoll says
 * nothing about the latter.  Neither probe touches the pending error. */
static int send_shut_down(struct knote *kn, int fd)
{
    if (kn->u.fd.sock == FDS_UNKNOWN)
        kn->u.fd.sock = sock_class(fd);
    if (kn->u.fd.sock == FDS_TCP) {
        struct tcp_info ti;
        socklen_t len = sizeof ti;
        if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
            return 0;
        switch (ti.tcpi_state) {
        case TCP_FIN_WAIT1: case TCP_FIN_WAIT2: case TCP_CLOSING:
        case TCP_LAST_ACK: case TCP_TIME_WAIT:
            return 1;
        default:
            return 0;
        }
    }
    if (kn->u.fd.sock == FDS_UNIX_STREAM) {
        /* An empty send: EPIPE once SEND_SHUTDOWN is set, else nothing. */
        int saved = errno;
        int shut = send(fd, "", 0, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && errno == EPIPE;
        errno = saved;
        return shut;
    }
    return 0;
}

static int is_socket(const struct knote *kn)
{
    return kn->u.fd.kind == FDK_SOCKET || kn->u.fd.kind == FDK_LISTEN ||
           kn->u.fd.kind == FDK_LISTEN_OTHER;
}

/* Does the number still name the file kn was registered on?  One
 * epoll_ctl() that also does what the report needs: disarm a dispatched
 * registration, remove a oneshot one, MOD a level-triggered one (which
 * re-arms it under NOTE_LOWAT); for EV_CLEAR an ADD probe that must find
 * the item (EEXIST).
 * epoll finds items by file and number, so any of these fails once the
 * number is closed or names another file.  Returns 1 if live. */
static int confirm(struct kq *kq, struct knote *kn)
{
    int set = set_of(kq, kn), fd = (int)kn->kev.ident;
    int saved = errno, ok;
    struct epoll_event ev = wanted(kn);
    if (kn->kev.flags & EV_ONESHOT) {
        ok = epoll_ctl(set, EPOLL_CTL_DEL, fd, NULL) == 0;
        kn->status &= ~KN_INEPOLL;
    } else if (kn->kev.flags & EV_DISPATCH) {
        ev.events = EPOLLONESHOT;            /* disarmed until EV_ENABLE */
        ok = epoll_ctl(set, EPOLL_CTL_MOD, fd, &ev) == 0;
    } else if (!(kn->kev.flags & EV_CLEAR)) {
        /* Level-triggered: MOD with the events it has.  A ready level item
         * is back on epoll's ready list already, so this changes nothing;
         * with NOTE_LOWAT (an edge-triggered item) it re-arms the edge.
         * (MOD rather than an ADD probe: an ADD on a nested set takes
         * epoll's global nesting mutex.) */
        ok = epoll_ctl(set, EPOLL_CTL_MOD, fd, &ev) == 0;
    } else {
        /* EV_CLEAR: a probe that must find the item (a MOD would re-arm
         * the edge and report again data already reported). */
        if (epoll_ctl(set, EPOLL_CTL_ADD, fd, &ev) == 0) {
            epoll_ctl(set, EPOLL_CTL_DEL, fd, NULL);   /* added another file */
            ok = 0;
        } else {
            ok = errno == EEXIST;
        }
    }
    if (!ok)
        kn->status &= ~KN_INEPOLL;
    errno = saved;
    return ok;
}

/* ------------------------------------------------------------------ */
/* Lingering items.                                                    */

/*
 * An item whose registration was found stale stays in its epoll set as
 * long as its file lives (a dup() or a fork() child holds it): epoll_ctl()
 * cannot reach it, since its number names something else now.  When such
 * an item comes back (an epoll_data with no registration, seen again in a
 * later epoll batch: fd_orphan), the set is rebuilt: a new epoll set gets every item of
 * the old one (read from /proc/self/fdinfo, events and data verbatim, so
 * disarmed items stay disarmed) except READ/WRITE items without a live
 * registration, and dup3() puts it in place under the same number.  The
 * READ set is waitfd, nested in the user's descriptor, so that descriptor
 * keeps naming the same file and whoever polls it is not disturbed.
 */
static int rebuild(struct kq *kq, uint32_t tag)
{
    int old = tag == TAG_READ ? kq->waitfd : kq->wr_ep;
    int parent = tag == TAG_READ ? kq->fd : kq->waitfd;
    uint64_t parent_data = tag == TAG_READ ? 0 : EP_DATA(TAG_WRITES, 0, 0);
    struct knote **slots = tag == TAG_READ ? kq->rd : kq->wr;
    /* Threads blocked in the old set are sent round through wake_fd (below),
     * which must therefore exist before the set is copied. */
    if (tag == TAG_READ) {
        int werr = kq_wake_fd_ensure(kq);
        if (werr != 0)
            return werr;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", old);
    FILE *info = fopen(path, "re");
    if (info == NULL)
        return -errno;
    int fresh = epoll_create1(EPOLL_CLOEXEC);
    if (fresh < 0) {
        int err = -errno;
        fclose(info);
        return err;
    }
    char line[256];
    while (fgets(line, sizeof line, info) != NULL) {
        int tfd;
        unsigned events;
        unsigned long long data;
        if (sscanf(line, "tfd: %d events: %x data: %llx", &tfd, &events, &data) != 3)
            continue;
        if (EP_TAG_OF(data) == tag) {
            int fd = EP_FD_OF(data);
            struct knote *kn = fd >= 0 && fd < kq->fd_cap ? slots[fd] : NULL;
            if (kn == NULL || (kn->u.fd.gen & 0xffffff) != EP_GEN_OF(data) ||
                !(kn->status & KN_INEPOLL) || tfd != fd)
                continue;                       /* left behind: not copied */
            struct epoll_event probe = { .events = 0, .data.u64 = data };
            if (epoll_ctl(old, EPOLL_CTL_ADD, fd, &probe) == 0 || errno != EEXIST) {
                epoll_ctl(old, EPOLL_CTL_DEL, fd, NULL);
                kn->status &= ~KN_INEPOLL;      /* stale too */
                kq_knote_stale(kq, kn);
                continue;
            }
        }
        struct epoll_event ev = { .events = events, .data.u64 = data };
        epoll_ctl(fresh, EPOLL_CTL_ADD, tfd, &ev);
    }
    fclose(info);
    if (parent >= 0)
        epoll_ctl(parent, EPOLL_CTL_DEL, old, NULL);
    int err = 0;
    if (dup3(fresh, old, O_CLOEXEC) < 0)
        err = -errno;
    close(fresh);
    if (parent >= 0) {
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = parent_data };
        epoll_ctl(parent, EPOLL_CTL_ADD, old, &ev);
    }
    if (tag == TAG_READ) {
        /* Threads blocked in the old set: wake_fd is in both, so a write
         * sends them round to the new one (wake_update clears it later). */
        uint64_t one = 1;
        kq->wake_signalled = 1;
        (void)!write(kq->wake_fd, &one, sizeof one);
    }
    return err;
}

/* Which orphan table an item's epoll_data belongs to: the READ set's or
 * the WRITE set's. */
static int orphan_set(uint64_t data)
{
    return EP_TAG_OF(data) == TAG_READ ? 0 : 1;
}

/* Remember the item of a registration just found stale: it may linger.
 * Never rebuilds (callers may be walking a list of knotes); when the table
 * is full the item is not recorded, and the next orphan of the set
 * rebuilds it (fd_orphan). */
static void orphan_record(struct kq *kq, uint64_t data)
{
    int set = orphan_set(data);
    int n = kq->norphans[set];
    for (int i = 0; i < n; i++)
        if (kq->orphans[set][i].data == data)
            return;
    if (n == KQ_ORPHANS)
        return;
    kq->orphans[set][n].data = data;
    kq->orphans[set][n].batch = kq->batch;
    kq->norphans[set] = n + 1;
}

/* An event that found no registration: deleted while the event was on its
 * way (seen once), or an item left behind by a registration found stale --
 * its file lives on elsewhere -- which comes back.  Every such item is
 * remembered with the batch that first saw it; when any comes back in a
 * later batch (or the table is full), its set is rebuilt, which removes
 * every lingering item of the set at once.  Per item, not "the same one
 * twice in a row": several lingering items come back in turn, and each
 * would push the other out of a single slot for ever. */
static void fd_orphan(struct kq *kq, uint64_t data)
{
    int set = orphan_set(data);
    if (kq->rebuilt_batch[set] == kq->batch && kq->batch != 0)
        return;     /* in this batch's output, from the set just rebuilt */
    int n = kq->norphans[set], again = n == KQ_ORPHANS;
    for (int i = 0; i < n && !again; i++) {
        if (kq->orphans[set][i].data == data) {
            if (kq->orphans[set][i].batch == kq->batch)
                return;                 /* seen already in this batch */
            again = 1;
        }
    }
    if (!again) {
        kq->orphans[set][n].data = data;    /* the first time: maybe just in flight */
        kq->orphans[set][n].batch = kq->batch;
        kq->norphans[set] = n + 1;
        return;
    }
    kq->norphans[set] = 0;
    kq->rebuilt_batch[set] = kq->batch;
    int saved = errno;
    (void)rebuild(kq, EP_TAG_OF(data));
    errno = saved;
}

/* Fill *out for a registration epoll reported ready with revents.
 * Returns 1 for an event, 0 when there is none to report (below its
 * NOTE_LOWAT mark, or KN_STALE: the registration turned out to be stale). */
static int fd_event(struct kq *kq, struct knote *kn, uint32_t revents, struct kevent *out)
{
    int fd = (int)kn->kev.ident;
    /* NOTE_NODATA (a kqueue_py extension): readiness only, data = 0 --
     * saves the ioctl per event for callers such as selectors that never
     * look at data.  NOTE_LOWAT needs the count, so it wins. */
    int counted = !(kn->kev.fflags & NOTE_NODATA) || (kn->kev.fflags & NOTE_LOWAT);
    if (kn->u.fd.kind == FDK_UNKNOWN &&
        (counted || (revents & EPOLLERR) || kn->kev.filter == EVFILT_WRITE))
        kn->u.fd.kind = learn_kind(fd);
    *out = kn->kev;
    out->fflags = 0;
    out->data = 0;
    if (kn->kev.filter == EVFILT_READ) {
        if (counted)
            out->data = read_data(kn, fd);
        /* EPOLLERR alone (an ICMP error on a connected UDP socket) is
         * FreeBSD's "temporary udp error": an event, no EV_EOF, whatever
         * the mark. */
        if (revents & (EPOLLRDHUP | EPOLLHUP))
            out->flags |= EV_EOF;
        else if (kn->kev.fflags & NOTE_LOWAT && out->data < kn->kev.data &&
                 !(revents & EPOLLERR))
            return 0;
    } else {
        if (counted)
            out->data = write_data(kn, fd);
        /* A pipe whose reader is gone reports EPOLLERR only. */
        if (revents & EPOLLHUP || (revents & EPOLLERR && !is_socket(kn)) ||
            (is_socket(kn) && send_shut_down(kn, fd)))
            out->flags |= EV_EOF;
        else if (kn->kev.fflags & NOTE_LOWAT && out->data < kn->kev.data &&
                 !(revents & EPOLLERR)) {
            lowat_wait(kq, kn);     /* no wakeup comes when space grows */
            return 0;
        }
    }
    /* NOTE_NODATA asks for epoll's contract: a level-triggered or EV_CLEAR
     * registration is reported as epoll reports it, without the identity
     * check (its owner deletes it before closing the descriptor, as with
     * epoll).  ONESHOT/DISPATCH need their epoll_ctl() anyway, and
     * NOTE_LOWAT its re-arm, so they keep it. */
    if ((kn->kev.fflags & (NOTE_NODATA | NOTE_LOWAT)) == NOTE_NODATA &&
        !(kn->kev.flags & (EV_ONESHOT | EV_DISPATCH)))
        return 1;
    if (confirm(kq, kn))
        return 1;
    kn->status |= KN_STALE;
    return 0;
}

/* Regular files, from the pending list.  As FreeBSD's filt_vfsread: READ
 * is ready while the offset is not at the end of the file (data = size -
 * offset, negative past the end); WRITE is always ready, data 0
 * (filt_vfswrite); directories and devices without poll are always ready.
 * EV_CLEAR, as FreeBSD's kqueue_scan() does, takes a reported knote off
 * until the file next changes (its inotify watch; a device: never, until
 * the registration is changed). */
static int fd_deliver(struct kq *kq, struct knote *kn, struct kevent *out)
{
    (void)kq;
    int fd = (int)kn->kev.ident;
    struct stat st;
    if (kn->u.fd.kind != FDK_REGULAR) {
        kn->status &= ~KN_ACTIVE;
        return 0;
    }
    if (!file_current(kn, &st)) {
        /* Closed, or the number names another file now: the registration
         * died with its descriptor. */
        kn->status |= KN_STALE;
        return 0;
    }
    *out = kn->kev;
    out->fflags = 0;
    out->data = 0;
    if (kn->kev.filter == EVFILT_READ && !S_ISREG(st.st_mode)) {
        /* A directory, or a device epoll cannot watch (no poll method):
         * always ready, as poll(2) says; data the bytes before the size. */
        off_t pos = lseek(fd, 0, SEEK_CUR);
        if (pos >= 0 && st.st_size > pos)
            out->data = (intptr_t)(st.st_size - pos);
        if (kn->kev.flags & EV_CLEAR)
            kn->status &= ~KN_ACTIVE;   /* a directory: again when it changes */
    } else if (kn->kev.filter == EVFILT_READ) {
        off_t pos = lseek(fd, 0, SEEK_CUR);
        if (pos < 0 || st.st_size == pos) {
            kn->status &= ~KN_ACTIVE;   /* quiet until the file changes */
            return 0;
        }
        out->data = (intptr_t)(st.st_size - pos);
        if (kn->kev.flags & EV_CLEAR)
            kn->status &= ~KN_ACTIVE;   /* again on the next change */
    } else if (kn->kev.flags & EV_CLEAR) {
        kn->status &= ~KN_ACTIVE;       /* WRITE: again when the file changes */
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* Ready items.                                                        */

/* A ready fd registration from epoll.  Returns events written (0 or 1). */
static int deliver_fd(struct kq *kq, struct knote **slots, uint64_t data, uint32_t revents,
                      struct kevent *out)
{
    int fd = EP_FD_OF(data);
    struct knote *kn = fd < kq->fd_cap ? slots[fd] : NULL;
    if (kn == NULL || (kn->u.fd.gen & 0xffffff) != EP_GEN_OF(data)) {
        fd_orphan(kq, data);
        return 0;
    }
    if ((kn->status & (KN_DISABLED | KN_INEPOLL)) != KN_INEPOLL)
        return 0;   /* disabled or dispatched */
    int r = fd_event(kq, kn, revents, out);
    if (kn->status & KN_STALE) {
        /* The number no longer names the registered file (closed, the file
         * kept alive by a dup() or a fork() child, or reused): the
         * registration died with its descriptor.  Its item may linger in
         * the set; when it comes back it is an orphan (fd_orphan). */
        kq_knote_stale(kq, kn);
        orphan_record(kq, data);
        return 0;
    }
    if (r == 0)
        return 0;   /* below its NOTE_LOWAT mark */
    kq_after_delivery(kq, kn);
    return 1;
}

/* READ: a registration in the wait set, or (TAG_FILES) a registered
 * regular file changed. */
static int read_ready(struct kq *kq, uint64_t data, uint32_t revents, struct kevent *out,
                      int room)
{
    if (EP_TAG_OF(data) == TAG_FILES) {
        files_ready(kq);
        return 0;
    }
    return room > 0 ? deliver_fd(kq, kq->rd, data, revents, out) : 0;
}

/* WRITE: the nested set has ready items.  Pull them with one epoll_wait,
 * so that no level-triggered registration comes twice. */
static int write_ready(struct kq *kq, uint64_t data, uint32_t revents, struct kevent *out,
                       int room)
{
    (void)data;
    (void)revents;
    if (room <= 0)
        return 0;
    struct epoll_event stack[KQ_EBUF_MAX];
    int want = room;
    struct epoll_event *ebuf = kq_ebuf_get(stack, &want);
    int n = 0;
    int r = epoll_wait(kq->wr_ep, ebuf, want, 0);
    for (int i = 0; i < r; i++)
        n += deliver_fd(kq, kq->wr, ebuf[i].data.u64, ebuf[i].events, &out[n]);
    kq_ebuf_put(stack, ebuf);
    return n;
}

const struct filter_ops kq_read_ops = {
    .filter = EVFILT_READ,
    .tag = TAG_READ,
    .flags = FILT_IDENT_FD | FILT_QUEUE_FD,
    .init = read_init,
    .close_fds = read_close_fds,
    .destroy = read_destroy,
    .find = read_find,
    .reserve = fd_reserve,
    .insert = fd_insert,
    .unlink = fd_unlink,
    .attach = fd_attach,
    .modify = fd_modify,
    .remove = fd_remove,
    .detach = fd_detach,
    .deliver = fd_deliver,
    .ready = read_ready,
    .fd_reused = read_fd_reused,
};

const struct filter_ops kq_write_ops = {
    .filter = EVFILT_WRITE,
    .tag = TAG_WRITE,
    .flags = FILT_IDENT_FD | FILT_READY_BATCH,
    .init = write_init,
    .close_fds = write_close_fds,
    .destroy = write_destroy,
    .find = write_find,
    .reserve = fd_reserve,
    .insert = fd_insert,
    .unlink = fd_unlink,
    .attach = fd_attach,
    .modify = fd_modify,
    .remove = fd_remove,
    .detach = fd_detach,
    .deliver = fd_deliver,
    .ready = write_ready,
    .polled = write_polled,
    .next_look = write_next_look,
    .fd_reused = write_fd_reused,
};
