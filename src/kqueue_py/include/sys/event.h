/*
 * kqueue_py's <sys/event.h> for Linux.
 *
 * The kqueue(2) API with FreeBSD's numbering and the 32-byte
 * struct kevent layout shared by macOS and libkqueue (LP64).  The
 * implementation is the C files of csrc/, built on epoll, eventfd,
 * timerfd, pidfd and inotify.  Filters: READ, WRITE, TIMER, USER, SIGNAL,
 * PROC (NOTE_EXIT only: NOTE_FORK, NOTE_EXEC and NOTE_TRACK fail with
 * EINVAL) and VNODE; see filter_*.c for each one's Linux specifics
 * (notably how EVFILT_SIGNAL coexists with signal handlers).  Filters
 * not implemented (EVFILT_AIO, ...) are not declared; an unknown filter
 * number fails with EINVAL.
 */
#ifndef KQUEUE_PY_SYS_EVENT_H
#define KQUEUE_PY_SYS_EVENT_H

#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

struct kevent {
    uintptr_t ident;   /* identifier for this event (fd, timer id, ...) */
    int16_t   filter;  /* EVFILT_* */
    uint16_t  flags;   /* EV_* action and state flags */
    uint32_t  fflags;  /* filter-specific flags (NOTE_*) */
    intptr_t  data;    /* filter-specific data */
    void     *udata;   /* opaque user data, returned unchanged */
};

#define EV_SET(kevp, a, b, c, d, e, f) do {     \
        struct kevent *ev_set_p__ = (kevp);     \
        ev_set_p__->ident = (a);                \
        ev_set_p__->filter = (b);               \
        ev_set_p__->flags = (c);                \
        ev_set_p__->fflags = (d);               \
        ev_set_p__->data = (e);                 \
        ev_set_p__->udata = (f);                \
    } while (0)

/* Filters (FreeBSD numbering). */
#define EVFILT_READ     (-1)
#define EVFILT_WRITE    (-2)
#define EVFILT_VNODE    (-4)
#define EVFILT_PROC     (-5)
#define EVFILT_SIGNAL   (-6)
#define EVFILT_TIMER    (-7)
#define EVFILT_USER     (-11)
#define EVFILT_SYSCOUNT 13

/* Actions. */
#define EV_ADD          0x0001  /* add event to kq (implies enable) */
#define EV_DELETE       0x0002  /* delete event from kq */
#define EV_ENABLE       0x0004  /* enable event */
#define EV_DISABLE      0x0008  /* disable event (not reported) */
#define EV_KEEPUDATA    0x0200  /* do not update the udata field */

/* Flags. */
#define EV_ONESHOT      0x0010  /* only report one occurrence */
#define EV_CLEAR        0x0020  /* clear event state after reporting */
#define EV_RECEIPT      0x0040  /* force EV_ERROR on success, data=0 */
#define EV_DISPATCH     0x0080  /* disable event after reporting */

/* Returned values. */
#define EV_SYSFLAGS     0xF000
#define EV_ERROR        0x4000  /* error, data contains errno */
#define EV_EOF          0x8000  /* EOF detected */

/* EVFILT_USER: input fflags control and trigger. */
#define NOTE_FFNOP      0x00000000
#define NOTE_FFAND      0x40000000
#define NOTE_FFOR       0x80000000
#define NOTE_FFCOPY     0xc0000000
#define NOTE_FFCTRLMASK 0xc0000000
#define NOTE_FFLAGSMASK 0x00ffffff
#define NOTE_TRIGGER    0x01000000

/* EVFILT_READ / EVFILT_WRITE. */
#define NOTE_LOWAT      0x0001
/* kqueue_py extension (Linux backend only): report readiness without
 * computing data (data = 0), saving one ioctl per event. */
#define NOTE_NODATA     0x40000000

/* EVFILT_VNODE. */
#define NOTE_DELETE     0x0001
#define NOTE_WRITE      0x0002
#define NOTE_EXTEND     0x0004
#define NOTE_ATTRIB     0x0008
#define NOTE_LINK       0x0010
#define NOTE_RENAME     0x0020
#define NOTE_REVOKE     0x0040

/* EVFILT_PROC. */
#define NOTE_EXIT       0x80000000U
#define NOTE_FORK       0x40000000
#define NOTE_EXEC       0x20000000
#define NOTE_PCTRLMASK  0xf0000000U
#define NOTE_PDATAMASK  0x000fffff
#define NOTE_TRACK      0x00000001
#define NOTE_TRACKERR   0x00000002
#define NOTE_CHILD      0x00000004

/* EVFILT_TIMER units; milliseconds when none is given. */
#define NOTE_SECONDS    0x00000001
#define NOTE_MSECONDS   0x00000002
#define NOTE_USECONDS   0x00000004
#define NOTE_NSECONDS   0x00000008
#define NOTE_ABSTIME    0x00000010  /* data is an absolute (CLOCK_REALTIME) time */

#define KQ_API __attribute__((visibility("default")))

KQ_API int kqueue(void);
KQ_API int kevent(int kq, const struct kevent *changelist, int nchanges,
           struct kevent *eventlist, int nevents,
           const struct timespec *timeout);
/* Release a queue made by kqueue(): closes its descriptor, frees its
 * state and wakes (with EBADF) every thread blocked in kevent() on it. */
KQ_API int kqueue_close(int kq);
/* kqueue_py extension: which queue a descriptor is right now (unique in the
 * process, never reused), 0 if none.  Lets an owner check that a number it
 * holds still names its queue before closing it. */
KQ_API uint64_t kqueue_py_queue_id(int kq);
/* kqueue_py extension: copy (and forget) up to cap udata values of
 * registrations the backend removed on its own because their descriptor
 * was closed or its number reused (never those removed by EV_DELETE or by
 * delivering an EV_ONESHOT event).  Returns how many, or -1 with errno
 * (EBADF: not a queue).  At most 65536 are kept between calls. */
KQ_API int kqueue_py_take_dropped(int kq, uint64_t *udata, int cap);
/* kqueue_py extension: 1 if this process batches the per-event system
 * calls of kevent() (identity probes, READ counts) through io_uring, 0 if
 * it makes them one by one (no io_uring, or KQUEUE_PY_IO_URING=0 in the
 * environment when it was first asked). */
KQ_API int kqueue_py_io_uring(void);
/* kqueue_py extension: kevent() with the timeout in nanoseconds (< 0:
 * forever, 0: poll), turned into a deadline once, and the error returned
 * as -errno instead of -1 and errno. */
KQ_API int kqueue_py_kevent(int kq, const struct kevent *changelist, int nchanges,
                            struct kevent *eventlist, int nevents, int64_t timeout_ns);

#ifdef __cplusplus
}
#endif
#endif /* KQUEUE_PY_SYS_EVENT_H */
