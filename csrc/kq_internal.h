/*
 * Internal structures of the Linux kqueue backend.
 *
 * One queue is one epoll instance: the descriptor the user sees (and so
 * pollable like a real kqueue), and waitfd, the backend's own duplicate of
 * it, in which kevent() waits (the user's number may be closed while
 * threads still wait).  That set is never replaced.  Inside it sit:
 *   - the fd registrations' sub-sets (lifetime.c): nested epoll sets, one
 *     per KQ_SUB_SPAN descriptor numbers and filter, holding the
 *     EVFILT_READ / EVFILT_WRITE items.  A file may sit in two epoll sets
 *     with independent EPOLLET / EPOLLONESHOT, so EV_CLEAR/EV_ONESHOT/
 *     EV_DISPATCH hold per filter; an item epoll can no longer remove
 *     costs a rebuild of its sub-set only;
 *   - up to KQ_HOT_MAX "hot" READ or WRITE items (lifetime.c): level-
 *     triggered registrations found ready alone in their sub-set, moved
 *     here (EPOLLONESHOT, re-armed at each report) so that their events
 *     cost one epoll_wait, not two;
 *   - "plain" READ or WRITE items (lifetime.c): level-triggered
 *     NOTE_NODATA registrations (the selector's), which take epoll's
 *     contract and so wait here as plain level-triggered items;
 *   - timer_fd, one timerfd armed at the earliest EVFILT_TIMER deadline
 *     (timers live in a heap, not one descriptor each), made by the first
 *     timer; timers fire without it (kevent() bounds its wait by the
 *     earliest deadline) when it cannot be made;
 *   - wake_fd, an eventfd that is readable while userspace has pending
 *     events (EVFILT_USER triggers, fired timers) or the queue is closed,
 *     made by the first registration that can queue one (a closed queue
 *     without one gets the process-wide, always readable closed_fd);
 *   - once the queue watches a signal: the process-wide signal eventfd
 *     and signalfd (edge-triggered, filter_signal.c);
 *   - one pidfd per EVFILT_PROC registration (filter_proc.c);
 *   - inotify_fd, one inotify instance for all EVFILT_VNODE registrations,
 *     created on the first one (filter_vnode.c).
 * Beside it, never waited on: shadow_fd, the identity set of lifetime.c,
 * spare_fd, an epoll descriptor reserved for the next sub-set rebuild.
 * (The event path's identity probes and READ counts of one batch may go
 * through one io_uring_enter of the process's ring: uring.c.)
 * No lock is held across epoll_wait.
 *
 * Code: kqueue.c is the core (queues, changes, the pending list, the wait
 * loop); lifetime.c is the rule that a registration lives exactly as long
 * as its descriptor, for every fd filter; each filter_X.c is one filter
 * behind struct filter_ops, found by the core in kq_filters[] only.
 * Filters call back into the core through the kq_* functions declared at
 * the end of this file, and never touch the core's descriptors.
 *
 * Locks, in the order they are taken: registry_lock (kqueue.c: the
 * descriptor -> queue table, the fork handlers) before a queue's lock
 * (kq->lock: everything in struct kq, every hook) before sig_lock
 * (filter_signal.c: the process-wide signal state) and rings_lock
 * (uring.c: the process's ring).  No lock is held
 * across epoll_wait, and none is taken inside the signal hook.
 */
#ifndef KQ_INTERNAL_H
#define KQ_INTERNAL_H

#include <assert.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/event.h>

#define KQ_SUB_SPAN 128  /* items per sub-set (lifetime.c) */
#define KQ_LINGER 16     /* items remembered per sub-set as maybe lingering */
#define KQ_SWEEP 4       /* registered numbers one sweep probes, at most */
#define KQ_SWEEP_CYCLE 4096 /* kevent() calls between two probes of a number,
                               while fewer than 32 * KQ_SWEEP are registered */
#define KQ_HOT_MAX 64    /* fd items waiting in the wait set itself (lifetime.c) */
#define KQ_SET_HOT (-1)  /* u.fd.set of such an item: not in a sub-set */
#define KQ_SET_PLAIN (-2) /* u.fd.set of a level NOTE_NODATA item, which waits
                              in the wait set itself from the start (lifetime.c) */

