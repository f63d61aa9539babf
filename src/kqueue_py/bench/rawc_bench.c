/*
 * kqueue_py benchmark: the raw C cost of the same work.
 *
 *   rawc_bench SO_PATH SCENARIO N TARGET_BATCH_NS BATCHES
 *
 * "kq" variants call kqueue()/kevent() of the *installed extension*, found
 * with dlopen()/dlsym() (SO_PATH "-" calls the system's kqueue instead, on
 * BSD/macOS); "epoll" variants call the kernel directly, the floor.  Each
 * variant prints one line:  VARIANT BATCH NS_PER_OP_1 ... NS_PER_OP_REPEATS
 * (every timed batch in order; Python summarizes them as for its own).
 * Exit status 3: the extension could not be loaded.
 *
 * Builds compared (tools/compare-builds.py): SO_PATH may list several
 * extension files, separated by ',', each optionally followed by
 * ';NAME=VALUE' settings of the environment its first kqueue() sees (how
 * a build decides, once, e.g. KQUEUE_PY_IO_URING=0).  Every build then
 * gets its own queues on the same descriptors, and the "kq" batches of
 * the builds are timed in turn, batch by batch, in a rotating order: a
 * slow spell of the machine falls on all of them alike.  Build 0 prints
 * "kq", build i "kq@i".
 *
 * struct kevent and the constants come from <sys/event.h>: on Linux the
 * backend's own header (installed as kqueue_py/include/sys/event.h, or
 * csrc/include in a checkout; kqueue_py/bench/rawc.py passes -I), on
 * BSD/macOS the system's.  The extension's own values arrive as -DKQ_*
 * flags and must agree with the header (checked at compile time), so the
 * program and the module it loads cannot disagree on the ABI.
 *
 * Built by rawc.py with -O2 -std=gnu11 -Wall -Wextra -Werror
 * (tests/test_bench.py builds it the same way).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/event.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <malloc.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#define HAVE_EPOLL 1
#if defined(__has_include)
#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#if defined(__NR_io_uring_setup) && defined(__NR_io_uring_enter)
#define HAVE_URING 1
#endif
#endif
#endif
#endif

typedef struct kevent kev_t;

#ifdef KQ_SIZEOF_KEVENT
_Static_assert(sizeof(kev_t) == KQ_SIZEOF_KEVENT, "struct kevent: header and extension differ");
_Static_assert(EVFILT_READ == KQ_EVFILT_READ, "EVFILT_READ: header and extension differ");
_Static_assert(EVFILT_TIMER == KQ_EVFILT_TIMER, "EVFILT_TIMER: header and extension differ");
_Static_assert(EVFILT_USER == KQ_EVFILT_USER, "EVFILT_USER: header and extension differ");
_Static_assert(EV_ADD == KQ_EV_ADD, "EV_ADD: header and extension differ");
_Static_assert(EV_DELETE == KQ_EV_DELETE, "EV_DELETE: header and extension differ");
_Static_assert(EV_CLEAR == KQ_EV_CLEAR, "EV_CLEAR: header and extension differ");
_Static_assert(NOTE_TRIGGER == KQ_NOTE_TRIGGER, "NOTE_TRIGGER: header and extension differ");
#endif

typedef int (*kqueue_fn)(void);
typedef int (*kevent_fn)(int, const kev_t *, int, kev_t *, int, const struct timespec *);
typedef int (*kqclose_fn)(int);
/* The build being timed (use_build() switches); builds[] holds them all. */
static kqueue_fn p_kqueue;
static kevent_fn p_kevent;
static kqclose_fn p_kqclose;

#define MAX_BUILDS 8
static struct build {
    kqueue_fn kqueue;
    kevent_fn kevent;
    kqclose_fn kqclose;
} builds[MAX_BUILDS];
static int nbuilds;

static void use_build(int b)
{
    p_kqueue = builds[b].kqueue;
    p_kevent = builds[b].kevent;
    p_kqclose = builds[b].kqclose;
}

static volatile uint64_t sink;
static const struct timespec ZERO = {0, 0};

