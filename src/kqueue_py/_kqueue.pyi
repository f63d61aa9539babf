# Type stubs for the cffi-compiled module kqueue_py._kqueue.
# ``ffi`` and cdata (``struct kevent *`` ...) are typed Any: cffi's objects
# are dynamic, and typing them precisely would need types-cffi, whose
# _CDataBase does not know the struct fields anyway.
from typing import Any

ffi: Any

class _Lib:
    def kqueue(self) -> int: ...
    def kevent(self, kq: int, changelist: Any, nchanges: int,
               eventlist: Any, nevents: int, timeout: Any) -> int: ...
    def kqueue_close(self, kq: int) -> int: ...
    def kqueue_py_queue_id(self, kq: int) -> int: ...
    # Linux backend only (absent on BSD/macOS): copies up to cap udata values
    # of registrations the backend dropped because their descriptor was
    # closed or reused into udata (a uint64_t[]); returns the count or -1.
    def kqueue_py_take_dropped(self, kq: int, udata: Any, cap: int) -> int: ...
    # Linux only: 1 if kevent()'s per-event system calls go through io_uring
    # in this process, 0 if not (KQUEUE_PY_IO_URING=0, or no io_uring).
    def kqueue_py_io_uring(self) -> int: ...
    # Linux only: a close-on-exec signalfd over the signals in signos (an
    # int[] of n), or -errno; its reads are struct signalfd_siginfo.
    def kqueue_py_signalfd(self, signos: Any, n: int) -> int: ...
    # Linux only: whether signo's disposition is SIG_IGN (1, else 0), or -errno.
    def kqueue_py_signal_ignored(self, signo: int) -> int: ...
    # kevent() with the timeout in nanoseconds (< 0: forever, 0: poll);
    # returns the number of events, or -errno on failure.
    def kqueue_py_kevent(self, kq: int, changelist: Any, nchanges: int,
                         eventlist: Any, nevents: int, timeout_ns: int) -> int: ...
    # The same call described by one struct kqueue_py_call * (kq, nchanges,
    # nevents, timeout_ns, changelist, eventlist): the fast entry point.
    def kqueue_py_call(self, call: Any) -> int: ...
    # CPython: installs the C forms of raw.kq_wait/kq_apply and of
    # KQueue.wait/trigger (0), -1 where there are none (PyPy).
    def kqueue_py_fast_install(self) -> int: ...
    def __getattr__(self, name: str) -> int: ...  # EVFILT_*, EV_*, NOTE_*

lib: _Lib
