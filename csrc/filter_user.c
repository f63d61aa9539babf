/*
 * EVFILT_USER: events triggered by the program itself (NOTE_TRIGGER),
 * typically from another thread to wake a loop.  Pure userspace: a
 * trigger puts the knote on the pending list, which makes the queue's
 * wake eventfd readable and so wakes any thread blocked in kevent().
 *
 * fflags: the low 24 bits are kept and combined by NOTE_FFAND / NOTE_FFOR /
 * NOTE_FFCOPY (NOTE_FFNOP leaves them); data is the last change's data.
 * Without EV_CLEAR a triggered event stays triggered (level), as on BSD.
 */
#include "kq_internal.h"

static void user_touch(struct knote *kn, const struct kevent *kev)
{
    uint32_t value = kev->fflags & NOTE_FFLAGSMASK;
    switch (kev->fflags & NOTE_FFCTRLMASK) {
    case NOTE_FFAND:  kn->u.user.fflags &= value; break;
    case NOTE_FFOR:   kn->u.user.fflags |= value; break;
    case NOTE_FFCOPY: kn->u.user.fflags = value; break;
    default:          break;   /* NOTE_FFNOP */
    }
    kn->kev.data = kev->data;
    if (kev->fflags & NOTE_TRIGGER)
        kn->status |= KN_ACTIVE;
}

static int user_attach(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    (void)kq;
    kn->u.user.fflags = kev->fflags & NOTE_FFLAGSMASK;
    kn->kev.fflags = 0;
    user_touch(kn, kev);
    return 0;
}

static int user_modify(struct kq *kq, struct knote *kn, const struct kevent *kev)
{
    (void)kq;
    user_touch(kn, kev);
    /* FreeBSD: a change carrying EV_CLEAR resets the trigger state. */
    if (kev->flags & EV_CLEAR)
        kn->status &= ~KN_ACTIVE;
    return 0;
}

static void user_detach(struct kq *kq, struct knote *kn)
{
    (void)kq;
    (void)kn;
}

static int user_deliver(struct kq *kq, struct knote *kn, struct kevent *out)
{
    (void)kq;
    if (!(kn->status & KN_ACTIVE))
        return 0;
    *out = kn->kev;
    out->fflags = kn->u.user.fflags;
    if (kn->kev.flags & EV_CLEAR)
        kn->status &= ~KN_ACTIVE;
    return 1;
}

const struct filter_ops kq_user_ops = {
    .filter = EVFILT_USER,
    .tag = TAG_USER,
    /* A trigger from another thread must wake a blocked kevent(), which
     * only the wake eventfd can do: no registration without it. */
    .flags = FILT_NEEDS_WAKE,
    .attach = user_attach,
    .modify = user_modify,
    .detach = user_detach,
    .deliver = user_deliver,
};
