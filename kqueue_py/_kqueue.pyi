# Type stubs for the cffi-compiled module kqueue_py._kqueue.
from typing import Any

import _cffi_backend

ffi: _cffi_backend.FFI

class _Lib:
    def kqueue(self) -> int: ...
    def kevent(self, kq: int, changelist: Any, nchanges: int,
               eventlist: Any, nevents: int, timeout: Any) -> int: ...
    def kqueue_close(self, kq: int) -> int: ...
    def __getattr__(self, name: str) -> int: ...  # EVFILT_*, EV_*, NOTE_*

lib: _Lib
