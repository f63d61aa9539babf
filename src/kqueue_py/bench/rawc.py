"""Build and run the raw-C comparator (``rawc_bench.c``, shipped beside this module).

The program is compiled once per source/flags/compiler with the system C
compiler (``-Wall -Wextra -Werror``) and cached under the temp directory.
It ``dlopen()``s the installed extension and calls its ``kevent`` -- the very
function the Python comparators call -- so "raw C" is the same backend call
without any Python.  On Linux it also times raw ``epoll_wait``/``epoll_ctl``/
eventfd: the kernel's own floor.

``struct kevent`` and the constants come from ``<sys/event.h>``: on Linux
the backend's header (package data: ``kqueue_py/include/sys/event.h``),
on BSD/macOS the system's.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .timing import Measurement, summarize

__all__ = ["RawC", "RawCError", "SOURCE_PATH", "compile_command", "source"]

#: The C program (package data).
SOURCE_PATH = Path(__file__).with_name("rawc_bench.c")

#: Warnings are errors: the suite builds it the same way (tests/test_bench.py).
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]


class RawCError(RuntimeError):
    """The raw-C comparator could not be built or run."""


@dataclass
class _Build:
    binary: str
    so_arg: str


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def source() -> str:
    """The program's C source."""
    return SOURCE_PATH.read_text(encoding="utf-8")


def _include_dirs() -> List[str]:
    """Where the backend's <sys/event.h> is (Linux); [] for the system's."""
    if not sys.platform.startswith("linux"):
        return []
    include = Path(__file__).resolve().parent.parent / "include"
    if (include / "sys" / "event.h").is_file():
        return [str(include)]
    raise RawCError(f"the backend's <sys/event.h> is not installed (looked in {include})")


def _defines() -> List[str]:
    """The extension's own constants and struct size, as -D flags (the
    program checks them against the header at compile time)."""
    from .. import ffi, lib

    names = ["EVFILT_READ", "EVFILT_TIMER", "EVFILT_USER",
             "EV_ADD", "EV_DELETE", "EV_CLEAR", "NOTE_TRIGGER"]
    flags = [f"-DKQ_{n}={int(getattr(lib, n))}" for n in names]
    flags.append(f"-DKQ_SIZEOF_KEVENT={ffi.sizeof('struct kevent')}")
    return flags


def compile_command(cc: str, src: str, out: str) -> List[str]:
    """The compiler command line for the program."""
    libs = ["-pthread"] + (["-ldl"] if sys.platform.startswith("linux") else [])
    incs = [f"-I{d}" for d in _include_dirs()]
    return [cc, *CFLAGS, *incs, *_defines(), "-o", out, src, *libs]


class RawC:
    """The compiled program, ready to run scenarios."""

    def __init__(self, so_path: str, cache_dir: Optional[str] = None) -> None:
        self.so_path = so_path
        self.cache_dir = cache_dir or os.path.join(
            tempfile.gettempdir(), f"kqueue_py-bench-{os.getuid()}")
        self._build: Optional[_Build] = None
        self.compile_note = ""

    def build(self) -> _Build:
        """Compile (or find the cached binary); ``RawCError`` on failure."""
        if self._build is not None:
            return self._build
        cc = _compiler()
        if cc is None:
            raise RawCError("no C compiler (cc/gcc/clang) on PATH")
        text = source()
        probe = compile_command(cc, "SRC", "OUT")
        headers = [(Path(d) / "sys" / "event.h").read_text(encoding="utf-8")
                   for d in _include_dirs()]
        key = hashlib.sha256("\0".join([text, *headers, *probe]).encode()).hexdigest()[:16]
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        binary = os.path.join(self.cache_dir, f"rawc_bench-{key}")
        if not os.path.exists(binary):
            src = os.path.join(self.cache_dir, f"rawc_bench-{key}.c")
            with open(src, "w", encoding="utf-8") as f:
                f.write(text)
            tmp = f"{binary}.{os.getpid()}.tmp"
            proc = subprocess.run(compile_command(cc, src, tmp),
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RawCError(f"{cc} failed:\n{proc.stderr.strip()}")
            os.replace(tmp, binary)
            self.compile_note = f"compiled {binary}"
        else:
            self.compile_note = f"cached {binary}"
        self._build = _Build(binary=binary, so_arg=self.so_path)
        return self._build

    def run(self, scenario: str, n: int, target_batch_s: float, repeats: int, group: int,
            timeout_s: float = 300.0) -> Dict[str, Measurement]:
        """Run one scenario (``repeats`` groups of ``group`` batches, like the
        Python side); variant name -> ns per operation."""
        b = self.build()
        cmd = [b.binary, b.so_arg, scenario, str(n), str(int(target_batch_s * 1e9)),
               str(repeats * group)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise RawCError(f"{scenario}: timed out after {timeout_s} s") from e
        if proc.returncode != 0:
            raise RawCError(f"{scenario}: exit {proc.returncode}: {proc.stderr.strip()}")
        out: Dict[str, Measurement] = {}
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            samples = [float(x) for x in parts[2:]]
            out[parts[0]] = summarize(samples, int(parts[1]), group)
        return out