/* knote status bits */
#define KN_DISABLED  0x01u /* EV_DISABLE or dispatched: not reported */
#define KN_ACTIVE    0x02u /* userspace filter has an event (triggered, fired) */
#define KN_QUEUED    0x04u /* on the pending list */
#define KN_INEPOLL   0x08u /* fd registration present in its epoll set (armed,
                              or disarmed while disabled/dispatched) */
#define KN_LOWWAIT   0x10u /* WRITE with NOTE_LOWAT below its mark: on
                              kq->lowat_wait, re-polled by the wait loop */
#define KN_STALE     0x20u /* set by a modify or deliver hook: the registration
                              died with its descriptor; the core removes it
                              and keeps its udata (kqueue_py_take_dropped) */

/* Change flags that are actions, not state: never stored or reported.  As
 * FreeBSD's kqueue_register() does, every other flag given at registration
 * (EV_RECEIPT, EV_KEEPUDATA, EV_ONESHOT, ...) stays in delivered events;
 * EV_SYSFLAGS are the kernel's own (FreeBSD clears them from every change). */
#define KN_INPUT_ONLY (EV_ADD | EV_DELETE | EV_ENABLE | EV_DISABLE | EV_SYSFLAGS)

/* What kind of file an fd knote watches, learnt on first delivery. */
enum fd_kind {
    FDK_UNKNOWN = 0,
    FDK_SOCKET,        /* FIONREAD / SIOCOUTQ work */
    FDK_LISTEN,        /* listening TCP socket: data = accept queue length */
    FDK_LISTEN_OTHER,  /* other listener (AF_UNIX): data from sock_diag */
    FDK_FIFO,          /* pipe or fifo */
    FDK_REGULAR,       /* a file epoll refuses: regular file (READ ready while
                          offset != size, woken by inotify), or a directory or
                          device without poll (always ready); WRITE always */
    FDK_OTHER,         /* FIONREAD works (tty, ...) */
    FDK_NODATA,        /* readiness only (eventfd, epoll, ...) */
    FDK_QUEUE,         /* a kqueue's descriptor: data = its pending events */
};

struct kq;
struct knote;

/*
 * One filter's behaviour.  The core (kqueue.c) knows filters only through
 * these hooks, found in one table indexed by epoll tag (kq_filters[] in
 * kqueue.c): a change finds its filter there by ops->filter, a ready epoll
 * item by the tag in its epoll_data.
 *
 * Error convention, everywhere inside the backend: 0 (or a count) for
 * success, a negative errno for failure (as libuv does); errno itself is
 * set only at the public entry points (kqueue(), kevent(), ...).  A hook
 * that finds its registration dead (its descriptor closed, or the number
 * reused) sets KN_STALE; the core then removes it.
 *
 * Every hook runs with the queue lock held unless it says otherwise.
 * Hooks a filter does not need are NULL.
 */
#define FILT_IDENT_FD     0x1u  /* ident is a descriptor: one that is not
                                   open (or > INT_MAX) is EBADF, checked
                                   before any registration is looked up */
#define FILT_NEEDS_WAKE   0x2u  /* reports from the pending list: a new
                                   registration makes the wake eventfd, and
                                   fails with its error if it cannot */
#define FILT_WANTS_WAKE   0x4u  /* as FILT_NEEDS_WAKE, but works without */
#define FILT_READY_BATCH  0x8u  /* ready() runs once per epoll batch, after
                                   the items of the other filters */
#define FILT_QUEUE_FD     0x10u /* ident may be a queue's descriptor (FreeBSD's
                                   kqueue_kqfilter: READ only); other
                                   FILT_IDENT_FD filters get EINVAL for one */

struct filter_ops {
    int16_t filter;             /* EVFILT_* */
    uint32_t tag;               /* its entry in kq_filters[] (TAG_*) */
    unsigned flags;             /* FILT_* */

    /* Per-queue state: set up in a new queue (which cannot fail: make
     * things on first use), close its descriptors (also in a fork()
     * child, where nothing may be freed), free the rest. */
    void (*init)(struct kq *kq);
    void (*close_fds)(struct kq *kq);
    void (*destroy)(struct kq *kq);
    /* Process-wide state in a fork() child (no lock: one thread). */
    void (*atfork_child)(void);

