"""cffi builder (API mode) for ``kqueue_py._kqueue``.

The ``cdef`` declares ``struct kevent`` as a partial struct and every
constant as ``#define NAME ...``: the C compiler then fills in the real
layout and values from ``<sys/event.h>``, so a wrong ABI fails the build,
not the user.

* macOS / FreeBSD / other BSDs: the system ``<sys/event.h>`` and the
  kernel's kqueue; ``kqueue_close`` is ``close``.
* Linux: kqueue_py's own backend (``csrc/``).  Its public
  ``<sys/event.h>`` (FreeBSD's numbering) lives where it ships, in the
  package: ``src/kqueue_py/include/sys/event.h``.

Environment knobs (build time):
  KQUEUE_PY_SANITIZE=address,undefined   build the backend with sanitizers
  KQUEUE_PY_DEBUG=1                      -O0 -g, with the backend's assert()s
"""
from __future__ import annotations

import glob
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")  # relative: cffi and setuptools run from HERE
# The Linux backend's public <sys/event.h>: package data, so the one copy is
# the one that is installed (as kqueue_py/include/sys/event.h).
INCLUDE = os.path.join("src", "kqueue_py", "include")
# The module's own C, pasted into cffi's source (not the Linux backend).
BINDING = os.path.join(HERE, "csrc", "binding")


def _binding_source(name: str) -> str:
    """The text of one of the module's own C files (csrc/binding/)."""
    with open(os.path.join(BINDING, name)) as f:
        return f.read()


FILTERS = [
    "EVFILT_READ", "EVFILT_WRITE", "EVFILT_VNODE", "EVFILT_PROC",
    "EVFILT_SIGNAL", "EVFILT_TIMER", "EVFILT_USER", "EVFILT_SYSCOUNT",
]
FLAGS = [
    "EV_ADD", "EV_DELETE", "EV_ENABLE", "EV_DISABLE", "EV_KEEPUDATA",
    "EV_ONESHOT", "EV_CLEAR", "EV_RECEIPT", "EV_DISPATCH",
    "EV_SYSFLAGS", "EV_ERROR", "EV_EOF",
]
NOTES = [
    # EVFILT_USER
    "NOTE_FFNOP", "NOTE_FFAND", "NOTE_FFOR", "NOTE_FFCOPY",
    "NOTE_FFCTRLMASK", "NOTE_FFLAGSMASK", "NOTE_TRIGGER",
    # EVFILT_READ / EVFILT_WRITE
    "NOTE_LOWAT", "NOTE_NODATA",
    # EVFILT_VNODE
    "NOTE_DELETE", "NOTE_WRITE", "NOTE_EXTEND", "NOTE_ATTRIB",
    "NOTE_LINK", "NOTE_RENAME", "NOTE_REVOKE",
    # EVFILT_PROC
    "NOTE_EXIT", "NOTE_FORK", "NOTE_EXEC", "NOTE_PCTRLMASK",
    "NOTE_PDATAMASK", "NOTE_TRACK", "NOTE_TRACKERR", "NOTE_CHILD",
    # EVFILT_TIMER
    "NOTE_SECONDS", "NOTE_MSECONDS", "NOTE_USECONDS", "NOTE_NSECONDS",
    "NOTE_ABSTIME",
]
# Names a platform's <sys/event.h> lacks.  macOS spells NOTE_ABSTIME
# NOTE_ABSOLUTE (aliased in the shim below) and has no millisecond unit.
MISSING = {
    "darwin": {"EV_KEEPUDATA", "NOTE_MSECONDS"},
}

# kqueue_py's own extensions, implemented by the Linux backend only.
LINUX_ONLY = {"NOTE_NODATA"}



def constants(platform: str) -> list[str]:
    """The constant names that ``platform`` (a ``sys.platform`` value) has."""
    linux = platform.startswith("linux")
    return [
        name for name in FILTERS + FLAGS + NOTES
        if name not in MISSING.get(platform, set()) and (linux or name not in LINUX_ONLY)
    ]


