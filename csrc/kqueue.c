/*
 * kqueue(2) for Linux: queue lifecycle, change application and the
 * wait/scan loop.  Filters live in filter_*.c behind struct filter_ops;
 * this file reaches them only through kq_filters[] (one entry each) and
 * never names one.
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

/* Every filter, indexed by the tag in its epoll items' data (TAG_*).  A
 * filter with more than one tag appears under each; its own is ops->tag. */
static const struct filter_ops *const kq_filters[TAG_COUNT] = {
    [TAG_READ] = &kq_read_ops,     [TAG_FILES] = &kq_read_ops,   [TAG_READS] = &kq_read_ops,
    [TAG_RHOT] = &kq_read_ops,
    [TAG_WRITE] = &kq_write_ops,   [TAG_WRITES] = &kq_write_ops, [TAG_WHOT] = &kq_write_ops,
    [TAG_SIGNAL] = &kq_signal_ops,
    [TAG_PROC] = &kq_proc_ops,
    [TAG_VNODE] = &kq_vnode_ops,
    [TAG_TIMER] = &kq_timer_ops,
    [TAG_USER] = &kq_user_ops,
    /* TAG_WAKE: the core's own wake_fd */
};

/* Each filter once, in ascending tag order. */
#define FOR_EACH_FILTER(ops)                                               \
    for (uint32_t t_ = 0; t_ < TAG_COUNT; t_++)                            \
        for (const struct filter_ops *ops = kq_filters[t_];                \
             ops != NULL && ops->tag == t_; ops = NULL)

#define EBUF_HEAP_MAX 65536   /* most epoll events one call fetches */
#ifndef SYS_epoll_pwait2
#define SYS_epoll_pwait2 441   /* same number on every architecture */
#endif

/* ------------------------------------------------------------------ */
/* Registry: kqueue descriptor -> struct kq.                            */

/*
 * kevent() finds its queue without a lock: the table is replaced (never
 * changed in size) when it grows, and old tables are kept, since a reader
 * may still be looking at one; a queue's memory is never freed but kept
 * for the next kqueue() (kq_free_list), so a reader that raced with the
 * queue's end touches only its reference count, and checks after taking a
 * reference that the number still names that queue.  Writers hold
 * registry_lock.
 */
