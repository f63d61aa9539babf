/*
 * Internal structures of the Linux kqueue backend.
 *
 * One queue is one epoll instance (the descriptor the user sees, and so
 * pollable like a real kqueue) holding one nested epoll set, waitfd, in
 * which kevent() waits and which can be rebuilt (kq_fd_rebuild) without
 * changing the user's file.  Inside waitfd sit:
 *   - every EVFILT_READ registration, directly (the hot path: one
 *     epoll_wait returns ready sockets);
 *   - wr_ep, a nested epoll set holding every EVFILT_WRITE registration.
 *     A file may sit in two epoll sets with independent EPOLLET /
 *     EPOLLONESHOT, so EV_CLEAR/EV_ONESHOT/EV_DISPATCH hold per filter;
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
 * No lock is held across epoll_wait.
 */
#ifndef KQ_INTERNAL_H
#define KQ_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/event.h>

/* knote status bits */
#define KN_DISABLED  0x01u /* EV_DISABLE or dispatched: not reported */
#define KN_ACTIVE    0x02u /* userspace filter has an event (triggered, fired) */
#define KN_QUEUED    0x04u /* on the pending list */
#define KN_INEPOLL   0x08u /* fd registration present in its epoll set (armed,
                              or disarmed while disabled/dispatched) */
#define KN_LOWWAIT   0x10u /* WRITE with NOTE_LOWAT below its mark: on
                              kq->lowat_wait, re-polled by the wait loop */

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
};

struct kq;
struct knote;

/* One filter's behaviour.  Every hook runs with the queue lock held and
 * returns 0 or an errno value. */
struct filter_ops {
    /* A new registration: validate the change and start watching. */
    int (*attach)(struct kq *kq, struct knote *kn, const struct kevent *kev);
    /* A change on an existing registration, after the generic part
     * (KN_DISABLED from EV_ENABLE/EV_DISABLE, udata) was applied.  A
     * negative errno means the registration is stale and must go. */
    int (*modify)(struct kq *kq, struct knote *kn, const struct kevent *kev);
    /* Stop watching (EV_DELETE, EV_ONESHOT delivery). */
    void (*detach)(struct kq *kq, struct knote *kn);
    /* Userspace filters: fill *out from an active knote.  Returns 1 when an
     * event was produced, 0 when the knote turned out not to be ready. */
    int (*deliver)(struct kq *kq, struct knote *kn, struct kevent *out);
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
            int wd;             /* regular-file READ: inotify watch, else -1 */
            uint64_t dev, ino;  /* FDK_REGULAR: the file registered ... */
            uint32_t mode;      /* ... and its type (S_IFREG, S_IFDIR, S_IFCHR) */
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
            struct knote *next; /* chain in kq->vn_buckets */
        } vnode;
    } u;
};

struct kq {
    int fd;                 /* the user's descriptor (outer epoll) */
    uint64_t id;            /* unique in the process: see kqueue_py_queue_id() */
    int waitfd;             /* the set nested in fd that kevent() waits in;
                               outlives kqueue_close */
    int wr_ep;              /* nested epoll for EVFILT_WRITE */
    int wake_fd;            /* eventfd: pending events or closed */
    int timer_fd;           /* timerfd at the earliest timer deadline */
    pthread_mutex_t lock;
    int refs;               /* atomic: registry + threads inside kevent() */
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

    /* Regular files (READ and WRITE knotes, chained by u.fd.next) and the
     * inotify instance that wakes their READ knotes when a file changes,
     * created on the first regular-file READ registration. */
    struct knote *files;
    int files_ino_fd;           /* -1 until needed */

    /* WRITE knotes with NOTE_LOWAT below their mark (chained by u.fd.next):
     * no wakeup comes when free space grows past the mark, so the wait
     * loop re-polls them every KQ_LOWAT_POLL_NS. */
    struct knote *lowat_wait;
    int64_t lowat_next;         /* CLOCK_MONOTONIC ns of the next re-poll */

    /* epoll_data of the last event that found no registration: when the
     * same one comes again, its item lingers and the set is rebuilt. */
    uint64_t orphan;