CDEF = """
struct kevent {
    uintptr_t ident;
    int16_t   filter;
    uint16_t  flags;
    uint32_t  fflags;
    intptr_t  data;
    void     *udata;
    ...;
};

struct timespec {
    long tv_sec;
    long tv_nsec;
    ...;
};

int kqueue(void);
int kevent(int kq, const struct kevent *changelist, int nchanges,
           struct kevent *eventlist, int nevents,
           const struct timespec *timeout);
int kqueue_close(int kq);

/* Which queue the descriptor names now (never reused; 0: none).  The kernel
 * kqueue has no such notion: there it is always 0. */
uint64_t kqueue_py_queue_id(int kq);

/* kqueue_py's own entry point (the Linux backend's; csrc/binding/bsd_shim.c
 * elsewhere): kevent() with the timeout in nanoseconds (< 0: forever) and
 * errno folded into the result, -errno on failure, so that nothing -- not
 * even a Python signal handler running right after the call -- can clobber
 * it before Python reads it. */
int kqueue_py_kevent(int kq, const struct kevent *changelist, int nchanges,
                     struct kevent *eventlist, int nevents, int64_t timeout_ns);

/* The fast entry point (csrc/binding/call.c): one kqueue_py_kevent() call
 * described by a request the caller prepares once and reuses. */
struct kqueue_py_call {
    int kq;
    int nchanges;
    int nevents;
    int64_t timeout_ns;
    const struct kevent *changelist;
    struct kevent *eventlist;
    struct kevent change;
    ...;
};
int kqueue_py_call(const struct kqueue_py_call *call);

/* CPython only (csrc/binding/fast_cpython.c): make raw.kq_wait and
 * raw.kq_apply C functions; 0 on success, -1 where there are none (PyPy,
 * free-threaded CPython). */
int kqueue_py_fast_install(void);
"""

# The Linux backend only: the kernel's kqueue never drops a registration
# behind the caller's back (close() removes it, and the caller knows).
LINUX_CDEF = """
/* udata of registrations the backend removed on its own because their
 * descriptor was closed or its number reused; returns how many were copied
 * (at most cap), or -1 with errno. */
int kqueue_py_take_dropped(int kq, uint64_t *udata, int cap);

/* 1 if the backend batches kevent()'s per-event system calls through
 * io_uring in this process, 0 if not (KQUEUE_PY_IO_URING=0, or no
 * io_uring). */
int kqueue_py_io_uring(void);

/* For python -m kqueue_py.run: a close-on-exec signalfd reading the signals
 * signos[0..n-1] (which the caller keeps blocked), or -errno.  Each read
 * gives one signal with its sender, on every interpreter (PyPy has no
 * signal.sigtimedwait). */
int kqueue_py_signalfd(const int *signos, int n);
/* Whether signo's disposition is SIG_IGN (1) or not (0), or -errno: what
 * the kernel holds, also where the interpreter does not say (PyPy reports
 * a disposition ignored since exec as SIG_DFL). */
int kqueue_py_signal_ignored(int signo);
struct signalfd_siginfo {
    uint32_t ssi_signo;
    int32_t  ssi_code;
    uint32_t ssi_pid;
    ...;
};
#define SI_KERNEL ...
"""

# The module's own C beside cffi's: each file's header says what it is.
SHIM = _binding_source("bsd_shim.c")
CALL = _binding_source("call.c")
FAST = _binding_source("fast_cpython.c")

# The BSD shim: the kernel's kqueue needs no backend, only a close.
BSD_SOURCE = """
#include <stdint.h>
#include <sys/types.h>
#include <sys/event.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#if !defined(NOTE_ABSTIME) && defined(NOTE_ABSOLUTE)
#define NOTE_ABSTIME NOTE_ABSOLUTE
#endif
static int kqueue_close(int kq) { return close(kq); }
static uint64_t kqueue_py_queue_id(int kq) { (void)kq; return 0; }
""" + SHIM + CALL + FAST

