/*
 * CPython: the C forms of kq_wait, kq_apply, KQueue.wait and KQueue.trigger.
 *
 * raw.kq_wait and raw.kq_apply as C functions of the interpreter (CPython
 * with the GIL only; PyPy's JIT makes the Python functions as fast).  Called
 * again with the arguments of an earlier call -- what an event loop does --
 * they find the prepared request in raw.py's caches (the same dicts and
 * entries the Python functions use), release the GIL around
 * kqueue_py_call() and return; everything else (the first call with new
 * arguments, keywords, anything unusual, a wait with a timeout > 0, a
 * failure, EINTR) is handed to the Python function, which does all the
 * checking and owns the behaviour.  So a call costs one C call, like
 * select.epoll.poll, instead of a Python frame plus a cffi call.  Limited
 * API only (the wheel is abi3).  The cache entry is held across the call:
 * another thread emptying the cache cannot free the request meanwhile.
 *
 * Part of the cffi module's own C (build_kqueue.py pastes it after cffi's
 * <Python.h> and the platform source), not a translation unit of its own.
 */
#if !defined(PYPY_VERSION) && !defined(Py_GIL_DISABLED)
static PyObject *kqpy_waits, *kqpy_applies;         /* raw._waits, raw._applies */
static PyObject *kqpy_wait_py, *kqpy_wait_failed;   /* raw._kq_wait_py, ._wait_failed */
static PyObject *kqpy_apply_py, *kqpy_apply_failed; /* raw._kq_apply_py, ._apply_failed */

/* The prepared request of a cache entry (entry[at] is its address), or
 * NULL: hand the call to Python. */
static const struct kqueue_py_call *kqpy_request(PyObject *entry, Py_ssize_t at)
{
    PyObject *addr = PyTuple_GetItem(entry, at);
    if (addr == NULL) {
        PyErr_Clear();
        return NULL;
    }
    return (const struct kqueue_py_call *)PyLong_AsVoidPtr(addr);
}

/* a == b for two ints (the same object, or two ints of one value).
 * Nothing here may name one of the interpreter's data symbols (Py_None,
 * Py_True, PyLong_Type...): the benchmark's C program dlopen()s this
 * module outside any Python, where only functions can stay unresolved. */
static int kqpy_same(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    if (!PyLong_Check(a) || !PyLong_Check(b))
        return 0;
    int r = PyObject_RichCompareBool(a, b, Py_EQ);
    if (r < 0) {
        PyErr_Clear();
        return 0;
    }
    return r;
}

static PyObject *kqpy_lookup(PyObject *dict, PyObject *key)
{
    PyObject *v = PyDict_GetItemWithError(dict, key);   /* borrowed */
    if (v == NULL)
        PyErr_Clear();          /* a key that is not hashable: Python says so */
    return v;
}

/* The last request each function ran, with the arguments it was cached
 * for (references held: the objects cannot go away, so the same address
 * is the same object): an event loop calls with the same arguments again
 * and again, and is served without a dict lookup.  A prepared request is
 * never written again, so what is remembered stays right even after the
 * caches let it go.  Under the GIL. */
struct kqpy_memo {
    PyObject *key;              /* events / change */
    PyObject *kq, *cap, *timeout;
    PyObject *entry;            /* owns the request */
    const struct kqueue_py_call *req;
};
static struct kqpy_memo kqpy_wait_memo, kqpy_apply_memo;

static void kqpy_remember(struct kqpy_memo *m, PyObject *key, PyObject *kq, PyObject *cap,
                          PyObject *timeout, PyObject *entry,
                          const struct kqueue_py_call *req)
{
    struct kqpy_memo old = *m;
    Py_INCREF(key);
    Py_INCREF(kq);
    Py_XINCREF(cap);
    Py_XINCREF(timeout);
    Py_INCREF(entry);
    *m = (struct kqpy_memo){key, kq, cap, timeout, entry, req};
    Py_XDECREF(old.key);        /* may run arbitrary code: m is set first */
    Py_XDECREF(old.kq);
    Py_XDECREF(old.cap);
    Py_XDECREF(old.timeout);
    Py_XDECREF(old.entry);
}

