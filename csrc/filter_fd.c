/*
 * EVFILT_READ and EVFILT_WRITE.
 *
 * READ and WRITE registrations sit in the sub-sets of lifetime.c (per
 * filter, 128 items each), so EPOLLET (EV_CLEAR) and
 * EPOLLONESHOT (EV_ONESHOT, EV_DISPATCH) are per filter even on one fd;
 * level-triggered NOTE_NODATA ones, which take epoll's contract, in the
 * wait set itself (lifetime.c's plain items).
 * A disabled registration is disarmed (EPOLLONESHOT with no events), which
 * also drops any event epoll had ready for it.
 *
 * A registration dies with its descriptor (lifetime.c has the rule):
 * before an event is reported, the number is checked to name the
 * registered file still -- by the shadow probe, or by the epoll_ctl() the
 * report needs anyway (the removal of an EV_ONESHOT registration, the
 * disarm of an EV_DISPATCH one, the re-arm of a level NOTE_LOWAT one).
 *
 * Split by concern: this file has the tables, the arming and the report;
 * fd_files.c the files epoll refuses (regular files, directories),
 * fd_data.c what an event's data and flags say, fd_lowat.c the re-poll of
 * WRITE registrations below their NOTE_LOWAT mark; fd_internal.h is what
 * they share.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_internal.h"

/* ------------------------------------------------------------------ */
/* Per-queue state: the knotes by descriptor, the files' inotify
 * instance.                                                          */

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
int fd_kind_of(const struct knote *kn)
{
    return kn->kev.filter == EVFILT_READ ? 0 : 1;
}

/* The tag of a knote's item: in a sub-set, or in the wait set itself. */
static uint32_t tag_of(const struct knote *kn)
{
    if (kn->u.fd.set < 0)      /* hot or plain: in the wait set itself */
        return kn->kev.filter == EVFILT_READ ? TAG_RHOT : TAG_WHOT;
    return kn->kev.filter == EVFILT_READ ? TAG_READ : TAG_WRITE;
}

static uint64_t data_of(const struct knote *kn)
{
    return EP_DATA(tag_of(kn), kn->u.fd.gen, (int)kn->kev.ident);
}

/* The epoll registration for a knote's current state.  A disabled (or
 * dispatched) knote stays registered but disarmed (EPOLLONESHOT with no
 * events: at most one EPOLLERR/EPOLLHUP, which delivery drops), so that a
 * later change can still tell whether its descriptor was closed. */
