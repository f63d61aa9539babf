/*
 * A registration lives exactly as long as its descriptor.
 *
 * The rule, for every registration whose ident is a descriptor (READ,
 * WRITE -- sockets, pipes, regular files -- and VNODE): no event is
 * reported for a registration whose number no longer names the file it
 * was registered on; a change or EV_ADD on such a number finds the
 * registration gone (EV_ADD makes a new one, with its own udata and
 * flags); and the dead registration's udata is handed back through
 * kqueue_py_take_dropped().  On BSD close() removes the knote; Linux
 * tells nobody, and epoll keeps an item for as long as the open file
 * lives (a dup(), a fork() child, a descriptor in flight).
 *
 * Identity.  A registered number has one entry in shadow_fd (made at its
 * first check: see below), an epoll
 * set that is never waited on: an item (file, number) with no events.
 * epoll finds items by (file, number), so one EPOLL_CTL_ADD probe tells:
 * EEXIST, the number names the registered file still; EBADF, it is
 * closed; success, it names another file (the probe item is removed and
 * the registrations are dead).  Files epoll refuses (regular files,
 * directories) are known by device, inode and type instead (fstat).
 * Every registration on a number (READ, WRITE, VNODE) shares the entry;
 * the item is added by the first and left when the last goes (it leaves
 * with its file; the same file registered on the number again finds it).
 * The shadow item is made lazily: a number with one READ or WRITE
 * registration has none at first, and its registration's own epoll item
 * answers the same probe, made into the set that holds it (KQ_ID_ITEM) --
 * so a registration costs one epoll_ctl(), as before the rule.  A probe
 * into a nested set is slower (epoll takes a process-wide mutex for sets
 * inside sets), so the first one that finds the file gives the number its
 * shadow item; a plain item (below) waits in the wait set, where the probe
 * is as cheap, and its number never needs one: one epoll item per socket,
 * as with epoll itself, where each item costs every wake-up of the socket.
 * A second registration on the number gives it its shadow item too.
 *
 * The one case Linux cannot see: the same open file put back on the
 * number (dup2() from a kept duplicate, the file received back through
 * SCM_RIGHTS, pidfd_getfd()).  (file, number) is then what it was, and
 * Linux exposes no per-slot generation; the registration goes on.  For
 * regular files, reopening the same file (same inode) is that case too.
 *
 * Where it is checked: each fd event before it is reported (the probe,
 * or the epoll_ctl() an EV_ONESHOT / EV_DISPATCH / NOTE_LOWAT report needs
 * anyway), each change on an existing registration, each new registration
 * on a number that has some, every descriptor the backend makes or
 * watches (a number a dead registration names is forgotten first), and a
 * sweep that probes KQ_SWEEP registered numbers every KQ_SWEEP_EVERY
 * kevent() calls on the queue, so that a registration whose file is gone
 * for good (closed, no event will ever come) is found and its udata
 * handed back.
 *
 * Lingering items.  A dead registration's epoll item stays in its set
 * while its file lives elsewhere, and epoll_ctl() cannot reach it by
 * number any more.  The items of READ and WRITE registrations therefore
 * live in small sub-sets (at most KQ_SUB_SPAN items each, per filter,
 * filled in order) nested in the queue's wait set; a sub-set holding a
 * lingering item is rebuilt -- a fresh set gets its live items and takes
 * its place, in place under its number (dup3) -- which costs the items of
 * that sub-set only.  A rebuild happens when an event shows a dead
 * registration's item (an event came from it: it lingers), or when an
 * item a failed EPOLL_CTL_DEL left behind comes back; never for events of
 * registrations deleted properly (EV_DELETE) while another thread had
 * them in flight.  Threads block in the wait set itself, which is never
 * replaced: no waiter is stranded.  The fresh set is the spare descriptor,
 * made in advance, so a rebuild never needs a new descriptor at EMFILE;
 * every epoll_ctl() of a rebuild is checked, and a failure leaves the old
 * set in place and fails the kevent() call.
 *
 * Hot items.  A nested set costs a second epoll_wait: the wait set says
 * which sub-set is ready, the sub-set which items.  A level-triggered
 * registration found ready alone in its sub-set (one event for two waits),
 * in a queue with more than one sub-set of its kind, moves into the wait
 * set itself (KQ_SET_HOT, at most KQ_HOT_MAX): its item is EPOLLONESHOT
 * there, re-armed by EPOLL_CTL_MOD at each report -- which fails once the
 * number no longer names the file, so it is also the identity check -- and
 * an item a closed number leaves there fires at most once: nothing to
 * rebuild.  The move's EPOLL_CTL_DEL from the sub-set checks identity for
 * the report that moves it.
 *
 * Plain items.  A level-triggered NOTE_NODATA registration (what
 * KqueueSelector makes) has asked for epoll's contract: its owner deletes
 * it before closing the descriptor, and until then it is reported as epoll
 * reports it.  Its item waits in the wait set itself from the start
 * (KQ_SET_PLAIN), level-triggered, as EpollSelector's would: a socket
 * wake-up then reaches one epoll item, not a sub-set's and then the wait
 * set's (in an asyncio echo server, about 2% of each request).  The price,
 * the contract's: an item a closed number leaves there (its file kept open
 * elsewhere by a dup() or a fork() child) cannot be removed, and wakes the
 * queue while that file is ready -- as the item epoll keeps for
 * EpollSelector does -- until the file is closed everywhere.  Its events
 * find no registration and are not reported.  Other registrations never
 * wait there level-triggered.
 *
 * Cost (CPU time of kevent() in a C loop, 2-vCPU VM): the probe is about
 * 0.2 us per reported event as a system call, about 0.14 us through
 * io_uring (the probes of one batch of events run together before the
 * events are looked at: kq_life_batch_*, uring.c), where the
 * EPOLL_CTL_MOD it replaces cost about 0.33 us; one more epoll_wait per sub-set with ready items (none
 * for a poll of a queue whose only sub-set is its one READ set: the core
 * asks that set directly, and none for a hot item, whose re-arm costs
 * about 0.13 us more than a probe); one probe per new registration.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kq_internal.h"

void kq_life_init(struct kq *kq)
{
    kq->shadow_fd = kq->spare_fd = -1;
}

void kq_life_close_fds(struct kq *kq)
{
    int *fds[] = { &kq->shadow_fd, &kq->spare_fd };
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
    for (int kind = 0; kind < 2; kind++) {
        for (int i = 0; i < kq->nsubs[kind]; i++) {
            if (kq->subs[kind][i].fd >= 0)
                close(kq->subs[kind][i].fd);
            kq->subs[kind][i].fd = -1;
        }
    }
}

void kq_life_destroy(struct kq *kq)
{
    free(kq->ids);
    kq->ids = NULL;
    for (int kind = 0; kind < 2; kind++) {
        free(kq->subs[kind]);
        kq->subs[kind] = NULL;
    }
}

/* A new epoll set of the backend's own.  0 or -errno. */
static int new_set(struct kq *kq, int *out)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0)
        return -errno;
    kq_new_descriptor(kq, fd);
    *out = fd;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Identity.                                                          */