static void die(const char *what)
{
    fprintf(stderr, "rawc_bench: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- harness ------------------------------------------------------- */

typedef void (*op_fn)(void *ctx, long n);

static void warm_up(op_fn op, void *ctx, int64_t target_ns)
{
    int64_t warm_end = now_ns() + target_ns;
    while (now_ns() < warm_end)
        op(ctx, 1);
}

/* Operations in a batch of about target_ns. */
static long batch_size(op_fn op, void *ctx, int64_t target_ns)
{
    for (long n = 1;; n *= 2) {
        int64_t t0 = now_ns();
        op(ctx, n);
        int64_t dt = now_ns() - t0;
        if (dt >= target_ns / 4 || n >= 100000000L) {
            if (dt > 0)
                n = (long)((double)n * (double)target_ns / (double)dt);
            return n < 1 ? 1 : n;
        }
    }
}

/* ns per operation of one batch of n. */
static double time_batch(op_fn op, void *ctx, long n)
{
    int64_t t0 = now_ns();
    op(ctx, n);
    return (double)(now_ns() - t0) / (double)n;
}

static void print_variant(const char *variant, long n, const double *s, int repeats)
{
    printf("%s %ld", variant, n);
    for (int r = 0; r < repeats; r++)
        printf(" %.1f", s[r]);
    printf("\n");
    fflush(stdout);
}

static void bench(const char *variant, op_fn op, void *ctx, int64_t target_ns, int repeats)
{
    warm_up(op, ctx, target_ns);
    long n = batch_size(op, ctx, target_ns);
    double *s = calloc((size_t)repeats, sizeof *s);
    for (int r = 0; r < repeats; r++)
        s[r] = time_batch(op, ctx, n);
    print_variant(variant, n, s, repeats);
    free(s);
}

/* The "kq" variant of every build: ctx[b] is build b's context (made with
 * build b in use).  Batches of the same size, the builds in turn. */
static void bench_kq(op_fn op, void **ctx, int64_t target_ns, int repeats)
{
    if (nbuilds == 1) {
        bench("kq", op, ctx[0], target_ns, repeats);
        return;
    }
    for (int b = 0; b < nbuilds; b++) {
        use_build(b);
        warm_up(op, ctx[b], target_ns);
    }
    use_build(0);
    long n = batch_size(op, ctx[0], target_ns);
    double *s = calloc((size_t)(nbuilds * repeats), sizeof *s);
    for (int r = 0; r < repeats; r++) {
        for (int k = 0; k < nbuilds; k++) {
            int b = (r + k) % nbuilds;
            use_build(b);
            s[b * repeats + r] = time_batch(op, ctx[b], n);
        }
    }
    use_build(0);
    for (int b = 0; b < nbuilds; b++) {
        char name[16];
        snprintf(name, sizeof name, b == 0 ? "kq" : "kq@%d", b);
        print_variant(name, n, s + b * repeats, repeats);
    }
    free(s);
}

/* ---- fixtures ------------------------------------------------------ */

/* n descriptors: n/2 socketpairs (both ends), plus one more pair if odd. */
/* A connected pair of TCP sockets over loopback. */
static void tcp_pair(int sv[2])
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof sa;
    int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l, 1) < 0 ||
        getsockname(l, (struct sockaddr *)&sa, &len) < 0)
        die("tcp listener");
    sv[1] = socket(AF_INET, SOCK_STREAM, 0);
    if (sv[1] < 0 || connect(sv[1], (struct sockaddr *)&sa, sizeof sa) < 0)
        die("tcp connect");
    sv[0] = accept(l, NULL, NULL);
    if (sv[0] < 0)
        die("tcp accept");
    setsockopt(sv[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    close(l);
}

/* n descriptors: both ends of n/2 connected pairs (AF_UNIX, or TCP). */
static int *make_fds_of(int n, int tcp)
{
    int *fds = calloc((size_t)n + 1, sizeof *fds);
    for (int i = 0; i < n; i += 2) {
        int sv[2];
        if (tcp)
            tcp_pair(sv);
        else if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
            die("socketpair");
        fds[i] = sv[0];
        fds[i + 1] = sv[1];
    }
    return fds;
}

static int *make_fds(int n)
{
    return make_fds_of(n, 0);
}

static int new_kq(void)
{
    int kq = p_kqueue();
    if (kq < 0)
        die("kqueue");
    return kq;
}

/* Close kqs[b], the queue of build b, with its build. */
static void close_kqs(const int *kqs)
{
    for (int b = 0; b < nbuilds; b++) {
        use_build(b);
        p_kqclose(kqs[b]);
    }
    use_build(0);
}

static void kq_change(int kq, uintptr_t ident, int16_t filter, uint16_t flags,
                      uint32_t fflags, intptr_t data, void *udata)
{
    kev_t ch;
    memset(&ch, 0, sizeof ch);
    ch.ident = ident;
    ch.filter = filter;
    ch.flags = flags;
    ch.fflags = fflags;
    ch.data = data;
    ch.udata = udata;
    if (p_kevent(kq, &ch, 1, NULL, 0, NULL) < 0)
        die("kevent change");
}

struct pollctx {
    int kq;
    kev_t *ev;
    int cap;
    int expect;
#ifdef HAVE_EPOLL
    int ep;
    int shadow;     /* every registered descriptor, never waited on */
    int mod;        /* op_ep_poll_counted: an EPOLL_CTL_MOD per event */
    int tcp;        /* the descriptors are TCP sockets (SIOCINQ in a ring) */
    struct epoll_event *eev;
#endif
};

static void op_kq_poll(void *p, long n)
{
    struct pollctx *c = p;
    for (long i = 0; i < n; i++) {
        int r = p_kevent(c->kq, NULL, 0, c->ev, c->cap, &ZERO);
        if (r != c->expect)
            die("kevent poll: unexpected count");
        uint64_t acc = 0;
        for (int j = 0; j < r; j++)   /* hand each event's fields on */
            acc += c->ev[j].ident + (uint64_t)c->ev[j].filter + (uint64_t)c->ev[j].data +
                   (uint64_t)(uintptr_t)c->ev[j].udata;
        sink += acc;
    }
}

#ifdef HAVE_EPOLL
static void op_ep_poll(void *p, long n)
{
    struct pollctx *c = p;
    for (long i = 0; i < n; i++) {
        int r = epoll_wait(c->ep, c->eev, c->cap, 0);
        if (r != c->expect)
            die("epoll_wait: unexpected count");
        uint64_t acc = 0;
        for (int j = 0; j < r; j++)
            acc += c->eev[j].data.u64 + c->eev[j].events;
        sink += acc;
    }
}

/* epoll_wait, and per event one FIONREAD (the count kqueue's data is) and,
 * where c->shadow is a set (>= 0), the kernel's part of the backend's
 * identity check with plain system calls (io_uring off): an EPOLL_CTL_ADD
 * of the descriptor into a set that already holds it, which answers EEXIST
 * while the number still names the same file (the backend's lifetime
 * rule).  kq minus the latter is the backend's own work. */
static void op_ep_poll_counted(void *p, long n)
{
    struct pollctx *c = p;
    for (long i = 0; i < n; i++) {
        int r = epoll_wait(c->ep, c->eev, c->cap, 0);
        if (r != c->expect)
            die("epoll_wait: unexpected count");
        uint64_t acc = 0;
        for (int j = 0; j < r; j++) {
            int v = 0, fd = (int)c->eev[j].data.u32;
            ioctl(fd, FIONREAD, &v);
            if (c->shadow >= 0) {
                struct epoll_event probe = {.events = 0, .data.u64 = (uint64_t)(uint32_t)fd};
                if (epoll_ctl(c->shadow, EPOLL_CTL_ADD, fd, &probe) == 0 || errno != EEXIST)
                    die("identity probe: not EEXIST");
            }
            if (c->mod) {
                /* The older mechanism's check: re-arm the item itself. */
                struct epoll_event ev = c->eev[j];
                ev.events = EPOLLIN;
                if (epoll_ctl(c->ep, EPOLL_CTL_MOD, fd, &ev) < 0)
                    die("epoll_ctl MOD");
            }
            acc += c->eev[j].data.u64 + (uint64_t)v;
        }
        sink += acc;
    }
}

#ifdef HAVE_URING
#ifndef SOCKET_URING_OP_SIOCINQ
#define SOCKET_URING_OP_SIOCINQ 0      /* <linux/io_uring.h> of Linux >= 6.7 */
#endif
/* A minimal io_uring, as the backend uses one: submit n entries, wait
 * for n completions. */
static struct ring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    unsigned entries;
} ring = {.fd = -1};

