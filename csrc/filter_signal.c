/*
 * EVFILT_SIGNAL: ident is a signal number, data the number of signals
 * generated since the last report.  EV_CLEAR is implied, as on FreeBSD.
 *
 * FreeBSD records a signal for kqueue when it is generated (tdsendsignal()
 * posts NOTE_SIGNAL before looking at the mask or the disposition): the
 * program's handler still runs, a signal set to SIG_IGN is still recorded,
 * and a blocked one is recorded at once.  Linux has no such hook, and the
 * obvious tools do not fit: a signalfd only sees signals that are blocked
 * and pending (reading it takes them), and blocking a signal would starve
 * the program's own handler (Python's among them).  So:
 *
 *   - A small process-wide hook (sig_hook) is installed with sigaction()
 *     for each watched signal.  It counts the delivery (an atomic
 *     increment of a per-signal counter), writes to one process-wide
 *     eventfd, then chains to the disposition it replaced: the previous
 *     handler (Python's C-level handler, say) is called with the same
 *     arguments, so it still runs; SIG_IGN, and SIG_DFL of a signal whose
 *     default is to ignore it, do nothing.  Everything in the hook is
 *     async-signal-safe (atomics, write(2)) and it keeps errno.
 *   - The hook copies the replaced handler's sa_mask and sa_flags
 *     (SA_RESTART, SA_ONSTACK, SA_NODEFER, SA_RESETHAND, ...), so system
 *     call restarting behaves as the program arranged.  In place of
 *     SIG_IGN / SIG_DFL it uses SA_RESTART, the least intrusive choice.
 *   - Every queue watching any signal has that eventfd in its epoll set,
 *     edge-triggered, and never reads it: each write gives every queue an
 *     edge, on which the queue compares the counters of the signals it
 *     watches with what it saw last.  The hook touches no per-queue
 *     state, so closing queues never races with it.
 *   - Blocked signals: a process-wide signalfd over the watched signals,
 *     never read, sits in the same queues' sets; a watched signal found
 *     pending is counted then, and marked so that its delivery is not
 *     counted again (see observe()).
 *
 * Dispositions that are not hooked (the registration still succeeds):
 *   - SIG_DFL of a signal whose default terminates or stops the process:
 *     the signal takes its default action, as on BSD (where kqueue does
 *     not prevent termination either), and is not counted.
 *   - SIGCHLD set to SIG_IGN: FreeBSD does not record it either, and a
 *     hook would turn off automatic reaping of children.
 *
 * Interaction with signal.signal() / sigaction() (documented limitation):
 * installing a handler *after* registering replaces the hook, and the
 * signal stops being counted (the new handler runs normally).  Every
 * EV_ADD of an EVFILT_SIGNAL registration, new or existing, re-checks the
 * disposition and re-installs the hook over the new handler.  So: install
 * handlers first, then register; or re-add (EV_ADD) the registration
 * after changing a handler.  When the last registration for a signal goes
 * away, the replaced disposition is put back, unless someone changed the
 * disposition since.
 *
 * Other differences from BSD:
 *   - a hooked signal that was SIG_IGN or default-ignored now interrupts
 *     blocking calls (epoll_wait, and so kevent(), fail with EINTR even
 *     with SA_RESTART);
 *   - a program started with exec() after fork() inherits SIG_DFL, not
 *     SIG_IGN, for a hooked signal that was ignored (a fork child itself
 *     gets the original dispositions back: see signal_atfork_child);
 *   - a standard signal sent while one is already pending is merged by
 *     the kernel and counted once (FreeBSD counts each); a realtime
 *     signal queued n times while blocked counts 1 at once and n - 1 as
 *     they are delivered;
 *   - a signal sent to another thread that blocks it is counted only at
 *     delivery: a thread's own pending signals are visible only to it;
 *   - a blocked signal taken by sigwait() (or a signalfd) is noticed gone
 *     at the next kevent() on a watching queue; taken and sent again
 *     between two such calls, the two count once, and one taken before
 *     any such call looked is not counted.
 *   - when a queue starts watching signals, the eventfd may already be
 *     readable (from earlier signals), which gives that queue one
 *     spurious wake-up: its descriptor polls readable and kevent() finds
 *     no event.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "kq_internal.h"

struct sig_slot {
    /* (count << 1) | counted_pending, changed only by compare-and-swap.
     * count: signals counted, by the hook at delivery or by
     * observe() while pending.  counted_pending: the instance now
     * pending was counted already, so its delivery must not be. */
    uint64_t state;
    int watchers;               /* registrations over all queues (sig_lock) */
    int prev_index;             /* which prev[] the hook chains to (atomic) */
    /* The disposition the hook replaced.  A re-hook writes the slot not
     * in use, then flips prev_index, so a hook running meanwhile on
     * another thread never reads a half-written sigaction. */
    struct sigaction prev[2];
};