static int kqpy_run(PyObject *entry, const struct kqueue_py_call *req)
{
    Py_INCREF(entry);           /* keeps the request alive across the call */
    PyThreadState *ts = PyEval_SaveThread();
    int r = kqueue_py_call(req);
    PyEval_RestoreThread(ts);
    Py_DECREF(entry);
    return r;
}

/* The Python function fn called with what the C function got (vectorcall
 * convention: kwnames names the last arguments). */
static PyObject *kqpy_delegate(PyObject *fn, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *tuple = PyTuple_New(nargs), *kw = NULL, *r = NULL;
    if (tuple == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SetItem(tuple, i, args[i]);
    }
    if (kwnames != NULL && PyTuple_Size(kwnames) > 0) {
        kw = PyDict_New();
        if (kw == NULL)
            goto out;
        for (Py_ssize_t i = 0; i < PyTuple_Size(kwnames); i++)
            if (PyDict_SetItem(kw, PyTuple_GetItem(kwnames, i), args[nargs + i]) < 0)
                goto out;
    }
    r = PyObject_Call(fn, tuple, kw);
out:
    Py_DECREF(tuple);
    Py_XDECREF(kw);
    return r;
}

static PyObject *kqpy_wait(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    (void)self;
    if (kwnames != NULL || nargs != 4)
        return kqpy_delegate(kqpy_wait_py, args, nargs, kwnames);
    PyObject *kq = args[0], *events = args[1], *cap = args[2], *timeout = args[3];
    struct kqpy_memo *m = &kqpy_wait_memo;
    PyObject *entry;
    const struct kqueue_py_call *req = NULL;
    if (m->key == events && kqpy_same(m->kq, kq) && kqpy_same(m->cap, cap)
            && kqpy_same(m->timeout, timeout)) {
        entry = m->entry;
        req = m->req;
        goto run;
    }
    /* raw._waits[events] = (events, kq, cap, timeout_ms, request, address) */
    entry = kqpy_lookup(kqpy_waits, events);
    if (entry != NULL && PyTuple_Check(entry) && PyTuple_Size(entry) == 6
            && PyTuple_GetItem(entry, 0) == events && PyLong_Check(timeout)
            && kqpy_same(PyTuple_GetItem(entry, 1), kq)
            && kqpy_same(PyTuple_GetItem(entry, 2), cap)
            && kqpy_same(PyTuple_GetItem(entry, 3), timeout)) {
        /* A poll or a wait for ever: a wait with a timeout needs a
         * deadline for EINTR, which the Python function keeps. */
        long ms = PyLong_AsLong(timeout);
        if (ms == -1 && PyErr_Occurred())
            PyErr_Clear();
        else if (ms <= 0)
            req = kqpy_request(entry, 5);
    }
    if (req == NULL)
        return kqpy_delegate(kqpy_wait_py, args, nargs, NULL);
    kqpy_remember(m, events, kq, cap, timeout, entry, req);
run:;
    int n = kqpy_run(entry, req);
    if (n >= 0)
        return PyLong_FromLong(n);
    return PyObject_CallFunction(kqpy_wait_failed, "OOOOi", kq, events, cap, timeout, n);
}