static int ring_open(void)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN;
    int fd = (int)syscall(__NR_io_uring_setup, 256, &p);
    if (fd < 0 && errno == EINVAL) {
        memset(&p, 0, sizeof p);    /* before Linux 5.19: as the backend, no flags */
        fd = (int)syscall(__NR_io_uring_setup, 256, &p);
    }
    if (fd < 0)
        return -1;
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t len = sq_len > cq_len ? sq_len : cq_len;
    char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                      IORING_OFF_SQ_RING);
    void *sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe),
                      PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (base == MAP_FAILED || sqes == MAP_FAILED || !(p.features & IORING_FEAT_SINGLE_MMAP)) {
        close(fd);
        return -1;
    }
    ring.fd = fd;
    ring.sq_tail = (unsigned *)(base + p.sq_off.tail);
    ring.sq_mask = (unsigned *)(base + p.sq_off.ring_mask);
    ring.sq_array = (unsigned *)(base + p.sq_off.array);
    ring.cq_head = (unsigned *)(base + p.cq_off.head);
    ring.cq_tail = (unsigned *)(base + p.cq_off.tail);
    ring.cq_mask = (unsigned *)(base + p.cq_off.ring_mask);
    ring.cqes = (struct io_uring_cqe *)(base + p.cq_off.cqes);
    ring.sqes = sqes;
    ring.entries = p.sq_entries;
    return 0;
}