struct epoll_event fd_wanted(const struct knote *kn)
{
    struct epoll_event ev;
    ev.events = kn->kev.filter == EVFILT_READ ? EPOLLIN | EPOLLRDHUP : EPOLLOUT;
    ev.data.u64 = data_of(kn);
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
    if (kn->u.fd.set == KQ_SET_HOT)
        ev.events |= EPOLLONESHOT;  /* re-armed at each report (confirm) */
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

void fd_list_remove(struct knote **head, struct knote *kn)
{
    for (struct knote **pp = head; *pp != NULL; pp = &(*pp)->u.fd.next) {
        if (*pp == kn) {
            *pp = kn->u.fd.next;
            break;
        }
    }
    kn->u.fd.next = NULL;
}

/* Does kn take epoll's contract (lifetime.c's plain items): level-
 * triggered, NOTE_NODATA, no NOTE_LOWAT? */
static int plain(const struct knote *kn)
{
    return (kn->kev.fflags & (NOTE_NODATA | NOTE_LOWAT)) == NOTE_NODATA &&
           !(kn->kev.flags & (EV_CLEAR | EV_ONESHOT | EV_DISPATCH));
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
    fd_lowat_unwait(kq, kn);
    int err;
    if ((kn->status & KN_INEPOLL) &&
        ((kn->u.fd.set == KQ_SET_HOT && (kn->kev.fflags & NOTE_LOWAT)) ||
         (kn->u.fd.set == KQ_SET_PLAIN && !plain(kn)))) {
        /* NOTE_LOWAT needs an edge-triggered item, and a registration that
         * counts data (or has a mark) keeps the identity rule, whose
         * lingering items only a sub-set can shed: back to a sub-set. */
        kn->status &= ~KN_INEPOLL;
        if ((err = kq_set_del(kq, fd_kind_of(kn), kn->u.fd.set, fd, data_of(kn))) != 0)
            return err;
        kn->u.fd.set = 0;
    }
    struct epoll_event ev = fd_wanted(kn);
    if (kn->status & KN_INEPOLL) {
        /* MOD re-arms a dispatched registration and re-checks readiness. */
        if ((err = kq_set_mod(kq, fd_kind_of(kn), kn->u.fd.set, fd, &ev)) == 0)
            kn->u.fd.armed = ev.events;
        return err;
    }
    assert(kn->u.fd.set >= 0);
    int refused = !kq_life_epollable(kq, fd);
    if (plain(kn) && !refused) {
        /* In the wait set itself, unless the file is there under this
         * number already (its other filter's item, ...): then a nested
         * set. */
        kn->u.fd.set = KQ_SET_PLAIN;
        ev = fd_wanted(kn);
        if ((err = kq_set_plain(kq, fd, &ev)) == 0) {
            kn->status |= KN_INEPOLL;
            kn->u.fd.armed = ev.events;
            return 0;
        }
        kn->u.fd.set = 0;
        if (err != -EEXIST && err != -EPERM)
            return err;
        refused = err == -EPERM;
        ev = fd_wanted(kn);
    }
    if (!refused) {
        if ((err = kq_set_add(kq, fd_kind_of(kn), fd, &ev, &kn->u.fd.set)) == 0) {
            kn->status |= KN_INEPOLL;
            kn->u.fd.armed = ev.events;
            return 0;
        }
        if (err != -EPERM)
            return err;
        /* A file epoll refuses (a regular file): known by fstat from now
         * on, and watched by the files' emulation. */
        if ((err = kq_life_identify(kq, fd)) != 0)
            return err;
        if (kq_life_epollable(kq, fd))
            return -EPERM;
    }
    return fd_file_attach(kq, kn);      /* a regular file or directory */
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
    int err = kq_life_claim(kq, (int)kn->kev.ident, 1);
    if (err != 0)
        return err;
    kn->u.fd.kind = FDK_UNKNOWN;
    kn->u.fd.wd = -1;
    kn->u.fd.gen = kq_next_gen(kq);
    if ((err = fd_sync(kq, kn)) != 0)
        kq_life_unclaim(kq, (int)kn->kev.ident);    /* nothing was attached */
    else if ((err = pending_check(kq, kn)) != 0)
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
    fd_lowat_unwait(kq, kn);
    fd_file_detach(kq, kn);
    if (kn->status & KN_INEPOLL) {
        /* Fails when the number no longer names the file: lifetime.c then
         * remembers the item, which may linger. */
        (void)kq_set_del(kq, fd_kind_of(kn), kn->u.fd.set, (int)kn->kev.ident, data_of(kn));
        kn->status &= ~KN_INEPOLL;
    }
    kq_life_unclaim(kq, (int)kn->kev.ident);
}

/* EV_DELETE: remove, and say whether the registration was still live. */
static int fd_remove(struct kq *kq, struct knote *kn)
{
    int fd = (int)kn->kev.ident;
    fd_lowat_unwait(kq, kn);
    if (kn->u.fd.kind == FDK_REGULAR) {
        fd_file_detach(kq, kn);
        return kq_life_check(kq, fd);
    }
    if (kn->status & KN_INEPOLL) {
        kn->status &= ~KN_INEPOLL;
        int err = kq_set_del(kq, fd_kind_of(kn), kn->u.fd.set, fd, data_of(kn));
        return err == 0 ? 0 : stale_error(-err);
    }
    return kq_life_check(kq, fd);
}

/* Does the number still name the file kn was registered on?  The
 * epoll_ctl() the report needs anyway where there is one (remove an
 * EV_ONESHOT registration, disarm an EV_DISPATCH one, re-arm a level
 * NOTE_LOWAT one: each fails once the number names something else), the
 * shadow probe of lifetime.c otherwise.  Returns 1 if live. */
static int confirm(struct kq *kq, struct knote *kn)
{
    int fd = (int)kn->kev.ident, saved = errno, ok;
    if (kn->u.fd.set == KQ_SET_HOT) {
        /* In the wait set itself (level, no NOTE_LOWAT): the re-arm of
         * its EPOLLONESHOT item. */
        struct epoll_event ev = fd_wanted(kn);
        ok = kq_set_mod(kq, fd_kind_of(kn), KQ_SET_HOT, fd, &ev) == 0;
    } else if (!(kn->kev.flags & (EV_ONESHOT | EV_DISPATCH)) &&
        (!(kn->kev.fflags & NOTE_LOWAT) || (kn->kev.flags & EV_CLEAR))) {
        ok = kq_life_check(kq, fd) == 0;     /* the common case: the probe */
    } else if (kn->kev.flags & EV_ONESHOT) {
        ok = kq_set_del(kq, fd_kind_of(kn), kn->u.fd.set, fd, data_of(kn)) == 0;
        kn->status &= ~KN_INEPOLL;
    } else if (kn->kev.flags & EV_DISPATCH) {
        struct epoll_event ev = fd_wanted(kn);
        ev.events = EPOLLONESHOT;            /* disarmed until EV_ENABLE */
        ok = kq_set_mod(kq, fd_kind_of(kn), kn->u.fd.set, fd, &ev) == 0;
        if (ok)
            kn->u.fd.armed = ev.events;
    } else {
        /* Level-triggered NOTE_LOWAT over an edge-triggered item: re-arm
         * the edge. */
        struct epoll_event ev = fd_wanted(kn);
        ok = kq_set_mod(kq, fd_kind_of(kn), kn->u.fd.set, fd, &ev) == 0;
    }
    errno = saved;
    return ok;
}

/*
 * A level-triggered registration found ready alone in its sub-set cost
 * two epoll_wait()s for one event (the wait set's, then the sub-set's):
 * its item moves into the wait set itself, EPOLLONESHOT there, so that
 * its next events cost one, whatever the number of sub-sets.  A closed
 * number can leave such an item behind too (no sub-set to rebuild then),
 * but it fires at most once, and the re-arm after each report -- an
 * EPOLL_CTL_MOD, which fails once the number no longer names the file --
 * is its identity check.  The move's EPOLL_CTL_DEL from the sub-set is
 * this report's.  At most KQ_HOT_MAX items, for queues with more than
 * one sub-set of the kind (one sub-set: the poll asks it directly, or
 * the items of a burst share its epoll_wait).  Returns 1 moved (live), 0
 * dead, -1 not moved (the caller checks as usual).
 */
static int promote(struct kq *kq, struct knote *kn)
{
    int fd = (int)kn->kev.ident, kind = fd_kind_of(kn), set = kn->u.fd.set;
    if (set < 0 || (kn->kev.flags & (EV_CLEAR | EV_ONESHOT | EV_DISPATCH)) ||
        (kn->kev.fflags & NOTE_LOWAT) || (kn->status & KN_DISABLED))
        return -1;
    /* One item per (file, number) in a set: READ's and WRITE's cannot
     * both be there. */
    struct knote *other = (kind == 0 ? kq->wr : kq->rd)[fd];
    if (other != NULL && other->u.fd.set < 0)
        return -1;
    uint64_t old_data = data_of(kn);
    kn->u.fd.set = KQ_SET_HOT;
    struct epoll_event ev = fd_wanted(kn);
    kn->u.fd.set = set;
    int saved = errno;
    int err = kq_set_promote(kq, kind, set, fd, &ev, old_data);
    errno = saved;
    if (err == 0) {
        kn->u.fd.set = KQ_SET_HOT;
        kn->u.fd.armed = ev.events;
        return 1;
    }
    return err == -ENOENT ? 0 : -1;
}

/* Fill *out for a registration epoll reported ready with revents (alone:
 * the only item its sub-set's epoll_wait returned).  Returns 1 for an
 * event, 0 when there is none to report (below its NOTE_LOWAT mark, or
 * KN_STALE: the registration turned out to be stale). */
static int fd_event(struct kq *kq, struct knote *kn, uint32_t revents, struct kevent *out,
                    int alone)
{
    int fd = (int)kn->kev.ident;
    /* NOTE_NODATA (a kqueue_py extension): readiness only, data = 0 --
     * saves the ioctl per event for callers such as selectors that never
     * look at data.  NOTE_LOWAT needs the count, so it wins. */
    int counted = !(kn->kev.fflags & NOTE_NODATA) || (kn->kev.fflags & NOTE_LOWAT);
    if (kn->u.fd.kind == FDK_UNKNOWN &&
        (counted || (revents & EPOLLERR) || kn->kev.filter == EVFILT_WRITE))
        kn->u.fd.kind = fd_learn_kind(fd);
    *out = kn->kev;
    out->fflags = 0;
    out->data = 0;
    if (kn->kev.filter == EVFILT_READ) {
        intptr_t inq;
        if (counted)
            out->data = kn->u.fd.kind == FDK_SOCKET && kq_life_batch_take_inq(kq, fd, &inq)
                            ? inq : fd_read_data(kn, fd);
        /* EPOLLERR alone (an ICMP error on a connected UDP socket) is
         * FreeBSD's "temporary udp error": an event, no EV_EOF, whatever
         * the mark. */
        if (revents & (EPOLLRDHUP | EPOLLHUP))
            out->flags |= EV_EOF;
        else if (kn->kev.fflags & NOTE_LOWAT && out->data < kn->kev.data &&
                 !(revents & EPOLLERR) && !fd_read_may_reach(kn, fd, kn->kev.data))
            return 0;
    } else {
        if (counted)
            out->data = fd_write_data(kn, fd);
        /* A pipe whose reader is gone reports EPOLLERR only. */
        if (revents & EPOLLHUP || (revents & EPOLLERR && !fd_is_socket(kn)) ||
            (fd_is_socket(kn) && fd_send_shut_down(kn, fd)))
            out->flags |= EV_EOF;
        else if (kn->kev.fflags & NOTE_LOWAT && out->data < kn->kev.data &&
                 !(revents & EPOLLERR)) {
            fd_lowat_wait(kq, kn);     /* no wakeup comes when space grows */
            return 0;
        }
    }
    /* NOTE_NODATA asks for epoll's contract: a level-triggered or EV_CLEAR
     * registration is reported as epoll reports it, without the identity
     * check (its owner deletes it before closing the descriptor, as with
     * epoll).  ONESHOT/DISPATCH need their epoll_ctl() anyway, and
     * NOTE_LOWAT its re-arm, so they keep it. */
    int moved = alone ? promote(kq, kn) : -1;
    if (moved >= 0) {
        if (moved)
            return 1;
        kn->status |= KN_STALE;
        return 0;
    }
    if ((kn->kev.fflags & (NOTE_NODATA | NOTE_LOWAT)) == NOTE_NODATA &&
        !(kn->kev.flags & (EV_ONESHOT | EV_DISPATCH)) && kn->u.fd.set != KQ_SET_HOT)
        return 1;
    if (confirm(kq, kn))
        return 1;
    kn->status |= KN_STALE;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Ready items.                                                        */

/* Will fd_event() check kn's identity with the shadow probe (confirm()'s
 * common case, not skipped by NOTE_NODATA)? */
static int checks_by_probe(const struct knote *kn)
{
    if (kn->u.fd.set == KQ_SET_HOT || (kn->kev.flags & (EV_ONESHOT | EV_DISPATCH)))
        return 0;
    if (kn->kev.fflags & NOTE_LOWAT)
        return (kn->kev.flags & EV_CLEAR) != 0;
    return !(kn->kev.fflags & NOTE_NODATA);
}

/*
 * Before a batch of fd events is reported one by one: the identity probes
 * (lifetime.c) and the READ counts of sockets (SIOCINQ) they will need go
 * through one io_uring_enter (uring.c), where the process uses io_uring
 * (else the probes are made together as system calls); fd_event() then
 * takes their answers.  Nothing changes but how the system calls are
 * made: an answer the ring does not give is a system call again.  Items
 * of the batch that are not fd events are skipped.
 */
#define PREFETCH_MAX 128    /* items looked at per io_uring_enter */

/* A batch of one event: worth the ring only if it brings a count too (a
 * READ socket registration whose count the ring may give). */
static int one_counts_by_ring(const struct kq *kq, const struct epoll_event *ebuf)
{
    uint64_t data = ebuf[0].data.u64;
    int fd = EP_FD_OF(data);
    if (EP_TAG_OF(data) != TAG_READ || fd >= kq->fd_cap || kq->rd[fd] == NULL)
        return 0;
    const struct knote *kn = kq->rd[fd];
    return kn->u.fd.inq_ring >= 0 && !(kn->kev.fflags & NOTE_NODATA) &&
           (kn->u.fd.kind == FDK_SOCKET || kn->u.fd.kind == FDK_UNKNOWN);
}
static void fd_prefetch_items(struct kq *kq, const struct epoll_event *ebuf, int r)
{
    kq_life_batch_end(kq);
    int ring = kq_uring_enabled();
    /* Without the ring each probe is a system call either way: made by
     * the event's own check, beside its count (a pass of its own over the
     * batch first gained nothing).  A batch of one: the same. */
    if (!ring || (r < 2 && !one_counts_by_ring(kq, ebuf)))
        return;
    kq_life_batch_begin(kq);
    int shadow = kq_life_shadow(kq), inq_ok = kq_uring_inq_enabled(), saved = errno;
    struct kq_uop ops[2 * PREFETCH_MAX];
    int32_t res[2 * PREFETCH_MAX];
    struct knote *owner[2 * PREFETCH_MAX];
    for (int base = 0; base < r; base += PREFETCH_MAX) {
        int end = r - base < PREFETCH_MAX ? r : base + PREFETCH_MAX, n = 0;
        for (int i = base; i < end; i++) {
            uint64_t data = ebuf[i].data.u64;
            uint32_t tag = EP_TAG_OF(data);
            if (tag != TAG_READ && tag != TAG_WRITE)
                continue;
            int fd = EP_FD_OF(data);
            struct knote *kn = fd < kq->fd_cap ? (tag == TAG_READ ? kq->rd : kq->wr)[fd] : NULL;
            if (kn == NULL || (kn->u.fd.gen & 0xffffff) != EP_GEN_OF(data) ||
                (kn->status & (KN_DISABLED | KN_INEPOLL)) != KN_INEPOLL)
                continue;
            if (checks_by_probe(kn) && kq_life_batch_slot(kq, fd)) {
                ops[n] = (struct kq_uop){ KQ_UOP_PROBE, shadow, fd };
                owner[n++] = NULL;
                if (tag == TAG_READ && inq_ok && kn->u.fd.inq_ring >= 0 &&
                    !(kn->kev.fflags & NOTE_NODATA)) {
                    if (kn->u.fd.kind == FDK_UNKNOWN)
                        kn->u.fd.kind = fd_learn_kind(fd);
                    if (kn->u.fd.kind == FDK_SOCKET) {
                        ops[n] = (struct kq_uop){ KQ_UOP_INQ, -1, fd };
                        owner[n++] = kn;
                    }
                }
            }
        }
        if (n >= 2 && kq_uring_run(kq, ops, n, res) == 0) {
            for (int k = 0; k < n; k++) {
                if (ops[k].kind == KQ_UOP_PROBE)
                    kq_life_batch_probe(kq, ops[k].fd, res[k]);
                else if (res[k] == -EOPNOTSUPP)
                    owner[k]->u.fd.inq_ring = -1;   /* AF_UNIX, ...: the ioctl */
                else
                    kq_life_batch_inq(kq, ops[k].fd, res[k]);
            }
            continue;
        }
        /* The ring is another thread's or failed: the plain system calls,
         * the probes together, before the events (the counts come with
         * each event, fd_read_data()). */
        for (int k = 0; k < n; k++)
            if (ops[k].kind == KQ_UOP_PROBE)
                kq_life_batch_probe(kq, ops[k].fd, kq_life_probe_now(kq, ops[k].fd));
    }
    errno = saved;
}

/* The core's batch (a poll of the one READ sub-set brings fd items). */
static void fd_prefetch(struct kq *kq, const struct epoll_event *ebuf, int r)
{
    fd_prefetch_items(kq, ebuf, r);
}

/* A ready fd registration from its sub-set.  Returns events written (0
 * or 1). */
static int deliver_fd(struct kq *kq, int kind, int set, uint64_t data, uint32_t revents,
                      struct kevent *out, int alone)
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
    int r = fd_event(kq, kn, revents, out, alone);
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
    if (r > 1)
        fd_prefetch_items(kq, ebuf, r);     /* (one alone may be promoted) */
    for (int i = 0; i < r; i++)
        n += deliver_fd(kq, kind, EP_FD_OF(data), ebuf[i].data.u64, ebuf[i].events, &out[n],
                        r == 1);
    kq_ebuf_put(stack, ebuf);
    return n;
}

/* An item in the wait set itself (hot, or plain) is ready.  Without room
 * for it (the sub-sets' events of the batch took it), a hot item's
 * EPOLLONESHOT is re-armed unreported, and a plain (level-triggered) one
 * stays ready in epoll: the next call reports it. */
static int hot_ready(struct kq *kq, int kind, uint64_t data, uint32_t revents,
                     struct kevent *out, int room)
{
    if (room > 0)
        return deliver_fd(kq, kind, KQ_SET_HOT, data, revents, out, 0);
    int fd = EP_FD_OF(data);
    struct knote *kn = fd < kq->fd_cap ? (kind == 0 ? kq->rd : kq->wr)[fd] : NULL;
    if (kn == NULL || (kn->u.fd.gen & 0xffffff) != EP_GEN_OF(data) ||
        kn->u.fd.set != KQ_SET_HOT || (kn->status & (KN_DISABLED | KN_INEPOLL)) != KN_INEPOLL)
        return 0;
    struct epoll_event ev = fd_wanted(kn);
    if (kq_set_mod(kq, kind, KQ_SET_HOT, fd, &ev) != 0)
        kq_knote_stale(kq, kn);     /* the number no longer names its file */
    return 0;
}

/* READ: a READ sub-set has ready items, or (TAG_FILES) a registered
 * regular file changed. */
static int read_ready(struct kq *kq, uint64_t data, uint32_t revents, struct kevent *out,
                      int room)
{
    if (EP_TAG_OF(data) == TAG_FILES) {
        fd_files_ready(kq);
        return 0;
    }
    if (EP_TAG_OF(data) == TAG_READ)   /* a poll of the one READ sub-set (0) */
        return room > 0 ? deliver_fd(kq, 0, 0, data, revents, out, 0) : 0;
    if (EP_TAG_OF(data) == TAG_RHOT)
        return hot_ready(kq, 0, data, revents, out, room);
    return set_ready(kq, 0, data, out, room);
}

/* WRITE: a WRITE sub-set has ready items. */
static int write_ready(struct kq *kq, uint64_t data, uint32_t revents, struct kevent *out,
                       int room)
{
    if (EP_TAG_OF(data) == TAG_WHOT)
        return hot_ready(kq, 1, data, revents, out, room);
    return set_ready(kq, 1, data, out, room);
}

/* After changes and each batch: the sub-sets due for a rebuild. */
static int fd_rearm(struct kq *kq)
{
    kq_life_batch_end(kq);      /* the batch's probe answers are old now */
    return kq_sets_rearm(kq);
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
    .prefetch = fd_prefetch,
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
    .polled = fd_write_polled,
    .next_look = fd_write_next_look,
};
