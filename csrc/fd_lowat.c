/*
 * WRITE registrations below their NOTE_LOWAT mark.  Nothing wakes epoll
 * when free space grows past an arbitrary mark (a pipe wakes writers only
 * when it was full, TCP only once after running out of space), so such a
 * registration goes on a list that kevent() re-polls every
 * KQ_LOWAT_POLL_NS while it waits.
 */
#define _GNU_SOURCE
#include <errno.h>

#include "fd_internal.h"

/* ------------------------------------------------------------------ */
/* Side lists: regular files, WRITE knotes waiting for their mark.     */

void fd_lowat_unwait(struct kq *kq, struct knote *kn)
{
    if (kn->status & KN_LOWWAIT) {
        kn->status &= ~KN_LOWWAIT;
        fd_list_remove(&kq->lowat_wait, kn);
        if (kq->lowat_wait == NULL)
            kq_attention(kq, TAG_WRITE, 0);
    }
}

void fd_lowat_wait(struct kq *kq, struct knote *kn)
{
    if (kn->status & KN_LOWWAIT)
        return;
    if (kq->lowat_wait == NULL) {
        kq->lowat_next = kq_now() + KQ_LOWAT_POLL_NS;
        kq_attention(kq, TAG_WRITE, 1);
    }
    kn->status |= KN_LOWWAIT;
    kn->u.fd.next = kq->lowat_wait;
    kq->lowat_wait = kn;
}

/* The wait loop's periodic look at WRITE knotes below their NOTE_LOWAT
 * mark: re-arming one makes epoll report it again if it is writable at
 * all, and delivery compares the free space with the mark.  Lock held. */
static void lowat_repoll(struct kq *kq, int64_t now)
{
    if (kq->lowat_wait == NULL || now < kq->lowat_next)
        return;
    struct knote *kn = kq->lowat_wait;
    kq->lowat_wait = NULL;
    while (kn != NULL) {
        struct knote *next = kn->u.fd.next;
        kn->status &= ~KN_LOWWAIT;
        kn->u.fd.next = NULL;
        if ((kn->status & (KN_INEPOLL | KN_DISABLED)) == KN_INEPOLL) {
            struct epoll_event ev = fd_wanted(kn);
            if (kq_set_mod(kq, fd_kind_of(kn), kn->u.fd.set, (int)kn->kev.ident, &ev) < 0 &&
                kq_life_check(kq, (int)kn->kev.ident) != 0) {
                /* Its number no longer names the file: it died with it
                 * (and so did a READ registration on the number). */
                kq_knote_stale(kq, kn);
            }
        }
        kn = next;
    }
    kq->lowat_next = now + KQ_LOWAT_POLL_NS;
    if (kq->lowat_wait == NULL)
        kq_attention(kq, TAG_WRITE, 0);
}

/* polled / next_look: nothing wakes epoll when free space grows past a
 * WRITE registration's mark, so the wait looks again every
 * KQ_LOWAT_POLL_NS while one waits below it. */
int fd_write_polled(const struct kq *kq)
{
    return __atomic_load_n(&kq->lowat_wait, __ATOMIC_RELAXED) != NULL;
}

int64_t fd_write_next_look(struct kq *kq, int64_t now)
{
    lowat_repoll(kq, now);
    return kq->lowat_wait != NULL ? kq->lowat_next : -1;
}