static struct io_uring_sqe *ring_sqe(unsigned i)
{
    unsigned idx = (*ring.sq_tail + i) & *ring.sq_mask;
    ring.sq_array[idx] = idx;
    struct io_uring_sqe *sqe = &ring.sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    sqe->user_data = i;
    return sqe;
}

/* Entry k: the identity probe of fd (an EPOLL_CTL_ADD into shadow, which
 * answers EEXIST while fd names the file already there). */
static void ring_probe(unsigned k, int shadow, int fd)
{
    static const struct epoll_event probe = {.events = 0};
    struct io_uring_sqe *sqe = ring_sqe(k);
    sqe->opcode = IORING_OP_EPOLL_CTL;
    sqe->fd = shadow;
    sqe->off = (uint64_t)(uint32_t)fd;
    sqe->len = EPOLL_CTL_ADD;
    sqe->addr = (uint64_t)(uintptr_t)&probe;
}

/* Entry k: fd's READ count (SIOCINQ; TCP and UDP sockets). */
static void ring_inq(unsigned k, int fd)
{
    struct io_uring_sqe *sqe = ring_sqe(k);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fd;
    sqe->cmd_op = SOCKET_URING_OP_SIOCINQ;
}

/* Submit n entries made by ring_sqe(0..n-1); their results, in order. */
static void ring_run(unsigned n, int32_t *res)
{
    __atomic_store_n(ring.sq_tail, *ring.sq_tail + n, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, ring.fd, n, n, IORING_ENTER_GETEVENTS, NULL, (size_t)0) !=
        (long)n)
        die("io_uring_enter");
    unsigned head = *ring.cq_head, tail = __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE);
    for (; head != tail; head++) {
        const struct io_uring_cqe *cqe = &ring.cqes[head & *ring.cq_mask];
        if (cqe->user_data < n)
            res[cqe->user_data] = cqe->res;
    }
    __atomic_store_n(ring.cq_head, head, __ATOMIC_RELEASE);
}

/* The kernel's part of the backend's events with io_uring: epoll_wait,
 * then one io_uring_enter running every event's identity probe (and, on
 * TCP, its count: SIOCINQ), and a FIONREAD system call for each count the
 * ring cannot give (AF_UNIX). */
static void op_ep_poll_ring(void *p, long n)
{
    struct pollctx *c = p;
    int32_t res[2 * 128];
    for (long i = 0; i < n; i++) {
        int r = epoll_wait(c->ep, c->eev, c->cap, 0);
        if (r != c->expect || r > 128)
            die("epoll_wait: unexpected count");
        uint64_t acc = 0;
        unsigned k = 0;
        for (int j = 0; j < r; j++) {
            int fd = (int)c->eev[j].data.u32;
            ring_probe(k++, c->shadow, fd);
            if (c->tcp)
                ring_inq(k++, fd);
        }
        ring_run(k, res);
        k = 0;
        for (int j = 0; j < r; j++) {
            int v = 0, fd = (int)c->eev[j].data.u32;
            if (res[k++] != -EEXIST)
                die("identity probe in the ring: not EEXIST");
            if (c->tcp)
                v = res[k++];
            else
                ioctl(fd, FIONREAD, &v);
            if (v < 0)
                die("SIOCINQ in the ring");
            acc += c->eev[j].data.u64 + (uint64_t)v;
        }
        sink += acc;
    }
}

/* Does the ring run both operations as the backend needs them? */
static int ring_usable(const struct pollctx *c, int fd)
{
    if (ring.fd < 0 && ring_open() < 0)
        return 0;
    int32_t res[2] = {0, 0};
    ring_probe(0, c->shadow, fd);
    ring_inq(1, fd);
    ring_run(2, res);
    return res[0] == -EEXIST && (!c->tcp || res[1] >= 0);
}
#endif
#endif

