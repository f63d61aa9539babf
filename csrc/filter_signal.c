/*
 * EVFILT_SIGNAL: ident is a signal number, data the number of deliveries
 * since the last report.  EV_CLEAR is implied, as on FreeBSD.
 *
 * On BSD the kernel records a delivery for kqueue *after* normal signal
 * processing: the program's handler still runs, and a signal set to
 * SIG_IGN is still recorded.  Linux has no such hook, and the obvious
 * tools do not fit: a signalfd only sees signals that are blocked and
 * pending, and blocking a signal would starve the program's own handler
 * (Python's among them).  So:
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
 *     gets the original dispositions back: see kq_signal_atfork_child);
 *   - standard signals sent while one is already pending are merged by
 *     the kernel before delivery, so data counts deliveries, as on BSD.
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
#include <unistd.h>

#include "kq_internal.h"

struct sig_slot {
    uint64_t count;             /* deliveries seen by the hook (atomic) */
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
    __atomic_add_fetch(&s->count, 1, __ATOMIC_RELEASE);
    int fd = __atomic_load_n(&sig_event_fd, __ATOMIC_ACQUIRE);
    if (fd >= 0) {
        uint64_t one = 1;
        (void)!write(fd, &one, sizeof one);
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
 * set since).  Returns 0 or an errno value. */
static int hook_sync(int sig)
{
    struct sig_slot *s = &slots[sig];
    struct sigaction cur, hook;
    if (sigaction(sig, NULL, &cur) < 0)
        return errno;
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
        return errno;
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
    if (sig_event_fd >= 0)
        return 0;
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return errno;
    __atomic_store_n(&sig_event_fd, fd, __ATOMIC_RELEASE);
    return 0;
}

/*
 * fork(): the child has no queues.  Put back the dispositions the hooks
 * replaced, and drop the eventfd (shared with the parent, whose queues
 * would otherwise see the child's signals as wake-ups).  Only this thread
 * exists in the child; the lock may have been held by a vanished one.
 */
void kq_signal_atfork_child(void)
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
    return __atomic_load_n(&slots[sig].count, __ATOMIC_ACQUIRE);
}

static int ep_signal(struct kq *kq, int op)
{
    struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.u64 = EP_DATA(TAG_SIGNAL, 0, 0) };
    return epoll_ctl(kq->waitfd, op, sig_event_fd, &ev) < 0 ? errno : 0;
}

static int signal_attach(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    if (!valid_signal(kev->ident))
        return EINVAL;
    int sig = (int)kev->ident;
    kn->kev.flags |= EV_CLEAR;      /* implied, as on FreeBSD */
    kn->kev.fflags = 0;
    kn->kev.data = 0;

    pthread_mutex_lock(&sig_lock);
    int err = event_fd_ensure();
    int added = 0;
    if (err == 0 && kq->signals == NULL) {
        kq_fd_forget(kq, sig_event_fd);   /* a stale READ/WRITE knote on its number */
        err = ep_signal(kq, EPOLL_CTL_ADD);
        added = err == 0;
    }
    if (err == 0)
        err = hook_sync(sig);
    if (err == 0) {
        slots[sig].watchers++;
        /* Count from now on: deliveries before the registration are not
         * this knote's. */
        kn->u.sig.seen = count_of(sig);
        kn->u.sig.count = 0;
    } else if (added) {
        ep_signal(kq, EPOLL_CTL_DEL);
    }
    pthread_mutex_unlock(&sig_lock);
    if (err)
        return err;
    kn->u.sig.next = kq->signals;
    kq->signals = kn;
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
    *pp = kn->u.sig.next;

    int sig = (int)kn->kev.ident;
    pthread_mutex_lock(&sig_lock);
    if (--slots[sig].watchers == 0)
        hook_release(sig);
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

/* The signal eventfd had an edge: some watched signal (of this queue or
 * another) was delivered.  Lock held. */
void kq_signal_ready(struct kq *kq)
{
    for (struct knote *kn = kq->signals; kn != NULL; kn = kn->u.sig.next) {
        if (!signal_catch_up(kn))
            continue;
        kn->status |= KN_ACTIVE;
        /* A disabled registration keeps counting and reports when enabled. */
        if (!(kn->status & KN_DISABLED))
            kq_enqueue(kq, kn);
    }
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
    .attach = signal_attach,
    .modify = signal_modify,
    .detach = signal_detach,
    .deliver = signal_deliver,
};
