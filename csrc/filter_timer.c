/*
 * EVFILT_TIMER.
 *
 * All timers of a queue live in one min-heap on their CLOCK_MONOTONIC
 * deadline; a single timerfd is armed at the earliest one.  So a queue
 * holds any number of timers with one descriptor (libkqueue spends one
 * timerfd per timer).  As on FreeBSD (filt_timervalidate,
 * filt_timerattach): a relative timer implies EV_CLEAR, an absolute one
 * (NOTE_ABSTIME) does not and stays reported until deleted; data reports
 * expirations since the last report; a periodic timer of 0 runs every unit;
 * fflags other than the unit and NOTE_ABSTIME are EINVAL; re-adding
 * restarts the timer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "kq_internal.h"

#define MIN_PERIOD_NS 1000   /* periodic timers fire at most once a microsecond */
#define NOTE_UNITS (NOTE_SECONDS | NOTE_MSECONDS | NOTE_USECONDS | NOTE_NSECONDS)
#define NOTE_TIMER_VALID (NOTE_UNITS | NOTE_ABSTIME)   /* FreeBSD's filt_timervalidate */

static int64_t sat_add(int64_t a, int64_t b)
{
    return a > INT64_MAX - b ? INT64_MAX : a + b;
}

/* ---- heap ---------------------------------------------------------- */

static void heap_set(struct kq *kq, size_t i, struct knote *kn)
{
    kq->timers[i] = kn;
    kn->u.timer.heap_index = i;
}

static void heap_up(struct kq *kq, size_t i)
{
    struct knote *kn = kq->timers[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (kq->timers[parent]->u.timer.deadline <= kn->u.timer.deadline)
            break;
        heap_set(kq, i, kq->timers[parent]);
        i = parent;
    }
    heap_set(kq, i, kn);
}

static void heap_down(struct kq *kq, size_t i)
{
    struct knote *kn = kq->timers[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= kq->ntimers)
            break;
        if (child + 1 < kq->ntimers &&
            kq->timers[child + 1]->u.timer.deadline < kq->timers[child]->u.timer.deadline)
            child++;
        if (kq->timers[child]->u.timer.deadline >= kn->u.timer.deadline)
            break;
        heap_set(kq, i, kq->timers[child]);
        i = child;
    }
    heap_set(kq, i, kn);
}

static int heap_reserve(struct kq *kq)
{
    if (kq->ntimers < kq->timers_cap)
        return 0;
    size_t cap = kq->timers_cap ? kq->timers_cap * 2 : 16;
    struct knote **grown = realloc(kq->timers, cap * sizeof *grown);
    if (grown == NULL)
        return -ENOMEM;
    kq->timers = grown;
    kq->timers_cap = cap;
    return 0;
}

static void heap_push(struct kq *kq, struct knote *kn)
{
    size_t i = kq->ntimers;
    __atomic_store_n(&kq->ntimers, i + 1, __ATOMIC_RELAXED);   /* scan() peeks unlocked */
    if (i == 0)
        kq_attention(kq, TAG_TIMER, 1);
    heap_set(kq, i, kn);
    heap_up(kq, i);
}

static void heap_remove(struct kq *kq, struct knote *kn)
{
    size_t i = kn->u.timer.heap_index;
    if (i == SIZE_MAX)
        return;
    kn->u.timer.heap_index = SIZE_MAX;
    size_t n = kq->ntimers - 1;
    __atomic_store_n(&kq->ntimers, n, __ATOMIC_RELAXED);   /* scan() peeks unlocked */
    if (n == 0)
        kq_attention(kq, TAG_TIMER, 0);
    struct knote *last = kq->timers[n];
    if (last == kn)
        return;
    heap_set(kq, i, last);
    heap_down(kq, i);
    heap_up(kq, last->u.timer.heap_index);
}

/* ---- timerfd ------------------------------------------------------- */

static void timer_init(struct kq *kq)
{
    kq->timer_fd = -1;
    kq->timer_armed = -1;
}

static void timer_close_fds(struct kq *kq)
{
    if (kq->timer_fd >= 0)
        close(kq->timer_fd);
    kq->timer_fd = -1;
}

static void timer_destroy(struct kq *kq)
{
    free(kq->timers);
    kq->timers = NULL;
}

/* The timerfd, made by the first timer; every later timer tries again
 * while it could not be made.  Timers fire without it (see
 * timer_polled).  0 or -errno. */