LINUX_SOURCE = """
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>
#include <sys/event.h>
#include <sys/signalfd.h>

static int kqueue_py_signalfd(const int *signos, int n)
{
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < n; i++)
        if (sigaddset(&set, signos[i]) < 0)
            return -errno;
    int fd = signalfd(-1, &set, SFD_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}

static int kqueue_py_signal_ignored(int signo)
{
    struct sigaction old;
    if (sigaction(signo, NULL, &old) < 0)
        return -errno;
    return !(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_IGN;
}
""" + CALL + FAST


def _compile_args() -> tuple[list[str], list[str]]:
    # An undeclared function is an error, not an int-returning guess: a
    # Python API outside the oldest limited API the wheel targets (3.9's
    # headers hide it) must fail the build, not crash at run time.
    cflags = ["-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden",
              "-Werror=implicit-function-declaration"]
    ldflags: list[str] = []
    debug = bool(os.environ.get("KQUEUE_PY_DEBUG"))
    if debug:
        cflags += ["-O0", "-g"]
    sanitize = os.environ.get("KQUEUE_PY_SANITIZE")
    if sanitize:
        cflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer",
                   "-fno-sanitize-recover=all", "-g", "-O1"]
        ldflags += [f"-fsanitize={sanitize}"]
    # The backend's assert() invariants: compiled in by the debug and the
    # sanitizer builds, out of a release build.
    cflags.append("-UNDEBUG" if debug or sanitize else "-DNDEBUG")
    return cflags, ldflags


def _lto_args() -> list[str]:
    """Link-time optimization for the Linux backend's release build: its
    event path crosses files on every event (the fd filter, the lifetime
    checks, the core), and letting the compiler inline across them cuts
    its instructions per reported event by about a tenth.  Off for the
    debug and sanitizer builds (whose reports should name the code as
    written) and with KQUEUE_PY_LTO=0 (a toolchain without LTO)."""
    if (os.environ.get("KQUEUE_PY_DEBUG") or os.environ.get("KQUEUE_PY_SANITIZE")
            or os.environ.get("KQUEUE_PY_LTO", "1") == "0"):
        return []
    return ["-flto=auto"]


def make_ffi(platform: str = sys.platform) -> FFI:
    """The builder for ``platform`` (default: this one).  Another platform's
    builder is only good for emitting its C source (tools/check-bsd-build.py
    cross-compiles that to check the BSD/macOS branch from Linux)."""
    ffibuilder = FFI()
    cdef = CDEF + "".join(f"#define {name} ...\n" for name in constants(platform))
    if platform.startswith("linux"):
        cdef += LINUX_CDEF
    ffibuilder.cdef(cdef)
    cflags, ldflags = _compile_args()
    if platform.startswith("linux"):
        sources = sorted(glob.glob(os.path.join(CSRC, "*.c")))
        ffibuilder.set_source(
            "kqueue_py._kqueue",
            LINUX_SOURCE,
            sources=sources,
            include_dirs=[INCLUDE, CSRC],
            depends=sorted(glob.glob(os.path.join(CSRC, "*.h"))
                           + glob.glob(os.path.join(CSRC, "binding", "*.c")))
            + [os.path.join(INCLUDE, "sys", "event.h")],
            extra_compile_args=cflags + _lto_args() + ["-pthread"],
            extra_link_args=ldflags + _lto_args() + ["-pthread"],
        )
    else:
        ffibuilder.set_source(
            "kqueue_py._kqueue",
            BSD_SOURCE,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    return ffibuilder


ffibuilder = make_ffi()

if __name__ == "__main__":
    os.chdir(HERE)
    ffibuilder.compile(verbose=True)