    /* Storage, for filters that index their knotes themselves (READ and
     * WRITE: by descriptor).  NULL: the core's hash on (ident, filter).
     * reserve() makes room before attach, so that insert() cannot fail. */
    struct knote *(*find)(struct kq *kq, uintptr_t ident);
    int (*reserve)(struct kq *kq, uintptr_t ident);
    void (*insert)(struct kq *kq, struct knote *kn);
    void (*unlink)(struct kq *kq, struct knote *kn);

    /* A new registration: validate the change and start watching. */
    int (*attach)(struct kq *kq, struct knote *kn, const struct kevent *kev);
    /* A change on an existing registration, after the generic part
     * (KN_DISABLED from EV_ENABLE/EV_DISABLE, udata) was applied. */
    int (*modify)(struct kq *kq, struct knote *kn, const struct kevent *kev);
    /* EV_DELETE: the error BSD gives for it (the registration goes either
     * way, through detach).  NULL: 0. */
    int (*remove)(struct kq *kq, struct knote *kn);
    /* Stop watching (EV_DELETE, EV_ONESHOT delivery, stale, queue freed). */
    void (*detach)(struct kq *kq, struct knote *kn);
    /* A knote on the pending list: fill *out.  Returns 1 for an event, 0
     * when it turned out not to be ready (or KN_STALE). */
    int (*deliver)(struct kq *kq, struct knote *kn, struct kevent *out);

    /* An epoll item tagged for this filter is ready (data and revents as
     * epoll returned them).  Writes at most room events to out, returns
     * how many; events for the pending list go there (kq_enqueue). */
    int (*ready)(struct kq *kq, uint64_t data, uint32_t revents, struct kevent *out, int room);
    /* After changes and after each batch: bring the filter's descriptors
     * in line with its state (the timerfd to the earliest deadline). */
    int (*rearm)(struct kq *kq);

    /* Work before a wait, asked only of filters that set their bit in
     * kq->attn (kq_attention), so that a queue without such state pays
     * one load.  busy(), unlocked and a hint only: does the filter have
     * events that no epoll item will announce?  Then, locked, collect()
     * puts them on the pending list. */
    int (*busy)(const struct kq *kq);
    void (*collect)(struct kq *kq, int64_t now);
    /* Before the items of an epoll batch go to ready() one by one: work
     * for all of them at once (the fd filters' batched probes). */
    void (*prefetch)(struct kq *kq, const struct epoll_event *ebuf, int r);

    /* Looks driven by time.  polled(), unlocked and a hint only: must the
     * wait end early to look again?  Then, locked, next_look() does what is
     * due and returns when (CLOCK_MONOTONIC ns) to look next, or -1; after
     * the wait, collect() (if any) runs while polled() says so. */
    int (*polled)(const struct kq *kq);
    int64_t (*next_look)(struct kq *kq, int64_t now);

};

struct knote {
    struct kevent kev;          /* ident, filter, stored flags, sfflags, sdata, udata */
    unsigned status;            /* KN_* */
    uint64_t scan_id;           /* the kevent() call that last reported it */
    const struct filter_ops *ops;
    struct knote *hash_next;    /* chain in kq->hash (non-fd filters) */
    struct knote *q_next;       /* pending list */
    struct knote *q_prev;
    union {
        struct {
            enum fd_kind kind;
            int pipe_size;
            uint32_t gen;       /* generation in epoll_data (24 bits used) */
            int sock;           /* FDS_*: what a WRITE probe for local shutdown uses */
            int wd;             /* FDK_REGULAR: inotify watch (files_watch), else -1 */
            uint32_t mode;      /* FDK_REGULAR: its type (S_IFREG, S_IFDIR, S_IFCHR) */
            uint32_t armed;     /* the events its epoll item was last given */
            int set;            /* which sub-set holds the item, or KQ_SET_HOT:
                                   the wait set itself (lifetime.c) */
            int inq_ring;       /* -1: the ring refuses its SIOCINQ (uring.c) */
            struct knote *next; /* kq->files or kq->lowat_wait chain */
        } fd;
        struct {
            int64_t deadline;   /* CLOCK_MONOTONIC ns; <0 when not running */
            int64_t period;     /* ns; 0 = fires once */
            int64_t count;      /* expirations not yet reported */
            size_t heap_index;  /* position in kq->timers, or SIZE_MAX */
        } timer;
        struct {
            uint32_t fflags;    /* low 24 bits, after NOTE_FF* controls */
        } user;
        struct {
            uint64_t seen;      /* process-wide count when last looked at */
            uint64_t count;     /* deliveries not yet reported */
            struct knote *next; /* kq->signals list */
        } sig;
        struct {
            int pidfd;
            uint32_t gen;       /* generation in epoll_data (24 bits used) */
        } proc;
        struct {
            int wd;             /* inotify watch, -1 once the kernel dropped it */
            uint32_t fired;     /* NOTE_* seen since the last report */
            uint64_t dev, ino;  /* the file the registration watches */
            int64_t size;       /* st_size when last looked at */
            uint64_t nlink;     /* st_nlink when last looked at */
            uint64_t stamp;     /* mode, owner, mtime when last looked at */
            uint32_t qseq;      /* the inotify event whose link drop queued it */
            uint32_t isdir;     /* it watches a directory */
            struct knote *next; /* chain in kq->vn_buckets */
        } vnode;
    } u;
};

