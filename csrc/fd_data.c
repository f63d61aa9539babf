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
#include <linux/inet_diag.h>
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

/* The kernel's sk_shutdown bit for the send side (SHUT_WR + 1). */
#define SEND_SHUTDOWN_BIT 2

/* ------------------------------------------------------------------ */
/* sock_diag: what Linux tells about one socket without touching it (no
 * ioctl or getsockopt shows a listener's UNIX queue or a socket's
 * shutdown state, and a probing send() would take the pending error). */

union diag_reply {
    struct nlmsghdr nlh;
    char bytes[1024];
};

/* Send one request for one socket; the reply's first message, or NULL. */
static struct nlmsghdr *diag_ask(void *req, size_t len, union diag_reply *reply)
{
    int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (nl < 0)
        return NULL;
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    ssize_t got = -1;
    if (sendto(nl, req, len, 0, (struct sockaddr *)&kernel, sizeof kernel) == (ssize_t)len)
        got = recv(nl, reply, sizeof *reply, 0);
    close(nl);
    struct nlmsghdr *nlh = &reply->nlh;
    if (got < 0 || !NLMSG_OK(nlh, (size_t)got) || nlh->nlmsg_type != SOCK_DIAG_BY_FAMILY)
        return NULL;
    return nlh;
}

/* Copy attribute `type` (following a header of hdrlen bytes) to out;
 * 0 when found. */
static int diag_attr(const struct nlmsghdr *nlh, size_t hdrlen, unsigned short type, void *out,
                     size_t outlen)
{
    const struct rtattr *rta = (const struct rtattr *)((const char *)NLMSG_DATA(nlh) +
                                                       NLMSG_ALIGN(hdrlen));
    int attrlen = (int)nlh->nlmsg_len - (int)NLMSG_LENGTH(NLMSG_ALIGN(hdrlen));
    while (RTA_OK(rta, attrlen)) {
        if (rta->rta_type == type && RTA_PAYLOAD(rta) >= outlen) {
            memcpy(out, RTA_DATA(rta), outlen);
            return 0;
        }
        /* RTA_NEXT, without its int/unsigned mix: rta_len <= attrlen. */
        int step = (int)RTA_ALIGN(rta->rta_len);
        attrlen -= step;
        rta = (const struct rtattr *)((const char *)rta + step);
    }
    return -1;
}

/* An AF_UNIX socket, by inode (exact): its reply, or NULL. */
static struct nlmsghdr *unix_diag(int fd, uint32_t show, union diag_reply *reply)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return NULL;
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
    msg.req.udiag_show = show;
    msg.req.udiag_cookie[0] = msg.req.udiag_cookie[1] = ~0U;   /* no cookie */
    return diag_ask(&msg, sizeof msg, reply);
}

/* Pending connections on a listening AF_UNIX socket (UNIX_DIAG_RQLEN). */
static intptr_t unix_listen_backlog(int fd)
{
    union diag_reply reply;
    struct nlmsghdr *nlh = unix_diag(fd, UDIAG_SHOW_RQLEN, &reply);
    struct unix_diag_rqlen rq;
    if (nlh == NULL || diag_attr(nlh, sizeof(struct unix_diag_msg), UNIX_DIAG_RQLEN, &rq,
                                 sizeof rq) != 0)
        return -1;
    return (intptr_t)rq.udiag_rqueue;
}

/* An AF_INET/AF_INET6 UDP socket: sock_diag finds it by its addresses and
 * ports (the lookup of an arriving datagram, hence source = the peer) and
 * the cookie makes sure it is this very socket (SO_REUSEPORT siblings
 * share the addresses).  Its reply, or NULL. */