static struct sig_slot slots[_NSIG];
static pthread_mutex_t sig_lock = PTHREAD_MUTEX_INITIALIZER;
static int sig_event_fd = -1;   /* written by the hook; atomic loads */
/* A signalfd over the watched signals, never read: it polls readable
 * while one of them is pending (blocked), and every signal sent to the
 * process gives the queues an edge on it.  sig_lock. */
static int sig_pending_fd = -1;
static sigset_t sig_watched;    /* sig_lock */
/* Signals whose counted_pending bit is set (atomic): while non-zero,
 * every kevent() on a queue watching signals looks at the pending set
 * (see signal_busy), to notice an instance consumed by sigwait(). */
static int counted_pending_total;

/* ---- the hook (async-signal-safe) ---------------------------------- */

/* SIG_DFL / SIG_IGN, whatever sa_flags say (sa_handler and sa_sigaction
 * share storage, so SA_SIGINFO with SIG_DFL is a null function). */
static int is_default_or_ignore(const struct sigaction *sa)
{
    return sa->sa_handler == SIG_DFL || sa->sa_handler == SIG_IGN;
}

static void sig_hook(int sig, siginfo_t *info, void *ctx)
{
    int saved_errno = errno;
    struct sig_slot *s = &slots[sig];
    /* Count the delivery, unless it is of an instance counted while it
     * was pending: then only say it is no longer pending. */
    uint64_t w = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE), next;
    do
        next = (w & 1) ? w & ~(uint64_t)1 : w + 2;
    while (!__atomic_compare_exchange_n(&s->state, &w, next, 1, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE));
    if (w & 1) {
        __atomic_sub_fetch(&counted_pending_total, 1, __ATOMIC_RELAXED);
    } else {
        int fd = __atomic_load_n(&sig_event_fd, __ATOMIC_ACQUIRE);
        if (fd >= 0) {
            uint64_t one = 1;
            (void)!write(fd, &one, sizeof one);
        }
    }
    errno = saved_errno;

    const struct sigaction *prev = &s->prev[__atomic_load_n(&s->prev_index, __ATOMIC_ACQUIRE)];
    if (is_default_or_ignore(prev))
        return;     /* SIG_IGN, or SIG_DFL of a default-ignored signal */
    if (prev->sa_flags & SA_SIGINFO)
        prev->sa_sigaction(sig, info, ctx);
    else
        prev->sa_handler(sig);
}

/* ---- installing and removing the hook (sig_lock held) ---------------- */

static int is_hook(const struct sigaction *sa)
{
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == sig_hook;
}

static int default_ignores(int sig)
{
    return sig == SIGCHLD || sig == SIGURG || sig == SIGWINCH || sig == SIGCONT;
}

/* Should the hook replace this disposition?  See the header comment. */
static int hookable(int sig, const struct sigaction *cur)
{
    if (cur->sa_handler == SIG_DFL)
        return default_ignores(sig);
    if (cur->sa_handler == SIG_IGN)
        return sig != SIGCHLD;
    return 1;
}

/* Make sure the hook is installed for sig (re-installing it over a handler
 * set since).  Returns 0 or -errno. */
static int hook_sync(int sig)
{
    struct sig_slot *s = &slots[sig];
    struct sigaction cur, hook;
    if (sigaction(sig, NULL, &cur) < 0)
        return -errno;
    if (is_hook(&cur) || !hookable(sig, &cur))
        return 0;

    int next = !__atomic_load_n(&s->prev_index, __ATOMIC_RELAXED);
    s->prev[next] = cur;
    __atomic_store_n(&s->prev_index, next, __ATOMIC_RELEASE);

    memset(&hook, 0, sizeof hook);
    hook.sa_sigaction = sig_hook;
    hook.sa_mask = cur.sa_mask;
    if (is_default_or_ignore(&cur))
        hook.sa_flags = SA_RESTART | (cur.sa_flags & (SA_NOCLDSTOP | SA_NOCLDWAIT | SA_ONSTACK));
    else
        hook.sa_flags = cur.sa_flags;   /* keep the handler's EINTR behaviour */
    hook.sa_flags |= SA_SIGINFO;
    if (sigaction(sig, &hook, NULL) < 0)
        return -errno;
    return 0;
}

