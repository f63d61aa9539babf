/*
 * io_uring batching of the event path's per-event system calls.
 *
 * A wait that reports n fd events makes n identity probes (lifetime.c: an
 * EPOLL_CTL_ADD into the shadow set, EEXIST = the same file) and, for READ
 * on a socket, n SIOCINQ ioctls (fd_data.c).  Through io_uring they go in
 * one io_uring_enter: IORING_OP_EPOLL_CTL for the probes and
 * IORING_OP_URING_CMD with SOCKET_URING_OP_SIOCINQ (Linux >= 6.7; TCP and
 * UDP -- AF_UNIX and pipes refuse it, EOPNOTSUPP) for the counts.  Each
 * operation is the very kernel function the system call runs (do_epoll_ctl,
 * the protocol's ioctl), so results are the same; one that fails in a way
 * the system call would not (the operation unknown, refused, not
 * submitted) is redone as the plain system call by its caller.
 *
 * Decided once per process, with its first queue (kqueue()):
 * KQUEUE_PY_IO_URING=0 in the environment forces the plain system calls;
 * so does any failure to set up the ring or a kernel that lacks
 * IORING_OP_EPOLL_CTL (seccomp profiles of Docker >= 25 and containerd 2,
 * gVisor, kernel.io_uring_disabled, kernels before 5.6), and a ring that
 * fails later falls back for good.
 *
 * One ring for the process, made with its first queue and kept for the
 * life of the process, like the backend's other process-wide descriptors.
 * Threads take turns (a mutex, tried: a thread that finds it taken makes
 * the plain system calls for that batch rather than wait).  Not one per
 * queue nor per thread: closing a ring makes the kernel notify, as a
 * signal would (TWA_SIGNAL), every thread that made or submitted to it,
 * and a thread then blocked in another queue's epoll_wait() would return
 * EINTR with no signal; and a thread's ring would outlive the thread's
 * last Python code (closed by its exit).  The descriptor is close-on-exec;
 * a fork() child closes its copy (it has no queue) and does not even map
 * the ring (MADV_DONTFORK), and its own first queue makes its own.  The
 * descriptor of a kernel without the operations is kept too, idle (closing
 * it would interrupt the thread that made it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kq_internal.h"

#ifndef SOCKET_URING_OP_SIOCINQ
#define SOCKET_URING_OP_SIOCINQ 0      /* <linux/io_uring.h> of Linux >= 6.7 */
#endif
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16)
#endif

#define RING_ENTRIES 256    /* operations per io_uring_enter */

struct kq_ring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *ring_map, *sqe_map;
    size_t ring_len, sqe_len;
    unsigned entries;
    uint32_t seq;           /* io_uring_enter runs (their completions) */
    uint64_t dev, ino;      /* the ring's file: a fork() child closes only it */
};

/* Process-wide: 0 not decided yet, 1 on, -1 off.  inq: SIOCINQ through the
 * ring (0 unknown, 1 yes, -1 no: the kernel lacks IORING_OP_URING_CMD). */
static int uring_mode;
static int uring_inq;

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned submit, unsigned wait, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, submit, wait, flags, NULL, (size_t)0);
}

static void ring_unmap(struct kq_ring *r)
{
    if (r->sqe_map != NULL && r->sqe_map != MAP_FAILED)
        munmap(r->sqe_map, r->sqe_len);
    if (r->ring_map != NULL && r->ring_map != MAP_FAILED)
        munmap(r->ring_map, r->ring_len);
    r->sqe_map = r->ring_map = NULL;
}

/* A ring of the backend's own: 0, or -errno.  A ring that was made but
 * cannot be used stays open in r->fd (else -1): closing it would make the
 * kernel interrupt this thread's next wait (see the top). */
static int ring_open(struct kq_ring *r)
{
    static const unsigned tries[] = {
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_NO_SQARRAY,
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
        0,
    };
    struct io_uring_params p;
    int fd = -1;
    for (size_t i = 0; i < sizeof tries / sizeof tries[0] && fd < 0; i++) {
        memset(&p, 0, sizeof p);
        p.flags = tries[i];
        fd = sys_setup(RING_ENTRIES, &p);
        if (fd < 0 && errno != EINVAL)
            return -errno;
    }
    if (fd < 0)
        return -errno;
    memset(r, 0, sizeof *r);
    r->fd = fd;
    struct stat st;
    if (fstat(fd, &st) == 0) {
        r->dev = (uint64_t)st.st_dev;
        r->ino = (uint64_t)st.st_ino;
    }
    if (!(p.features & IORING_FEAT_SINGLE_MMAP))
        return -ENOSYS;     /* before Linux 5.4: not worth a second map */
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.flags & IORING_SETUP_NO_SQARRAY)
        sq_len = p.sq_off.ring_entries + sizeof(unsigned);
    r->ring_len = sq_len > cq_len ? sq_len : cq_len;
    r->sqe_len = p.sq_entries * sizeof(struct io_uring_sqe);
    r->ring_map = mmap(NULL, r->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                       fd, IORING_OFF_SQ_RING);
    r->sqe_map = mmap(NULL, r->sqe_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      fd, IORING_OFF_SQES);
    if (r->ring_map == MAP_FAILED || r->sqe_map == MAP_FAILED ||
        madvise(r->ring_map, r->ring_len, MADV_DONTFORK) < 0 ||
        madvise(r->sqe_map, r->sqe_len, MADV_DONTFORK) < 0) {
        int err = -errno;
        ring_unmap(r);
        return err;
    }
    char *base = r->ring_map;
    r->sq_tail = (unsigned *)(base + p.sq_off.tail);
    r->sq_mask = (unsigned *)(base + p.sq_off.ring_mask);
    r->sq_array = (p.flags & IORING_SETUP_NO_SQARRAY) ? NULL
                                                     : (unsigned *)(base + p.sq_off.array);
    r->cq_head = (unsigned *)(base + p.cq_off.head);
    r->cq_tail = (unsigned *)(base + p.cq_off.tail);
    r->cq_mask = (unsigned *)(base + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(base + p.cq_off.cqes);
    r->sqes = r->sqe_map;
    r->entries = p.sq_entries;
    return 0;
}

