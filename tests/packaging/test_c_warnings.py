"""The C backend compiles without a warning under strict flags.

Every csrc/*.c file, and the C shim build_kqueue.py hands to cffi, is
compiled with gcc -Wall -Wextra -Wshadow -Wconversion -Werror, without and
with optimisation (some warnings, e.g. -Wmaybe-uninitialized, need the
optimiser's data flow).  An explicit cast in the backend is then a claim
about a value's range, not a silenced warning.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
INCLUDE = os.path.join(ROOT, "src", "kqueue_py", "include")   # the backend's <sys/event.h>
FLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Wshadow", "-Wconversion", "-Werror"]

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux backend"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc"),
]

SOURCES = sorted(glob.glob(os.path.join(CSRC, "*.c")))


def compile_c(path: str, opt: str, extra: tuple[str, ...] = ()) -> None:
    cmd = ["gcc", *FLAGS, opt, *extra, "-I", INCLUDE, "-I", CSRC,
           "-c", "-o", os.devnull, path]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "warning" not in r.stderr, " ".join(cmd) + "\n" + r.stderr


def test_there_are_sources():
    names = {os.path.basename(p) for p in SOURCES}
    assert {"kqueue.c", "filter_fd.c", "filter_signal.c"} <= names, names


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
@pytest.mark.parametrize("path", SOURCES, ids=os.path.basename)
def test_backend_source_compiles_warning_free(path, opt):
    compile_c(path, opt)


def test_backend_links_warning_free_with_link_time_optimization(tmp_path):
    # The release build is linked with -flto=auto (build_kqueue.py): the
    # whole backend is then optimised as one program, where a declaration
    # that disagrees with its definition in another file (-Wlto-type-mismatch)
    # or an inlining the files compiled apart never saw warns.
    out = tmp_path / "backend.so"
    cmd = ["gcc", *FLAGS, "-O2", "-flto=auto", "-fPIC", "-shared", "-pthread",
           "-I", INCLUDE, "-I", CSRC, "-o", str(out), *SOURCES]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "warning" not in r.stderr, " ".join(cmd) + "\n" + r.stderr
    assert out.stat().st_size > 0


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_cffi_shim_compiles_warning_free(tmp_path, opt):
    pytest.importorskip("cffi")
    spec = importlib.util.spec_from_file_location("_kq_builder", os.path.join(ROOT, "build_kqueue.py"))
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    src = tmp_path / "shim.c"
    # cffi's generated module puts the shim after <Python.h>, with the
    # limited API (the wheel is abi3): so does this test, the interpreter's
    # headers as system headers (their own warnings are not ours).
    src.write_text("#define Py_LIMITED_API\n#include <Python.h>\n" + builder.LINUX_SOURCE)
    # The shim's functions are static, used only by cffi's generated module.
    compile_c(str(src), opt, ("-Wno-unused-function", "-isystem",
                              sysconfig.get_paths()["include"]))


def test_the_core_names_no_filter():
    # csrc/kqueue.c reaches the filters only through kq_filters[] and
    # struct filter_ops: outside that table it names no filter, no filter
    # constant and no epoll tag of a filter (in code; comments may).
    import re
    with open(os.path.join(CSRC, "kqueue.c")) as f:
        src = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    table = re.search(r"kq_filters\[TAG_COUNT\] = \{.*?\n\};", src, re.S)
    assert table is not None
    rest = src.replace(table.group(0), "")
    named = re.findall(r"\bEVFILT_\w+|\bkq_(?:read|write|fd|files|lowat|wr_ep|timers?|user|signal|proc|vnode)\w*"
                       r"|\bTAG_(?!COUNT\b|WAKE\b)\w+|\bNOTE_\w+", rest)
    assert named == []


# The core's own state: what the queue, the pending list, the wake
# descriptor and the registry are made of.  Only kqueue.c touches it.
CORE_FIELDS = ("fd", "waitfd", "wake_fd", "wake_signalled", "closed", "refs", "lock", "id",
               "hash", "hash_cap", "hash_count", "q_head", "q_tail", "dropped", "ndropped",
               "dropped_cap", "attn", "fd_gen", "batch_rot", "nwatched", "direct_fd", "sweep_tick")


@pytest.mark.parametrize("path", [p for p in SOURCES if os.path.basename(p) != "kqueue.c"],
                         ids=os.path.basename)
def test_filters_reach_the_core_only_through_kq_functions(path):
    # The other direction: a filter (and lifetime.c) calls the kq_*
    # functions of kq_internal.h for the core's descriptors and state, and
    # never touches them (no kq->waitfd in an epoll_ctl(), no kq->wake_fd
    # write, no walk of the core's hash).
    import re
    with open(path) as f:
        src = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    touched = sorted(set(re.findall(r"\bkq->(" + "|".join(CORE_FIELDS) + r")\b", src)))
    assert touched == [], f"{os.path.basename(path)} touches the core's {touched}"