/* The last registration went: put back what the hook replaced, unless
 * the disposition was changed since (then it is not ours to touch). */
static void hook_release(int sig)
{
    struct sigaction cur;
    if (sigaction(sig, NULL, &cur) == 0 && is_hook(&cur))
        sigaction(sig, &slots[sig].prev[slots[sig].prev_index], NULL);
}

static int event_fd_ensure(void)
{
    if (sig_pending_fd < 0) {
        sigset_t none;
        sigemptyset(&none);
        sigemptyset(&sig_watched);
        sig_pending_fd = signalfd(-1, &none, SFD_CLOEXEC | SFD_NONBLOCK);
        if (sig_pending_fd < 0)
            return -errno;
    }
    if (sig_event_fd >= 0)
        return 0;
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return -errno;
    __atomic_store_n(&sig_event_fd, fd, __ATOMIC_RELEASE);
    return 0;
}

/* Add sig to, or remove it from, the signals the signalfd polls. */
static void pending_watch(int sig, int on)
{
    if (on)
        sigaddset(&sig_watched, sig);
    else
        sigdelset(&sig_watched, sig);
    (void)signalfd(sig_pending_fd, &sig_watched, 0);
}

/* One decision of observe() from a state read before the pending set
 * was; returns 0 when another thread or the hook changed the state. */
static int observe_with(int sig, int count, uint64_t w, const sigset_t *pending)
{
    struct sig_slot *s = &slots[sig];
    int is_pending = sigismember(pending, sig) == 1;
    if (is_pending == (int)(w & 1))
        return 1;                           /* nothing new */
    uint64_t next = is_pending ? (w | 1) + (count ? 2 : 0) : w & ~(uint64_t)1;
    if (!__atomic_compare_exchange_n(&s->state, &w, next, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return 0;
    __atomic_add_fetch(&counted_pending_total, is_pending ? 1 : -1, __ATOMIC_RELAXED);
    if (is_pending && count && sig_event_fd >= 0) {
        uint64_t one = 1;   /* the other queues watching it */
        (void)!write(sig_event_fd, &one, sizeof one);
    }
    return 1;
}

/* An ignored SIGCHLD is not recorded on FreeBSD (and not hooked here). */
static int unrecorded(int sig)
{
    struct sigaction cur;
    return sig == SIGCHLD && sigaction(sig, NULL, &cur) == 0 && cur.sa_handler == SIG_IGN;
}

/*
 * FreeBSD counts a signal when it is generated, even while it is blocked.
 * The hook only sees deliveries, so the watched signals pending now are
 * counted here, and marked so that their delivery is not counted again;
 * a mark whose signal is no longer pending (taken by sigwait(),
 * sigwaitinfo() or a signalfd read, or discarded) is dropped.  Only what
 * this thread can see is judged: the process's pending signals and the
 * calling thread's own.  With count = 0 (a first registration), pending
 * signals are marked without being counted: FreeBSD does not count a
 * signal generated before the registration, at delivery or ever.
 *
 * Each decision is a compare-and-swap from the state read *before*
 * sigpending(): if the hook delivered the signal in between, the state
 * changed, the swap fails and the signal is looked at again.  sig_lock.
 */
static void observe(int sig, int count)
{
    if (unrecorded(sig))
        return;
    for (int tries = 0; tries < 16; tries++) {
        uint64_t w = __atomic_load_n(&slots[sig].state, __ATOMIC_ACQUIRE);
        sigset_t pending;
        if (sigpending(&pending) < 0 || observe_with(sig, count, w, &pending))
            return;
    }
}

static void observe_all(void)
{
    /* One sigpending() for all; a signal whose state changed meanwhile is
     * looked at again on its own. */
    uint64_t before[_NSIG];
    for (int sig = 1; sig < _NSIG; sig++)
        before[sig] = __atomic_load_n(&slots[sig].state, __ATOMIC_ACQUIRE);
    sigset_t pending;
    if (sigpending(&pending) < 0)
        return;
    for (int sig = 1; sig < _NSIG; sig++) {
        if (slots[sig].watchers == 0 || unrecorded(sig))
            continue;
        if (!observe_with(sig, 1, before[sig], &pending))
            observe(sig, 1);
    }
}

/*
 * fork(): the child has no queues.  Put back the dispositions the hooks
 * replaced, and drop the eventfd (shared with the parent, whose queues
 * would otherwise see the child's signals as wake-ups).  Only this thread
 * exists in the child; the lock may have been held by a vanished one.
 */
static void signal_atfork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&sig_lock, &fresh, sizeof fresh);
    for (int sig = 1; sig < _NSIG; sig++) {
        if (slots[sig].watchers > 0)
            hook_release(sig);
        slots[sig].watchers = 0;
    }
    int fd = sig_event_fd;
    __atomic_store_n(&sig_event_fd, -1, __ATOMIC_RELEASE);
    if (fd >= 0)
        close(fd);
    if (sig_pending_fd >= 0)
        close(sig_pending_fd);
    sig_pending_fd = -1;
    __atomic_store_n(&counted_pending_total, 0, __ATOMIC_RELAXED);
    for (int sig = 1; sig < _NSIG; sig++)
        slots[sig].state &= ~(uint64_t)1;
}