/* nfds registered for READ, the first `ready` of them readable. */
static void scenario_poll(int nfds, int ready, int64_t target, int repeats, int with_fionread,
                          int tcp)
{
    int *fds = make_fds_of(nfds, tcp);
    /* Make `ready` descriptors readable: write into the peer of fds[2k]. */
    int made = 0;
    for (int i = 0; i < nfds && made < ready; i += 2, made++)
        if (write(fds[i + 1], "x", 1) != 1)
            die("write");
    /* TCP: the bytes cross loopback in softirq; wait till each has landed. */
    for (int i = 0; tcp && i < 2 * made; i += 2) {
        int v = 0;
        for (int spins = 0; v == 0 && spins < 1000000; spins++)
            if (ioctl(fds[i], FIONREAD, &v) < 0)
                die("FIONREAD");
    }
    struct pollctx c = {0};
    c.cap = ready > 64 ? ready : 64;
    c.expect = ready;
    c.ev = calloc((size_t)c.cap, sizeof *c.ev);
    struct pollctx kc[MAX_BUILDS];
    void *ctx[MAX_BUILDS];
    int kqs[MAX_BUILDS] = {0};
    for (int b = 0; b < nbuilds; b++) {
        use_build(b);
        kc[b] = c;
        kc[b].kq = kqs[b] = new_kq();
        for (int i = 0; i < nfds; i++)
            kq_change(kc[b].kq, (uintptr_t)fds[i], EVFILT_READ, EV_ADD, 0, 0,
                      (void *)(intptr_t)(i + 1));
        ctx[b] = &kc[b];
    }
    bench_kq(op_kq_poll, ctx, target, repeats);
    close_kqs(kqs);
#ifdef HAVE_EPOLL
    c.ep = epoll_create1(EPOLL_CLOEXEC);
    c.eev = calloc((size_t)c.cap, sizeof *c.eev);
    for (int i = 0; i < nfds; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(uint32_t)fds[i]};
        if (epoll_ctl(c.ep, EPOLL_CTL_ADD, fds[i], &ev) < 0)
            die("epoll_ctl");
    }
    bench("epoll", op_ep_poll, &c, target, repeats);
    if (with_fionread) {
        c.shadow = -1;
        bench("epoll+FIONREAD", op_ep_poll_counted, &c, target, repeats);
        c.shadow = epoll_create1(EPOLL_CLOEXEC);
        for (int i = 0; i < nfds; i++) {
            struct epoll_event ev = {.events = 0, .data.u64 = (uint64_t)(uint32_t)fds[i]};
            if (epoll_ctl(c.shadow, EPOLL_CTL_ADD, fds[i], &ev) < 0)
                die("epoll_ctl shadow");
        }
        bench("epoll+FIONREAD+probe", op_ep_poll_counted, &c, target, repeats);
#ifdef HAVE_URING
        c.tcp = tcp;
        if (ring_usable(&c, fds[0]))
            bench("epoll+ring", op_ep_poll_ring, &c, target, repeats);
#endif
        close(c.shadow);
        c.shadow = -1;
        c.mod = 1;
        bench("epoll+FIONREAD+MOD", op_ep_poll_counted, &c, target, repeats);
        c.mod = 0;
    }
    close(c.ep);
#endif
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
}

struct batchctx {
    int kq;
    kev_t *add, *del;
    int n;
    int *fds;
};

static void op_kq_batch(void *p, long n)
{
    struct batchctx *c = p;
    for (long i = 0; i < n; i++) {
        if (p_kevent(c->kq, c->add, c->n, NULL, 0, NULL) < 0)
            die("kevent add batch");
        if (p_kevent(c->kq, c->del, c->n, NULL, 0, NULL) < 0)
            die("kevent delete batch");
    }
}

#ifdef HAVE_EPOLL
static void op_ep_regdel(void *p, long n)
{
    struct batchctx *c = p;
    for (long i = 0; i < n; i++) {
        for (int j = 0; j < c->n; j++) {
            struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)j};
            if (epoll_ctl(c->kq, EPOLL_CTL_ADD, c->fds[j], &ev) < 0)
                die("epoll_ctl add");
        }
        for (int j = 0; j < c->n; j++)
            if (epoll_ctl(c->kq, EPOLL_CTL_DEL, c->fds[j], NULL) < 0)
                die("epoll_ctl del");
    }
}
#endif

static void fill(kev_t *k, uintptr_t ident, int16_t filter, uint16_t flags, intptr_t data)
{
    memset(k, 0, sizeof *k);
    k->ident = ident;
    k->filter = filter;
    k->flags = flags;
    k->data = data;
    k->udata = (void *)(ident + 1);
}

