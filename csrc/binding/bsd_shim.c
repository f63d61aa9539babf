/*
 * The BSD/macOS kqueue_py_kevent over the kernel's kevent().
 *
 * The kernel's kevent() takes a timespec: the BSD shim makes one from the
 * nanoseconds (see the cdef's comment on kqueue_py_kevent).  The Linux
 * backend implements kqueue_py_kevent itself and turns the nanoseconds
 * straight into the deadline it waits for (csrc/kqueue.c).
 *
 * Part of the cffi module's own C (build_kqueue.py pastes it after cffi's
 * <Python.h> and the platform source), not a translation unit of its own.
 */
#include <errno.h>
#include <stdint.h>
static int kqueue_py_kevent(int kq, const struct kevent *changelist, int nchanges,
                            struct kevent *eventlist, int nevents, int64_t timeout_ns)
{
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tsp = &ts;
    }
    int n = kevent(kq, changelist, nchanges, eventlist, nevents, tsp);
    return n >= 0 ? n : -errno;
}
