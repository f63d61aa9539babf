"""The builder's macOS/FreeBSD branch, cross-compiled from Linux.

On Linux the installed module is the Linux backend, so nothing else would
ever compile the kernel-kqueue branch of build_kqueue.py.  This runs
tools/check-bsd-build.py for each target: the branch's C source, compiled
and linked by zig against the real macOS and FreeBSD headers, with the
cdef's declared field sizes and signedness checked at compile time.  The
layouts it reports are the headers' (FreeBSD 12+ appends ext[4]).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "tools", "check-bsd-build.py")
COMMON = "ident@0:8, filter@8:2, flags@10:2, fflags@12:4, data@16:8, udata@24:8"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="on macOS/FreeBSD the real build is the check"),
    pytest.mark.timeout(600),   # a cold zig cache builds its libc stubs first
]


def _have_zig() -> bool:
    try:
        import ziglang  # noqa: F401
    except ImportError:
        if os.environ.get("KQUEUE_PY_REQUIRE_ZIG"):   # set by .ci/run
            pytest.fail("KQUEUE_PY_REQUIRE_ZIG is set but the ziglang package is not installed")
        return False
    return True


@pytest.mark.parametrize("target, size", [
    ("x86_64-macos", 32), ("aarch64-macos", 32),
    ("x86_64-freebsd", 64), ("aarch64-freebsd", 64),
])
def test_bsd_branch_builds_against_the_system_headers(target, size):
    if not _have_zig():
        pytest.skip("zig is not installed: this cross-build check needs it "
                    "(`make zig`, or pip install --group zig); .ci/run installs it")
    r = subprocess.run([sys.executable, TOOL, target], capture_output=True, text=True, timeout=590)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{target} " in r.stdout and ": OK, " in r.stdout, r.stdout
    assert f"struct kevent {size} bytes ({COMMON})" in r.stdout, r.stdout