/* What a registered descriptor number names (lifetime.c). */
enum { KQ_ID_NONE = 0, KQ_ID_EPOLL, KQ_ID_STAT, KQ_ID_ITEM };
struct kq_fdid {
    uint32_t users;         /* registrations on the number (READ, WRITE, VNODE) */
    uint32_t kind;          /* KQ_ID_*: an item in shadow_fd, (dev, ino, mode), or
                               (ITEM) its one registration's own epoll item */
    uint32_t mode;
    uint32_t batch;         /* kq->life_batch when the results below are its */
    int32_t probe;          /* that batch's shadow probe result (KQ_UOP_NOT_RUN: none) */
    int32_t inq;            /* that batch's READ count, or -1 */
    uint64_t dev, ino;
};

/* One nested epoll set of fd registrations (lifetime.c). */
struct kq_subset {
    int fd;                 /* -1 until its first item */
    int count;              /* registrations whose item is in it */
    int nlinger;            /* items a failed EPOLL_CTL_DEL may have left */
    int overflow;           /* more than KQ_LINGER: any unknown event rebuilds */
    int rebuild;            /* a lingering item came back: rebuild at rearm */
    uint64_t linger[KQ_LINGER];   /* their epoll_data */
};

struct kq {
    int refs;               /* atomic: registry + threads inside kevent();
                               first: kq_alloc() clears all that follows */
    int fd;                 /* the user's descriptor (outer epoll) */
    uint64_t id;            /* unique in the process: see kqueue_py_queue_id() */
    int waitfd;             /* a duplicate of fd that kevent() waits in;
                               outlives kqueue_close, never replaced */
    int wake_fd;            /* eventfd: pending events or closed */
    int timer_fd;           /* timerfd at the earliest timer deadline */
    pthread_mutex_t lock;
    struct kq *free_next;   /* on kq_free_list (kqueue.c) once destroyed */
    uint32_t attn;          /* atomic: bit (1 << tag) set by a filter while its
                               busy()/polled() may say yes (kq_attention) */
    int closed;
    int wake_signalled;     /* wake_fd currently readable */
    int64_t timer_armed;    /* deadline timer_fd is armed for, -1 = disarmed */
    uint32_t fd_gen;        /* last generation given to an fd registration */

    /* EVFILT_READ / EVFILT_WRITE knotes, indexed by fd. */
    struct knote **rd;
    struct knote **wr;
    int fd_cap;

    /* Other filters: chained hash keyed by (ident, filter). */
    struct knote **hash;
    size_t hash_cap;        /* power of two */
    size_t hash_count;

    /* Pending list: knotes with a userspace event to report. */
    struct knote *q_head;
    struct knote *q_tail;

    /* Timer min-heap on deadline. */
    struct knote **timers;
    size_t ntimers;
    size_t timers_cap;

    /* EVFILT_SIGNAL knotes (chained by u.sig.next). */
    struct knote *signals;

    /* Files epoll refuses (READ and WRITE knotes, chained by u.fd.next) and
     * the inotify instance that wakes their knotes when a file changes
     * (a regular file's READ; with EV_CLEAR also its WRITE, and a
     * directory's), created on the first registration that needs it. */
    struct knote *files;
    int files_ino_fd;           /* -1 until needed */