static int timer_fd_ensure(struct kq *kq)
{
    if (kq->timer_fd >= 0)
        return 0;
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    int err = kq_watch_internal(kq, fd, EPOLLIN, EP_DATA(TAG_TIMER, 0, 0));
    if (err == 0)
        __atomic_store_n(&kq->timer_fd, fd, __ATOMIC_RELAXED);   /* scan() peeks unlocked */
    return err;
}

/* Arm the timerfd at the earliest deadline (only when that changed).
 * 0 or -errno. */
static int timer_rearm(struct kq *kq)
{
    int64_t want = kq->ntimers ? kq->timers[0]->u.timer.deadline : -1;
    if (want == kq->timer_armed || kq->timer_fd < 0)
        return 0;
    struct itimerspec its = { { 0, 0 }, { 0, 0 } };
    if (want >= 0) {
        its.it_value.tv_sec = want / 1000000000;
        its.it_value.tv_nsec = want % 1000000000;
        if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
            its.it_value.tv_nsec = 1;   /* zero would disarm */
    }
    if (timerfd_settime(kq->timer_fd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        return -errno;
    kq->timer_armed = want;
    return 0;
}

/* Move every timer whose deadline has passed to the pending list. */
static void timers_expire(struct kq *kq, int64_t now)
{
    while (kq->ntimers > 0 && kq->timers[0]->u.timer.deadline <= now) {
        struct knote *kn = kq->timers[0];
        int64_t period = kn->u.timer.period;
        if (period > 0) {
            /* Count every period that elapsed, including overruns. */
            int64_t overdue = now - kn->u.timer.deadline;
            int64_t fired = 1 + overdue / period;
            kn->u.timer.count += fired;
            kn->u.timer.deadline = sat_add(kn->u.timer.deadline,
                                           fired > INT64_MAX / period ? INT64_MAX : fired * period);
            heap_down(kq, 0);
        } else {
            kn->u.timer.count += 1;
            heap_remove(kq, kn);
        }
        kn->status |= KN_ACTIVE;
        /* A disabled timer keeps counting and reports when enabled. */
        if (!(kn->status & KN_DISABLED))
            kq_enqueue(kq, kn);
    }
}

/* The timerfd fired (its item is in the wait set). */
static int timer_ready(struct kq *kq, uint64_t data, uint32_t revents, struct kevent *out,
                       int room)
{
    (void)data;
    (void)revents;
    (void)out;
    (void)room;
    uint64_t ticks;
    (void)!read(kq->timer_fd, &ticks, sizeof ticks);
    kq->timer_armed = -1;   /* timerfd fired: it is disarmed now */
    timers_expire(kq, kq_now());
    return 0;
}

/* busy: timers may have passed their deadline (the wait looks first). */
static int timer_busy(const struct kq *kq)
{
    return __atomic_load_n(&kq->ntimers, __ATOMIC_RELAXED) > 0;
}

/* polled: timers without a timerfd (it could not be made: EMFILE).
 * Nothing wakes the wait at their deadline, so it ends there by itself;
 * after it, collect expires them. */
static int timer_polled(const struct kq *kq)
{
    return __atomic_load_n(&kq->timer_fd, __ATOMIC_RELAXED) < 0 &&
           __atomic_load_n(&kq->ntimers, __ATOMIC_RELAXED) > 0;
}

static int64_t timer_next_look(struct kq *kq, int64_t now)
{
    (void)now;
    if (kq->timer_fd >= 0 || kq->ntimers == 0)
        return -1;
    return kq->timers[0]->u.timer.deadline;
}

/* ---- filter -------------------------------------------------------- */

/* Turn (data, fflags) into a first deadline and a period. */
static int timer_params(const struct knote *kn, const struct kevent *kev,
                        int64_t *deadline, int64_t *period)
{
    int64_t unit;
    if (kev->fflags & ~(uint32_t)NOTE_TIMER_VALID)
        return -EINVAL;     /* NOTE_TRIGGER, stray bits: FreeBSD refuses them */
    switch (kev->fflags & NOTE_UNITS) {
    case 0:
    case NOTE_MSECONDS: unit = 1000000; break;
    case NOTE_SECONDS:  unit = 1000000000; break;
    case NOTE_USECONDS: unit = 1000; break;
    case NOTE_NSECONDS: unit = 1; break;
    default:            return -EINVAL;  /* more than one unit */
    }
    if (kev->data < 0)
        return -EINVAL;
    int64_t data = (int64_t)kev->data;
    /* FreeBSD: "kn_sdata = 1" -- a timer of 0 that repeats runs every unit
     * (1 ms by default, 1 s with NOTE_SECONDS); only EV_ONESHOT fires at once. */
    if (data == 0 && !(kn->kev.flags & EV_ONESHOT))
        data = 1;
    int64_t ns = data > INT64_MAX / unit ? INT64_MAX : data * unit;
    int64_t now = kq_now();

    if (kev->fflags & NOTE_ABSTIME) {
        struct timespec rt;
        clock_gettime(CLOCK_REALTIME, &rt);
        int64_t real_now = (int64_t)rt.tv_sec * 1000000000 + rt.tv_nsec;
        *deadline = ns <= real_now ? now : sat_add(now, ns - real_now);
        *period = 0;                    /* an absolute time fires once */
    } else if (kn->kev.flags & EV_ONESHOT) {
        *deadline = sat_add(now, ns);
        *period = 0;
    } else {
        /* Periods below a microsecond (NOTE_NSECONDS) run at one. */
        *period = ns < MIN_PERIOD_NS ? MIN_PERIOD_NS : ns;
        *deadline = sat_add(now, *period);
    }
    return 0;
}

static int timer_start(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    int64_t deadline, period;
    int err = timer_params(kn, kev, &deadline, &period);
    if (err)
        return err;
    if ((err = heap_reserve(kq)) != 0)
        return err;
    kn->kev.fflags = kev->fflags;
    kn->kev.data = kev->data;
    kn->u.timer.deadline = deadline;
    kn->u.timer.period = period;
    kn->u.timer.count = 0;
    heap_push(kq, kn);
    return 0;
}

static int timer_attach(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    /* A timer needs no descriptor to fire (as on FreeBSD): without one,
     * the wait ends at the earliest deadline by itself (timer_polled).
     * What is missing meanwhile: the queue's descriptor does not poll
     * readable for a timer, and a thread already blocked is not woken
     * early for a timer another thread adds. */
    (void)timer_fd_ensure(kq);
    /* Implied for relative timers only, as FreeBSD's filt_timerattach: an
     * absolute timer that fired stays active (reported by every kevent())
     * until it is deleted, unless the caller asked for EV_CLEAR. */
    if (!(kev->fflags & NOTE_ABSTIME))
        kn->kev.flags |= EV_CLEAR;
    kn->u.timer.heap_index = SIZE_MAX;
    return timer_start(kq, kn, kev);
}

static int timer_modify(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    if (!(kev->flags & EV_ADD))
        return 0;
    /* Re-adding restarts the timer and forgets unreported expirations. */
    int64_t deadline, period;
    int err = timer_params(kn, kev, &deadline, &period);
    if (err)
        return err;
    heap_remove(kq, kn);
    kq_dequeue(kq, kn);
    kn->status &= ~KN_ACTIVE;
    return timer_start(kq, kn, kev);
}

static void timer_detach(struct kq *kq, struct knote *kn)
{
    heap_remove(kq, kn);
}

static int timer_deliver(struct kq *kq, struct knote *kn, struct kevent *out)
{
    (void)kq;
    if (kn->u.timer.count == 0) {
        kn->status &= ~KN_ACTIVE;
        return 0;
    }
    *out = kn->kev;
    /* FreeBSD's kqueue_register() keeps fflags and data apart (kn_sfflags,
     * kn_sdata) and zeroes them in the kevent it reports; a timer never
     * sets kn_fflags: fflags 0, data the count. */
    out->fflags = 0;
    out->data = (intptr_t)kn->u.timer.count;
    if (kn->kev.flags & EV_CLEAR) {
        kn->u.timer.count = 0;
        kn->status &= ~KN_ACTIVE;
    }   /* else level-triggered (NOTE_ABSTIME): stays active, count kept */
    return 1;
}

const struct filter_ops kq_timer_ops = {
    .filter = EVFILT_TIMER,
    .tag = TAG_TIMER,
    .flags = FILT_WANTS_WAKE | FILT_READY_BATCH,
    .init = timer_init,
    .close_fds = timer_close_fds,
    .destroy = timer_destroy,
    .attach = timer_attach,
    .modify = timer_modify,
    .detach = timer_detach,
    .deliver = timer_deliver,
    .ready = timer_ready,
    .rearm = timer_rearm,
    .busy = timer_busy,
    .collect = timers_expire,
    .polled = timer_polled,
    .next_look = timer_next_look,
};