static struct nlmsghdr *udp_diag(int fd, int family, union diag_reply *reply)
{
    struct sockaddr_storage local, peer;
    socklen_t llen = sizeof local, plen = sizeof peer, clen;
    uint64_t cookie = 0;
    int ifindex = 0;
    clen = sizeof cookie;
    memset(&peer, 0, sizeof peer);      /* not connected: any peer */
    if (getsockname(fd, (struct sockaddr *)&local, &llen) < 0 ||
        (getpeername(fd, (struct sockaddr *)&peer, &plen) < 0 && errno != ENOTCONN) ||
        getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &clen) < 0)
        return NULL;
    clen = sizeof ifindex;
    if (getsockopt(fd, SOL_SOCKET, SO_BINDTOIFINDEX, &ifindex, &clen) < 0)
        ifindex = 0;
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req_v2 req;
    } msg;
    memset(&msg, 0, sizeof msg);
    msg.nlh.nlmsg_len = sizeof msg;
    msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    msg.nlh.nlmsg_flags = NLM_F_REQUEST;
    msg.req.sdiag_family = (uint8_t)family;
    msg.req.sdiag_protocol = IPPROTO_UDP;
    msg.req.idiag_states = ~0U;
    msg.req.id.idiag_if = (uint32_t)ifindex;
    msg.req.id.idiag_cookie[0] = (uint32_t)cookie;
    msg.req.id.idiag_cookie[1] = (uint32_t)(cookie >> 32);
    if (family == AF_INET) {
        const struct sockaddr_in *l = (const struct sockaddr_in *)&local;
        const struct sockaddr_in *p = (const struct sockaddr_in *)&peer;
        msg.req.id.idiag_sport = p->sin_port;
        msg.req.id.idiag_dport = l->sin_port;
        memcpy(msg.req.id.idiag_src, &p->sin_addr, sizeof p->sin_addr);
        memcpy(msg.req.id.idiag_dst, &l->sin_addr, sizeof l->sin_addr);
    } else {
        const struct sockaddr_in6 *l = (const struct sockaddr_in6 *)&local;
        const struct sockaddr_in6 *p = (const struct sockaddr_in6 *)&peer;
        msg.req.id.idiag_sport = p->sin6_port;
        msg.req.id.idiag_dport = l->sin6_port;
        memcpy(msg.req.id.idiag_src, &p->sin6_addr, sizeof p->sin6_addr);
        memcpy(msg.req.id.idiag_dst, &l->sin6_addr, sizeof l->sin6_addr);
    }
    return diag_ask(&msg, sizeof msg, reply);
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
enum {
    FDS_UNKNOWN = 0,
    FDS_TCP,
    FDS_UNIX_STREAM,
    FDS_UNIX_SEQPACKET,
    FDS_UNIX_DGRAM,
    FDS_UDP4,
    FDS_UDP6,
    FDS_DGRAM,          /* another socket of messages (SOCK_DGRAM, SOCK_RAW) */
    FDS_OTHER
};

static int sock_class(int fd)
{
    int domain = 0, type = 0, proto = 0;
    socklen_t len = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0)
        return FDS_OTHER;
    len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return FDS_OTHER;
    len = sizeof proto;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) < 0)
        proto = 0;
    if ((domain == AF_INET || domain == AF_INET6) && type == SOCK_STREAM)
        return FDS_TCP;
    if ((domain == AF_INET || domain == AF_INET6) && type == SOCK_DGRAM && proto == IPPROTO_UDP)
        return domain == AF_INET ? FDS_UDP4 : FDS_UDP6;
    if (domain == AF_UNIX && type == SOCK_STREAM)
        return FDS_UNIX_STREAM;
    if (domain == AF_UNIX)
        return type == SOCK_SEQPACKET ? FDS_UNIX_SEQPACKET : FDS_UNIX_DGRAM;
    if (type == SOCK_DGRAM || type == SOCK_RAW)
        return FDS_DGRAM;
    return FDS_OTHER;
}

/* FreeBSD's filt_sowrite sets EV_EOF once the send side is shut down
 * (SBS_CANTSENDMORE), a local shutdown(SHUT_WR) included; epoll says
 * nothing about the latter.  No probe touches the pending error or sends
 * anything: TCP_INFO's state for TCP, an empty send for a UNIX stream
 * (EPIPE once shut down; it reads no error), and sock_diag's shutdown bits
 * for the others (an empty send would deliver an empty record or
 * datagram, and take the pending error first). */
