/*
 * The one-pointer entry point, kqueue_py_call().
 *
 * The fast entry point, on every platform (it calls kqueue_py_kevent: the
 * backend's on Linux, SHIM's elsewhere).  cffi turns a call of a C function
 * of one pointer argument into a single-argument Python call (no argument
 * tuple, one pointer conversion), which costs well under half of the
 * six-argument kqueue_py_kevent() call; the Python layers keep a request
 * per event buffer (or per prepared change) and change a field only when
 * its value changes.  The function only reads the request and returns the
 * result (-errno on failure): a request that does not change may be used by
 * several threads at once.  A request may carry its one change itself
 * (``change``, with ``changelist`` pointing to it), so that it owns all the
 * memory it points to.  The GIL is released around the call, as around
 * every cffi call.
 *
 * Part of the cffi module's own C (build_kqueue.py pastes it after cffi's
 * <Python.h> and the platform source), not a translation unit of its own.
 */
struct kqueue_py_call {
    int kq;
    int nchanges;
    int nevents;
    int64_t timeout_ns;
    const struct kevent *changelist;
    struct kevent *eventlist;
    struct kevent change;   /* room for one change: changelist may point here */
};
static int kqueue_py_call(const struct kqueue_py_call *call)
{
    return kqueue_py_kevent(call->kq, call->changelist, call->nchanges,
                            call->eventlist, call->nevents, call->timeout_ns);
}