/* ---- the filter ------------------------------------------------------ */

static int valid_signal(uintptr_t ident)
{
    if (ident < 1 || ident > (uintptr_t)SIGRTMAX || ident >= _NSIG)
        return 0;
    int sig = (int)ident;
    if (sig == SIGKILL || sig == SIGSTOP)
        return 0;
    /* 32 and 33 belong to the C library (thread cancellation, setxid). */
    return sig < 32 || sig >= SIGRTMIN;
}

static uint64_t count_of(int sig)
{
    return __atomic_load_n(&slots[sig].state, __ATOMIC_ACQUIRE) >> 1;
}

/* Put the eventfd and the signalfd into (or out of) a queue's set. */
static int ep_signal(struct kq *kq, int op)
{
    if (op == EPOLL_CTL_DEL) {
        (void)kq_unwatch(kq, sig_event_fd);
        (void)kq_unwatch(kq, sig_pending_fd);
        return 0;
    }
    uint32_t events = EPOLLIN | EPOLLET;
    uint64_t data = EP_DATA(TAG_SIGNAL, 0, 0);
    int err = kq_watch_shared(kq, sig_event_fd, events, data);
    if (err != 0)
        return err;
    if ((err = kq_watch_shared(kq, sig_pending_fd, events, data)) != 0)
        (void)kq_unwatch(kq, sig_event_fd);
    return err;
}

static int signal_attach(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    if (!valid_signal(kev->ident))
        return -EINVAL;
    int sig = (int)kev->ident;
    kn->kev.flags |= EV_CLEAR;      /* implied, as on FreeBSD */
    kn->kev.fflags = 0;
    kn->kev.data = 0;

    pthread_mutex_lock(&sig_lock);
    int err = event_fd_ensure();
    int added = 0;
    if (err == 0 && kq->signals == NULL) {
        err = ep_signal(kq, EPOLL_CTL_ADD);
        added = err == 0;
    }
    if (err == 0)
        err = hook_sync(sig);
    if (err == 0) {
        if (slots[sig].watchers++ == 0)
            pending_watch(sig, 1);
        /* Count from now on: signals generated before the registration are
         * not this knote's.  A first registration marks one pending now as
         * counted (by no one); otherwise it is counted for the others. */
        observe(sig, slots[sig].watchers > 1);
        kn->u.sig.seen = count_of(sig);
        kn->u.sig.count = 0;
    } else if (added) {
        ep_signal(kq, EPOLL_CTL_DEL);
    }
    pthread_mutex_unlock(&sig_lock);
    if (err)
        return err;
    kn->u.sig.next = kq->signals;
    __atomic_store_n(&kq->signals, kn, __ATOMIC_RELAXED);   /* signal_busy() peeks unlocked */
    kq_attention(kq, TAG_SIGNAL, 1);
    return 0;
}

