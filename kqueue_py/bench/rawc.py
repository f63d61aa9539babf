"""Build and run the raw-C comparator (:mod:`.rawc_source`).

The program is compiled once per source/flags/compiler with the system C
compiler and cached under the temp directory.  It ``dlopen()``s the
installed extension and calls its ``kevent`` -- the very function the Python
comparators call -- so "raw C" is the same backend call without any Python.
On Linux it also times raw ``epoll_wait``/``epoll_ctl``/eventfd: the kernel's
own floor.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional

from .rawc_source import SOURCE
from .timing import Measurement, summarize

__all__ = ["RawC", "RawCError"]


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


def _defines() -> List[str]:
    """The extension's own constants and struct size, as -D flags."""
    from .. import ffi, lib

    if sys.platform.startswith("linux"):
        names = ["EVFILT_READ", "EVFILT_TIMER", "EVFILT_USER",
                 "EV_ADD", "EV_DELETE", "EV_CLEAR", "NOTE_TRIGGER"]
        flags = [f"-DKQ_{n}={int(getattr(lib, n))}" for n in names]
        flags.append(f"-DKQ_SIZEOF_KEVENT={ffi.sizeof('struct kevent')}")
        return flags
    return ["-DKQ_SYSTEM_HEADER"]


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
        flags = ["-O2", "-std=gnu11", "-Wall", *_defines()]
        libs = ["-pthread"] + (["-ldl"] if sys.platform.startswith("linux") else [])
        key = hashlib.sha256("\0".join([SOURCE, cc, *flags, *libs]).encode()).hexdigest()[:16]
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        binary = os.path.join(self.cache_dir, f"rawc_bench-{key}")
        if not os.path.exists(binary):
            src = os.path.join(self.cache_dir, f"rawc_bench-{key}.c")
            with open(src, "w", encoding="utf-8") as f:
                f.write(SOURCE)
            tmp = f"{binary}.{os.getpid()}.tmp"
            proc = subprocess.run([cc, *flags, "-o", tmp, src, *libs],
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