    /* udata of registrations the backend removed because their descriptor
     * was closed or now names another file (kqueue_py_take_dropped). */
    uint64_t *dropped;
    int ndropped;
    int dropped_cap;

    /* EVFILT_VNODE: one inotify instance, knotes hashed by watch. */
    int inotify_fd;             /* -1 until the first VNODE registration */
    struct knote **vn_buckets;  /* KQ_VN_BUCKETS chains on wd */
};

/* epoll_data: bits 56-63 say what a ready item is; for fd knotes bits
 * 32-55 carry the registration's generation and bits 0-31 the fd, so an
 * event from an older registration of the same number is recognised. */
#define TAG_READ    1u   /* an EVFILT_READ knote */
#define TAG_WRITE   2u   /* an EVFILT_WRITE knote (inside wr_ep) */
#define TAG_WRITES  3u   /* wr_ep has ready items */
#define TAG_TIMER   4u   /* timer_fd fired */
#define TAG_WAKE    5u   /* wake_fd */
#define TAG_SIGNAL  6u   /* the process-wide signal eventfd */
#define TAG_PROC    7u   /* a pidfd: bits 0-31 the pid, 32-55 the generation */
#define TAG_VNODE   8u   /* inotify_fd */
#define TAG_FILES   9u   /* files_ino_fd: a registered regular file changed */
#define EP_DATA(tag, gen, fd) (((uint64_t)(tag) << 56) | ((uint64_t)((gen) & 0xffffff) << 32) | \
                               (uint32_t)(fd))
#define EP_TAG_OF(u64)  ((uint32_t)((u64) >> 56))
#define EP_GEN_OF(u64)  ((uint32_t)((u64) >> 32) & 0xffffff)
#define EP_FD_OF(u64)   ((int)(uint32_t)(u64))

/* kqueue.c */
int kq_watch_internal(struct kq *kq, int fd, uint32_t events, uint64_t data);
void kq_fd_forget(struct kq *kq, int fd);
void kq_enqueue(struct kq *kq, struct knote *kn);
void kq_dequeue(struct kq *kq, struct knote *kn);
void kq_knote_drop(struct kq *kq, struct knote *kn);
struct knote *kq_knote_find(struct kq *kq, uintptr_t ident, int16_t filter);
int64_t kq_now(void);
int kq_wake_fd_ensure(struct kq *kq);   /* 0 or errno */

/* filter_fd.c */
#define KQ_LOWAT_POLL_NS 1000000     /* re-poll of WRITE knotes below NOTE_LOWAT */
#define KQ_DROPPED_MAX   65536       /* udata values kept for kqueue_py_take_dropped */
extern const struct filter_ops kq_read_ops;
extern const struct filter_ops kq_write_ops;
int kq_fd_event(struct kq *kq, struct knote *kn, uint32_t revents, struct kevent *out);
int kq_fd_unregister(struct kq *kq, struct knote *kn);
int kq_wr_ep_create(struct kq *kq);
void kq_fd_note_dropped(struct kq *kq, void *udata);
void kq_files_ready(struct kq *kq);
void kq_lowat_repoll(struct kq *kq, int64_t now);
void kq_fd_orphan(struct kq *kq, uint64_t data);

/* filter_timer.c */
int kq_timer_fd_create(struct kq *kq);
extern const struct filter_ops kq_timer_ops;
void kq_timers_expire(struct kq *kq, int64_t now);
int kq_timers_rearm(struct kq *kq);

/* filter_user.c */
extern const struct filter_ops kq_user_ops;

/* filter_signal.c */
extern const struct filter_ops kq_signal_ops;
void kq_signal_ready(struct kq *kq);
int kq_signal_scan(const struct kq *kq);
void kq_signal_atfork_child(void);

/* filter_proc.c */
extern const struct filter_ops kq_proc_ops;
void kq_proc_ready(struct kq *kq, uint64_t data);

/* filter_vnode.c */
#define KQ_VN_BUCKETS 256
extern const struct filter_ops kq_vnode_ops;
void kq_vnode_ready(struct kq *kq);

#endif /* KQ_INTERNAL_H */