static PyObject *kqpy_apply(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    (void)self;
    if (kwnames != NULL || nargs != 2)
        return kqpy_delegate(kqpy_apply_py, args, nargs, kwnames);
    PyObject *kq = args[0], *change = args[1];
    struct kqpy_memo *m = &kqpy_apply_memo;
    PyObject *entry;
    const struct kqueue_py_call *req = NULL;
    if (m->key == change && kqpy_same(m->kq, kq)) {
        entry = m->entry;
        req = m->req;
        goto run;
    }
    /* raw._applies[kq][change] = (change, request, address) */
    PyObject *per = kqpy_lookup(kqpy_applies, kq);
    entry = per != NULL && PyDict_Check(per) ? kqpy_lookup(per, change) : NULL;
    if (entry != NULL && PyTuple_Check(entry) && PyTuple_Size(entry) == 3
            && PyTuple_GetItem(entry, 0) == change)
        req = kqpy_request(entry, 2);
    if (req == NULL)
        return kqpy_delegate(kqpy_apply_py, args, nargs, NULL);
    kqpy_remember(m, change, kq, NULL, NULL, entry, req);
run:;
    int r = kqpy_run(entry, req);
    if (r >= 0)
        return PyBool_FromLong(1);
    return PyObject_CallFunction(kqpy_apply_failed, "i", r);
}

/* METH_FASTCALL: the limited API names it from 3.10 on, but the flag and
 * its calling convention are those of every CPython since 3.7 (the wheel
 * is cp39-abi3): no argument tuple per call. */
#define KQPY_METH_FASTCALL 0x0080
static PyMethodDef kqpy_wait_def = {
    "kq_wait", (PyCFunction)(void (*)(void))kqpy_wait, KQPY_METH_FASTCALL | METH_KEYWORDS, NULL};
static PyMethodDef kqpy_apply_def = {
    "kq_apply", (PyCFunction)(void (*)(void))kqpy_apply, KQPY_METH_FASTCALL | METH_KEYWORDS,
    NULL};

/* KQueue.wait's C form, one per queue (queue.py binds it).  The bound
 * state is (pool, memo, slow, finish, None, objects, finite, make_event):
 * pool is the queue's list of free buffers; memo (a capsule) the buffer
 * whose request was last prepared for the (timeout, max_events) objects
 * it names, as queue.py reported it (_qwait_remember).  A call with those
 * very objects, that buffer in the pool and its request still asking for
 * those values, polls or waits for ever: the buffer is taken from the
 * pool, the request runs with the GIL released; no event is a new empty
 * list, one event with no udata to release is decoded here, more events
 * and failures go to finish(buf, n), which decodes or raises; then the
 * buffer goes back.  Anything else is slow(*args, **kw): KQueue.wait
 * itself. */
static int kqpy_doc(PyMethodDef *def, PyObject *fn);

struct kqpy_qmemo {
    PyObject *buf, *t, *m;      /* held */
    const struct kqueue_py_call *req;
    int64_t ns;
    int nevents;
    /* Calls left before the next collect() (state[8]): the queue's
     * periodic release of dropped udata, every state[9] calls, which
     * the Python method counts for itself. */
    long tick, every;
};

static void kqpy_qmemo_clear(struct kqpy_qmemo *q)
{
    PyObject *buf = q->buf, *t = q->t, *m = q->m;
    q->buf = q->t = q->m = NULL;
    q->req = NULL;
    Py_XDECREF(buf);
    Py_XDECREF(t);
    Py_XDECREF(m);
}

/* dict[word] for an unsigned machine word (a udata token, an ident):
 * borrowed, or NULL -- missing, or an error set (PyErr_Occurred() tells). */
static PyObject *kqpy_get_word(PyObject *dict, unsigned long long word)
{
    PyObject *key = PyLong_FromUnsignedLongLong(word);
    if (key == NULL)
        return NULL;
    PyObject *v = PyDict_GetItemWithError(dict, key);
    Py_DECREF(key);
    return v;
}

/* The memo lives in a capsule with no name: a private one, and a name
 * would cost a strcmp() per call. */
static void kqpy_qmemo_free(PyObject *capsule)
{
    struct kqpy_qmemo *q = PyCapsule_GetPointer(capsule, NULL);
    if (q != NULL) {
        kqpy_qmemo_clear(q);
        PyMem_Free(q);
    }
}

