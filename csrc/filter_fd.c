/*
 * EVFILT_READ and EVFILT_WRITE.
 *
 * READ registrations sit in the queue's own epoll set, WRITE ones in the
 * nested wr_ep set; so EPOLLET (EV_CLEAR) and EPOLLONESHOT (EV_ONESHOT,
 * EV_DISPATCH) are per filter even on one fd.  A disabled registration is
 * removed from its set (EPOLL_CTL_MOD cannot mask EPOLLERR/EPOLLHUP), which
 * also drops any event epoll had ready for it.
 *
 * Regular files cannot be added to epoll; like poll(2) and BSD, they are
 * always ready, and are reported from the pending list instead.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kq_internal.h"

static int ensure_wr_ep(struct kq *kq)
{
    if (kq->wr_ep >= 0)
        return 0;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return errno;
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EP_TAG(TAG_WRITES, 0) };
    if (epoll_ctl(kq->waitfd, EPOLL_CTL_ADD, ep, &ev) < 0) {
        int err = errno;
        close(ep);
        return err;
    }
    kq->wr_ep = ep;
    return 0;
}

static uint32_t wanted_events(const struct knote *kn)
{
    uint32_t ev = kn->kev.filter == EVFILT_READ ? (EPOLLIN | EPOLLRDHUP) : EPOLLOUT;
    if (kn->kev.flags & EV_CLEAR)
        ev |= EPOLLET;
    if (kn->kev.flags & (EV_ONESHOT | EV_DISPATCH))
        ev |= EPOLLONESHOT;
    return ev;
}

/* The error BSD reports for a registration whose fd went away: EBADF if
 * the number is closed, ENOENT if it now names another file. */
static int stale_error(int epoll_errno)
{
    return epoll_errno == EBADF ? EBADF : ENOENT;
}

/*
 * Bring the epoll registration in line with the knote's state.
 * Returns 0, a positive errno, or a negative errno when the registration
 * turned out to be stale (its descriptor was closed behind our back).
 */
static int fd_sync(struct kq *kq, struct knote *kn)
{
    int fd = (int)kn->kev.ident;
    int epfd;
    if (kn->kev.filter == EVFILT_READ) {
        epfd = kq->waitfd;
    } else {
        int err = ensure_wr_ep(kq);
        if (err)
            return err;
        epfd = kq->wr_ep;
    }
    if (kn->u.fd.kind == FDK_REGULAR) {
        kn->status |= KN_ACTIVE;    /* always ready; queued when enabled */
        return 0;
    }

    if (kn->status & KN_DISABLED) {
        if (!(kn->status & KN_INEPOLL))
            return 0;
        kn->status &= ~KN_INEPOLL;
        if (epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0)
            return -stale_error(errno);
        return 0;
    }

    struct epoll_event ev = { .events = wanted_events(kn) };
    ev.data.u64 = kn->kev.filter == EVFILT_READ ? EP_TAG(TAG_READ, fd) : (uint64_t)fd;
    if (kn->status & KN_INEPOLL) {
        /* MOD re-arms a dispatched registration and re-checks readiness. */
        if (epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) == 0)
            return 0;
        kn->status &= ~KN_INEPOLL;
        return -stale_error(errno);
    }
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0) {
        kn->status |= KN_INEPOLL;
        return 0;
    }
    if (errno == EPERM) {           /* a regular file or directory */
        kn->u.fd.kind = FDK_REGULAR;
        kn->status |= KN_ACTIVE;
        return 0;
    }
    return errno;
}

static int fd_attach(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    (void)kev;
    kn->u.fd.kind = FDK_UNKNOWN;
    int err = fd_sync(kq, kn);
    return err < 0 ? -err : err;
}

