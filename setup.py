"""Build glue: cffi compiles kqueue_py._kqueue from build_kqueue.py.

Metadata lives in pyproject.toml.  On CPython the extension uses the
limited API, so one cp39-abi3 wheel serves CPython 3.9 and later.
"""
import platform

from setuptools import setup

options = {}
if platform.python_implementation() == "CPython":
    import sysconfig

    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        options["bdist_wheel"] = {"py_limited_api": "cp39"}

setup(
    cffi_modules=["build_kqueue.py:ffibuilder"],
    options=options,
)