/* Does the kernel have the operations (IORING_REGISTER_PROBE)?  EPOLL_CTL
 * is required; URING_CMD only for SIOCINQ. */
static int ring_probe_ops(const struct kq_ring *r)
{
    size_t len = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = calloc(1, len);
    if (probe == NULL)
        return -ENOMEM;
    int err = 0;
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_PROBE, probe, 256) < 0) {
        err = -errno;
    } else {
        int have_epoll = IORING_OP_EPOLL_CTL <= probe->last_op &&
                         (probe->ops[IORING_OP_EPOLL_CTL].flags & IO_URING_OP_SUPPORTED);
        int have_cmd = IORING_OP_URING_CMD <= probe->last_op &&
                       (probe->ops[IORING_OP_URING_CMD].flags & IO_URING_OP_SUPPORTED);
        if (!have_epoll)
            err = -ENOSYS;
        __atomic_store_n(&uring_inq, have_cmd ? 1 : -1, __ATOMIC_RELAXED);
    }
    free(probe);
    return err;
}

/* The process's ring (NULL: none), and the mutex threads take turns at
 * it with (tried, never waited for). */
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kq_ring *the_ring;        /* written under ring_lock */
static int ring_broken;                 /* atomic: it failed; plain calls */

/* With the first queue (kqueue(), no lock held; concurrent first queues
 * serialise here): the decision, and the ring.  In a fork() child, whose
 * copy was closed, its own first queue makes a ring of its own. */
void kq_uring_process_init(void)
{
    if (__atomic_load_n(&uring_mode, __ATOMIC_ACQUIRE) < 0 ||
        __atomic_load_n(&the_ring, __ATOMIC_ACQUIRE) != NULL)
        return;
    pthread_mutex_lock(&ring_lock);
    int mode = uring_mode;
    if (mode == 0) {
        const char *env = getenv("KQUEUE_PY_IO_URING");
        if (env != NULL && strcmp(env, "0") == 0)
            mode = -1;
    }
    if (mode >= 0 && the_ring == NULL) {
        struct kq_ring *r = calloc(1, sizeof *r);
        if (r == NULL) {
            mode = -1;
        } else {
            r->fd = -1;
            mode = ring_open(r) == 0 && ring_probe_ops(r) == 0 ? 1 : -1;
            if (r->fd >= 0)     /* published even if idle: a fork child closes its copy */
                __atomic_store_n(&the_ring, r, __ATOMIC_RELEASE);
            else
                free(r);
        }
    }
    __atomic_store_n(&uring_mode, mode, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&ring_lock);
}

/* Is the ring path in use in this process?  1 or 0. */
int kq_uring_enabled(void)
{
    return __atomic_load_n(&uring_mode, __ATOMIC_ACQUIRE) > 0 &&
           !__atomic_load_n(&ring_broken, __ATOMIC_RELAXED);
}

/* SIOCINQ through the ring in this process? */
int kq_uring_inq_enabled(void)
{
    return kq_uring_enabled() && __atomic_load_n(&uring_inq, __ATOMIC_RELAXED) > 0;
}

/* kqueue_py extension (sys/event.h): does this process batch the event
 * path's system calls through io_uring?  (Decided with the first queue;
 * asked before, it decides.) */
int kqueue_py_io_uring(void)
{
    kq_uring_process_init();
    return kq_uring_enabled();
}

/* fork(): the ring's state stays consistent across it. */
void kq_uring_atfork_prepare(void)
{
    pthread_mutex_lock(&ring_lock);
}

void kq_uring_atfork_parent(void)
{
    pthread_mutex_unlock(&ring_lock);
}

/* The child closes its copy of the ring's descriptor and forgets the ring
 * (whose mappings it does not have: MADV_DONTFORK; the memory is left). */