    /* WRITE knotes with NOTE_LOWAT below their mark (chained by u.fd.next):
     * no wakeup comes when free space grows past the mark, so the wait
     * loop re-polls them every KQ_LOWAT_POLL_NS. */
    struct knote *lowat_wait;
    int64_t lowat_next;         /* CLOCK_MONOTONIC ns of the next re-poll */

    /* lifetime.c: the identity of what each registered number names, and
     * the sub-sets of the fd registrations ([0] READ, [1] WRITE). */
    struct kq_fdid *ids;        /* by descriptor number */
    int ids_cap;
    int shadow_fd;              /* never waited on: one item per registered number */
    int spare_fd;               /* an epoll set kept for the next rebuild */
    struct kq_subset *subs[2];
    int nsubs[2];
    int sets_due;               /* sub-sets marked for a rebuild */
    int nhot;                   /* fd items in the wait set itself (KQ_SET_HOT) */
    uint32_t batch_rot;         /* where process_batch starts (fairness) */
    int nwatched;               /* descriptors in the wait set (kq_watch_*) */
    int direct_fd;              /* atomic: the set a poll asks directly, or -1 */
    int sweep_next;             /* the number the sweep looks at next */
    int sweep_credit;           /* probes owed, in 1/(KQ_SWEEP_CYCLE/KQ_SWEEP_EVERY) */
    int ids_numbers;            /* numbers with registrations (ids[].users > 0) */
    uint32_t life_batch;        /* the batch whose probes ran together, or 0 */
    uint32_t life_batch_seq;    /* the last such batch's number */
    uint32_t sweep_tick;        /* atomic: kevent() calls, for the sweep */

    /* udata of registrations the backend removed on its own: their
     * descriptor was closed or now names another file, or their process
     * exited unwatched (PROC without NOTE_EXIT) (kqueue_py_take_dropped). */
    uint64_t *dropped;
    int ndropped;
    int dropped_cap;

    /* EVFILT_VNODE: one inotify instance, knotes hashed by watch. */
    int inotify_fd;             /* -1 until the first VNODE registration */
    struct knote **vn_buckets;  /* KQ_VN_BUCKETS chains on wd */
    uint32_t vn_seq;            /* inotify events dispatched (filter_vnode.c) */
};

/* epoll_data: bits 56-63 are the tag, the index in kq_filters[] of the
 * filter whose ready() handles the item; for fd knotes bits 32-55 carry the
 * registration's generation and bits 0-31 the fd, so an event from an
 * older registration of the same number is recognised.  A filter has one
 * tag of its own (ops->tag) and may own more.  Where order matters, hooks
 * run in ascending tag order: signals are collected before timers, and the
 * batched ready() hooks run vnodes, then timers, then the WRITE set. */
#define TAG_READ    1u   /* an EVFILT_READ knote (inside a READ sub-set) */
#define TAG_WRITE   2u   /* an EVFILT_WRITE knote (inside a WRITE sub-set) */
#define TAG_SIGNAL  3u   /* the process-wide signal eventfd and signalfd */
#define TAG_PROC    4u   /* a pidfd: bits 0-31 the pid, 32-55 the generation */
#define TAG_VNODE   5u   /* inotify_fd */
#define TAG_TIMER   6u   /* timer_fd fired */
#define TAG_WRITES  7u   /* a WRITE sub-set has ready items (bits 0-31: its index) */
#define TAG_FILES   8u   /* files_ino_fd: a registered regular file changed (EVFILT_READ's) */
#define TAG_USER    9u   /* EVFILT_USER (no epoll item) */
#define TAG_WAKE    10u  /* wake_fd, or closed_fd: the core's own */
#define TAG_READS   11u  /* a READ sub-set has ready items (bits 0-31: its index) */
#define TAG_RHOT    12u  /* an EVFILT_READ knote waiting in the wait set itself */
#define TAG_WHOT    13u  /* an EVFILT_WRITE knote waiting in the wait set itself */
#define TAG_COUNT   14u
#define EP_DATA(tag, gen, fd) (((uint64_t)(tag) << 56) | ((uint64_t)((gen) & 0xffffff) << 32) | \
                               (uint32_t)(fd))