static int signal_modify(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    (void)kq;
    if (!(kev->flags & EV_ADD))
        return 0;
    /* Re-adding re-installs the hook if a handler replaced it since. */
    pthread_mutex_lock(&sig_lock);
    int err = hook_sync((int)kn->kev.ident);
    pthread_mutex_unlock(&sig_lock);
    return err;
}

static void signal_detach(struct kq *kq, struct knote *kn)
{
    struct knote **pp = &kq->signals;
    while (*pp != NULL && *pp != kn)
        pp = &(*pp)->u.sig.next;
    if (*pp == NULL)
        return;
    __atomic_store_n(pp, kn->u.sig.next, __ATOMIC_RELAXED);   /* signal_busy() peeks */
    if (kq->signals == NULL)
        kq_attention(kq, TAG_SIGNAL, 0);

    int sig = (int)kn->kev.ident;
    pthread_mutex_lock(&sig_lock);
    if (--slots[sig].watchers == 0) {
        hook_release(sig);
        pending_watch(sig, 0);
        /* Unwatched: forget a mark (a new first registration re-marks). */
        uint64_t prev = __atomic_fetch_and(&slots[sig].state, ~(uint64_t)1, __ATOMIC_ACQ_REL);
        if (prev & 1)
            __atomic_sub_fetch(&counted_pending_total, 1, __ATOMIC_RELAXED);
    }
    if (kq->signals == NULL && sig_event_fd >= 0)
        ep_signal(kq, EPOLL_CTL_DEL);
    pthread_mutex_unlock(&sig_lock);
}

/* Take the deliveries since the knote last looked.  Returns 1 if any. */
static int signal_catch_up(struct knote *kn)
{
    uint64_t now = count_of((int)kn->kev.ident);
    if (now == kn->u.sig.seen)
        return kn->u.sig.count != 0;
    kn->u.sig.count += now - kn->u.sig.seen;
    kn->u.sig.seen = now;
    return 1;
}

/* The signal eventfd or signalfd had an edge: some watched signal (of
 * this queue or another) was delivered, or sent while blocked.  Also
 * called (as collect) by every kevent() on a queue watching signals while
 * a counted instance is pending (signal_busy).  Lock held. */
static void signal_look(struct kq *kq)
{
    pthread_mutex_lock(&sig_lock);
    observe_all();
    pthread_mutex_unlock(&sig_lock);
    for (struct knote *kn = kq->signals; kn != NULL; kn = kn->u.sig.next) {
        if (!signal_catch_up(kn))
            continue;
        kn->status |= KN_ACTIVE;
        /* A disabled registration keeps counting and reports when enabled. */
        if (!(kn->status & KN_DISABLED))
            kq_enqueue(kq, kn);
    }
}

static int signal_ready(struct kq *kq, uint64_t data, uint32_t revents, struct kevent *out,
                        int room)
{
    (void)data;
    (void)revents;
    (void)out;
    (void)room;
    signal_look(kq);
    return 0;
}

/* busy: does a kevent() on this queue need to look at the pending
 * signals (a counted blocked signal may be gone)?  Unlocked hint. */
static int signal_busy(const struct kq *kq)
{
    return __atomic_load_n(&kq->signals, __ATOMIC_RELAXED) != NULL &&
           __atomic_load_n(&counted_pending_total, __ATOMIC_RELAXED) > 0;
}

static void signal_collect(struct kq *kq, int64_t now)
{
    (void)now;
    if (signal_busy(kq))
        signal_look(kq);
}

static int signal_deliver(struct kq *kq, struct knote *kn, struct kevent *out)
{
    (void)kq;
    kn->status &= ~KN_ACTIVE;
    if (!signal_catch_up(kn))
        return 0;
    *out = kn->kev;
    out->data = (intptr_t)kn->u.sig.count;
    kn->u.sig.count = 0;
    return 1;
}

const struct filter_ops kq_signal_ops = {
    .filter = EVFILT_SIGNAL,
    .tag = TAG_SIGNAL,
    .flags = FILT_NEEDS_WAKE,
    .atfork_child = signal_atfork_child,
    .attach = signal_attach,
    .modify = signal_modify,
    .detach = signal_detach,
    .deliver = signal_deliver,
    .ready = signal_ready,
    .busy = signal_busy,
    .collect = signal_collect,
};
