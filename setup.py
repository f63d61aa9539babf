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

The Linux backend's ``<sys/event.h>`` is package data
(``kqueue_py/include/sys/event.h``, declared in pyproject.toml): the
benchmark's raw-C comparator compiles against it, and C code that talks to
the extension's ``kevent`` can too.  Elsewhere the system's header is the
one that matches the kernel, so the wheel leaves the Linux one out.
"""
from __future__ import annotations

import platform
import sys
import sysconfig
from typing import Any

from setuptools import setup

options: dict[str, dict[str, Any]] = {}
if platform.python_implementation() == "CPython" and not sysconfig.get_config_var("Py_GIL_DISABLED"):
    options["bdist_wheel"] = {"py_limited_api": "cp39"}

setup(
    cffi_modules=["build_kqueue.py:ffibuilder"],
    exclude_package_data={} if sys.platform.startswith("linux") else {"kqueue_py": ["include/*/*"]},
    options=options,
)