#define EP_TAG_OF(u64)  ((uint32_t)((u64) >> 56))
#define EP_GEN_OF(u64)  ((uint32_t)((u64) >> 32) & 0xffffff)
#define EP_FD_OF(u64)   ((int)(uint32_t)(u64))

/* kqueue.c: what the core offers filters.  Lock held. */
#define KQ_DROPPED_MAX 65536    /* udata values kept for kqueue_py_take_dropped */
int kq_watch_internal(struct kq *kq, int fd, uint32_t events, uint64_t data);  /* 0 or -errno */
int kq_watch_shared(struct kq *kq, int fd, uint32_t events, uint64_t data);    /* fd not closed */
int kq_unwatch(struct kq *kq, int fd);                  /* out of the wait set: 0 or -errno */
int kq_replace_watched(struct kq *kq, int old, int fresh, uint32_t events, uint64_t data);
int kq_watch_item(struct kq *kq, int fd, struct epoll_event *ev);     /* a user fd: 0 or -errno */
int kq_rewatch_item(struct kq *kq, int fd, struct epoll_event *ev);   /* EPOLL_CTL_MOD */
int kq_unwatch_item(struct kq *kq, int fd);     /* gone from the count whatever DEL says */
int kq_probe_item(struct kq *kq, int fd);       /* EPOLL_CTL_ADD probe: -EEXIST if there */
int kq_epoll_probe(int epfd, int fd);           /* the same probe into any epoll set */
uint32_t kq_next_gen(struct kq *kq);                    /* a registration's generation */
int kq_new_descriptor(struct kq *kq, int fd);           /* fd just made: forget its number */
int kq_wake_fd_ensure(struct kq *kq);                   /* 0 or -errno */
void kq_enqueue(struct kq *kq, struct knote *kn);
void kq_dequeue(struct kq *kq, struct knote *kn);
struct knote *kq_pending_before(struct kq *kq, struct knote *kn);   /* NULL: the last */
void kq_knote_drop(struct kq *kq, struct knote *kn);
void kq_knote_stale(struct kq *kq, struct knote *kn);   /* keep udata, then drop */
void kq_note_dropped(struct kq *kq, void *udata);
void kq_forget_number(struct kq *kq, int fd);          /* every fd registration on it dies */
void kq_attention(struct kq *kq, uint32_t tag, int on); /* busy()/polled() may say yes */
struct knote *kq_knote_find(struct kq *kq, uintptr_t ident, int16_t filter);
void kq_knote_foreach(struct kq *kq, int16_t filter, void (*fn)(struct kq *, struct knote *));
void kq_after_delivery(struct kq *kq, struct knote *kn);   /* EV_ONESHOT, EV_DISPATCH */
/* filter_vnode.c: read every pending event of an inotify instance (VNODE's,
 * or the regular files' of fd_files.c); each goes to on_event, and a lost
 * batch (IN_Q_OVERFLOW) to on_overflow, which must make every watched
 * registration look again. */
struct inotify_event;
void kq_inotify_drain(struct kq *kq, int fd,
                      void (*on_event)(struct kq *, const struct inotify_event *),
                      void (*on_overflow)(struct kq *));
int64_t kq_now(void);
intptr_t kq_queue_pending(int fd);  /* READ data on a queue's fd; -1: not one */
#define KQ_FOREVER (-1)         /* scan() deadlines: wait for ever ... */
#define KQ_POLL    0            /* ... or poll (long past, clock not read) */
#define KQ_EBUF_MAX 256         /* epoll events on the stack per epoll_wait */
struct epoll_event *kq_ebuf_get(struct epoll_event *stack, int *want);
void kq_ebuf_put(struct epoll_event *stack, struct epoll_event *buf);

/* The filters: one table entry each in kqueue.c (kq_filters[]). */
#define KQ_LOWAT_POLL_NS 1000000     /* re-poll of WRITE knotes below NOTE_LOWAT */
#define KQ_VN_BUCKETS 256
extern const struct filter_ops kq_read_ops;     /* filter_fd.c */
extern const struct filter_ops kq_write_ops;    /* filter_fd.c */
extern const struct filter_ops kq_signal_ops;   /* filter_signal.c */
extern const struct filter_ops kq_proc_ops;     /* filter_proc.c */
extern const struct filter_ops kq_vnode_ops;    /* filter_vnode.c */
extern const struct filter_ops kq_timer_ops;    /* filter_timer.c */
extern const struct filter_ops kq_user_ops;     /* filter_user.c */

