"""Build glue: cffi compiles kqueue_py._kqueue from build_kqueue.py.

Metadata lives in pyproject.toml.  On CPython the extension uses the
limited API, so one cp39-abi3 wheel (``_kqueue.abi3.so``) serves CPython
3.9 and later.

Free-threaded CPython (3.13t, ``Py_GIL_DISABLED``) has no limited API /
stable ABI, and cffi builds a version-specific extension there (cffi's
setuptools_ext forces ``py_limited_api=False`` and its headers skip
``Py_LIMITED_API``).  Such an interpreter therefore needs its own
non-abi3 wheel (e.g. cp313-cp313t); bdist_wheel must not be told to tag
that build abi3, so the option is only set for GIL-enabled CPython.
PyPy builds a PyPy-specific wheel (pp39-pypy39_pp73 etc.).

On Linux the backend's ``<sys/event.h>`` (csrc/include/sys/event.h) is
installed as ``kqueue_py/include/sys/event.h``: the benchmark's raw-C
comparator (src/kqueue_py/bench/rawc_bench.c) compiles against it, and C code
that talks to the extension's ``kevent`` can too.
"""
from __future__ import annotations

import os
import platform
import sys
import sysconfig
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py

HEADER = os.path.join("csrc", "include", "sys", "event.h")


class build_py_with_header(build_py):
    """build_py, plus the Linux backend's <sys/event.h> as package data."""

    def run(self) -> None:
        super().run()
        if sys.platform.startswith("linux"):
            dest = os.path.join(self.build_lib, "kqueue_py", "include", "sys")
            self.mkpath(dest)
            self.copy_file(HEADER, os.path.join(dest, "event.h"))


options: dict[str, dict[str, Any]] = {}
if platform.python_implementation() == "CPython" and not sysconfig.get_config_var("Py_GIL_DISABLED"):
    options["bdist_wheel"] = {"py_limited_api": "cp39"}

setup(
    cffi_modules=["build_kqueue.py:ffibuilder"],
    cmdclass={"build_py": build_py_with_header},
    options=options,
)