static int ids_reserve(struct kq *kq, int fd)
{
    if (fd < kq->ids_cap)
        return 0;
    if (fcntl(fd, F_GETFD) < 0)
        return -EBADF;      /* a huge closed number must not allocate */
    int cap = kq->ids_cap ? kq->ids_cap : 64;
    while (cap <= fd)
        cap = cap > INT_MAX / 2 ? INT_MAX : cap * 2;
    struct kq_fdid *ids = realloc(kq->ids, (size_t)cap * sizeof *ids);
    if (ids == NULL)
        return -ENOMEM;
    memset(ids + kq->ids_cap, 0, (size_t)(cap - kq->ids_cap) * sizeof *ids);
    kq->ids = ids;
    kq->ids_cap = cap;
    return 0;
}

static int identify(struct kq *kq, int fd);

/* The probe of a KQ_ID_ITEM number: an EPOLL_CTL_ADD, with no events, of
 * fd into the set that holds its one registration's item (*set: the
 * nested set's index, or -1 for the wait set).  -EEXIST: the number names
 * that item's file; 0: another file (the item added is taken out again);
 * another -errno otherwise. */
static int probe_own_item(struct kq *kq, int fd, int *set)
{
    struct knote *kn = fd < kq->fd_cap ? kq->rd[fd] : NULL;
    if (kn == NULL || !(kn->status & KN_INEPOLL))
        kn = fd < kq->fd_cap ? kq->wr[fd] : NULL;
    assert(kn != NULL && (kn->status & KN_INEPOLL));
    if (kn == NULL || !(kn->status & KN_INEPOLL)) {
        *set = -1;
        return -ENOMEM;                 /* cannot happen: says nothing */
    }
    *set = kn->u.fd.set;
    if (*set < 0)
        return kq_probe_item(kq, fd);
    return kq_epoll_probe(kq->subs[kn->kev.filter == EVFILT_READ ? 0 : 1][*set].fd, fd);
}