struct registry {
    int cap;
    struct registry *older;     /* kept: lock-free readers may be in it */
    struct kq *slot[];          /* atomic */
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct registry *registry;   /* atomic */
static struct kq *kq_free_list;     /* registry_lock */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* The queue registered under fd, or NULL.  registry_lock held. */
static struct kq *slot_locked(int fd)
{
    return registry != NULL && fd >= 0 && fd < registry->cap ? registry->slot[fd] : NULL;
}

static void slot_set(int fd, struct kq *kq)
{
    __atomic_store_n(&registry->slot[fd], kq, __ATOMIC_RELEASE);
}

static struct kq *slot_load(int fd)
{
    struct registry *reg = __atomic_load_n(&registry, __ATOMIC_ACQUIRE);
    return reg != NULL && fd < reg->cap ? __atomic_load_n(&reg->slot[fd], __ATOMIC_ACQUIRE) : NULL;
}

static void kq_destroy(struct kq *kq);
static int ep_add(int epfd, int fd, uint32_t events, uint64_t data);

static void kq_put(struct kq *kq);

/* The queue fd names, with a reference taken; NULL if none.  No lock. */
static struct kq *kq_get(int fd)
{
    if (fd < 0)
        return NULL;
    for (;;) {
        struct kq *kq = slot_load(fd);
        if (kq == NULL)
            return NULL;
        int refs = __atomic_load_n(&kq->refs, __ATOMIC_RELAXED);
        do {
            if (refs == 0)
                break;      /* ending: the slot has changed, or is about to */
        } while (!__atomic_compare_exchange_n(&kq->refs, &refs, refs + 1, 1, __ATOMIC_ACQ_REL,
                                              __ATOMIC_RELAXED));
        if (refs != 0) {
            if (slot_load(fd) == kq)
                return kq;
            kq_put(kq);     /* its memory was reused meanwhile */
        }
    }
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
            int err = -errno;
            pthread_mutex_unlock(&registry_lock);
            return err;
        }
        __atomic_store_n(&closed_fd, fd, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

/* A poll (timeout 0) of a queue whose wait set holds nothing but its one
 * READ sub-set asks that set directly: one epoll_wait, not two.  Lock
 * held; read without it (the number stays the set's until the queue's
 * end: a rebuild replaces the set in place). */
static void direct_update(struct kq *kq)
{
    int fd = !kq->closed && kq->nwatched == 1 ? kq_sets_sole(kq) : -1;
    __atomic_store_n(&kq->direct_fd, fd, __ATOMIC_RELAXED);
}

/* Mark a queue closed and wake everything blocked in it.  Lock held. */
static void kq_mark_closed(struct kq *kq)
{
    uint64_t one = 1;
    kq->closed = 1;
    direct_update(kq);
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
 * Created by the first registration that can put one there.  0 or -errno. */
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

/* The queue's own descriptors (the user's one included, if still open)
 * and its filters'. */
static void close_queue_fds(struct kq *kq)
{
    int *fds[] = { &kq->fd, &kq->waitfd, &kq->wake_fd };
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
    FOR_EACH_FILTER(ops)
        if (ops->close_fds != NULL)
            ops->close_fds(kq);
    kq_life_close_fds(kq);
}

static struct knote *knote_find(struct kq *kq, const struct filter_ops *ops, uintptr_t ident);
static void knote_stale_one(struct kq *kq, struct knote *kn);

/* Every registration on the descriptor number fd died with the file it
 * was made on (lifetime.c found the number closed or naming another
 * file): each is removed, its udata kept for kqueue_py_take_dropped(). */
void kq_forget_number(struct kq *kq, int fd)
{
    if (fd < 0)
        return;
    FOR_EACH_FILTER(ops) {
        if (!(ops->flags & FILT_IDENT_FD))
            continue;
        struct knote *kn = knote_find(kq, ops, (uintptr_t)fd);
        if (kn != NULL)
            knote_stale_one(kq, kn);
    }
}

/* The backend just made descriptor fd (an epoll set, a timerfd, an
 * inotify instance, ...): a registration still recorded under its number
 * was made on a file since closed, and must not take it over. */
int kq_new_descriptor(struct kq *kq, int fd)
{
    kq_forget_number(kq, fd);
    return fd;
}

/* Put an internal descriptor (nested set, timerfd, pidfd, ...) into the
 * queue's epoll set.  Returns 0, or -errno after closing fd.  Called
 * with fd < 0 straight from its failed creation, it returns that -errno. */
int kq_watch_internal(struct kq *kq, int fd, uint32_t events, uint64_t data)
{
    if (fd < 0)
        return -errno;
    kq_forget_number(kq, fd);
    struct epoll_event ev = { .events = events, .data.u64 = data };
    if (epoll_ctl(kq->waitfd, EPOLL_CTL_ADD, fd, &ev) == 0) {
        kq->nwatched++;
        direct_update(kq);
        return 0;
    }
    int err = -errno;
    close(fd);
    return err;
}

/* The same for a descriptor the queue does not own (the process-wide
 * signal descriptors, made by another queue maybe long ago): left open on
 * failure.  A registration on its number lives on only if the number
 * still names the file it was made on.  0 or -errno. */
int kq_watch_shared(struct kq *kq, int fd, uint32_t events, uint64_t data)
{
    (void)kq_life_verify(kq, fd);
    struct epoll_event ev = { .events = events, .data.u64 = data };
    if (epoll_ctl(kq->waitfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -errno;
    kq->nwatched++;
    direct_update(kq);
    return 0;
}

/* Put the epoll set fresh in place of the internal descriptor under the
 * number old: fresh joins the wait set, then dup3() makes old name it
 * (the replaced set leaves the wait set with its file), and fresh's own
 * number is closed.  0, or -errno with nothing changed (fresh still
 * open). */
int kq_replace_watched(struct kq *kq, int old, int fresh, uint32_t events, uint64_t data)
{
    struct epoll_event ev = { .events = events, .data.u64 = data };
    if (epoll_ctl(kq->waitfd, EPOLL_CTL_ADD, fresh, &ev) < 0)
        return -errno;
    if (dup3(fresh, old, O_CLOEXEC) < 0) {
        int err = -errno;
        (void)epoll_ctl(kq->waitfd, EPOLL_CTL_DEL, fresh, NULL);
        return err;
    }
    close(fresh);
    return 0;
}

/* An item of a user's descriptor in the wait set itself (lifetime.c's
 * KQ_SET_HOT: EPOLLONESHOT, so that one left behind by a closed number
 * fires at most once).  0 or -errno: -EEXIST when the file is in the set
 * already under this number (one of the queue's own descriptors, or such
 * a left-behind item): never taken over. */
int kq_watch_item(struct kq *kq, int fd, struct epoll_event *ev)
{
    if (epoll_ctl(kq->waitfd, EPOLL_CTL_ADD, fd, ev) < 0)
        return -errno;
    kq->nwatched++;
    direct_update(kq);
    return 0;
}

/* Is fd's file in the wait set under this number?  An EPOLL_CTL_ADD of it
 * with no events answers: -EEXIST if so; 0 if not (the item it added is
 * taken out again: a thread waiting meanwhile may see its EPOLLHUP, with
 * data 0, which names no filter and is ignored); another -errno (-EBADF: a
 * closed number) otherwise. */
int kq_probe_item(struct kq *kq, int fd)
{
    return kq_epoll_probe(kq->waitfd, fd);
}

/* Is fd's file in epoll set epfd under this number?  An EPOLL_CTL_ADD
 * with no events (data 0: no filter's) answers: -EEXIST if so, 0 if not
 * (the item it added is taken out again), another -errno otherwise. */
int kq_epoll_probe(int epfd, int fd)
{
    struct epoll_event ev = { .events = 0, .data.u64 = 0 };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -errno;
    (void)epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    return 0;
}

int kq_rewatch_item(struct kq *kq, int fd, struct epoll_event *ev)
{
    return epoll_ctl(kq->waitfd, EPOLL_CTL_MOD, fd, ev) == 0 ? 0 : -errno;
}

/* The item leaves the count whatever EPOLL_CTL_DEL says (-errno when the
 * number no longer names its file: the item may stay, disarmed or firing
 * once more). */
int kq_unwatch_item(struct kq *kq, int fd)
{
    int err = epoll_ctl(kq->waitfd, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : -errno;
    kq->nwatched--;
    direct_update(kq);
    return err;
}

/* A new generation for a registration's epoll_data (24 bits used): an
 * event of an older registration of the same ident is recognised. */
uint32_t kq_next_gen(struct kq *kq)
{
    return ++kq->fd_gen;
}

/* Take an internal descriptor out of the wait set.  0 or -errno. */
int kq_unwatch(struct kq *kq, int fd)
{
    if (epoll_ctl(kq->waitfd, EPOLL_CTL_DEL, fd, NULL) < 0)
        return -errno;
    kq->nwatched--;
    direct_update(kq);
    return 0;
}

/*
 * fork(): as on BSD, a child does not inherit queues.  The child closes
 * every queue descriptor it inherited; the memory is left alone because
 * another (now vanished) thread may have been changing it mid-fork.
 */
/* Every queue's lock is taken too (registry_lock first, the lock order),
 * so that the child finds each queue in a consistent state and can close
 * the descriptors its registrations hold (pidfds). */
static void atfork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; registry != NULL && i < registry->cap; i++)
        if (registry->slot[i] != NULL)
            pthread_mutex_lock(&registry->slot[i]->lock);
    kq_uring_atfork_prepare();
}
static void atfork_parent(void)
{
    kq_uring_atfork_parent();
    for (int i = registry != NULL ? registry->cap - 1 : -1; i >= 0; i--)
        if (registry->slot[i] != NULL)
            pthread_mutex_unlock(&registry->slot[i]->lock);
    pthread_mutex_unlock(&registry_lock);
}
static void atfork_child(void)
{
    kq_uring_atfork_child();    /* the threads' rings: their descriptors */
    for (int i = 0; registry != NULL && i < registry->cap; i++) {
        struct kq *kq = registry->slot[i];
        if (kq == NULL)
            continue;
        slot_set(i, NULL);
        close_queue_fds(kq);
        /* The memory is left: nothing in the child can reach the queue any
         * more.  Its lock, taken by this thread in atfork_prepare, is let
         * go, so the child holds no lock but the registry's below. */
        pthread_mutex_unlock(&kq->lock);
    }
    pthread_mutex_unlock(&registry_lock);
    FOR_EACH_FILTER(ops)
        if (ops->atfork_child != NULL)
            ops->atfork_child();
}
static void atfork_install(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static int registry_insert(struct kq *kq)
{
    struct kq *stale = NULL;
    pthread_mutex_lock(&registry_lock);
    if (registry == NULL || kq->fd >= registry->cap) {
        int old = registry != NULL ? registry->cap : 0;
        int cap = old ? old : 64;
        while (cap <= kq->fd)
            cap *= 2;
        struct registry *grown = calloc(1, sizeof *grown + (size_t)cap * sizeof grown->slot[0]);
        if (grown == NULL) {
            pthread_mutex_unlock(&registry_lock);
            return -ENOMEM;
        }
        grown->cap = cap;
        grown->older = registry;
        for (int i = 0; i < old; i++)
            grown->slot[i] = registry->slot[i];
        __atomic_store_n(&registry, grown, __ATOMIC_RELEASE);
    }
    /* A queue still registered under this number was closed with plain
     * close() rather than kqueue_close(): retire it now. */
    stale = registry->slot[kq->fd];
    slot_set(kq->fd, kq);
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

/* Memory for a new queue, zeroed but for refs (0: kq_get() may be
 * looking at it, atomically): a destroyed queue's, or new. */
static struct kq *kq_alloc(void)
{
    pthread_mutex_lock(&registry_lock);
    struct kq *kq = kq_free_list;
    if (kq != NULL)
        kq_free_list = kq->free_next;
    pthread_mutex_unlock(&registry_lock);
    if (kq == NULL)
        return calloc(1, sizeof *kq);
    assert(__atomic_load_n(&kq->refs, __ATOMIC_RELAXED) == 0);
    size_t skip = offsetof(struct kq, fd);
    memset((char *)kq + skip, 0, sizeof *kq - skip);
    return kq;
}

static int ep_add(int epfd, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev = { .events = events, .data.u64 = data };
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

int kqueue(void)
{
    pthread_once(&atfork_once, atfork_install);

    struct kq *kq = kq_alloc();
    if (kq == NULL) {
        errno = ENOMEM;
        return -1;
    }
    kq->fd = kq->waitfd = kq->wake_fd = kq->direct_fd = -1;
    kq_life_init(kq);
    FOR_EACH_FILTER(ops)
        if (ops->init != NULL)
            ops->init(kq);
    __atomic_store_n(&kq->refs, 1, __ATOMIC_RELEASE);  /* the registry's reference */
    static uint64_t last_id;
    __atomic_store_n(&kq->id, __atomic_add_fetch(&last_id, 1, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
    pthread_mutex_init(&kq->lock, NULL);

    int err;
    if ((err = closed_fd_ensure()) != 0) {
        errno = -err;
        goto fail;
    }
    kq_uring_process_init();    /* the first queue decides, and makes the ring */
    /* Two descriptors: the user's and the backend's duplicate of it, which
     * kevent() waits in (threads may still wait in it after the user's
     * number was closed, and it is never replaced).  wake_fd and the
     * filters' own come with the first registration that needs them (see
     * wake_for). */
    kq->fd = epoll_create1(EPOLL_CLOEXEC);
    if (kq->fd < 0)
        goto fail;
    kq->waitfd = fcntl(kq->fd, F_DUPFD_CLOEXEC, 0);
    if (kq->waitfd < 0)
        goto fail;
    if ((err = registry_insert(kq)) != 0) {
        errno = -err;
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
    free(kq->hash);
    kq->hash = NULL;
    kq->hash_cap = 0;
    free(kq->dropped);
    close_queue_fds(kq);
    FOR_EACH_FILTER(ops)
        if (ops->destroy != NULL)
            ops->destroy(kq);
    kq_life_destroy(kq);
    pthread_mutex_destroy(&kq->lock);
    /* Kept for the next kqueue(): kq_get() may still read its refs (0 by
     * now, unless kqueue() failed before publishing it). */
    __atomic_store_n(&kq->refs, 0, __ATOMIC_RELEASE);
    pthread_mutex_lock(&registry_lock);
    kq->free_next = kq_free_list;
    kq_free_list = kq;
    pthread_mutex_unlock(&registry_lock);
}

/* No lock: filters ask it while holding their queue's lock, and fork's
 * prepare handler takes registry_lock before every queue's (the lock
 * order).  Queue memory is reused, never freed, so reading a slot's id is
 * safe; reading the slot again tells whether the id read is still its. */
uint64_t kqueue_py_queue_id(int fd)
{
    if (fd < 0)
        return 0;
    for (;;) {
        struct kq *kq = slot_load(fd);
        if (kq == NULL)
            return 0;
        uint64_t id = __atomic_load_n(&kq->id, __ATOMIC_ACQUIRE);
        if (slot_load(fd) == kq)
            return id;
    }
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
    kq = slot_locked(fd);
    if (kq != NULL)
        slot_set(fd, NULL);
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

static const struct filter_ops *filter_lookup(int16_t filter)
{
    FOR_EACH_FILTER(ops)
        if (ops->filter == filter)
            return ops;
    return NULL;
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

static struct knote *knote_find(struct kq *kq, const struct filter_ops *ops, uintptr_t ident)
{
    if (ops->find != NULL)
        return ops->find(kq, ident);
    int16_t filter = ops->filter;
    if (kq->hash_cap == 0)
        return NULL;
    for (struct knote *kn = kq->hash[hash_slot(kq, ident, filter)]; kn; kn = kn->hash_next)
        if (kn->kev.ident == ident && kn->kev.filter == filter)
            return kn;
    return NULL;
}

/* Call fn on every knote of a filter that the core stores (not READ or
 * WRITE).  fn must not remove knotes. */
void kq_knote_foreach(struct kq *kq, int16_t filter, void (*fn)(struct kq *, struct knote *))
{
    for (size_t i = 0; i < kq->hash_cap; i++)
        for (struct knote *kn = kq->hash[i]; kn != NULL; kn = kn->hash_next)
            if (kn->kev.filter == filter)
                fn(kq, kn);
}

struct knote *kq_knote_find(struct kq *kq, uintptr_t ident, int16_t filter)
{
    const struct filter_ops *ops = filter_lookup(filter);
    return ops != NULL ? knote_find(kq, ops, ident) : NULL;
}

static int hash_grow(struct kq *kq)
{
    size_t cap = kq->hash_cap ? kq->hash_cap * 2 : 64;
    struct knote **table = calloc(cap, sizeof *table);
    if (table == NULL)
        return -ENOMEM;
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

/* Make room for kn before attach, so that insertion cannot fail after. */
static int knote_reserve(struct kq *kq, const struct filter_ops *ops, const struct kevent *kev)
{
    if (ops->reserve != NULL)
        return ops->reserve(kq, kev->ident);
    if (kq->hash_count >= kq->hash_cap)
        return hash_grow(kq);
    return 0;
}

static void knote_insert(struct kq *kq, struct knote *kn)
{
    if (kn->ops->insert != NULL) {
        kn->ops->insert(kq, kn);
        return;
    }
    size_t s = hash_slot(kq, kn->kev.ident, kn->kev.filter);
    kn->hash_next = kq->hash[s];
    kq->hash[s] = kn;
    kq->hash_count++;
}

static void knote_unlink(struct kq *kq, struct knote *kn)
{
    if (kn->ops->unlink != NULL) {
        kn->ops->unlink(kq, kn);
        return;
    }
    struct knote **pp = &kq->hash[hash_slot(kq, kn->kev.ident, kn->kev.filter)];
    while (*pp != kn)
        pp = &(*pp)->hash_next;
    *pp = kn->hash_next;
    kq->hash_count--;
}

/* Detach from the filter, forget and free.  Lock held. */
void kq_knote_drop(struct kq *kq, struct knote *kn)
{
    kn->ops->detach(kq, kn);
    kq_dequeue(kq, kn);
    knote_unlink(kq, kn);
    assert(!(kn->status & KN_QUEUED) && kn->q_next == NULL && kn->q_prev == NULL);
    free(kn);
}

/* Take back one udata value recorded since ndropped was before (udata
 * NULL: none): it is still in use. */
static void kq_undrop(struct kq *kq, int before, void *udata)
{
    for (int i = kq->ndropped - 1; udata != NULL && i >= before; i--) {
        if (kq->dropped[i] == (uint64_t)(uintptr_t)udata) {
            memmove(kq->dropped + i, kq->dropped + i + 1,
                    (size_t)(kq->ndropped - i - 1) * sizeof *kq->dropped);
            kq->ndropped--;
            return;
        }
    }
}

/* Keep the udata of a registration the backend dropped on its own. */
void kq_note_dropped(struct kq *kq, void *udata)
{
    if (kq->ndropped >= kq->dropped_cap) {
        if (kq->dropped_cap >= KQ_DROPPED_MAX)
            return;
        int cap = kq->dropped_cap ? kq->dropped_cap * 2 : 16;
        uint64_t *grown = realloc(kq->dropped, (size_t)cap * sizeof *grown);
        if (grown == NULL)
            return;
        kq->dropped = grown;
        kq->dropped_cap = cap;
    }
    kq->dropped[kq->ndropped++] = (uint64_t)(uintptr_t)udata;
}

static void knote_stale_one(struct kq *kq, struct knote *kn)
{
    kq_note_dropped(kq, kn->kev.udata);
    kq_knote_drop(kq, kn);
}

/* A registration the backend removes on its own (it died with its
 * descriptor, or its process exited unwatched): its owner gets the udata
 * back (kqueue_py_take_dropped), then it goes -- with every other
 * registration on the same descriptor number, dead with it. */
void kq_knote_stale(struct kq *kq, struct knote *kn)
{
    if (kn->ops->flags & FILT_IDENT_FD)
        kq_forget_number(kq, (int)kn->kev.ident);
    else
        knote_stale_one(kq, kn);
}

/* ------------------------------------------------------------------ */
/* Pending list (userspace events) and the wake descriptor.            */

void kq_enqueue(struct kq *kq, struct knote *kn)
{
    if (kn->status & KN_QUEUED)
        return;
    /* The registration made wake_fd already (wake_for, or the filter's
     * attach); this only guards a filter that queues later, and timers
     * that fire without one. */
    if (kq->wake_fd < 0)
        (void)kq_wake_fd_ensure(kq);
    assert(kn->q_next == NULL && kn->q_prev == NULL && kq->q_head != kn);
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

/* The pending list read backwards: the knote queued before kn, or the
 * last one when kn is NULL; NULL at the head. */
struct knote *kq_pending_before(struct kq *kq, struct knote *kn)
{
    if (kn == NULL)
        return kq->q_tail;
    return (kn->status & KN_QUEUED) ? kn->q_prev : NULL;
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
 * The wake eventfd, for a new registration of a filter that reports from
 * the pending list (FILT_NEEDS_WAKE, FILT_WANTS_WAKE), made on first use
 * so that a queue holds only what its registrations use; the filters make
 * their own descriptors in attach.  A descriptor registration first checks
 * that the user's descriptor is open: a new internal descriptor must never
 * take the number being registered.  Returns 0 or -errno (EMFILE, ...),
 * reported for this change alone.
 */
static int wake_for(struct kq *kq, const struct filter_ops *ops, const struct kevent *kev)
{
    if (kq->wake_fd >= 0 || !(ops->flags & (FILT_NEEDS_WAKE | FILT_WANTS_WAKE)))
        return 0;
    if ((ops->flags & FILT_IDENT_FD) && fcntl((int)kev->ident, F_GETFD) < 0)
        return -EBADF;
    int err = kq_wake_fd_ensure(kq);
    return (ops->flags & FILT_NEEDS_WAKE) ? err : 0;
}

/* Apply one change.  Returns 0 or -errno.  Lock held. */
static int apply_change(struct kq *kq, const struct kevent *kev)
{
    const struct filter_ops *ops = filter_lookup(kev->filter);
    if (ops == NULL)
        return -EINVAL;
    if ((ops->flags & FILT_IDENT_FD) && kev->ident > INT_MAX)
        return -EBADF;
    /* FreeBSD's kqueue_register(): a queue cannot watch its own
     * descriptor ("fp->f_data == kq"), whatever the filter or action. */
    if ((ops->flags & FILT_IDENT_FD) && (int)kev->ident == kq->fd)
        return -EINVAL;

    struct knote *kn = knote_find(kq, ops, kev->ident);
    int err;

    if (kn != NULL && (ops->flags & FILT_IDENT_FD) && !(kev->flags & EV_DELETE)) {
        /* lifetime.c: a registration whose number no longer names its file
         * is dead (gone, its udata handed back); an EV_ADD makes a new one.
         * (udata the EV_ADD passes again is still in use: not handed back.) */
        void *old = kn->kev.udata;
        int before = kq->ndropped;
        if ((err = kq_life_verify(kq, (int)kev->ident)) != 0) {
            if (!(kev->flags & EV_ADD))
                return err;
            kq_undrop(kq, before, old == kev->udata ? old : NULL);
            kn = NULL;
        }
    }

    if (kn == NULL) {
        if (!(kev->flags & EV_ADD)) {
            /* As on BSD, a descriptor that is not open is EBADF. */
            if ((ops->flags & FILT_IDENT_FD) && fcntl((int)kev->ident, F_GETFD) < 0)
                return -EBADF;
            return -ENOENT;
        }
        /* FreeBSD's kqueue_kqfilter(): a queue's descriptor offers
         * EVFILT_READ only. */
        if ((ops->flags & (FILT_IDENT_FD | FILT_QUEUE_FD)) == FILT_IDENT_FD &&
            kqueue_py_queue_id((int)kev->ident) != 0)
            return -EINVAL;
        if ((err = knote_reserve(kq, ops, kev)) != 0)
            return err;
        if ((err = wake_for(kq, ops, kev)) != 0)
            return err;
        kn = calloc(1, sizeof *kn);
        if (kn == NULL)
            return -ENOMEM;
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
        knote_requeue(kq, kn);
        return 0;
    }

    if (kev->flags & EV_DELETE) {
        /* A registration whose descriptor was closed is gone on BSD;
         * remove() reports that as the error BSD would give. */
        err = ops->remove != NULL ? ops->remove(kq, kn) : 0;
        kq_knote_drop(kq, kn);
        return err;
    }

    void *old_udata = kn->kev.udata;
    if (kev->flags & EV_ENABLE)
        kn->status &= ~KN_DISABLED;
    else if (kev->flags & EV_DISABLE)
        kn->status |= KN_DISABLED;
    if (!(kev->flags & EV_KEEPUDATA))
        kn->kev.udata = kev->udata;

    err = ops->modify(kq, kn, kev);
    if (kn->status & KN_STALE) {
        /* The filter cannot go on with it: the backend removes it, and
         * keeps the udata it held (not this change's) for its owner --
         * unless this change is an EV_ADD, whose caller knows. */
        if (!(kev->flags & EV_ADD))
            kq_note_dropped(kq, old_udata);
        kq_knote_drop(kq, kn);
        return err;
    }
    knote_requeue(kq, kn);
    return err;
}

/* Apply the changelist; write EV_ERROR/EV_RECEIPT entries to events, their
 * flags EV_ERROR exactly (FreeBSD's "kevp->flags = EV_ERROR").
 * Returns the number of entries written, or -errno when an error found no
 * room (as on BSD, the call then fails with it). */
static int apply_changes(struct kq *kq, const struct kevent *changes, int nchanges,
                         struct kevent *events, int nevents)
{
    int nout = 0;
    for (int i = 0; i < nchanges; i++) {
        if (changes[i].filter == 0)
            continue;   /* FreeBSD's kqueue_kevent(): skipped, no receipt */
        int err = apply_change(kq, &changes[i]);
        if (err == 0 && !(changes[i].flags & EV_RECEIPT))
            continue;
        if (nout >= nevents) {
            if (err == 0)
                continue;   /* a receipt with no room: nothing to say */
            return err;
        }
        events[nout] = changes[i];
        events[nout].flags = EV_ERROR;
        events[nout].data = -err;
        nout++;
    }
    return nout;
}

/* ------------------------------------------------------------------ */
/* Delivery.                                                           */

/* After an event was reported from kn: EV_ONESHOT deletes, EV_DISPATCH
 * disables, level-triggered userspace knotes go back on the list. */
void kq_after_delivery(struct kq *kq, struct knote *kn)
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
        if (kn->status & KN_STALE) {
            kq_knote_stale(kq, kn);     /* its descriptor is gone */
        } else if (r > 0) {
            n++;
            kn->scan_id = scan_id;
            kq_after_delivery(kq, kn);
        } else {
            knote_requeue(kq, kn);
        }
    }
    return n;
}

/* An epoll_event buffer for up to want items: the caller's stack buffer
 * (KQ_EBUF_MAX), or the heap for large eventlists.  Sets *want to what
 * fits. */
struct epoll_event *kq_ebuf_get(struct epoll_event *stack, int *want)
{
    if (*want <= KQ_EBUF_MAX)
        return stack;
    if (*want > EBUF_HEAP_MAX)
        *want = EBUF_HEAP_MAX;
    struct epoll_event *heap = malloc((size_t)*want * sizeof *heap);
    if (heap == NULL)
        *want = KQ_EBUF_MAX;
    return heap != NULL ? heap : stack;
}

void kq_ebuf_put(struct epoll_event *stack, struct epoll_event *buf)
{
    if (buf != stack)
        free(buf);
}

/* Process one batch from the queue's epoll set.  Lock held.  Each item
 * goes to the ready() of the filter its tag names; filters marked
 * FILT_READY_BATCH are called once, after the others (so that every
 * per-item event -- READ's, one per item -- has its slot of room), in
 * ascending tag order.  Then the pending list is drained, where events the
 * filters queued are reported too.  (TAG_WAKE only wakes us.) */
static int process_batch(struct kq *kq, const struct epoll_event *ebuf, int r,
                         struct kevent *out, int room, uint64_t scan_id)
{
    int n = 0;
    uint32_t batched = 0;
    uint64_t batched_data[TAG_COUNT];
    uint32_t batched_events[TAG_COUNT];
    /* Start at a different item each batch: a nested set that fills the
     * room must not starve the items behind it (epoll re-queues them all
     * in the same order). */
    int start = r > 1 ? (int)(kq->batch_rot++ % (uint32_t)r) : 0;
    FOR_EACH_FILTER(ops)
        if (ops->prefetch != NULL)
            ops->prefetch(kq, ebuf, r);
    for (int k = 0; k < r; k++) {
        int i = start + k < r ? start + k : start + k - r;
        uint32_t tag = EP_TAG_OF(ebuf[i].data.u64);
        const struct filter_ops *ops = tag < TAG_COUNT ? kq_filters[tag] : NULL;
        if (ops == NULL || ops->ready == NULL)
            continue;
        if (ops->flags & FILT_READY_BATCH) {
            batched |= 1u << tag;
            batched_data[tag] = ebuf[i].data.u64;
            batched_events[tag] = ebuf[i].events;
            continue;
        }
        n += ops->ready(kq, ebuf[i].data.u64, ebuf[i].events, out + n, room - n);
    }
    for (uint32_t tag = 0; batched != 0 && tag < TAG_COUNT; tag++) {
        if (!(batched & (1u << tag)))
            continue;
        batched &= ~(1u << tag);
        n += kq_filters[tag]->ready(kq, batched_data[tag], batched_events[tag], out + n, room - n);
    }
    if (n < room)
        n += drain_pending(kq, out + n, room - n, scan_id);
    return n;
}

/* After changes and after each batch: every filter's rearm().  Returns 0
 * or the first -errno. */
static int filters_rearm(struct kq *kq)
{
    int err = 0;
    FOR_EACH_FILTER(ops) {
        if (ops->rearm != NULL) {
            int e = ops->rearm(kq);
            if (err == 0)
                err = e;
        }
    }
    return err;
}

/* Does some filter have events no epoll item announces (busy), or want the
 * wait to end early (polled)?  Unlocked hints. */
/* Filters with state that busy()/polled() look at set their bit in
 * kq->attn; only those are asked.  Lock held. */
void kq_attention(struct kq *kq, uint32_t tag, int on)
{
    if (on)
        __atomic_or_fetch(&kq->attn, 1u << tag, __ATOMIC_RELAXED);
    else
        __atomic_and_fetch(&kq->attn, ~(1u << tag), __ATOMIC_RELAXED);
}

/* Each filter with its kq->attn bit set, in ascending tag order. */
#define FOR_EACH_ATTN(kq, ops)                                                  \
    for (uint32_t a_ = __atomic_load_n(&(kq)->attn, __ATOMIC_RELAXED); a_ != 0;  \
         a_ &= a_ - 1)                                                          \
        for (const struct filter_ops *ops = kq_filters[__builtin_ctz(a_)];      \
             ops != NULL; ops = NULL)

static int filters_busy(const struct kq *kq)
{
    FOR_EACH_ATTN(kq, ops)
        if (ops->busy != NULL && ops->busy(kq))
            return 1;
    return 0;
}

static int filters_polled(const struct kq *kq)
{
    FOR_EACH_ATTN(kq, ops)
        if (ops->polled != NULL && ops->polled(kq))
            return 1;
    return 0;
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

/*
 * Wait for events.  deadline: CLOCK_MONOTONIC ns; KQ_FOREVER (-1) to wait
 * for ever; KQ_POLL (0, long past) to poll without reading the clock.
 * Returns the number of events, or -errno (-EINTR, -EBADF, ...).
 * Each registration is reported at most once per call.
 */
static int scan(struct kq *kq, struct kevent *events, int nevents, int64_t deadline)
{
    static uint64_t scan_counter;
    uint64_t scan_id = __atomic_add_fetch(&scan_counter, 1, __ATOMIC_RELAXED);
    struct epoll_event stack[KQ_EBUF_MAX];
    int want = nevents;
    struct epoll_event *ebuf = kq_ebuf_get(stack, &want);
    int n = 0;

    /* Fast path: nothing in userspace, go straight to epoll.  The unlocked
     * reads are hints only; whatever they miss makes wake_fd or a filter's
     * descriptor readable, which the epoll_wait below reports. */
    if (__atomic_load_n(&kq->q_head, __ATOMIC_RELAXED) != NULL || filters_busy(kq)) {
        pthread_mutex_lock(&kq->lock);
        int64_t now = -1;       /* read only when a filter needs it */
        FOR_EACH_ATTN(kq, ops) {
            if (ops->busy != NULL && ops->collect != NULL && ops->busy(kq)) {
                if (now < 0)
                    now = kq_now();
                ops->collect(kq, now);
            }
        }
        if (kq->q_head != NULL)
            n = drain_pending(kq, events, nevents, scan_id);
        int owed = wake_update(kq);
        pthread_mutex_unlock(&kq->lock);
        if (owed)
            wake_signal(kq);
    }

    int looked = 0;     /* the first pass has looked into direct_fd */
    for (;;) {
        int64_t timeout_ns = 0;
        if (n == 0 && deadline != KQ_POLL) {
            if (deadline == KQ_FOREVER) {
                timeout_ns = -1;
            } else {
                timeout_ns = deadline - kq_now();
                if (timeout_ns < 0)
                    timeout_ns = 0;
            }
        }
        int64_t wait_ns = timeout_ns;
        if (filters_polled(kq)) {
            /* Something no descriptor announces (free space past a WRITE
             * NOTE_LOWAT mark, a timer without a timerfd): look again when
             * the filter says, whatever the timeout. */
            pthread_mutex_lock(&kq->lock);
            int64_t now = kq_now(), next = -1;
            FOR_EACH_ATTN(kq, ops) {
                if (ops->next_look == NULL)
                    continue;
                int64_t at = ops->next_look(kq, now);
                if (at >= 0 && (next < 0 || at < next))
                    next = at;
            }
            if (next >= 0 && timeout_ns != 0) {
                int64_t left = next - now;
                if (wait_ns < 0 || left < wait_ns)
                    wait_ns = left > 0 ? left : 0;
            }
            pthread_mutex_unlock(&kq->lock);
        }
        int room = nevents - n < want ? nevents - n : want;
        /* A queue whose wait set holds only its one READ set (direct_fd):
         * a poll asks that set directly, one epoll_wait instead of two, and
         * so does a wait, first, without blocking -- an event loop's wait
         * mostly finds events there already; only if it finds none does it
         * block in the wait set (where the wake-ups of other threads and
         * close() arrive), at the cost of that one look. */
        int direct = looked ? -1 : __atomic_load_n(&kq->direct_fd, __ATOMIC_RELAXED);
        looked = 1;
        int r;
        if (direct >= 0) {
            r = ep_wait(direct, ebuf, room, 0);
            if (r == 0 && wait_ns != 0)
                r = ep_wait(kq->waitfd, ebuf, room, wait_ns);
        } else {
            r = ep_wait(kq->waitfd, ebuf, room, wait_ns);
        }
        if (r < 0) {
            if (n == 0)
                n = -errno;     /* else report what we have; the signal stays pending */
            break;
        }
        if (r == 0 && (n > 0 || (timeout_ns == 0 && deadline != KQ_FOREVER))) {
            /* Nothing more ready, and events in hand or no time left.  (A
             * closed queue has wake_fd readable, so r is never 0 then.) */
            break;
        }
        pthread_mutex_lock(&kq->lock);
        if (kq->closed) {
            pthread_mutex_unlock(&kq->lock);
            n = -EBADF;
            break;
        }
        /* What a polled filter has due (timers without a timerfd). */
        FOR_EACH_ATTN(kq, ops)
            if (ops->polled != NULL && ops->collect != NULL && ops->polled(kq))
                ops->collect(kq, kq_now());
        if (r > 0)
            n += process_batch(kq, ebuf, r, events + n, nevents - n, scan_id);
        else if (kq->q_head != NULL)
            n += drain_pending(kq, events + n, nevents - n, scan_id);
        int rearm_err = filters_rearm(kq);
        int owed = wake_update(kq);
        pthread_mutex_unlock(&kq->lock);
        if (owed)
            wake_signal(kq);
        if (n > 0)
            break;
        if (rearm_err != 0) {
            n = rearm_err;
            break;
        }
        if (timeout_ns == 0 && deadline != KQ_FOREVER)
            break;          /* polled, or the deadline has passed */
        /* Only internal wake-ups (another thread took the event, a timer
         * re-armed): wait again for the time that remains. */
    }
    kq_ebuf_put(stack, ebuf);
    return n;
}

/*
 * EVFILT_READ data for a queue's descriptor registered in another queue:
 * FreeBSD's filt_kqueue() reports kq_count, the events pending in it.
 * Counted without taking anything: the watched queue's due timers and
 * signals are collected onto its pending list (as its own kevent() would
 * first do), and that list is counted.  Events still inside its epoll set
 * (READ/WRITE, PROC, VNODE) cannot be counted without being consumed: the
 * count is at least 1, as the descriptor polled readable.  Returns -1 if
 * fd names no queue.  Called with the watching queue's lock held, so the
 * watched queue's lock is only tried (two queues may watch each other);
 * when another thread holds it, 1.
 */
intptr_t kq_queue_pending(int fd)
{
    struct kq *q = kq_get(fd);
    if (q == NULL)
        return -1;
    intptr_t n = 0;
    if (pthread_mutex_trylock(&q->lock) == 0) {
        int64_t now = -1;
        FOR_EACH_ATTN(q, ops) {
            if (ops->busy != NULL && ops->collect != NULL && ops->busy(q)) {
                if (now < 0)
                    now = kq_now();
                ops->collect(q, now);
            }
        }
        for (struct knote *kn = q->q_head; kn != NULL; kn = kn->q_next)
            n++;
        int owed = wake_update(q);
        pthread_mutex_unlock(&q->lock);
        if (owed)
            wake_signal(q);
    }
    kq_put(q);
    return n > 0 ? n : 1;
}

/* kevent() with the timeout already a deadline (see scan()).  Returns the
 * number of events, or -errno. */
static int kevent_until(int kqfd, const struct kevent *changelist, int nchanges,
                        struct kevent *eventlist, int nevents, int64_t deadline)
{
    if (nchanges < 0 || nevents < 0 || nevents > INT_MAX / (int)sizeof(struct kevent))
        return -EINVAL;
    if ((nchanges > 0 && changelist == NULL) || (nevents > 0 && eventlist == NULL))
        return -EFAULT;
    struct kq *kq = kq_get(kqfd);
    if (kq == NULL)
        return -EBADF;
    int n = 0, owed = 0;
    if (nchanges > 0) {
        pthread_mutex_lock(&kq->lock);
        if (kq->closed) {
            n = -EBADF;
        } else {
            n = apply_changes(kq, changelist, nchanges, eventlist, nevents);
            int err = filters_rearm(kq);
            if (err != 0 && n == 0)
                n = err;
            owed = wake_update(kq);
        }
        pthread_mutex_unlock(&kq->lock);
        if (owed)
            wake_signal(kq);
    }
    /* lifetime.c's sweep, every KQ_SWEEP_EVERY calls on the queue.  A
     * load and a store, not a locked increment: calls of several threads
     * at once may count once, which only spaces sweeps a little more. */
    uint32_t tick = __atomic_load_n(&kq->sweep_tick, __ATOMIC_RELAXED) + 1;
    __atomic_store_n(&kq->sweep_tick, tick, __ATOMIC_RELAXED);
    if ((tick & (KQ_SWEEP_EVERY - 1)) == 0) {
        pthread_mutex_lock(&kq->lock);
        if (!kq->closed)
            kq_sweep(kq);
        pthread_mutex_unlock(&kq->lock);
    }
    /* As on FreeBSD: errors and receipts are returned without a scan. */
    if (n == 0 && nevents > 0)
        n = scan(kq, eventlist, nevents, deadline);
    kq_put(kq);
    return n;
}

/* A relative timeout in ns (< 0: forever) as scan()'s deadline: the one
 * conversion a timeout goes through. */
static int64_t deadline_after(int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return KQ_FOREVER;
    if (timeout_ns == 0)
        return KQ_POLL;
    int64_t now = kq_now();
    return timeout_ns >= INT64_MAX - now ? KQ_FOREVER : now + timeout_ns;  /* beyond 292 years */
}

int kevent(int kqfd, const struct kevent *changelist, int nchanges,
           struct kevent *eventlist, int nevents, const struct timespec *timeout)
{
    int64_t timeout_ns = -1;
    if (timeout != NULL) {
        if (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000) {
            errno = EINVAL;
            return -1;
        }
        timeout_ns = timeout->tv_sec >= INT64_MAX / 1000000000 - 1
                         ? INT64_MAX
                         : (int64_t)timeout->tv_sec * 1000000000 + timeout->tv_nsec;
    }
    int n = kevent_until(kqfd, changelist, nchanges, eventlist, nevents,
                         deadline_after(timeout_ns));
    if (n >= 0)
        return n;
    errno = -n;
    return -1;
}

/* The binding's entry point: the timeout in ns (< 0: forever) and the
 * error as -errno in the result, so that nothing -- not even a Python
 * signal handler running right after the call -- can clobber errno before
 * Python reads it. */
int kqueue_py_kevent(int kqfd, const struct kevent *changelist, int nchanges,
                     struct kevent *eventlist, int nevents, int64_t timeout_ns)
{
    return kevent_until(kqfd, changelist, nchanges, eventlist, nevents,
                        deadline_after(timeout_ns));
}