/* [Event(...), ...] for n struct kevents, as KQueue.wait decodes them:
 * (ident, filter, flags, fflags, data, objects.get(udata)).  state[5] is
 * the udata objects by token, state[7] the Event class (a tuple subclass
 * defined in Python, so its tp_alloc is PyType_GenericAlloc), state[4]
 * None.  Each Event is made as tuple.__new__(Event, fields) makes it --
 * the class's allocator, then its six items -- without the 6-tuple and
 * the two calls between. */
static PyObject *kqpy_events(PyObject *state, const struct kevent *e, int n)
{
    PyObject *objects = PyTuple_GetItem(state, 5), *type = PyTuple_GetItem(state, 7);
    PyObject *none = PyTuple_GetItem(state, 4);
    if (objects == NULL || type == NULL || none == NULL)
        return NULL;
    PyObject *list = PyList_New(n);
    if (list == NULL)
        return NULL;
    for (int i = 0; i < n; i++, e++) {
        PyObject *obj = kqpy_get_word(objects, (unsigned long long)(uintptr_t)e->udata);
        if (obj == NULL) {
            if (PyErr_Occurred())
                goto fail;
            obj = none;
        }
        PyObject *v[6] = {
            PyLong_FromUnsignedLongLong((unsigned long long)e->ident),
            PyLong_FromLong((long)e->filter),
            PyLong_FromLong((long)e->flags),
            PyLong_FromUnsignedLong((unsigned long)e->fflags),
            PyLong_FromLongLong((long long)e->data),
            obj,
        };
        Py_INCREF(obj);
        PyObject *ev = NULL;
        if (v[0] != NULL && v[1] != NULL && v[2] != NULL && v[3] != NULL && v[4] != NULL)
            ev = PyType_GenericAlloc((PyTypeObject *)type, 6);
        if (ev == NULL) {
            for (int k = 0; k < 6; k++)
                Py_XDECREF(v[k]);
            goto fail;
        }
        for (int k = 0; k < 6; k++)
            PyTuple_SetItem(ev, k, v[k]);       /* steals; ev is new (one reference) */
        PyList_SetItem(list, i, ev);            /* steals */
    }
    return list;
fail:
    Py_DECREF(list);        /* the items not set yet are NULL: fine to dealloc */
    return NULL;
}

static PyObject *kqpy_qwait(PyObject *state, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    PyObject *pool = PyTuple_GetItem(state, 0), *slow = PyTuple_GetItem(state, 2);
    if (pool == NULL || slow == NULL)
        return NULL;
    if (kwnames != NULL || nargs > 2)
        return kqpy_delegate(slow, args, nargs, kwnames);
    PyObject *none = PyTuple_GetItem(state, 4);
    PyObject *t = nargs > 0 ? args[0] : none, *m = nargs > 1 ? args[1] : none;
    struct kqpy_qmemo *q = PyCapsule_GetPointer(PyTuple_GetItem(state, 1), NULL);
    Py_ssize_t k = PyList_Size(pool);
    if (q == NULL || k <= 0) {
        PyErr_Clear();
        return kqpy_delegate(slow, args, nargs, NULL);
    }
    const struct kqueue_py_call *req = q->req;
    if (t != q->t || m != q->m || req == NULL || q->ns > 0
            || req->timeout_ns != q->ns || req->nevents != q->nevents)
        return kqpy_delegate(slow, args, nargs, NULL);
    if (--q->tick <= 0) {
        q->tick = q->every;
        PyObject *collect = PyTuple_GetItem(state, 8);
        PyObject *done = collect != NULL ? PyObject_CallObject(collect, NULL) : NULL;
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
        if (q->req != req || PyList_Size(pool) != k)
            return kqpy_delegate(slow, args, nargs, NULL);  /* collect() changed things */
    }
    /* The remembered buffer, if free: on top of the pool, unless another
     * thread's wait (given a buffer of its own) put one above it. */
    Py_ssize_t at = k - 1;
    while (at >= 0 && PyList_GetItem(pool, at) != q->buf)
        at--;
    if (at < 0)
        return kqpy_delegate(slow, args, nargs, NULL);
    PyObject *buf = q->buf;
    Py_INCREF(buf);             /* taken from the pool: this call's own */
    if (PyList_SetSlice(pool, at, at + 1, NULL) < 0) {
        Py_DECREF(buf);
        return NULL;
    }
    PyThreadState *ts = PyEval_SaveThread();
    int n = kqueue_py_call(req);
    PyEval_RestoreThread(ts);
    PyObject *r;
    if (n == 0) {
        r = PyList_New(0);
    } else if (n > 0 && PySet_Size(PyTuple_GetItem(state, 6)) == 0) {
        /* Events and no udata to release (the common case): decoded here
         * as finish would, the event array read in place. */
        r = kqpy_events(state, req->eventlist, n);
    } else {
        /* udata to release, or a failure: decoded (or raised) before the
         * buffer is free again. */
        PyObject *finish = PyTuple_GetItem(state, 3);
        r = finish != NULL ? PyObject_CallFunction(finish, "Oi", buf, n) : NULL;
    }
    /* Back into this pool, whatever happened: after a close() it is no
     * longer the queue's, and nothing takes it from there but this form,
     * which then finds its memo forgotten. */
    if (PyList_Append(pool, buf) < 0)
        Py_CLEAR(r);
    Py_DECREF(buf);
    return r;
}