/* Does fd still name the file its registrations were made on?  0 if so,
 * -EBADF if the number is closed, -ENOENT if it names another file.  A
 * probe that fails otherwise (ENOMEM) says nothing: live.  learn: a
 * number found in a nested set gets its shadow item for the next probes
 * (not for the sweep's, which come back to it only after every other
 * registered number: the item would cost more than it saves). */
static int check(struct kq *kq, int fd, int learn)
{
    assert(fd >= 0 && fd < kq->ids_cap && kq->ids[fd].users > 0);
    struct kq_fdid *id = &kq->ids[fd];
    if (id->kind == KQ_ID_ITEM) {
        int set, err = probe_own_item(kq, fd, &set);
        switch (err) {
        case -EEXIST:
            /* The file, found in a nested set (a failure to make the
             * shadow item says nothing). */
            if (set >= 0 && learn)
                (void)identify(kq, fd);
            return 0;
        case -EBADF:  return -EBADF;
        case 0:                          /* another file (taken out again) */
        case -EPERM:                     /* a file epoll refuses */
        case -ELOOP:                     /* an epoll set holding the queue's */
        case -EINVAL: return -ENOENT;    /* one of the queue's own sets */
        default:      return 0;          /* ENOMEM...: says nothing */
        }
    }
    if (id->kind == KQ_ID_EPOLL) {
        /* The probe already made for this batch (through io_uring), if it
         * gave an answer the system call gives; else the system call. */
        int32_t res = KQ_UOP_NOT_RUN;
        if (id->batch != 0 && id->batch == kq->life_batch) {
            res = id->probe;
            id->probe = KQ_UOP_NOT_RUN;     /* an answer is used once */
        }
        if (res != 0 && res != -EEXIST && res != -EBADF && res != -EPERM) {
            struct epoll_event ev = { .events = 0, .data.u64 = (uint64_t)fd };
            res = epoll_ctl(kq->shadow_fd, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : -errno;
        }
        if (res == 0) {
            /* Another file: take the probe item out again. */
            (void)epoll_ctl(kq->shadow_fd, EPOLL_CTL_DEL, fd, NULL);
            return -ENOENT;
        }
        switch (res) {
        case -EEXIST: return 0;
        case -EBADF:  return -EBADF;
        case -EPERM:  return -ENOENT;    /* a file epoll refuses now */
        default:      return 0;
        }
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -EBADF;
    if ((uint64_t)st.st_dev != id->dev || (uint64_t)st.st_ino != id->ino ||
        (uint32_t)(st.st_mode & S_IFMT) != id->mode)
        return -ENOENT;
    return 0;
}

int kq_life_check(struct kq *kq, int fd)
{
    return check(kq, fd, 1);
}

/* Check, and if the registrations on fd are dead, forget them all (their
 * udata is handed back).  0 or the check's -errno. */
static int verify(struct kq *kq, int fd, int learn)
{
    if (fd < 0 || fd >= kq->ids_cap || kq->ids[fd].users == 0)
        return 0;
    int err = check(kq, fd, learn);
    if (err != 0)
        kq_forget_number(kq, fd);
    return err;
}

int kq_life_verify(struct kq *kq, int fd)
{
    return verify(kq, fd, 1);
}

/* A new registration on fd: record what the number names, or (other
 * registrations on it) check that it is still their file -- if not, they
 * die first.  item: the registration is to have an epoll item of its own
 * (READ, WRITE), which is then, alone on the number, its identity (the
 * caller calls kq_life_identify() if epoll refuses the file).  0, or
 * -errno (EBADF: not open). */
int kq_life_claim(struct kq *kq, int fd, int item)
{
    if (fd < kq->ids_cap && kq->ids[fd].users > 0) {
        int err = kq_life_check(kq, fd);
        if (err == 0 && kq->ids[fd].kind == KQ_ID_ITEM)
            err = identify(kq, fd);     /* two registrations: a shadow item */
        if (err == 0) {
            kq->ids[fd].users++;
            return 0;
        }
        if (err != -EBADF && err != -ENOENT)
            return err;
        kq_forget_number(kq, fd);
        if (err == -EBADF)
            return err;
        assert(kq->ids[fd].users == 0);
    }
    if (item) {
        /* No system call: the item's epoll_ctl() says EBADF for a closed
         * number (and a nested set is made only for a number known open). */
        int err = ids_reserve(kq, fd);
        if (err != 0)
            return err;
        kq->ids[fd].kind = KQ_ID_ITEM;
        kq->ids[fd].users = 1;
        kq->ids_numbers++;
        return 0;
    }
    int err = identify(kq, fd);
    if (err == 0) {
        kq->ids[fd].users = 1;
        kq->ids_numbers++;
    }
    return err;
}

/* fd's registration was claimed with an item, but epoll refuses the file
 * (a regular file): the number is known by fstat.  0 or -errno. */
int kq_life_identify(struct kq *kq, int fd)
{
    assert(fd >= 0 && fd < kq->ids_cap && kq->ids[fd].users > 0);
    return kq->ids[fd].kind == KQ_ID_ITEM ? identify(kq, fd) : 0;
}

/* Record what fd names: its shadow item, or (a file epoll refuses) its
 * device, inode and type.  users is left as it is.  0 or -errno. */
static int identify(struct kq *kq, int fd)
{
    /* Only with the number known open may a descriptor be made: it cannot
     * take this number then.  (Afterwards the probe says EBADF itself.) */
    if (kq->shadow_fd < 0 && fcntl(fd, F_GETFD) < 0)
        return -EBADF;
    int err = ids_reserve(kq, fd);
    if (err == 0 && kq->shadow_fd < 0)
        err = new_set(kq, &kq->shadow_fd);
    if (err != 0)
        return err;
    struct kq_fdid *id = &kq->ids[fd];
    struct epoll_event ev = { .events = 0, .data.u64 = (uint64_t)fd };
    if (epoll_ctl(kq->shadow_fd, EPOLL_CTL_ADD, fd, &ev) == 0 || errno == EEXIST) {
        /* EEXIST: an item left by an earlier registration of this very
         * file on this number (the case Linux cannot tell apart). */
        id->kind = KQ_ID_EPOLL;
    } else if (errno == EBADF) {
        return -EBADF;
    } else if (errno == EPERM) {
        struct stat st;
        if (fstat(fd, &st) < 0)
            return -errno;
        id->kind = KQ_ID_STAT;
        id->dev = (uint64_t)st.st_dev;
        id->ino = (uint64_t)st.st_ino;
        id->mode = (uint32_t)(st.st_mode & S_IFMT);
    } else {
        return -errno;
    }
    return 0;
}

/* Can the file fd names be put in epoll (else: known by fstat)?  A claim
 * with an item does not know yet: epoll tells the caller (EPERM). */
int kq_life_epollable(const struct kq *kq, int fd)
{
    assert(fd >= 0 && fd < kq->ids_cap && kq->ids[fd].users > 0);
    return kq->ids[fd].kind != KQ_ID_STAT;
}

/* One registration on fd went (deleted, dead, or its attach failed). */
void kq_life_unclaim(struct kq *kq, int fd)
{
    assert(fd >= 0 && fd < kq->ids_cap && kq->ids[fd].users > 0);
    struct kq_fdid *id = &kq->ids[fd];
    if (--id->users > 0)
        return;
    kq->ids_numbers--;
    /* The shadow item stays (it goes with its file, and is never waited
     * on): a registration of the same file on the number again finds it
     * (EEXIST), one of another file adds its own.  No EPOLL_CTL_DEL per
     * deletion, and none per re-registration of the same descriptor. */
    id->kind = KQ_ID_NONE;
}

/* ------------------------------------------------------------------ */
/* Batched probes: the identity probes of a batch of events run together
 * (uring.c) before the events are looked at one by one; kq_life_check()
 * takes each number's answer from there once.  Only answers the system
 * call would give are taken; anything else makes it.                   */

void kq_life_batch_begin(struct kq *kq)
{
    if (++kq->life_batch_seq == 0)
        kq->life_batch_seq = 1;
    kq->life_batch = kq->life_batch_seq;
}

void kq_life_batch_end(struct kq *kq)
{
    kq->life_batch = 0;
}

/* Does fd's check in this batch need a shadow probe (a registered number
 * known through the shadow set, not seen yet in this batch)?  1 if so:
 * its results are cleared, to be filled by the batch. */
int kq_life_batch_slot(struct kq *kq, int fd)
{
    if (kq->life_batch == 0 || fd < 0 || fd >= kq->ids_cap)
        return 0;
    struct kq_fdid *id = &kq->ids[fd];
    if (id->users == 0 || id->kind != KQ_ID_EPOLL || id->batch == kq->life_batch)
        return 0;
    id->batch = kq->life_batch;
    id->probe = KQ_UOP_NOT_RUN;
    id->inq = -1;
    return 1;
}

void kq_life_batch_probe(struct kq *kq, int fd, int32_t res)
{
    assert(fd >= 0 && fd < kq->ids_cap && kq->ids[fd].batch == kq->life_batch);
    kq->ids[fd].probe = res;
}

void kq_life_batch_inq(struct kq *kq, int fd, int32_t res)
{
    assert(fd >= 0 && fd < kq->ids_cap && kq->ids[fd].batch == kq->life_batch);
    kq->ids[fd].inq = res >= 0 ? res : -1;
}

/* fd's READ count as this batch got it (SIOCINQ through the ring), once. */
int kq_life_batch_take_inq(struct kq *kq, int fd, intptr_t *v)
{
    if (kq->life_batch == 0 || fd < 0 || fd >= kq->ids_cap)
        return 0;
    struct kq_fdid *id = &kq->ids[fd];
    if (id->batch != kq->life_batch || id->inq < 0)
        return 0;
    *v = id->inq;
    id->inq = -1;
    return 1;
}

/* The shadow probe as a system call: its result (0 or -errno). */
int32_t kq_life_probe_now(struct kq *kq, int fd)
{
    struct epoll_event ev = { .events = 0, .data.u64 = (uint64_t)fd };
    return epoll_ctl(kq->shadow_fd, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : -errno;
}

int kq_life_shadow(const struct kq *kq)
{
    return kq->shadow_fd;
}

/* The sweep, called every KQ_SWEEP_EVERY kevent() calls, so that a
 * registration whose file is gone without a trace is found within a
 * bounded number of calls.  Each registered number is probed about once
 * every KQ_SWEEP_CYCLE calls, and no more than KQ_SWEEP numbers per sweep:
 * with more than 32 * KQ_SWEEP numbers registered, once every
 * 32 * (numbers) calls.  A probe costs a system call (0.2-0.3 us): a queue
 * with a few registrations is polled far more often than they need, and
 * at 4 probes per 128 calls its empty poll would cost 4% more.  At most
 * 32 slots of the table are looked at per probe owed, and none twice in
 * one sweep.  Lock held. */
void kq_sweep(struct kq *kq)
{
    enum { PER_PROBE = KQ_SWEEP_CYCLE / KQ_SWEEP_EVERY };   /* sweeps per number */
#ifndef NDEBUG
    int counted = 0;
    for (int fd = 0; fd < kq->ids_cap; fd++)
        counted += kq->ids[fd].users > 0;
    assert(counted == kq->ids_numbers);
#endif
    if (kq->ids_numbers == 0 || kq->ids_cap == 0)
        return;
    kq->sweep_credit += kq->ids_numbers;
    int owed = kq->sweep_credit / PER_PROBE;
    if (owed > KQ_SWEEP)
        owed = KQ_SWEEP;
    kq->sweep_credit -= owed * PER_PROBE;
    if (kq->sweep_credit > PER_PROBE)
        kq->sweep_credit = PER_PROBE;       /* no backlog beyond the next probe */
    int probed = 0, limit = 32 * owed < kq->ids_cap ? 32 * owed : kq->ids_cap;
    for (int looked = 0; looked < limit && probed < owed; looked++) {
        int fd = kq->sweep_next;
        kq->sweep_next = fd + 1 < kq->ids_cap ? fd + 1 : 0;
        if (kq->ids[fd].users == 0)
            continue;
        probed++;
        (void)verify(kq, fd, 0);
    }
}

/* ------------------------------------------------------------------ */
/* Sub-sets.                                                           */

/* Forget lingering items recorded under fd's number (its item is
 * reachable again: the number names that file once more). */
static void linger_forget(struct kq_subset *s, int fd)
{
    for (int i = 0; i < s->nlinger;) {
        if (EP_FD_OF(s->linger[i]) == fd)
            s->linger[i] = s->linger[--s->nlinger];
        else
            i++;
    }
}

static uint32_t set_tag(int kind)
{
    return kind == 0 ? TAG_READS : TAG_WRITES;
}

static struct kq_subset *subset_of(struct kq *kq, int kind, int set)
{
    assert(set >= 0 && set < kq->nsubs[kind] && kq->subs[kind][set].fd >= 0);
    return &kq->subs[kind][set];
}

/* The sub-set for a new item: the first with room, made on first use.
 * Filled in order, so that a queue's ready items sit in few sets (one
 * epoll_wait each).  NULL with *err set. */
static struct kq_subset *subset_pick(struct kq *kq, int kind, int fd, int *idx, int *err)
{
    int i = 0;
    while (i < kq->nsubs[kind] && kq->subs[kind][i].count >= KQ_SUB_SPAN)
        i++;
    if (i == kq->nsubs[kind]) {
        struct kq_subset *grown = realloc(kq->subs[kind], (size_t)(i + 1) * sizeof *grown);
        if (grown == NULL) {
            *err = -ENOMEM;
            return NULL;
        }
        memset(&grown[i], 0, sizeof grown[i]);
        grown[i].fd = -1;
        kq->subs[kind] = grown;
        kq->nsubs[kind] = i + 1;
    }
    struct kq_subset *s = &kq->subs[kind][i];
    *idx = i;
    if (s->fd >= 0)
        return s;
    /* The first sub-set brings the spare its rebuilds will need.  Only
     * with the caller's number known open may they be made (a new
     * descriptor cannot take it then), and not for a file epoll refuses:
     * the number gets its identity first (-EBADF, or a regular file). */
    if ((*err = kq_life_identify(kq, fd)) != 0)
        return NULL;
    if (kq->ids[fd].kind == KQ_ID_STAT) {
        *err = -EPERM;
        return NULL;
    }
    if (kq->spare_fd < 0 && (*err = new_set(kq, &kq->spare_fd)) != 0)
        return NULL;
    int set = -1;
    if ((*err = new_set(kq, &set)) != 0)
        return NULL;
    s->fd = set;    /* first: the core looks at the sets when it joins */
    if ((*err = kq_watch_internal(kq, set, EPOLLIN, EP_DATA(set_tag(kind), 0, i))) != 0) {
        s->fd = -1;
        return NULL;
    }
    return s;
}

/* Put fd's item in a sub-set; *set says which.  0 or -errno (EPERM: a
 * file epoll refuses). */
int kq_set_add(struct kq *kq, int kind, int fd, struct epoll_event *ev, int *set)
{
    int err = 0;
    struct kq_subset *s = subset_pick(kq, kind, fd, set, &err);
    if (s == NULL)
        return err;
    if (epoll_ctl(s->fd, EPOLL_CTL_ADD, fd, ev) < 0) {
        if (errno != EEXIST)
            return -errno;
        /* An item a dead registration of this same file left on this
         * number: reachable again, so it is simply taken over. */
        if (epoll_ctl(s->fd, EPOLL_CTL_MOD, fd, ev) < 0)
            return -errno;
        linger_forget(s, fd);
    }
    s->count++;
    return 0;
}

/* Put a level NOTE_NODATA registration's item in the wait set itself
 * (ev: its form there).  0 or -errno; -EEXIST when the file is there
 * already under this number (the same file's other filter, one of the
 * queue's own descriptors, or an item a closed number left): the caller
 * then uses a sub-set. */
int kq_set_plain(struct kq *kq, int fd, struct epoll_event *ev)
{
    return kq_watch_item(kq, fd, ev);
}

int kq_set_mod(struct kq *kq, int kind, int set, int fd, struct epoll_event *ev)
{
    if (set < 0)
        return kq_rewatch_item(kq, fd, ev);
    return epoll_ctl(subset_of(kq, kind, set)->fd, EPOLL_CTL_MOD, fd, ev) == 0 ? 0 : -errno;
}

/* Remember an item that may linger in s. */
static void linger_note(struct kq_subset *s, uint64_t data)
{
    for (int i = 0; i < s->nlinger; i++)
        if (s->linger[i] == data)
            return;
    if (s->nlinger < KQ_LINGER)
        s->linger[s->nlinger++] = data;
    else
        s->overflow = 1;
}

/* Remove fd's item.  0, or -errno when the number no longer names the
 * file (EBADF, ENOENT): the item may then linger, and is remembered. */
int kq_set_del(struct kq *kq, int kind, int set, int fd, uint64_t data)
{
    if (set == KQ_SET_PLAIN)
        return kq_unwatch_item(kq, fd);     /* one that stays: see Plain items */
    if (set == KQ_SET_HOT) {
        /* An item that stays (EPOLLONESHOT) fires at most once more: an
         * orphan, ignored.  Nothing to rebuild. */
        assert(kq->nhot > 0);
        kq->nhot--;
        return kq_unwatch_item(kq, fd);
    }
    struct kq_subset *s = subset_of(kq, kind, set);
    assert(s->count > 0);
    s->count--;
    if (epoll_ctl(s->fd, EPOLL_CTL_DEL, fd, NULL) == 0)
        return 0;
    int err = -errno;
    linger_note(s, data);
    return err;
}

/* Move fd's item from sub-set set into the wait set itself (ev: its
 * EPOLLONESHOT form there).  The EPOLL_CTL_DEL from the sub-set is the
 * identity check: it finds the item only while the number names the
 * registered file.  0; -ENOENT when it does not (the registration is
 * dead: the item a failed DEL leaves is remembered as lingering); another
 * -errno when the move could not be made (nothing changed). */
int kq_set_promote(struct kq *kq, int kind, int set, int fd, struct epoll_event *ev,
                   uint64_t data)
{
    struct kq_subset *s = subset_of(kq, kind, set);
    if (kq->nhot >= KQ_HOT_MAX || kq->nsubs[kind] < 2)
        return -ENOSPC;
    int err = kq_watch_item(kq, fd, ev);
    if (err != 0)
        return err == -EBADF ? -ENOENT : err;
    if (epoll_ctl(s->fd, EPOLL_CTL_DEL, fd, NULL) < 0) {
        /* The number names another file: its item just added goes. */
        (void)kq_unwatch_item(kq, fd);
        linger_note(s, data);
        return -ENOENT;
    }
    assert(s->count > 0);
    s->count--;
    kq->nhot++;
    return 0;
}

/* A sub-set has ready items (data: its item in the wait set): fetch up to
 * max of them. */
int kq_set_ready(struct kq *kq, int kind, uint64_t data, struct epoll_event *ebuf, int max)
{
    int idx = EP_FD_OF(data);
    if (idx < 0 || idx >= kq->nsubs[kind] || kq->subs[kind][idx].fd < 0 || max <= 0)
        return 0;
    int r = epoll_wait(kq->subs[kind][idx].fd, ebuf, max, 0);
    return r > 0 ? r : 0;
}

static void rebuild_due(struct kq *kq, struct kq_subset *s)
{
    if (!s->rebuild) {
        s->rebuild = 1;
        kq->sets_due++;
    }
}

/* An event from sub-set set that found no live registration.  An item
 * known to linger (a dead registration's, or one a failed DEL left) has
 * its sub-set rebuilt at the end of the batch; anything else was deleted
 * while in flight and is ignored. */
void kq_set_orphan(struct kq *kq, int kind, int set, uint64_t data)
{
    if (set < 0)
        return;     /* in the wait set: nothing to rebuild (see Hot, Plain items) */
    struct kq_subset *s = subset_of(kq, kind, set);
    int lingers = s->overflow;
    for (int i = 0; i < s->nlinger && !lingers; i++)
        lingers = s->linger[i] == data;
    if (lingers)
        rebuild_due(kq, s);
}

/* A dead registration's item sent an event: it lingers for sure.  It is
 * remembered too, so that a rebuild that fails is tried again when it
 * comes back. */
void kq_set_lingers(struct kq *kq, int kind, int set, uint64_t data)
{
    if (set < 0)
        return;     /* in the wait set: nothing to rebuild (see Hot, Plain items) */
    struct kq_subset *s = subset_of(kq, kind, set);
    linger_note(s, data);
    rebuild_due(kq, s);
}

#ifndef NDEBUG
/* Fault injection, in debug and sanitizer builds only (tests/backend/
 * test_lifetime.py sets it through the exported symbol): while non-zero,
 * every epoll_ctl() that puts a live item into a rebuild's fresh set fails
 * with this errno, as ENOMEM or ENOSPC (fs.epoll.max_user_watches) would. */
__attribute__((visibility("default"))) int kqueue_py_debug_rebuild_errno;

static int rebuild_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    int e = __atomic_load_n(&kqueue_py_debug_rebuild_errno, __ATOMIC_RELAXED);
    if (e != 0) {
        errno = e;
        return -1;
    }
    return epoll_ctl(epfd, op, fd, ev);
}
#else
#define rebuild_ctl epoll_ctl
#endif

/* A fresh set with the live items of sub-set (kind, idx) replaces it. */
static int rebuild(struct kq *kq, int kind, int idx)
{
    int fresh = kq->spare_fd, err = 0;
    kq->spare_fd = -1;
    if (fresh < 0 && (err = new_set(kq, &fresh)) != 0)
        return err;
    uint32_t tag = kind == 0 ? TAG_READ : TAG_WRITE;
    for (int fd = 0; fd < kq->fd_cap && err == 0; fd++) {
        struct knote *kn = (kind == 0 ? kq->rd : kq->wr)[fd];
        if (kn == NULL || !(kn->status & KN_INEPOLL) || kn->u.fd.set != idx)
            continue;
        if (kq_life_verify(kq, fd) != 0)
            continue;       /* dead too: forgotten (and out of the count) */
        struct epoll_event ev = { .events = kn->u.fd.armed,
                                  .data.u64 = EP_DATA(tag, kn->u.fd.gen, fd) };
        if (rebuild_ctl(fresh, EPOLL_CTL_ADD, fd, &ev) < 0)
            err = -errno;
    }
    struct kq_subset *s = &kq->subs[kind][idx];
    /* In place: the set's number names the fresh set from now on (a
     * thread polling it without the lock sees one or the other). */
    if (err == 0)
        err = kq_replace_watched(kq, s->fd, fresh, EPOLLIN, EP_DATA(set_tag(kind), 0, idx));
    if (err != 0) {
        /* The old set stays (with its lingering item); so does the call's
         * error.  A spare again: the one just filled goes. */
        close(fresh);
        (void)new_set(kq, &kq->spare_fd);
        return err;
    }
    s->nlinger = 0;
    s->overflow = 0;
    /* The number fresh had is free again: the next spare can be had. */
    (void)new_set(kq, &kq->spare_fd);
    return 0;
}

/* The only descriptor in the wait set, when that is the one READ sub-set
 * (kevent() then polls it directly); -1 otherwise. */
int kq_sets_sole(const struct kq *kq)
{
    if (kq->nsubs[0] != 1 || kq->subs[0][0].fd < 0)
        return -1;
    for (int i = 0; i < kq->nsubs[1]; i++)
        if (kq->subs[1][i].fd >= 0)
            return -1;
    return kq->subs[0][0].fd;
}

/* After changes and after each batch: rebuild the sub-sets due.  0 or the
 * first -errno (the set then stays due, and is tried again). */
int kq_sets_rearm(struct kq *kq)
{
    int err = 0;
    if (kq->sets_due == 0)
        return 0;
    for (int kind = 0; kind < 2; kind++) {
        for (int i = 0; i < kq->nsubs[kind]; i++) {
            if (!kq->subs[kind][i].rebuild)
                continue;
            int e = rebuild(kq, kind, i);
            /* Failed: the old set stays, its lingering item remembered, and
             * the rebuild is tried again when the item comes back. */
            kq->subs[kind][i].rebuild = 0;
            if (e != 0 && err == 0)
                err = e;
        }
    }
    kq->sets_due = 0;
    return err;
}
