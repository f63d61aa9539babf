/*
 * kqueue(2) for Linux: queue lifecycle, change application and the
 * wait/scan loop.  Filters live in filter_*.c behind struct filter_ops.
 *
 * Contract: the FreeBSD kqueue(2) man page.  See kq_internal.h for the
 * shape of a queue.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kq_internal.h"

#define EBUF_MAX 256          /* epoll events on the stack per epoll_wait */
#define EBUF_HEAP_MAX 65536   /* most epoll events one call fetches */
#ifndef SYS_epoll_pwait2
#define SYS_epoll_pwait2 441   /* same number on every architecture */
#endif

/* ------------------------------------------------------------------ */
/* Registry: kqueue descriptor -> struct kq.                            */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kq **registry;
static int registry_cap;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void kq_destroy(struct kq *kq);
static int ep_add(int epfd, int fd, uint32_t events, uint64_t data);

static struct kq *kq_get(int fd)
{
    struct kq *kq = NULL;
    if (fd < 0)
        return NULL;
    pthread_mutex_lock(&registry_lock);
    if (fd < registry_cap && registry[fd] != NULL) {
        kq = registry[fd];
        __atomic_add_fetch(&kq->refs, 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&registry_lock);
    return kq;
}

static void kq_put(struct kq *kq)
{
    if (__atomic_sub_fetch(&kq->refs, 1, __ATOMIC_ACQ_REL) == 0)
        kq_destroy(kq);
}

/* One eventfd for the whole process, readable for ever (written once,
 * never read).  Closing a queue that has no wake_fd of its own adds it to
 * the queue's epoll set, which wakes every thread blocked in the queue
 * without a descriptor per queue.  Created with the first queue. */
static int closed_fd = -1;

static int closed_fd_ensure(void)
{
    if (__atomic_load_n(&closed_fd, __ATOMIC_ACQUIRE) >= 0)
        return 0;
    pthread_mutex_lock(&registry_lock);
    if (closed_fd < 0) {
        int fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0) {
            int err = errno;
            pthread_mutex_unlock(&registry_lock);
            return err;
        }
        __atomic_store_n(&closed_fd, fd, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

/* Mark a queue closed and wake everything blocked in it.  Lock held. */
static void kq_mark_closed(struct kq *kq)
{
    uint64_t one = 1;
    kq->closed = 1;
    if (kq->wake_signalled)
        return;
    kq->wake_signalled = 1;
    if (kq->wake_fd >= 0) {
        (void)!write(kq->wake_fd, &one, sizeof one);
    } else {
        /* Only EPOLL_CTL_ADD can fail here (ENOMEM, or ENOSPC at
         * fs.epoll.max_user_watches); then blocked threads wake at their
         * next event or timeout, and see the queue closed. */
        (void)ep_add(kq->waitfd, closed_fd, EPOLLIN, EP_DATA(TAG_WAKE, 0, 0));
    }
}

/* wake_fd: the eventfd readable while events wait on the pending list.
 * Created by the first registration that can put one there. */
int kq_wake_fd_ensure(struct kq *kq)
{
    if (kq->wake_fd >= 0)
        return 0;
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int err = kq_watch_internal(kq, fd, EPOLLIN, EP_DATA(TAG_WAKE, 0, 0));
    if (err != 0)
        return err;
    kq->wake_fd = fd;
    if (kq->wake_signalled) {
        /* Owed while there was no descriptor (timers fired without one):
         * make the new one match, so that wake_update() can clear it. */
        uint64_t one = 1;
        (void)!write(fd, &one, sizeof one);
    }
    return 0;
}

/* The queue's own descriptors (the user's one included, if still open). */
static void close_queue_fds(struct kq *kq)
{
    int *fds[] = { &kq->fd, &kq->waitfd, &kq->wake_fd, &kq->wr_ep, &kq->timer_fd,
                   &kq->inotify_fd, &kq->files_ino_fd };
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
}

/* Put an internal descriptor (nested set, timerfd, pidfd, ...) into the
 * queue's epoll set.  Returns 0, or an errno after closing fd.  Called
 * with fd < 0 straight from its failed creation, it returns that errno. */
int kq_watch_internal(struct kq *kq, int fd, uint32_t events, uint64_t data)
{
    if (fd < 0)
        return errno;
    kq_fd_forget(kq, fd);
    struct epoll_event ev = { .events = events, .data.u64 = data };
    if (epoll_ctl(kq->waitfd, EPOLL_CTL_ADD, fd, &ev) == 0)
        return 0;
    int err = errno;
    close(fd);
    return err;
}

/*
 * fork(): as on BSD, a child does not inherit queues.  The child closes
 * every queue descriptor it inherited; the memory is left alone because
 * another (now vanished) thread may have been changing it mid-fork.
 */
static void atfork_prepare(void) { pthread_mutex_lock(&registry_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&registry_lock); }
static void atfork_child(void)
{
    for (int i = 0; i < registry_cap; i++) {
        struct kq *kq = registry[i];
        if (kq == NULL)
            continue;
        registry[i] = NULL;
        close_queue_fds(kq);
        /* pidfds are close-on-exec; like the memory, they are left. */
    }
    pthread_mutex_unlock(&registry_lock);
    kq_signal_atfork_child();
}
static void atfork_install(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static int registry_insert(struct kq *kq)
{
    struct kq *stale = NULL;
    pthread_mutex_lock(&registry_lock);
    if (kq->fd >= registry_cap) {
        int cap = registry_cap ? registry_cap : 64;
        while (cap <= kq->fd)
            cap *= 2;
        struct kq **grown = realloc(registry, (size_t)cap * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&registry_lock);
            return ENOMEM;
        }
        memset(grown + registry_cap, 0, (size_t)(cap - registry_cap) * sizeof *grown);
        registry = grown;
        registry_cap = cap;
    }
    /* A queue still registered under this number was closed with plain
     * close() rather than kqueue_close(): retire it now. */
    stale = registry[kq->fd];
    registry[kq->fd] = kq;
    pthread_mutex_unlock(&registry_lock);
    if (stale != NULL) {
        pthread_mutex_lock(&stale->lock);
        stale->fd = -1;      /* the number is not ours any more */
        kq_mark_closed(stale);
        pthread_mutex_unlock(&stale->lock);
        kq_put(stale);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Queue lifecycle.                                                    */

static int ep_add(int epfd, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev = { .events = events, .data.u64 = data };
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

int kqueue(void)
{
    pthread_once(&atfork_once, atfork_install);

    struct kq *kq = calloc(1, sizeof *kq);
    if (kq == NULL) {
        errno = ENOMEM;
        return -1;
    }
    kq->fd = kq->waitfd = kq->wake_fd = kq->wr_ep = kq->timer_fd = kq->inotify_fd = -1;
    kq->files_ino_fd = -1;
    kq->timer_armed = -1;
    kq->refs = 1;  /* the registry's reference */
    static uint64_t last_id;
    kq->id = __atomic_add_fetch(&last_id, 1, __ATOMIC_RELAXED);
    pthread_mutex_init(&kq->lock, NULL);

    int err;
    if ((err = closed_fd_ensure()) != 0) {
        errno = err;
        goto fail;
    }
    /* Two descriptors: the user's and its dup.  wake_fd, timer_fd, wr_ep
     * and inotify_fd come with the first registration that needs them
     * (see queue_resources_for). */
    kq->fd = epoll_create1(EPOLL_CLOEXEC);
    if (kq->fd < 0)
        goto fail;
    /* The set kevent() waits in, nested in the user's descriptor: the hot
     * path waits in it directly, and it can be rebuilt (kq_fd_rebuild)
     * without changing the file the user's descriptor names. */
    kq->waitfd = epoll_create1(EPOLL_CLOEXEC);
    if (kq->waitfd < 0)
        goto fail;
    if (ep_add(kq->fd, kq->waitfd, EPOLLIN, 0) < 0)
        goto fail;
    if ((err = registry_insert(kq)) != 0) {
        errno = err;
        goto fail;
    }
    return kq->fd;

fail:
    err = errno;
    kq_destroy(kq);
    errno = err;
    return -1;
}

static void kq_destroy(struct kq *kq)
{
    for (int fd = 0; fd < kq->fd_cap; fd++) {
        free(kq->rd[fd]);
        free(kq->wr[fd]);
    }
    for (size_t i = 0; i < kq->hash_cap; i++) {
        struct knote *kn = kq->hash[i];
        while (kn != NULL) {
            struct knote *next = kn->hash_next;
            /* Release what the filter holds (pidfds, signal hooks). */
            kn->ops->detach(kq, kn);
            free(kn);
            kn = next;
        }
    }
    free(kq->rd);
    free(kq->wr);
    free(kq->hash);
    free(kq->timers);
    free(kq->vn_buckets);
    free(kq->dropped);
    close_queue_fds(kq);
    pthread_mutex_destroy(&kq->lock);
    free(kq);
}

uint64_t kqueue_py_queue_id(int fd)
{
    uint64_t id = 0;
    pthread_mutex_lock(&registry_lock);
    if (fd >= 0 && fd < registry_cap && registry[fd] != NULL)
        id = registry[fd]->id;
    pthread_mutex_unlock(&registry_lock);
    return id;
}

int kqueue_py_take_dropped(int kqfd, uint64_t *udata, int cap)
{
    if (cap < 0) {
        errno = EINVAL;
        return -1;
    }
    if (cap > 0 && udata == NULL) {
        errno = EFAULT;
        return -1;
    }
    struct kq *kq = kq_get(kqfd);
    if (kq == NULL) {
        errno = EBADF;
        return -1;
    }
    pthread_mutex_lock(&kq->lock);
    int n = kq->ndropped < cap ? kq->ndropped : cap;
    if (n > 0) {
        memcpy(udata, kq->dropped, (size_t)n * sizeof *udata);
        memmove(kq->dropped, kq->dropped + n, (size_t)(kq->ndropped - n) * sizeof *udata);
        kq->ndropped -= n;
    }
    pthread_mutex_unlock(&kq->lock);
    kq_put(kq);
    return n;
}

int kqueue_close(int fd)
{
    struct kq *kq = NULL;
    pthread_mutex_lock(&registry_lock);
    if (fd >= 0 && fd < registry_cap) {
        kq = registry[fd];
        registry[fd] = NULL;
    }
    pthread_mutex_unlock(&registry_lock);
    if (kq == NULL) {
        errno = EBADF;
        return -1;
    }
    pthread_mutex_lock(&kq->lock);
    kq_mark_closed(kq);
    /* Free the number now; threads still inside kevent() use waitfd, the
     * set nested in it, which lives until they leave. */
    close(kq->fd);
    kq->fd = -1;
    pthread_mutex_unlock(&kq->lock);
    kq_put(kq);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Knote lookup and storage.                                           */

/* Filters whose knotes live in the per-fd tables (READ, WRITE). */
static int is_fd_filter(int16_t filter)
{
    return filter == EVFILT_READ || filter == EVFILT_WRITE;
}

/* Filters whose ident is a descriptor: as on BSD, a change naming one that
 * is not open fails with EBADF before any registration is looked up. */
static int ident_is_fd(int16_t filter)
{
    return is_fd_filter(filter) || filter == EVFILT_VNODE;
}

static const struct filter_ops *filter_lookup(int16_t filter)
{
    switch (filter) {
    case EVFILT_READ:   return &kq_read_ops;
    case EVFILT_WRITE:  return &kq_write_ops;
    case EVFILT_TIMER:  return &kq_timer_ops;
    case EVFILT_USER:   return &kq_user_ops;
    case EVFILT_SIGNAL: return &kq_signal_ops;
    case EVFILT_PROC:   return &kq_proc_ops;
    case EVFILT_VNODE:  return &kq_vnode_ops;
    default:            return NULL;
    }
}

/* Bucket of (ident, filter): Fibonacci hashing, the bits above 32 of the
 * ident times 2^64/phi.  That spreads counters evenly (consecutive idents
 * never share a bucket), but a product carries bits only upwards, so the
 * ident's high half is first folded onto its low half: idents that differ
 * only in bits 32-63 (pointers, tagged counters) spread as well as small
 * ones, instead of sharing one bucket. */
static size_t hash_slot(const struct kq *kq, uintptr_t ident, int16_t filter)
{
    uint64_t x = (uint64_t)ident;
    x ^= (x >> 32) ^ ((uint64_t)(uint16_t)filter << 16);
    return (size_t)((x * 0x9E3779B97F4A7C15ULL) >> 32) & (kq->hash_cap - 1);
}

static struct knote *knote_find(struct kq *kq, uintptr_t ident, int16_t filter)
{
    if (is_fd_filter(filter)) {
        if (ident >= (uintptr_t)kq->fd_cap)
            return NULL;
        return filter == EVFILT_READ ? kq->rd[ident] : kq->wr[ident];
    }
    if (kq->hash_cap == 0)
        return NULL;
    for (struct knote *kn = kq->hash[hash_slot(kq, ident, filter)]; kn; kn = kn->hash_next)
        if (kn->kev.ident == ident && kn->kev.filter == filter)
            return kn;
    return NULL;
}

struct knote *kq_knote_find(struct kq *kq, uintptr_t ident, int16_t filter)
{
    return knote_find(kq, ident, filter);
}

static int hash_grow(struct kq *kq)
{
    size_t cap = kq->hash_cap ? kq->hash_cap * 2 : 64;
    struct knote **table = calloc(cap, sizeof *table);
    if (table == NULL)
        return ENOMEM;
    struct knote **old = kq->hash;
    size_t old_cap = kq->hash_cap;
    kq->hash = table;
    kq->hash_cap = cap;
    for (size_t i = 0; i < old_cap; i++) {
        struct knote *kn = old[i];
        while (kn != NULL) {
            struct knote *next = kn->hash_next;
            size_t s = hash_slot(kq, kn->kev.ident, kn->kev.filter);
            kn->hash_next = table[s];
            table[s] = kn;
            kn = next;
        }
    }
    free(old);
    return 0;
}

static int fd_table_grow(struct kq *kq, int fd)
{
    int cap = kq->fd_cap ? kq->fd_cap : 64;
    while (cap <= fd)
        cap = cap > INT_MAX / 2 ? INT_MAX : cap * 2;
    struct knote **rd = realloc(kq->rd, (size_t)cap * sizeof *rd);
    if (rd == NULL)
        return ENOMEM;
    kq->rd = rd;
    struct knote **wr = realloc(kq->wr, (size_t)cap * sizeof *wr);
    if (wr == NULL)
        return ENOMEM;
    kq->wr = wr;
    memset(rd + kq->fd_cap, 0, (size_t)(cap - kq->fd_cap) * sizeof *rd);
    memset(wr + kq->fd_cap, 0, (size_t)(cap - kq->fd_cap) * sizeof *wr);
    kq->fd_cap = cap;
    return 0;
}

/* Make room for kn before attach, so that insertion cannot fail after. */
static int knote_reserve(struct kq *kq, const struct kevent *kev)
{
    if (is_fd_filter(kev->filter)) {
        if ((int)kev->ident < kq->fd_cap)
            return 0;
        /* Only an open descriptor grows the table (open ones are bounded by
         * RLIMIT_NOFILE; a huge closed number must not allocate). */
        if (fcntl((int)kev->ident, F_GETFD) < 0)
            return EBADF;
        return fd_table_grow(kq, (int)kev->ident);
    }
    if (kq->hash_count >= kq->hash_cap)
        return hash_grow(kq);
    return 0;
}

static void knote_insert(struct kq *kq, struct knote *kn)
{
    if (is_fd_filter(kn->kev.filter)) {
        struct knote **slot = kn->kev.filter == EVFILT_READ ? kq->rd : kq->wr;
        slot[kn->kev.ident] = kn;
        return;
    }
    size_t s = hash_slot(kq, kn->kev.ident, kn->kev.filter);
    kn->hash_next = kq->hash[s];
    kq->hash[s] = kn;
    kq->hash_count++;
}

static void knote_unlink(struct kq *kq, struct knote *kn)
{
    if (is_fd_filter(kn->kev.filter)) {
        struct knote **slot = kn->kev.filter == EVFILT_READ ? kq->rd : kq->wr;
        slot[kn->kev.ident] = NULL;
        return;
    }
    struct knote **pp = &kq->hash[hash_slot(kq, kn->kev.ident, kn->kev.filter)];
    while (*pp != kn)
        pp = &(*pp)->hash_next;
    *pp = kn->hash_next;
    kq->hash_count--;
}

/* An internal descriptor is about to join the queue's epoll set under the
 * number fd.  A READ or WRITE registration still recorded under that
 * number was made on a file since closed (the kernel just handed the
 * number out again), so it is stale: drop it now, before an epoll_ctl()
 * confirming it could reach the internal item.  Lock held (or the queue
 * not yet shared). */
void kq_fd_forget(struct kq *kq, int fd)
{
    if (fd < 0 || fd >= kq->fd_cap)
        return;
    struct knote *stale[2] = { kq->rd[fd], kq->wr[fd] };
    for (int i = 0; i < 2; i++) {
        if (stale[i] == NULL)
            continue;
        stale[i]->status &= ~KN_INEPOLL;     /* no epoll_ctl() on the number */
        kq_fd_note_dropped(kq, stale[i]->kev.udata);
        kq_knote_drop(kq, stale[i]);
    }
}

/* Detach from the filter, forget and free.  Lock held. */
void kq_knote_drop(struct kq *kq, struct knote *kn)
{
    kn->ops->detach(kq, kn);
    kq_dequeue(kq, kn);
    knote_unlink(kq, kn);
    free(kn);
}

/* ------------------------------------------------------------------ */
/* Pending list (userspace events) and the wake descriptor.            */

void kq_enqueue(struct kq *kq, struct knote *kn)
{
    if (kn->status & KN_QUEUED)
        return;
    /* The registration made wake_fd already (queue_resources_for,
     * fd_pending_check); this only guards a filter that queues later. */
    if (kq->wake_fd < 0)
        (void)kq_wake_fd_ensure(kq);
    kn->status |= KN_QUEUED;
    kn->q_next = NULL;
    kn->q_prev = kq->q_tail;
    if (kq->q_tail)
        kq->q_tail->q_next = kn;
    else
        __atomic_store_n(&kq->q_head, kn, __ATOMIC_RELAXED);   /* scan() peeks unlocked */
    kq->q_tail = kn;
}

void kq_dequeue(struct kq *kq, struct knote *kn)
{
    if (!(kn->status & KN_QUEUED))
        return;
    kn->status &= ~KN_QUEUED;
    if (kn->q_prev)
        kn->q_prev->q_next = kn->q_next;
    else
        __atomic_store_n(&kq->q_head, kn->q_next, __ATOMIC_RELAXED);   /* scan() peeks unlocked */
    if (kn->q_next)
        kn->q_next->q_prev = kn->q_prev;
    else
        kq->q_tail = kn->q_prev;
    kn->q_next = kn->q_prev = NULL;
}

/* Queue or unqueue a userspace knote after its state changed. */
static void knote_requeue(struct kq *kq, struct knote *kn)
{
    if ((kn->status & (KN_ACTIVE | KN_DISABLED)) == KN_ACTIVE)
        kq_enqueue(kq, kn);
    else
        kq_dequeue(kq, kn);
}

/*
 * Keep wake_fd readable exactly while something is pending (or the queue is
 * closed), so the queue descriptor polls readable and blocked waiters wake.
 * Lock held.  Returns 1 when the caller owes a wake_signal() after it has
 * unlocked: a waiter woken while we still hold the lock would only block on
 * it and need a second wake-up.
 */
static int wake_update(struct kq *kq)
{
    int want = kq->q_head != NULL || kq->closed;
    if (want == kq->wake_signalled)
        return 0;
    kq->wake_signalled = want;
    if (want)
        return 1;
    if (kq->wake_fd < 0)
        return 0;
    int saved = errno;
    uint64_t v;
    if (read(kq->wake_fd, &v, sizeof v) < 0 && errno == EAGAIN)
        kq->wake_signalled = 1;   /* an owed write has not landed yet: clear it next time */
    errno = saved;
    return 0;
}

static void wake_signal(struct kq *kq)
{
    int saved = errno;
    uint64_t one = 1;
    /* wake_fd exists whenever the pending list can be non-empty; a closed
     * queue was woken by kq_mark_closed. */
    int fd = __atomic_load_n(&kq->wake_fd, __ATOMIC_RELAXED);
    if (fd >= 0)
        (void)!write(fd, &one, sizeof one);
    errno = saved;
}

int64_t kq_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------------ */
/* Changes.                                                            */


/*
 * The queue's own descriptors a new registration needs, made on first
 * use so that a queue holds only what its registrations use: wake_fd for
 * filters reporting from the pending list, timer_fd for timers, wr_ep for
 * EVFILT_WRITE (inotify_fd is the vnode filter's own business).  A
 * descriptor change first checks that the user's descriptor is open: a
 * new internal descriptor must never take the number being registered.
 * Returns 0 or an errno (EMFILE, ...), reported for this change alone.
 */
static int queue_resources_for(struct kq *kq, const struct kevent *kev)
{
    int need_wake = 0, need_timer = 0, need_writes = 0;
    switch (kev->filter) {
    case EVFILT_READ:   return 0;
    case EVFILT_WRITE:  need_writes = kq->wr_ep < 0; break;
    case EVFILT_TIMER:  need_timer = kq->timer_fd < 0; need_wake = kq->wake_fd < 0; break;
    default:            need_wake = kq->wake_fd < 0; break;
    }
    if (!(need_wake || need_timer || need_writes))
        return 0;
    if (ident_is_fd(kev->filter) && fcntl((int)kev->ident, F_GETFD) < 0)
        return EBADF;
    if (kev->filter == EVFILT_TIMER) {
        /* A timer needs no descriptor to fire (as on FreeBSD): without a
         * timerfd, kevent() bounds its wait by the earliest deadline and
         * expires timers itself (scan()).  Both are tried again by every
         * later TIMER registration; what is missing meanwhile is only the
         * queue descriptor polling readable for a timer, and the wake-up
         * of a thread already blocked when another thread adds a timer. */
        if (need_wake)
            (void)kq_wake_fd_ensure(kq);
        if (need_timer)
            (void)kq_timer_fd_create(kq);
        return 0;
    }
    int err = 0;
    if (need_wake)
        err = kq_wake_fd_ensure(kq);
    if (err == 0 && need_writes)
        err = kq_wr_ep_create(kq);
    return err;
}

/* A READ or WRITE registration on a file epoll refuses (a regular file)
 * reports from the pending list: it needs wake_fd after all. */
static int fd_pending_check(struct kq *kq, struct knote *kn)
{
    if (!(kn->status & KN_ACTIVE) || kq->wake_fd >= 0)
        return 0;
    return kq_wake_fd_ensure(kq);
}

/* Apply one change.  Returns 0 or an errno value.  Lock held. */
static int apply_change(struct kq *kq, const struct kevent *kev)
{
    const struct filter_ops *ops = filter_lookup(kev->filter);
    if (ops == NULL)
        return EINVAL;
    if (ident_is_fd(kev->filter) && kev->ident > INT_MAX)
        return EBADF;

    struct knote *kn = knote_find(kq, kev->ident, kev->filter);
    int err;

    void *old_udata = kn != NULL ? kn->kev.udata : NULL;
    if (kn == NULL) {
        if (!(kev->flags & EV_ADD)) {
            /* As on BSD, a descriptor that is not open is EBADF. */
            if (ident_is_fd(kev->filter) && fcntl((int)kev->ident, F_GETFD) < 0)
                return EBADF;
            return ENOENT;
        }
        if ((err = knote_reserve(kq, kev)) != 0)
            return err;
        if ((err = queue_resources_for(kq, kev)) != 0)
            return err;
        kn = calloc(1, sizeof *kn);
        if (kn == NULL)
            return ENOMEM;
        kn->ops = ops;
        kn->kev = *kev;
        kn->kev.flags &= (uint16_t)~KN_INPUT_ONLY;
        if (kev->flags & EV_DISABLE)
            kn->status |= KN_DISABLED;
        if ((err = ops->attach(kq, kn, kev)) != 0) {
            free(kn);
            return err;
        }
        knote_insert(kq, kn);
        if (is_fd_filter(kev->filter) && (err = fd_pending_check(kq, kn)) != 0) {
            kq_knote_drop(kq, kn);
            return err;
        }
        knote_requeue(kq, kn);
        return 0;
    }

    if (kev->flags & EV_DELETE) {
        /* A registration whose descriptor was closed is gone on BSD;
         * detach reports that as the error BSD would give. */
        err = is_fd_filter(kev->filter) ? kq_fd_unregister(kq, kn) : 0;
        kq_knote_drop(kq, kn);
        return err;
    }

    if (kev->flags & EV_ENABLE)
        kn->status &= ~KN_DISABLED;
    else if (kev->flags & EV_DISABLE)
        kn->status |= KN_DISABLED;
    if (!(kev->flags & EV_KEEPUDATA))
        kn->kev.udata = kev->udata;

    err = ops->modify(kq, kn, kev);
    if (err == 0 && is_fd_filter(kev->filter))
        err = -fd_pending_check(kq, kn);    /* cannot report it: forget it */
    if (err < 0) {          /* stale registration: forget it */
        /* Its descriptor was closed or reused: the backend removes it, and
         * keeps the udata it held (not this change's) for its owner. */
        if (is_fd_filter(kev->filter) && !(kev->flags & EV_ADD))
            kq_fd_note_dropped(kq, old_udata);
        kq_knote_drop(kq, kn);
        return -err;
    }
    knote_requeue(kq, kn);
    return err;
}

/* Apply the changelist; write EV_ERROR/EV_RECEIPT entries to events.
 * Returns the number of entries written, or -1 with errno set. */
static int apply_changes(struct kq *kq, const struct kevent *changes, int nchanges,
                         struct kevent *events, int nevents)
{
    int nout = 0;
    for (int i = 0; i < nchanges; i++) {
        int err = apply_change(kq, &changes[i]);
        if (err == 0 && !(changes[i].flags & EV_RECEIPT))
            continue;
        if (nout >= nevents) {
            if (err == 0)
                continue;   /* a receipt with no room: nothing to say */
            errno = err;
            return -1;
        }
        events[nout] = changes[i];
        events[nout].flags = EV_ERROR;
        events[nout].data = err;
        nout++;
    }
    return nout;
}

/* ------------------------------------------------------------------ */
/* Delivery.                                                           */

/* After an event was reported from kn: EV_ONESHOT deletes, EV_DISPATCH
 * disables, level-triggered userspace knotes go back on the list. */
static void after_delivery(struct kq *kq, struct knote *kn)
{
    if (kn->kev.flags & EV_ONESHOT) {
        kq_knote_drop(kq, kn);
        return;
    }
    if (kn->kev.flags & EV_DISPATCH)
        kn->status |= KN_DISABLED;
    knote_requeue(kq, kn);
}

/* Report userspace events from the pending list.  Lock held.  A knote is
 * reported at most once per kevent() call: level-triggered ones go back on
 * the tail, and meeting one again (same scan id) ends the drain. */
static int drain_pending(struct kq *kq, struct kevent *out, int room, uint64_t scan_id)
{
    int n = 0;
    while (n < room && kq->q_head != NULL && kq->q_head->scan_id != scan_id) {
        struct knote *kn = kq->q_head;
        kq_dequeue(kq, kn);
        int r = kn->ops->deliver(kq, kn, &out[n]);
        if (r > 0) {
            n++;
            kn->scan_id = scan_id;
            after_delivery(kq, kn);
        } else if (r == 0) {
            knote_requeue(kq, kn);
        }
        /* r < 0: the filter dropped the knote (its descriptor is gone). */
    }
    return n;
}

/* An epoll_event buffer for up to want items: the caller's stack buffer,
 * or the heap for large eventlists.  Sets *want to what fits. */
static struct epoll_event *ebuf_get(struct epoll_event *stack, int *want)
{
    if (*want <= EBUF_MAX)
        return stack;
    if (*want > EBUF_HEAP_MAX)
        *want = EBUF_HEAP_MAX;
    struct epoll_event *heap = malloc((size_t)*want * sizeof *heap);
    if (heap == NULL)
        *want = EBUF_MAX;
    return heap != NULL ? heap : stack;
}

static void ebuf_put(struct epoll_event *stack, struct epoll_event *buf)
{
    if (buf != stack)
        free(buf);
}

/* A ready fd registration from epoll.  Returns events written (0 or 1). */
static int deliver_fd(struct kq *kq, struct knote **slots, uint64_t data, uint32_t revents,
                      struct kevent *out)
{
    int fd = EP_FD_OF(data);
    struct knote *kn = fd < kq->fd_cap ? slots[fd] : NULL;
    if (kn == NULL || (kn->u.fd.gen & 0xffffff) != EP_GEN_OF(data)) {
        /* No registration: deleted while the event was on its way (seen
         * once), or an item left behind by a registration found stale --
         * its file lives on elsewhere -- which comes back: rebuild. */
        kq_fd_orphan(kq, data);
        return 0;
    }
    if ((kn->status & (KN_DISABLED | KN_INEPOLL)) != KN_INEPOLL)
        return 0;   /* disabled or dispatched */
    int r = kq_fd_event(kq, kn, revents, out);
    if (r == 0)
        return 0;   /* below its NOTE_LOWAT mark */
    if (r < 0) {
        /* The number no longer names the registered file (closed, the file
         * kept alive by a dup() or a fork() child, or reused): the
         * registration died with its descriptor.  Its item may linger in
         * the set; when it comes back it is an orphan (kq_fd_orphan). */
        kq_fd_note_dropped(kq, kn->kev.udata);
        kq_knote_drop(kq, kn);
        kq->orphan = data;
        return 0;
    }
    after_delivery(kq, kn);
    return 1;
}

/* Pull ready EVFILT_WRITE registrations from the nested set: one
 * epoll_wait, so that no level-triggered registration comes twice. */
static int drain_writes(struct kq *kq, struct kevent *out, int room)
{
    struct epoll_event stack[EBUF_MAX];
    int want = room;
    struct epoll_event *ebuf = ebuf_get(stack, &want);
    int n = 0;
    int r = epoll_wait(kq->wr_ep, ebuf, want, 0);
    for (int i = 0; i < r; i++)
        n += deliver_fd(kq, kq->wr, ebuf[i].data.u64, ebuf[i].events, &out[n]);
    ebuf_put(stack, ebuf);
    return n;
}

/* Process one batch from the queue's epoll set.  Lock held. */
static int process_batch(struct kq *kq, const struct epoll_event *ebuf, int r,
                         struct kevent *out, int room, uint64_t scan_id)
{
    int n = 0, writes = 0, timers = 0, vnodes = 0;
    /* Each READ item owns one slot of room; internal items get the rest. */
    for (int i = 0; i < r; i++) {
        uint32_t tag = EP_TAG_OF(ebuf[i].data.u64);
        if (tag == TAG_READ) {
            n += deliver_fd(kq, kq->rd, ebuf[i].data.u64, ebuf[i].events, &out[n]);
        } else if (tag == TAG_WRITES) {
            writes = 1;
        } else if (tag == TAG_TIMER) {
            timers = 1;
        } else if (tag == TAG_VNODE) {
            vnodes = 1;
        } else if (tag == TAG_FILES) {
            kq_files_ready(kq);
        } else if (tag == TAG_SIGNAL) {
            kq_signal_ready(kq);
        } else if (tag == TAG_PROC) {
            kq_proc_ready(kq, ebuf[i].data.u64);
        }
        /* TAG_WAKE: the pending list is drained below, where SIGNAL,
         * PROC and VNODE knotes made active above are reported too. */
    }
    if (vnodes)
        kq_vnode_ready(kq);
    if (timers) {
        uint64_t ticks;
        (void)!read(kq->timer_fd, &ticks, sizeof ticks);
        kq->timer_armed = -1;   /* timerfd fired: it is disarmed now */
        kq_timers_expire(kq, kq_now());
    }
    if (writes && n < room)
        n += drain_writes(kq, out + n, room - n);
    if (n < room)
        n += drain_pending(kq, out + n, room - n, scan_id);
    return n;
}

/* epoll_wait with a nanosecond timeout where the kernel allows it. */
static int ep_wait(int epfd, struct epoll_event *ebuf, int max, int64_t timeout_ns)
{
    static int have_pwait2 = 1;
    if (timeout_ns < 0)
        return epoll_wait(epfd, ebuf, max, -1);
    if (timeout_ns == 0)
        return epoll_wait(epfd, ebuf, max, 0);
    if (__atomic_load_n(&have_pwait2, __ATOMIC_RELAXED)) {
        struct timespec ts = { timeout_ns / 1000000000, timeout_ns % 1000000000 };
        int r = (int)syscall(SYS_epoll_pwait2, epfd, ebuf, max, &ts, NULL, (size_t)8);
        if (r >= 0 || errno != ENOSYS)
            return r;
        __atomic_store_n(&have_pwait2, 0, __ATOMIC_RELAXED);
    }
    /* Round up: never return before the deadline; the caller loops. */
    int64_t ms = (timeout_ns + 999999) / 1000000;
    return epoll_wait(epfd, ebuf, max, ms > INT_MAX ? INT_MAX : (int)ms);
}

/* Timers and no timerfd to wake the wait at their deadline (it could not
 * be made: EMFILE).  An unlocked hint, re-checked under the lock. */
static int timers_unwatched(struct kq *kq)
{
    return __atomic_load_n(&kq->timer_fd, __ATOMIC_RELAXED) < 0 &&
           __atomic_load_n(&kq->ntimers, __ATOMIC_RELAXED) > 0;
}

/*
 * Wait for events.  deadline: CLOCK_MONOTONIC ns, or -1 for forever.
 * Returns the number of events, or -1 with errno (EINTR, EBADF, ...).
 * Each registration is reported at most once per call.
 */
static int scan(struct kq *kq, struct kevent *events, int nevents, int64_t deadline,
                int poll_only)
{
    static uint64_t scan_counter;
    uint64_t scan_id = __atomic_add_fetch(&scan_counter, 1, __ATOMIC_RELAXED);
    struct epoll_event stack[EBUF_MAX];
    int want = nevents;
    struct epoll_event *ebuf = ebuf_get(stack, &want);
    int n = 0;

    /* Fast path: nothing in userspace, go straight to epoll.  The unlocked
     * reads are hints only; whatever they miss makes wake_fd or timer_fd
     * readable, which the epoll_wait below reports. */
    if (__atomic_load_n(&kq->q_head, __ATOMIC_RELAXED) != NULL ||
        __atomic_load_n(&kq->ntimers, __ATOMIC_RELAXED) > 0 || kq_signal_scan(kq)) {
        pthread_mutex_lock(&kq->lock);
        if (kq_signal_scan(kq))
            kq_signal_ready(kq);    /* a counted blocked signal may be gone */
        if (kq->ntimers > 0)
            kq_timers_expire(kq, kq_now());
        if (kq->q_head != NULL)
            n = drain_pending(kq, events, nevents, scan_id);
        int owed = wake_update(kq);
        pthread_mutex_unlock(&kq->lock);
        if (owed)
            wake_signal(kq);
    }

    for (;;) {
        int64_t timeout_ns = 0;
        if (n == 0 && !poll_only) {
            if (deadline < 0) {
                timeout_ns = -1;
            } else {
                timeout_ns = deadline - kq_now();
                if (timeout_ns < 0)
                    timeout_ns = 0;
            }
        }
        int64_t wait_ns = timeout_ns;
        if (__atomic_load_n(&kq->lowat_wait, __ATOMIC_RELAXED) != NULL ||
            timers_unwatched(kq)) {
            /* WRITE knotes below NOTE_LOWAT: nothing wakes us when their
             * free space grows, so look again every KQ_LOWAT_POLL_NS.
             * Timers without a timerfd: nothing wakes us at their deadline,
             * so wait no longer than the earliest one. */
            pthread_mutex_lock(&kq->lock);
            int64_t now = kq_now();
            kq_lowat_repoll(kq, now);
            if (timeout_ns != 0) {
                int64_t next = -1;
                if (kq->lowat_wait != NULL)
                    next = kq->lowat_next;
                if (kq->timer_fd < 0 && kq->ntimers > 0 &&
                    (next < 0 || kq->timers[0]->u.timer.deadline < next))
                    next = kq->timers[0]->u.timer.deadline;
                if (next >= 0) {
                    int64_t left = next - now;
                    if (wait_ns < 0 || left < wait_ns)
                        wait_ns = left > 0 ? left : 0;
                }
            }
            pthread_mutex_unlock(&kq->lock);
        }
        int room = nevents - n < want ? nevents - n : want;
        int r = ep_wait(kq->waitfd, ebuf, room, wait_ns);
        if (r < 0) {
            if (n > 0)
                break;      /* report what we have; the signal stays pending */
            n = -1;
            break;
        }
        if (r == 0 && (n > 0 || (timeout_ns == 0 && (poll_only || deadline >= 0)))) {
            /* Nothing more ready, and events in hand or no time left.  (A
             * closed queue has wake_fd readable, so r is never 0 then.) */
            break;
        }
        pthread_mutex_lock(&kq->lock);
        if (kq->closed) {
            pthread_mutex_unlock(&kq->lock);
            errno = EBADF;
            n = -1;
            break;
        }
        if (kq->timer_fd < 0 && kq->ntimers > 0)
            kq_timers_expire(kq, kq_now());     /* no timerfd: our own clock */
        if (r > 0)
            n += process_batch(kq, ebuf, r, events + n, nevents - n, scan_id);
        else if (kq->q_head != NULL)
            n += drain_pending(kq, events + n, nevents - n, scan_id);
        int rearm_failed = kq_timers_rearm(kq) != 0;
        int err = errno;
        int owed = wake_update(kq);
        pthread_mutex_unlock(&kq->lock);
        if (owed)
            wake_signal(kq);
        if (n > 0)
            break;
        if (rearm_failed) {
            errno = err;
            n = -1;
            break;
        }
        if (timeout_ns == 0 && (poll_only || deadline >= 0))
            break;          /* polled, or the deadline has passed */
        /* Only internal wake-ups (another thread took the event, a timer
         * re-armed): wait again for the time that remains. */
    }
    int err = errno;
    ebuf_put(stack, ebuf);
    errno = err;
    return n;
}

int kevent(int kqfd, const struct kevent *changelist, int nchanges,
           struct kevent *eventlist, int nevents, const struct timespec *timeout)
{
    if (nchanges < 0 || nevents < 0 || nevents > INT_MAX / (int)sizeof(struct kevent)) {
        errno = EINVAL;
        return -1;
    }
    if ((nchanges > 0 && changelist == NULL) || (nevents > 0 && eventlist == NULL)) {
        errno = EFAULT;
        return -1;
    }
    int64_t deadline = -1;
    int poll_only = 0;
    if (timeout != NULL) {
        if (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000) {
            errno = EINVAL;
            return -1;
        }
        if (timeout->tv_sec == 0 && timeout->tv_nsec == 0) {
            poll_only = 1;
        } else {
            int64_t now = kq_now();
            if (timeout->tv_sec >= (INT64_MAX - now) / 1000000000 - 1)
                deadline = -1;   /* beyond 292 years: forever */
            else
                deadline = now + (int64_t)timeout->tv_sec * 1000000000 + timeout->tv_nsec;
        }
    }

    struct kq *kq = kq_get(kqfd);
    if (kq == NULL) {
        errno = EBADF;
        return -1;
    }
    int n = 0, owed = 0;
    if (nchanges > 0) {
        pthread_mutex_lock(&kq->lock);
        if (kq->closed) {
            errno = EBADF;
            n = -1;
        } else {
            n = apply_changes(kq, changelist, nchanges, eventlist, nevents);
            if (kq_timers_rearm(kq) != 0 && n == 0)
                n = -1;
            owed = wake_update(kq);
        }
        pthread_mutex_unlock(&kq->lock);
        if (owed)
            wake_signal(kq);
    }
    /* As on FreeBSD: errors and receipts are returned without a scan. */
    if (n == 0 && nevents > 0)
        n = scan(kq, eventlist, nevents, deadline, poll_only);
    int err = errno;
    kq_put(kq);
    errno = err;
    return n;
}