static int fd_modify(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    /* As on BSD, fflags and data (NOTE_LOWAT's mark) follow every change. */
    kn->kev.fflags = kev->fflags;
    kn->kev.data = kev->data;
    if (kev->flags & EV_ADD) {
        if (kn->u.fd.kind == FDK_REGULAR) {   /* re-learn: the number may be reused */
            kn->u.fd.kind = FDK_UNKNOWN;
            kn->status &= ~KN_ACTIVE;
        }
    }
    int err = fd_sync(kq, kn);
    if (err == -ENOENT && (kev->flags & EV_ADD)) {
        /* The old descriptor was closed and its number now names another
         * file: this EV_ADD starts a new registration from scratch. */
        void *udata = kn->kev.udata;
        kn->kev = *kev;
        kn->kev.udata = udata;              /* already set (or kept) by caller */
        kn->kev.flags &= (uint16_t)~KN_INPUT_ONLY;
        kn->status = (kev->flags & EV_DISABLE) ? KN_DISABLED : 0;
        kn->u.fd.kind = FDK_UNKNOWN;
        err = fd_sync(kq, kn);
        if (err > 0)
            err = -err;                     /* could not add: forget it */
    }
    return err;
}

static void fd_detach(struct kq *kq, struct knote *kn)
{
    if (!(kn->status & KN_INEPOLL))
        return;
    int epfd = kn->kev.filter == EVFILT_READ ? kq->waitfd : kq->wr_ep;
    epoll_ctl(epfd, EPOLL_CTL_DEL, (int)kn->kev.ident, NULL);
    kn->status &= ~KN_INEPOLL;
}

/* EV_DELETE: remove, and say whether the registration was still live. */
int kq_fd_unregister(struct kq *kq, struct knote *kn)
{
    int fd = (int)kn->kev.ident;
    if (kn->status & KN_INEPOLL) {
        int epfd = kn->kev.filter == EVFILT_READ ? kq->waitfd : kq->wr_ep;
        kn->status &= ~KN_INEPOLL;
        if (epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0)
            return stale_error(errno);
        return 0;
    }
    if (fcntl(fd, F_GETFD) < 0)
        return EBADF;
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
        kn->u.fd.kind = backlog >= 0 ? FDK_LISTEN : FDK_LISTEN_OTHER;
        return backlog >= 0 ? backlog : 1;
    case FDK_LISTEN:
        backlog = listen_backlog(fd);
        return backlog >= 0 ? backlog : 1;
    case FDK_LISTEN_OTHER:
        return 1;
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

static uint32_t socket_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return 0;
    return (uint32_t)err;
}

static int is_socket(const struct knote *kn)
{
    return kn->u.fd.kind == FDK_SOCKET || kn->u.fd.kind == FDK_LISTEN ||
           kn->u.fd.kind == FDK_LISTEN_OTHER;
}

/* Fill *out for a registration epoll reported ready with revents. */
void kq_fd_event(struct kq *kq, struct knote *kn, uint32_t revents, struct kevent *out)
{
    (void)kq;
    int fd = (int)kn->kev.ident;
    if (kn->u.fd.kind == FDK_UNKNOWN)
        kn->u.fd.kind = learn_kind(fd);
    *out = kn->kev;
    out->fflags = 0;
    if (kn->kev.filter == EVFILT_READ) {
        out->data = read_data(kn, fd);
        if (revents & (EPOLLRDHUP | EPOLLHUP))
            out->flags |= EV_EOF;
    } else {
        out->data = write_data(kn, fd);
        if (revents & (EPOLLHUP | EPOLLERR))
            out->flags |= EV_EOF;
    }
    if ((revents & EPOLLERR) && is_socket(kn))
        out->fflags = socket_error(fd);
}

/* Regular files, from the pending list: always ready. */
static int fd_deliver(struct kq *kq, struct knote *kn, struct kevent *out)
{
    (void)kq;
    int fd = (int)kn->kev.ident;
    struct stat st;
    if (kn->u.fd.kind != FDK_REGULAR || fstat(fd, &st) < 0) {
        kn->status &= ~KN_ACTIVE;   /* closed behind our back: stay quiet */
        return 0;
    }
    *out = kn->kev;
    out->fflags = 0;
    out->data = 0;
    if (kn->kev.filter == EVFILT_READ) {
        off_t pos = lseek(fd, 0, SEEK_CUR);
        if (pos >= 0 && st.st_size > pos)
            out->data = (intptr_t)(st.st_size - pos);
    }
    return 1;
}

const struct filter_ops kq_read_ops = {
    .attach = fd_attach,
    .modify = fd_modify,
    .detach = fd_detach,
    .deliver = fd_deliver,
};

const struct filter_ops kq_write_ops = {
    .attach = fd_attach,
    .modify = fd_modify,
    .detach = fd_detach,
    .deliver = fd_deliver,
};