static PyMethodDef kqpy_qwait_def = {
    "wait", (PyCFunction)(void (*)(void))kqpy_qwait, KQPY_METH_FASTCALL | METH_KEYWORDS, NULL};

/* _qwait_bind(pool, slow, finish, function, objects, finite, event_class,
 * collect, every) -> (the C wait, its memo); function (KQueue.wait) lends
 * its docstring; objects, finite and event_class (a tuple subclass) are
 * what events are decoded with (see kqpy_events); collect() is called
 * every `every` calls. */
static PyObject *kqpy_qwait_bind(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 9) {
        PyErr_BadArgument();    /* (no PyExc_TypeError: a data symbol, see kqpy_same) */
        return NULL;
    }
    long every = PyLong_AsLong(args[8]);
    if (every == -1 && PyErr_Occurred())
        return NULL;
    if (every < 1) {
        PyErr_BadArgument();
        return NULL;
    }
    PyObject *cls = args[6];
    if (!PyType_Check(cls) || !(PyType_GetFlags((PyTypeObject *)cls) & Py_TPFLAGS_TUPLE_SUBCLASS)) {
        PyErr_BadArgument();
        return NULL;
    }
    if (kqpy_qwait_def.ml_doc == NULL && kqpy_doc(&kqpy_qwait_def, args[3]) < 0)
        return NULL;
    /* (PyMem_Malloc: PyMem_Calloc is outside 3.9's limited API.) */
    struct kqpy_qmemo *q = PyMem_Malloc(sizeof *q);
    if (q == NULL)
        return PyErr_NoMemory();
    memset(q, 0, sizeof *q);
    q->tick = q->every = every;
    PyObject *capsule = PyCapsule_New(q, NULL, kqpy_qmemo_free);
    if (capsule == NULL) {
        PyMem_Free(q);
        return NULL;
    }
    PyObject *none = Py_BuildValue("");     /* None, without naming Py_None */
    PyObject *state = none != NULL
        ? PyTuple_Pack(9, args[0], capsule, args[1], args[2], none, args[4], args[5], args[6],
                       args[7])
        : NULL;
    Py_XDECREF(none);
    PyObject *name = state != NULL ? PyUnicode_FromString("kqueue_py.queue") : NULL;
    PyObject *fn = name != NULL ? PyCFunction_NewEx(&kqpy_qwait_def, state, name) : NULL;
    PyObject *r = fn != NULL ? PyTuple_Pack(2, fn, capsule) : NULL;
    Py_XDECREF(fn);
    Py_XDECREF(name);
    Py_XDECREF(state);
    Py_DECREF(capsule);
    return r;
}

