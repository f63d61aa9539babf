/*
 * EVFILT_READ and EVFILT_WRITE.
 *
 * READ and WRITE registrations sit in the sub-sets of lifetime.c (per
 * filter, 128 items each), so EPOLLET (EV_CLEAR) and
 * EPOLLONESHOT (EV_ONESHOT, EV_DISPATCH) are per filter even on one fd.
 * A disabled registration is disarmed (EPOLLONESHOT with no events), which
 * also drops any event epoll had ready for it.
 *
 * A registration dies with its descriptor (lifetime.c has the rule):
 * before an event is reported, the number is checked to name the
 * registered file still -- by the shadow probe, or by the epoll_ctl() the
 * report needs anyway (the removal of an EV_ONESHOT registration, the
 * disarm of an EV_DISPATCH one, the re-arm of a level NOTE_LOWAT one).
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

static void read_close_fds(struct kq *kq)
{
    if (kq->files_ino_fd >= 0)
        close(kq->files_ino_fd);
    kq->files_ino_fd = -1;
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

/* Which sub-sets (lifetime.c) hold a knote's item: 0 READ, 1 WRITE. */
static int kind_of(const struct knote *kn)
{
    return kn->kev.filter == EVFILT_READ ? 0 : 1;
}

static uint64_t data_of(const struct knote *kn)
{
    return EP_DATA(kn->kev.filter == EVFILT_READ ? TAG_READ : TAG_WRITE, kn->u.fd.gen,
                   (int)kn->kev.ident);
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
            if (kq_set_mod(kq, kind_of(kn), kn->u.fd.set, (int)kn->kev.ident, &ev) < 0 &&
                kq_life_check(kq, (int)kn->kev.ident) != 0) {
                /* Its number no longer names the file: it died with it
                 * (and so did a READ registration on the number). */
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
    int err;
    if (kn->status & KN_INEPOLL) {
        /* MOD re-arms a dispatched registration and re-checks readiness. */
        if ((err = kq_set_mod(kq, kind_of(kn), kn->u.fd.set, fd, &ev)) == 0)
            kn->u.fd.armed = ev.events;
        return err;
    }
    if (!kq_life_epollable(kq, fd))
        return file_attach(kq, kn);     /* a regular file or directory */
    if ((err = kq_set_add(kq, kind_of(kn), fd, &ev, &kn->u.fd.set)) == 0) {
        kn->status |= KN_INEPOLL;
        kn->u.fd.armed = ev.events;
        return 0;
    }
    return err;
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
    int err = kq_life_claim(kq, (int)kn->kev.ident);
    if (err != 0)
        return err;
    kn->u.fd.kind = FDK_UNKNOWN;
    kn->u.fd.wd = -1;
    kn->u.fd.gen = ++kq->fd_gen;
    err = fd_sync(kq, kn);
    if (err == 0 && (err = pending_check(kq, kn)) != 0)
        fd_detach(kq, kn);
    return err;
}

static int fd_modify(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    /* As on BSD, fflags and data (NOTE_LOWAT's mark) follow every change.
     * (The core found the registration alive: lifetime.c.) */
    kn->kev.fflags = kev->fflags;
    kn->kev.data = kev->data;
    int err = fd_sync(kq, kn);
    if (err == 0 && (err = pending_check(kq, kn)) != 0)
        kn->status |= KN_STALE;             /* cannot report it: forget it */
    return err;
}

static void fd_detach(struct kq *kq, struct knote *kn)
{
    lowat_unwait(kq, kn);
    file_detach(kq, kn);
    if (kn->status & KN_INEPOLL) {
        /* Fails when the number no longer names the file: lifetime.c then
         * remembers the item, which may linger. */
        (void)kq_set_del(kq, kind_of(kn), kn->u.fd.set, (int)kn->kev.ident, data_of(kn));
        kn->status &= ~KN_INEPOLL;
    }
    kq_life_unclaim(kq, (int)kn->kev.ident);
}

/* EV_DELETE: remove, and say whether the registration was still live. */
static int fd_remove(struct kq *kq, struct knote *kn)
{
    int fd = (int)kn->kev.ident;
    lowat_unwait(kq, kn);
    if (kn->u.fd.kind == FDK_REGULAR) {
        file_detach(kq, kn);
        return kq_life_check(kq, fd);
    }
    if (kn->status & KN_INEPOLL) {
        kn->status &= ~KN_INEPOLL;
        int err = kq_set_del(kq, kind_of(kn), kn->u.fd.set, fd, data_of(kn));
        return err == 0 ? 0 : stale_error(-err);
    }
    return kq_life_check(kq, fd);
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

/* Does the number still name the file kn was registered on?  The
 * epoll_ctl() the report needs anyway where there is one (remove an
 * EV_ONESHOT registration, disarm an EV_DISPATCH one, re-arm a level
 * NOTE_LOWAT one: each fails once the number names something else), the
 * shadow probe of lifetime.c otherwise.  Returns 1 if live. */
static int confirm(struct kq *kq, struct knote *kn)
{
    int fd = (int)kn->kev.ident, saved = errno, ok;
    struct epoll_event ev = wanted(kn);
    if (kn->kev.flags & EV_ONESHOT) {
        ok = kq_set_del(kq, kind_of(kn), kn->u.fd.set, fd, data_of(kn)) == 0;
        kn->status &= ~KN_INEPOLL;
    } else if (kn->kev.flags & EV_DISPATCH) {
        ev.events = EPOLLONESHOT;            /* disarmed until EV_ENABLE */
        ok = kq_set_mod(kq, kind_of(kn), kn->u.fd.set, fd, &ev) == 0;
        if (ok)
            kn->u.fd.armed = ev.events;
    } else if ((kn->kev.fflags & NOTE_LOWAT) && !(kn->kev.flags & EV_CLEAR)) {
        /* Level-triggered over an edge-triggered item: re-arm the edge. */
        ok = kq_set_mod(kq, kind_of(kn), kn->u.fd.set, fd, &ev) == 0;
    } else {
        ok = kq_life_check(kq, fd) == 0;
    }
    errno = saved;
    return ok;
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
    int fd = (int)kn->kev.ident;
    struct stat st;
    if (kn->u.fd.kind != FDK_REGULAR) {
        kn->status &= ~KN_ACTIVE;
        return 0;
    }
    if (kq_life_check(kq, fd) != 0 || fstat(fd, &st) < 0) {
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

/* A ready fd registration from its sub-set.  Returns events written (0
 * or 1). */
static int deliver_fd(struct kq *kq, int kind, int set, uint64_t data, uint32_t revents,
                      struct kevent *out)
{
    int fd = EP_FD_OF(data);
    struct knote **slots = kind == 0 ? kq->rd : kq->wr;
    struct knote *kn = fd < kq->fd_cap ? slots[fd] : NULL;
    if (kn == NULL || (kn->u.fd.gen & 0xffffff) != EP_GEN_OF(data)) {
        /* Deleted while the event was on its way, or a dead
         * registration's item (lifetime.c tells them apart). */
        kq_set_orphan(kq, kind, set, data);
        return 0;
    }
    if ((kn->status & (KN_DISABLED | KN_INEPOLL)) != KN_INEPOLL)
        return 0;   /* disabled or dispatched */
    int r = fd_event(kq, kn, revents, out);
    if (kn->status & KN_STALE) {
        /* The number no longer names the registered file (closed, the file
         * kept alive by a dup() or a fork() child, or reused): every
         * registration on it died with its descriptor, and this item,
         * which just sent an event, lingers. */
        kq_set_lingers(kq, kind, set, data);
        kq_knote_stale(kq, kn);
        return 0;
    }
    if (r == 0)
        return 0;   /* below its NOTE_LOWAT mark */
    kq_after_delivery(kq, kn);
    return 1;
}

/* A sub-set has ready items: pull them with one epoll_wait. */
static int set_ready(struct kq *kq, int kind, uint64_t data, struct kevent *out, int room)
{
    if (room <= 0)
        return 0;
    struct epoll_event stack[KQ_EBUF_MAX];
    int want = room;
    struct epoll_event *ebuf = kq_ebuf_get(stack, &want);
    int n = 0;
    int r = kq_set_ready(kq, kind, data, ebuf, want);
    for (int i = 0; i < r; i++)
        n += deliver_fd(kq, kind, EP_FD_OF(data), ebuf[i].data.u64, ebuf[i].events, &out[n]);
    kq_ebuf_put(stack, ebuf);
    return n;
}

/* READ: a READ sub-set has ready items, or (TAG_FILES) a registered
 * regular file changed. */
static int read_ready(struct kq *kq, uint64_t data, uint32_t revents, struct kevent *out,
                      int room)
{
    (void)revents;
    if (EP_TAG_OF(data) == TAG_FILES) {
        files_ready(kq);
        return 0;
    }
    return set_ready(kq, 0, data, out, room);
}

/* WRITE: a WRITE sub-set has ready items. */
static int write_ready(struct kq *kq, uint64_t data, uint32_t revents, struct kevent *out,
                       int room)
{
    (void)revents;
    return set_ready(kq, 1, data, out, room);
}

/* After changes and each batch: the sub-sets due for a rebuild. */
static int fd_rearm(struct kq *kq)
{
    return kq_sets_rearm(kq);
}

const struct filter_ops kq_read_ops = {
    .filter = EVFILT_READ,
    .tag = TAG_READ,
    .flags = FILT_IDENT_FD,
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
    .rearm = fd_rearm,
};

const struct filter_ops kq_write_ops = {
    .filter = EVFILT_WRITE,
    .tag = TAG_WRITE,
    .flags = FILT_IDENT_FD,
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
};