/* lifetime.c: a registration lives exactly as long as its descriptor.
 * Lock held.  kind: 0 READ, 1 WRITE. */
int kq_life_claim(struct kq *kq, int fd, int item);       /* 0 or -errno */
int kq_life_identify(struct kq *kq, int fd);              /* epoll refused the item: 0 or -errno */
void kq_life_unclaim(struct kq *kq, int fd);
int kq_life_check(struct kq *kq, int fd);                 /* 0 live, -EBADF, -ENOENT */
int kq_life_verify(struct kq *kq, int fd);                /* check; dead: forget the number */
int kq_life_epollable(const struct kq *kq, int fd);       /* else known by fstat */
int kq_set_add(struct kq *kq, int kind, int fd, struct epoll_event *ev, int *set);
int kq_set_plain(struct kq *kq, int fd, struct epoll_event *ev);
int kq_set_mod(struct kq *kq, int kind, int set, int fd, struct epoll_event *ev);
int kq_set_del(struct kq *kq, int kind, int set, int fd, uint64_t data);
int kq_set_ready(struct kq *kq, int kind, uint64_t data, struct epoll_event *ebuf, int max);
int kq_set_promote(struct kq *kq, int kind, int set, int fd, struct epoll_event *ev,
                   uint64_t data);                      /* to KQ_SET_HOT: 0 or -errno */
void kq_set_orphan(struct kq *kq, int kind, int set, uint64_t data);
void kq_set_lingers(struct kq *kq, int kind, int set, uint64_t data);
int kq_sets_rearm(struct kq *kq);                       /* rebuilds due: 0 or -errno */
int kq_sets_sole(const struct kq *kq);                  /* the one READ sub-set, or -1 */
void kq_sweep(struct kq *kq);                           /* a few numbers probed */
#define KQ_SWEEP_EVERY 128      /* kevent() calls between two sweeps (a power of 2) */
/* The identity probes of one batch of events, run together (uring.c)
 * before the events are looked at one by one; kq_life_check() then uses
 * their results.  The fd's READ count may come with them. */
void kq_life_batch_begin(struct kq *kq);
void kq_life_batch_end(struct kq *kq);
int kq_life_batch_slot(struct kq *kq, int fd);            /* 1: probe it in this batch */
void kq_life_batch_probe(struct kq *kq, int fd, int32_t res);
void kq_life_batch_inq(struct kq *kq, int fd, int32_t res);
int kq_life_batch_take_inq(struct kq *kq, int fd, intptr_t *v);   /* 1 if there is one */
int kq_life_shadow(const struct kq *kq);
int32_t kq_life_probe_now(struct kq *kq, int fd);          /* the probe's 0 or -errno */
void kq_life_init(struct kq *kq);
void kq_life_close_fds(struct kq *kq);
void kq_life_destroy(struct kq *kq);

/* uring.c: the event path's system calls batched through the process's
 * io_uring.  Queue lock held, or none (kq_uring_enabled, process_init, the
 * fork handlers); the ring has its own lock, taken last. */
struct kq_ring;
enum { KQ_UOP_PROBE = 1, KQ_UOP_INQ };
#define KQ_UOP_NOT_RUN INT32_MIN    /* a result: the operation did not run */
struct kq_uop {
    int kind;               /* KQ_UOP_*: an EPOLL_CTL_ADD probe into epfd, SIOCINQ */
    int epfd;
    int fd;
};
int kq_uring_enabled(void);                 /* the process uses io_uring (decides) */
int kq_uring_inq_enabled(void);             /* ... and SIOCINQ through it */
void kq_uring_process_init(void);           /* with each kqueue(): decide, make the ring */
int kq_uring_run(struct kq *kq, const struct kq_uop *ops, int n, int32_t *res);
void kq_uring_atfork_prepare(void);         /* no lock: fork handlers */
void kq_uring_atfork_parent(void);
void kq_uring_atfork_child(void);

#endif /* KQ_INTERNAL_H */