/* _qwait_remember(memo, buf, timeout, max_events, address): buf's request
 * (at address) is prepared for these objects now; memo None-like forgets. */
static PyObject *kqpy_qwait_remember(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5 && nargs != 1) {
        PyErr_BadArgument();
        return NULL;
    }
    struct kqpy_qmemo *q = PyCapsule_GetPointer(args[0], NULL);
    if (q == NULL)
        return NULL;
    kqpy_qmemo_clear(q);
    if (nargs == 5) {
        const struct kqueue_py_call *req = PyLong_AsVoidPtr(args[4]);
        if (req == NULL)
            return NULL;
        Py_INCREF(args[1]);
        Py_INCREF(args[2]);
        Py_INCREF(args[3]);
        q->buf = args[1];
        q->t = args[2];
        q->m = args[3];
        q->req = req;
        q->ns = req->timeout_ns;
        q->nevents = req->nevents;
    }
    return PyBool_FromLong(1);
}

static PyMethodDef kqpy_qwait_bind_def = {
    "_qwait_bind", (PyCFunction)(void (*)(void))kqpy_qwait_bind, KQPY_METH_FASTCALL, NULL};
static PyMethodDef kqpy_qwait_remember_def = {
    "_qwait_remember", (PyCFunction)(void (*)(void))kqpy_qwait_remember, KQPY_METH_FASTCALL,
    NULL};

/* KQueue.trigger's C form, one per queue (queue.py binds it): the bound
 * state is (triggers, slow, int).  triggers is the queue's dict of
 * prepared triggers, ident -> (request, address); a trigger of a plain int
 * ident (fflags absent or 0) found there runs its request with the GIL
 * released and returns None; anything else, and a failure, is
 * slow(*args, **kw): KQueue.trigger itself. */
static PyObject *kqpy_qtrigger(PyObject *state, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *triggers = PyTuple_GetItem(state, 0), *slow = PyTuple_GetItem(state, 1);
    PyObject *inttype = PyTuple_GetItem(state, 2);
    if (triggers == NULL || slow == NULL || inttype == NULL)
        return NULL;
    if (kwnames != NULL || nargs < 1 || nargs > 2 || Py_TYPE(args[0]) != (PyTypeObject *)inttype)
        return kqpy_delegate(slow, args, nargs, kwnames);
    if (nargs == 2) {
        long ff = Py_TYPE(args[1]) == (PyTypeObject *)inttype ? PyLong_AsLong(args[1]) : -1;
        if (ff != 0) {
            PyErr_Clear();
            return kqpy_delegate(slow, args, nargs, NULL);
        }
    }
    PyObject *entry = kqpy_lookup(triggers, args[0]);
    const struct kqueue_py_call *req = NULL;
    if (entry != NULL && PyTuple_Check(entry) && PyTuple_Size(entry) == 2)
        req = kqpy_request(entry, 1);
    if (req == NULL || kqpy_run(entry, req) < 0)
        return kqpy_delegate(slow, args, nargs, NULL);
    return Py_BuildValue("");   /* None */
}

static PyMethodDef kqpy_qtrigger_def = {
    "trigger", (PyCFunction)(void (*)(void))kqpy_qtrigger, KQPY_METH_FASTCALL | METH_KEYWORDS,
    NULL};

/* _qtrigger_bind(triggers, slow, function) -> the C trigger; function
 * (KQueue.trigger) lends its docstring. */