static void scenario_regdel(int nfds, int64_t target, int repeats)
{
    struct batchctx c = {0};
    c.n = nfds;
    c.fds = make_fds(nfds);
    c.add = calloc((size_t)nfds, sizeof *c.add);
    c.del = calloc((size_t)nfds, sizeof *c.del);
    for (int i = 0; i < nfds; i++) {
        fill(&c.add[i], (uintptr_t)c.fds[i], EVFILT_READ, EV_ADD, 0);
        fill(&c.del[i], (uintptr_t)c.fds[i], EVFILT_READ, EV_DELETE, 0);
    }
    struct batchctx kc[MAX_BUILDS];
    void *ctx[MAX_BUILDS];
    int kqs[MAX_BUILDS] = {0};
    for (int b = 0; b < nbuilds; b++) {
        use_build(b);
        kc[b] = c;
        kc[b].kq = kqs[b] = new_kq();
        ctx[b] = &kc[b];
    }
    bench_kq(op_kq_batch, ctx, target, repeats);
    close_kqs(kqs);
#ifdef HAVE_EPOLL
    c.kq = epoll_create1(EPOLL_CLOEXEC);
    bench("epoll", op_ep_regdel, &c, target, repeats);
    close(c.kq);
#endif
    for (int i = 0; i < nfds; i++)
        close(c.fds[i]);
}

static void scenario_timers(int ntimers, int64_t target, int repeats, int wait)
{
    struct batchctx c = {0};
    c.n = ntimers;
    c.add = calloc((size_t)ntimers, sizeof *c.add);
    c.del = calloc((size_t)ntimers, sizeof *c.del);
    for (int i = 0; i < ntimers; i++) {
        fill(&c.add[i], (uintptr_t)i, EVFILT_TIMER, EV_ADD, 600000);   /* 10 min periodic */
        fill(&c.del[i], (uintptr_t)i, EVFILT_TIMER, EV_DELETE, 0);
    }
    struct batchctx kc[MAX_BUILDS];
    struct pollctx pc[MAX_BUILDS];
    void *ctx[MAX_BUILDS];
    int kqs[MAX_BUILDS] = {0};
    kev_t *ev = calloc(64, sizeof *ev);
    for (int b = 0; b < nbuilds; b++) {
        use_build(b);
        kc[b] = c;
        kc[b].kq = kqs[b] = new_kq();
        ctx[b] = &kc[b];
        if (wait) {
            if (p_kevent(kc[b].kq, c.add, c.n, NULL, 0, NULL) < 0)
                die("kevent add timers");
            pc[b] = (struct pollctx){ .kq = kc[b].kq, .cap = 64, .expect = 0, .ev = ev };
            ctx[b] = &pc[b];
        }
    }
    bench_kq(wait ? op_kq_poll : op_kq_batch, ctx, target, repeats);
    close_kqs(kqs);
    free(ev);
}

/* ---- cross-thread wake round trip --------------------------------- */

struct rtctx {
    int a, b;            /* kq: queues; epoll: epoll fds */
    int efa, efb;        /* epoll: eventfds */
    kevent_fn kevent;    /* kq: the build the queues are of (the echo
                            thread's, whatever build the timer uses) */
    volatile int stop;
    pthread_t thread;
};

static void kq_trigger(const struct rtctx *c, int kq)
{
    kev_t ch;
    memset(&ch, 0, sizeof ch);
    ch.ident = 1;
    ch.filter = EVFILT_USER;
    ch.fflags = NOTE_TRIGGER;
    if (c->kevent(kq, &ch, 1, NULL, 0, NULL) < 0)
        die("kevent trigger");
}

static void kq_wait1(const struct rtctx *c, int kq)
{
    kev_t ev;
    int r;
    do
        r = c->kevent(kq, NULL, 0, &ev, 1, NULL);
    while (r < 0 && errno == EINTR);
    if (r != 1)
        die("kevent wait");
}

static void *kq_echo(void *p)
{
    struct rtctx *c = p;
    for (;;) {
        kq_wait1(c, c->b);
        if (c->stop)
            break;
        kq_trigger(c, c->a);
    }
    return NULL;
}

static void op_kq_rt(void *p, long n)
{
    struct rtctx *c = p;
    for (long i = 0; i < n; i++) {
        kq_trigger(c, c->b);
        kq_wait1(c, c->a);
    }
}

#ifdef HAVE_EPOLL
static void ep_wait1(int ep, int efd)
{
    struct epoll_event ev;
    uint64_t v;
    int r;
    do
        r = epoll_wait(ep, &ev, 1, -1);
    while (r < 0 && errno == EINTR);
    if (r != 1 || read(efd, &v, sizeof v) != sizeof v)
        die("epoll wait");
}

static void ep_signal(int efd)
{
    uint64_t one = 1;
    if (write(efd, &one, sizeof one) != sizeof one)
        die("eventfd write");
}