void kq_uring_atfork_child(void)
{
    /* Only if the number still names the ring (the program may have
     * closed it behind the backend's back and reused the number). */
    struct stat st;
    if (the_ring != NULL && the_ring->fd >= 0 && fstat(the_ring->fd, &st) == 0 &&
        (uint64_t)st.st_dev == the_ring->dev && (uint64_t)st.st_ino == the_ring->ino)
        close(the_ring->fd);
    the_ring = NULL;
    if (uring_mode > 0 && !ring_broken)
        uring_mode = 0;     /* its own first queue makes its own */
    pthread_mutex_unlock(&ring_lock);
}

/* Take every completion there is: those of this run (its sequence number
 * in user_data's high half) go to res; one a failed earlier run left
 * behind is dropped.  Returns how many of this run. */
static unsigned ring_reap(struct kq_ring *r, uint32_t seq, int32_t *res, int n)
{
    unsigned mine = 0;
    unsigned head = *r->cq_head, tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    for (; head != tail; head++) {
        const struct io_uring_cqe *cqe = &r->cqes[head & *r->cq_mask];
        uint64_t at = cqe->user_data & 0xffffffffu;
        if ((uint32_t)(cqe->user_data >> 32) == seq && at < (uint64_t)n) {
            res[at] = cqe->res;
            mine++;
        }
    }
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    return mine;
}

/*
 * Run ops[0..n) through the queue's ring, one io_uring_enter for up to
 * RING_ENTRIES of them; each result goes to res[i]: what the system call
 * would return (its value, or -errno).  An operation that did not run
 * (the ring failed) gets KQ_UOP_NOT_RUN, and the caller makes the system
 * call.  The operations point to nothing but a constant, so one still in
 * flight when this returns (io_uring_enter failed while waiting: the ring
 * is then given up) cannot write where it should not; its completion is
 * dropped.  Returns 0, or -ENOSYS when there is no ring (nothing ran).
 */
int kq_uring_run(struct kq *kq, const struct kq_uop *ops, int n, int32_t *res)
{
    static const struct epoll_event probe_ev = { .events = 0 };
    (void)kq;
    if (!kq_uring_enabled() || pthread_mutex_trylock(&ring_lock) != 0)
        return -ENOSYS;     /* no ring, or another thread's turn */
    struct kq_ring *r = the_ring;
    if (r == NULL || r->fd < 0) {
        pthread_mutex_unlock(&ring_lock);
        return -ENOSYS;
    }
    int saved = errno;
    for (int i = 0; i < n; i++)
        res[i] = KQ_UOP_NOT_RUN;
    for (int base = 0; base < n; base += (int)r->entries) {
        uint32_t seq = ++r->seq;
        unsigned batch = (unsigned)(n - base) < r->entries ? (unsigned)(n - base) : r->entries;
        unsigned tail = *r->sq_tail;
        for (unsigned i = 0; i < batch; i++) {
            const struct kq_uop *op = &ops[base + (int)i];
            unsigned idx = (tail + i) & *r->sq_mask;
            struct io_uring_sqe *sqe = &r->sqes[idx];
            memset(sqe, 0, sizeof *sqe);
            if (op->kind == KQ_UOP_PROBE) {
                sqe->opcode = IORING_OP_EPOLL_CTL;
                sqe->fd = op->epfd;
                sqe->off = (uint64_t)(uint32_t)op->fd;
                sqe->len = EPOLL_CTL_ADD;
                sqe->addr = (uint64_t)(uintptr_t)&probe_ev;
            } else {
                sqe->opcode = IORING_OP_URING_CMD;
                sqe->fd = op->fd;
                sqe->cmd_op = SOCKET_URING_OP_SIOCINQ;
            }
            sqe->user_data = ((uint64_t)seq << 32) | (uint32_t)i;
            if (r->sq_array != NULL)
                r->sq_array[idx] = idx;
        }
        __atomic_store_n(r->sq_tail, tail + batch, __ATOMIC_RELEASE);
        unsigned submitted = 0, done = 0, limit = batch;
        int32_t *out = res + base;
        while (done < limit) {
            unsigned to_submit = limit - submitted;
            int got = sys_enter(r->fd, to_submit, limit - done, IORING_ENTER_GETEVENTS);
            int hard = got < 0 && errno != EINTR;
            if (got > 0)
                submitted += (unsigned)got;
            if (hard || (got == 0 && to_submit > 0))
                limit = submitted;      /* submit no more */
            done += ring_reap(r, seq, out, (int)batch);
            if (hard) {
                /* Wait no more, and use the ring no more: what is in
                 * flight is not waited for twice. */
                __atomic_store_n(&ring_broken, 1, __ATOMIC_RELAXED);
                break;
            }
        }
        if (submitted < batch) {
            /* Entries the kernel did not take are taken back; a ring that
             * takes none is given up (plain system calls from now on; the
             * ring stays, idle). */
            __atomic_store_n(r->sq_tail, tail + submitted, __ATOMIC_RELEASE);
            if (submitted == 0)
                __atomic_store_n(&ring_broken, 1, __ATOMIC_RELAXED);
            break;
        }
    }
    pthread_mutex_unlock(&ring_lock);
    errno = saved;
    return 0;
}