static PyObject *kqpy_qtrigger_bind(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_BadArgument();
        return NULL;
    }
    if (kqpy_qtrigger_def.ml_doc == NULL && kqpy_doc(&kqpy_qtrigger_def, args[2]) < 0)
        return NULL;
    PyObject *zero = PyLong_FromLong(0);
    PyObject *inttype = zero != NULL ? PyObject_Type(zero) : NULL;
    PyObject *state = inttype != NULL ? PyTuple_Pack(3, args[0], args[1], inttype) : NULL;
    PyObject *name = state != NULL ? PyUnicode_FromString("kqueue_py.queue") : NULL;
    PyObject *fn = name != NULL ? PyCFunction_NewEx(&kqpy_qtrigger_def, state, name) : NULL;
    Py_XDECREF(name);
    Py_XDECREF(state);
    Py_XDECREF(inttype);
    Py_XDECREF(zero);
    return fn;
}

static PyMethodDef kqpy_qtrigger_bind_def = {
    "_qtrigger_bind", (PyCFunction)(void (*)(void))kqpy_qtrigger_bind, KQPY_METH_FASTCALL,
    NULL};

/* _select_ready(address, n, fd_to_key) -> list: KqueueSelector.select's decode of
 * the n events its request (at address) received, as the Python loop in
 * selectors.py does it: (key, EVENT_READ or EVENT_WRITE) for each event
 * whose ident has a key in fd_to_key asking for that event (EVENT_READ 1,
 * EVENT_WRITE 2: selectors' values).  In C because that loop was most of
 * select()'s cost with many ready descriptors (~0.19 us an event).  The
 * key is a SelectorKey (fileobj, fd, events, data); anything else is asked
 * for its events attribute. */