int fd_send_shut_down(struct knote *kn, int fd)
{
    if (kn->u.fd.sock == FDS_UNKNOWN)
        kn->u.fd.sock = sock_class(fd);
    int saved = errno, shut = 0;
    union diag_reply reply;
    struct nlmsghdr *nlh;
    uint8_t how = 0;
    switch (kn->u.fd.sock) {
    case FDS_TCP: {
        struct tcp_info ti;
        socklen_t len = sizeof ti;
        if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
            break;
        switch (ti.tcpi_state) {
        case TCP_FIN_WAIT1: case TCP_FIN_WAIT2: case TCP_CLOSING:
        case TCP_LAST_ACK: case TCP_TIME_WAIT:
            shut = 1;
            break;
        default:
            break;
        }
        break;
    }
    case FDS_UNIX_STREAM:
        /* An empty send: EPIPE once SEND_SHUTDOWN is set, else nothing. */
        shut = send(fd, "", 0, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && errno == EPIPE;
        break;
    case FDS_UNIX_SEQPACKET:
    case FDS_UNIX_DGRAM:
        nlh = unix_diag(fd, 0, &reply);
        shut = nlh != NULL &&
               diag_attr(nlh, sizeof(struct unix_diag_msg), UNIX_DIAG_SHUTDOWN, &how,
                         sizeof how) == 0 && (how & SEND_SHUTDOWN_BIT);
        break;
    case FDS_UDP4:
    case FDS_UDP6:
        nlh = udp_diag(fd, kn->u.fd.sock == FDS_UDP4 ? AF_INET : AF_INET6, &reply);
        shut = nlh != NULL &&
               diag_attr(nlh, sizeof(struct inet_diag_msg), INET_DIAG_SHUTDOWN, &how,
                         sizeof how) == 0 && (how & SEND_SHUTDOWN_BIT);
        break;
    default:
        break;
    }
    errno = saved;
    return shut;
}

/* A READ registration with NOTE_LOWAT whose FIONREAD is below its mark:
 * could the queued bytes reach it all the same?  FreeBSD judges the mark
 * against every queued byte (filt_soread: sbavail); Linux's FIONREAD is
 * that for streams and SEQPACKET, but only the next message's size for
 * datagram sockets, and nothing tells the sum of the others.  So that no
 * event is lost, a datagram socket reaches its mark unless an upper bound
 * of its queued bytes is below it: the receive memory charged to it
 * (SO_MEMINFO's rmem_alloc, which counts each queued datagram's whole
 * buffer); an AF_UNIX datagram socket has no such bound (its queue is
 * charged to the senders), so any queued datagram reaches the mark. */
int fd_read_may_reach(struct knote *kn, int fd, intptr_t mark)
{
    if (kn->u.fd.kind != FDK_SOCKET)
        return 0;
    if (kn->u.fd.sock == FDS_UNKNOWN)
        kn->u.fd.sock = sock_class(fd);
    switch (kn->u.fd.sock) {
    case FDS_UNIX_DGRAM:
        return 1;
    case FDS_UDP4:
    case FDS_UDP6:
    case FDS_DGRAM: {
        uint32_t mem[SK_MEMINFO_VARS];
        socklen_t len = sizeof mem;
        int saved = errno;
        int r = getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len);
        errno = saved;
        if (r < 0 || len <= SK_MEMINFO_RMEM_ALLOC * sizeof mem[0])
            return 1;               /* no bound: do not lose the event */
        return (intptr_t)mem[SK_MEMINFO_RMEM_ALLOC] >= mark;
    }
    default:
        return 0;                   /* FIONREAD is every queued byte */
    }
}

int fd_is_socket(const struct knote *kn)
{
    return kn->u.fd.kind == FDK_SOCKET || kn->u.fd.kind == FDK_LISTEN ||
           kn->u.fd.kind == FDK_LISTEN_OTHER;
}
