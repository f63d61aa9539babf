/*
 * What a READ / WRITE event says: data (bytes readable, pending
 * connections, free space) and EV_EOF.
 *
 * Socket errors stay with the application: Linux cannot read a socket's
 * pending error without clearing it (SO_ERROR and a failing recv(), even
 * with MSG_PEEK, both consume it), so fflags is always 0 and EV_EOF is set
 * where FreeBSD sets it (the receive or send side is shut down).
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

#include "fd_internal.h"

/* ------------------------------------------------------------------ */
/* data and fflags.                                                    */

enum fd_kind fd_learn_kind(int fd)
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
intptr_t fd_read_data(struct knote *kn, int fd)
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
intptr_t fd_write_data(struct knote *kn, int fd)
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
int fd_send_shut_down(struct knote *kn, int fd)
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

int fd_is_socket(const struct knote *kn)
{
    return kn->u.fd.kind == FDK_SOCKET || kn->u.fd.kind == FDK_LISTEN ||
           kn->u.fd.kind == FDK_LISTEN_OTHER;
}