static PyObject *kqpy_select_ready(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_BadArgument();
        return NULL;
    }
    const struct kqueue_py_call *req = PyLong_AsVoidPtr(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    PyObject *fd_to_key = args[2];
    if (req == NULL || n < 0 || n > req->nevents || !PyDict_Check(fd_to_key)) {
        if (!PyErr_Occurred())
            PyErr_BadArgument();
        return NULL;
    }
    PyObject *ready = PyList_New(0), *masks[2] = {PyLong_FromLong(1), PyLong_FromLong(2)};
    if (ready == NULL || masks[0] == NULL || masks[1] == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        const struct kevent *ev = &req->eventlist[i];
        PyObject *key = kqpy_get_word(fd_to_key, (unsigned long long)ev->ident);
        if (key == NULL) {
            if (PyErr_Occurred())
                goto fail;
            continue;
        }
        Py_INCREF(key);         /* an allocation below may run code that drops it */
        int w = ev->filter == EVFILT_READ ? 0 : 1;
        PyObject *events = PyTuple_Check(key) && PyTuple_Size(key) == 4
                               ? (Py_INCREF(PyTuple_GetItem(key, 2)), PyTuple_GetItem(key, 2))
                               : PyObject_GetAttrString(key, "events");
        long wanted = events != NULL ? PyLong_AsLong(events) : -1;
        Py_XDECREF(events);
        if (wanted == -1 && PyErr_Occurred()) {
            Py_DECREF(key);
            goto fail;
        }
        if (wanted & (1L << w)) {
            PyObject *pair = PyTuple_Pack(2, key, masks[w]);
            if (pair == NULL || PyList_Append(ready, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(key);
                goto fail;
            }
            Py_DECREF(pair);
        }
        Py_DECREF(key);
    }
    Py_DECREF(masks[0]);
    Py_DECREF(masks[1]);
    return ready;
fail:
    Py_XDECREF(ready);
    Py_XDECREF(masks[0]);
    Py_XDECREF(masks[1]);
    return NULL;
}

static PyMethodDef kqpy_select_ready_def = {
    "_select_ready", (PyCFunction)(void (*)(void))kqpy_select_ready, KQPY_METH_FASTCALL, NULL};

/* def's docstring: the Python function's (a copy that lives for ever). */
static int kqpy_doc(PyMethodDef *def, PyObject *fn)
{
    PyObject *doc = PyObject_GetAttrString(fn, "__doc__");
    if (doc == NULL)
        return -1;
    PyObject *utf8 = PyUnicode_Check(doc) ? PyUnicode_AsUTF8String(doc) : NULL;
    Py_DECREF(doc);
    if (utf8 == NULL)
        return PyErr_Occurred() ? -1 : 0;
    const char *text = PyBytes_AsString(utf8);
    char *copy = text != NULL ? strdup(text) : NULL;
    Py_DECREF(utf8);
    if (copy == NULL)
        return -1;
    def->ml_doc = copy;
    return 0;
}

/* Module modname (imported already) gets def's function as an attribute. */
static int kqpy_install_into(const char *modname, PyMethodDef *def)
{
    PyObject *modules = PyImport_GetModuleDict();
    PyObject *mod = modules != NULL ? PyDict_GetItemString(modules, modname) : NULL;
    PyObject *name = mod != NULL ? PyUnicode_FromString(modname) : NULL;
    PyObject *fn = name != NULL ? PyCFunction_NewEx(def, NULL, name) : NULL;
    int ok = fn != NULL && PyObject_SetAttrString(mod, def->ml_name, fn) == 0;
    Py_XDECREF(fn);
    Py_XDECREF(name);
    return ok;
}

static int kqpy_install_locked(void)
{
    if (kqpy_waits != NULL)
        return 0;
    PyObject *modules = PyImport_GetModuleDict();
    PyObject *raw = modules != NULL ? PyDict_GetItemString(modules, "kqueue_py.raw") : NULL;
    if (raw == NULL)
        return -1;
    PyObject *got[6];
    static const char *const names[6] = {"_waits", "_applies", "_kq_wait_py", "_wait_failed",
                                         "_kq_apply_py", "_apply_failed"};
    for (int i = 0; i < 6; i++) {
        got[i] = PyObject_GetAttrString(raw, names[i]);
        if (got[i] == NULL) {
            while (i-- > 0)
                Py_DECREF(got[i]);
            return -1;
        }
    }
    PyObject *name = PyUnicode_FromString("kqueue_py.raw");
    PyObject *wait = NULL, *apply = NULL;
    int ok = name != NULL && PyDict_Check(got[0]) && PyDict_Check(got[1])
             && kqpy_doc(&kqpy_wait_def, got[2]) == 0 && kqpy_doc(&kqpy_apply_def, got[4]) == 0
             && (wait = PyCFunction_NewEx(&kqpy_wait_def, NULL, name)) != NULL
             && (apply = PyCFunction_NewEx(&kqpy_apply_def, NULL, name)) != NULL
             && PyObject_SetAttrString(raw, "_fast_wait", wait) == 0
             && PyObject_SetAttrString(raw, "_fast_apply", apply) == 0
             && kqpy_install_into("kqueue_py._core", &kqpy_qwait_bind_def)
             && kqpy_install_into("kqueue_py._core", &kqpy_qwait_remember_def)
             && kqpy_install_into("kqueue_py._core", &kqpy_qtrigger_bind_def)
             && kqpy_install_into("kqueue_py._core", &kqpy_select_ready_def);
    Py_XDECREF(name);
    Py_XDECREF(wait);
    Py_XDECREF(apply);
    if (!ok) {
        for (int i = 0; i < 6; i++)
            Py_DECREF(got[i]);
        return -1;
    }
    kqpy_waits = got[0];        /* references kept for ever */
    kqpy_applies = got[1];
    kqpy_wait_py = got[2];
    kqpy_wait_failed = got[3];
    kqpy_apply_py = got[4];
    kqpy_apply_failed = got[5];
    return 0;
}

/* Called from Python through cffi, which released the GIL: take it back. */
static int kqueue_py_fast_install(void)
{
    PyGILState_STATE g = PyGILState_Ensure();
    int r = kqpy_install_locked();
    if (r != 0)
        PyErr_Clear();
    PyGILState_Release(g);
    return r;
}
#else
static int kqueue_py_fast_install(void) { return -1; }
#endif