static void *ep_echo(void *p)
{
    struct rtctx *c = p;
    for (;;) {
        ep_wait1(c->b, c->efb);
        if (c->stop)
            break;
        ep_signal(c->efa);
    }
    return NULL;
}

static void op_ep_rt(void *p, long n)
{
    struct rtctx *c = p;
    for (long i = 0; i < n; i++) {
        ep_signal(c->efb);
        ep_wait1(c->a, c->efa);
    }
}
#endif

/* Both threads on one CPU, as the Python side of this scenario does (see
 * build_user_rt in scenarios.py): a wake is then a switch between two
 * threads, not a CPU's exit from idle.  The threads inherit it. */
static void pin_to_one_cpu(void)
{
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        die("sched_getaffinity");
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &set)) {
            CPU_ZERO(&set);
            CPU_SET(cpu, &set);
            if (sched_setaffinity(0, sizeof set, &set) != 0)
                die("sched_setaffinity");
            return;
        }
    }
#endif
}

/* A queue of the build in use with USER event 1 (EV_CLEAR) in it. */
static int new_user_kq(void)
{
    int kq = new_kq();
    kq_change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR, 0, 0, NULL);
    return kq;
}

static void scenario_user_rt(int64_t target, int repeats)
{
    pin_to_one_cpu();
    struct rtctx kc[MAX_BUILDS];
    void *ctx[MAX_BUILDS];
    for (int b = 0; b < nbuilds; b++) {
        use_build(b);
        memset(&kc[b], 0, sizeof kc[b]);
        kc[b].kevent = p_kevent;
        kc[b].a = new_user_kq();
        kc[b].b = new_user_kq();
        pthread_create(&kc[b].thread, NULL, kq_echo, &kc[b]);
        ctx[b] = &kc[b];
    }
    bench_kq(op_kq_rt, ctx, target, repeats);
    for (int b = 0; b < nbuilds; b++) {
        kc[b].stop = 1;
        kq_trigger(&kc[b], kc[b].b);
        pthread_join(kc[b].thread, NULL);
        use_build(b);
        p_kqclose(kc[b].a);
        p_kqclose(kc[b].b);
    }
    use_build(0);
#ifdef HAVE_EPOLL
    struct rtctx c = {0};
    c.a = epoll_create1(EPOLL_CLOEXEC);
    c.b = epoll_create1(EPOLL_CLOEXEC);
    c.efa = eventfd(0, EFD_CLOEXEC);
    c.efb = eventfd(0, EFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(c.a, EPOLL_CTL_ADD, c.efa, &ev);
    epoll_ctl(c.b, EPOLL_CTL_ADD, c.efb, &ev);
    pthread_create(&c.thread, NULL, ep_echo, &c);
    bench("epoll", op_ep_rt, &c, target, repeats);
    c.stop = 1;
    ep_signal(c.efb);
    pthread_join(c.thread, NULL);
    close(c.a);
    close(c.b);
    close(c.efa);
    close(c.efb);
#endif
}

/* ---- one trigger (nobody waits) ------------------------------------ */

static void op_kq_trigger(void *p, long n)
{
    struct rtctx *c = p;
    for (long i = 0; i < n; i++)
        kq_trigger(c, c->a);
}

#ifdef HAVE_EPOLL
static void op_ep_trigger(void *p, long n)
{
    struct rtctx *c = p;
    for (long i = 0; i < n; i++)
        ep_signal(c->efa);
}
#endif

static void scenario_trigger(int64_t target, int repeats)
{
    struct rtctx kc[MAX_BUILDS];
    void *ctx[MAX_BUILDS];
    int kqs[MAX_BUILDS] = {0};
    for (int b = 0; b < nbuilds; b++) {
        use_build(b);
        memset(&kc[b], 0, sizeof kc[b]);
        kc[b].kevent = p_kevent;
        kc[b].a = kqs[b] = new_user_kq();
        ctx[b] = &kc[b];
    }
    bench_kq(op_kq_trigger, ctx, target, repeats);
    close_kqs(kqs);
#ifdef HAVE_EPOLL
    struct rtctx c = {0};
    c.efa = eventfd(0, EFD_CLOEXEC);
    if (c.efa < 0)
        die("eventfd");
    bench("epoll", op_ep_trigger, &c, target, repeats);
    close(c.efa);
#endif
}

/* ---- main ---------------------------------------------------------- */

static int sys_close(int fd) { return close(fd); }

/* Load one build: "PATH" or "PATH;NAME=VALUE;..." (the environment its
 * first kqueue() sees, restored afterwards).  0, or 3 if it cannot be
 * loaded (a message on stderr), 2 for a malformed setting. */
static int load_build(char *spec, struct build *out)
{
    char *settings = strchr(spec, ';');
    if (settings != NULL)
        *settings++ = '\0';
    void *h = dlopen(spec, RTLD_LAZY | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "rawc_bench: dlopen: %s\n", dlerror());
        return 3;
    }
    out->kqueue = (kqueue_fn)dlsym(h, "kqueue");
    out->kevent = (kevent_fn)dlsym(h, "kevent");
    out->kqclose = (kqclose_fn)dlsym(h, "kqueue_close");
    if (out->kqclose == NULL)
        out->kqclose = sys_close;
    if (out->kqueue == NULL || out->kevent == NULL) {
        fprintf(stderr, "rawc_bench: dlsym: %s\n", dlerror());
        return 3;
    }
    if (settings == NULL)
        return 0;
    /* A build decides what it can use (io_uring, ...) once, at its first
     * queue: make that queue under its settings. */
    char *names[16], *saved[16];
    int n = 0;
    for (char *item = strtok(settings, ";"); item != NULL; item = strtok(NULL, ";")) {
        char *eq = strchr(item, '=');
        if (eq == NULL || eq == item || n == 16) {
            fprintf(stderr, "rawc_bench: %s: a setting is NAME=VALUE\n", item);
            return 2;
        }
        *eq = '\0';
        names[n] = item;
        saved[n] = getenv(item) ? strdup(getenv(item)) : NULL;
        setenv(item, eq + 1, 1);
        n++;
    }
    int kq = out->kqueue();
    if (kq < 0)
        die("kqueue");
    out->kqclose(kq);
    for (int i = 0; i < n; i++) {
        if (saved[i] != NULL)
            setenv(names[i], saved[i], 1);
        else
            unsetenv(names[i]);
        free(saved[i]);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s SO_PATH SCENARIO N TARGET_BATCH_NS REPEATS\n", argv[0]);
        return 2;
    }
    const char *so = argv[1], *scenario = argv[2];
    int n = atoi(argv[3]);
    int64_t target = atoll(argv[4]);
    int repeats = atoi(argv[5]);
    if (repeats < 1)
        repeats = 1;
#ifdef __linux__
    /* A fresh process's heap: glibc hands the top of the heap back to the
     * kernel whenever a batch frees it, so every batch of allocations
     * would fault its pages in again.  The Python process's heap is full
     * of other objects and never shrinks like that; keep this one too, so
     * the batch scenarios measure the backend, not page faults. */
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
#endif

    if (strcmp(so, "-") == 0) {
#ifdef __linux__
        fprintf(stderr, "rawc_bench: no system kqueue\n");
        return 3;
#else
        builds[0] = (struct build){ kqueue, kevent, sys_close };
        nbuilds = 1;
#endif
    } else {
        char *list = strdup(so);
        for (char *spec = list; spec != NULL; ) {
            char *next = strchr(spec, ',');
            if (next != NULL)
                *next++ = '\0';
            if (nbuilds == MAX_BUILDS) {
                fprintf(stderr, "rawc_bench: at most %d builds\n", MAX_BUILDS);
                return 2;
            }
            int err = load_build(spec, &builds[nbuilds]);
            if (err != 0)
                return err;
            nbuilds++;
            spec = next;
        }
        free(list);
    }
    use_build(0);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    if (strcmp(scenario, "empty_poll") == 0)
        scenario_poll(2, 0, target, repeats, 0, 0);
    else if (strcmp(scenario, "ready") == 0)
        scenario_poll(2 * n, n, target, repeats, 1, 0);
    else if (strcmp(scenario, "ready_tcp") == 0)
        scenario_poll(2 * n, n, target, repeats, 1, 1);
    else if (strcmp(scenario, "active") == 0)
        scenario_poll(n, 1, target, repeats, 0, 0);
    else if (strcmp(scenario, "regdel") == 0)
        scenario_regdel(n, target, repeats);
    else if (strcmp(scenario, "timers") == 0)
        scenario_timers(n, target, repeats, 0);
    else if (strcmp(scenario, "timers_wait") == 0)
        scenario_timers(n, target, repeats, 1);
    else if (strcmp(scenario, "user_rt") == 0)
        scenario_user_rt(target, repeats);
    else if (strcmp(scenario, "trigger") == 0)
        scenario_trigger(target, repeats);
    else {
        fprintf(stderr, "rawc_bench: unknown scenario %s\n", scenario);
        return 2;
    }
    return 0;
}
