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
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kq_internal.h"

int kq_wr_ep_create(struct kq *kq)
{
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
    /* NOTE_LOWAT is judged at delivery: edge-triggered so that a reading
     * below the mark does not spin; level semantics are restored by
     * re-arming after each report (kq_fd_rearm). */
    if (kn->kev.flags & EV_CLEAR || kn->kev.fflags & NOTE_LOWAT)
        ev.events |= EPOLLET;
    if (kn->kev.flags & (EV_ONESHOT | EV_DISPATCH))
        ev.events |= EPOLLONESHOT;
    if (kn->status & KN_DISABLED)
        ev.events = EPOLLONESHOT;
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
    if (kn->u.fd.kind == FDK_REGULAR) {
        kn->status |= KN_ACTIVE;    /* always ready; queued when enabled */
        return 0;
    }
    struct epoll_event ev = wanted(kn);
    if (kn->status & KN_INEPOLL) {
        /* MOD re-arms a dispatched registration and re-checks readiness. */
        if (epoll_ctl(set_of(kq, kn), EPOLL_CTL_MOD, fd, &ev) == 0)
            return 0;
        kn->status &= ~KN_INEPOLL;
        return -stale_error(errno);
    }
    if (epoll_ctl(set_of(kq, kn), EPOLL_CTL_ADD, fd, &ev) == 0) {
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

void kq_fd_rearm(struct kq *kq, struct knote *kn)
{
    struct epoll_event ev = wanted(kn);
    epoll_ctl(set_of(kq, kn), EPOLL_CTL_MOD, (int)kn->kev.ident, &ev);
}

static int fd_attach(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    (void)kev;
    kn->u.fd.kind = FDK_UNKNOWN;
    kn->u.fd.gen = ++kq->fd_gen;
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
        kn->u.fd.pipe_size = 0;
        kn->u.fd.gen = ++kq->fd_gen;
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
    epoll_ctl(set_of(kq, kn), EPOLL_CTL_DEL, (int)kn->kev.ident, NULL);
    kn->status &= ~KN_INEPOLL;
}

/* EV_DELETE: remove, and say whether the registration was still live. */
int kq_fd_unregister(struct kq *kq, struct knote *kn)
{
    int fd = (int)kn->kev.ident;
    if (kn->status & KN_INEPOLL) {
        kn->status &= ~KN_INEPOLL;
        if (epoll_ctl(set_of(kq, kn), EPOLL_CTL_DEL, fd, NULL) < 0)
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

/* Fill *out for a registration epoll reported ready with revents.
 * Returns 0 when the event is below the registration's NOTE_LOWAT mark. */
int kq_fd_event(struct kq *kq, struct knote *kn, uint32_t revents, struct kevent *out)
{
    (void)kq;
    int fd = (int)kn->kev.ident;
    /* NOTE_NODATA (a kqueue_py extension): readiness only, data = 0 --
     * saves the ioctl per event for callers such as selectors that never
     * look at data.  NOTE_LOWAT needs the count, so it wins. */
    int counted = !(kn->kev.fflags & NOTE_NODATA) || (kn->kev.fflags & NOTE_LOWAT);
    if (kn->u.fd.kind == FDK_UNKNOWN && (counted || (revents & EPOLLERR)))
        kn->u.fd.kind = learn_kind(fd);
    *out = kn->kev;
    out->fflags = 0;
    out->data = 0;
    if (kn->kev.filter == EVFILT_READ) {
        if (counted)
            out->data = read_data(kn, fd);
        if (revents & (EPOLLRDHUP | EPOLLHUP))
            out->flags |= EV_EOF;
        else if (kn->kev.fflags & NOTE_LOWAT && out->data < kn->kev.data &&
                 !(revents & EPOLLERR))
            return 0;
    } else {
        if (counted)
            out->data = write_data(kn, fd);
        if (revents & (EPOLLHUP | EPOLLERR))
            out->flags |= EV_EOF;
        else if (kn->kev.fflags & NOTE_LOWAT && out->data < kn->kev.data)
            return 0;
    }
    if ((revents & EPOLLERR) && is_socket(kn))
        out->fflags = socket_error(fd);
    return 1;
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
