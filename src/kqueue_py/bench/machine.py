"""Facts about the machine, recorded with every run."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any, Dict

__all__ = ["machine_facts"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model", "Processor"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cffi_version() -> str:
    try:
        import cffi

        return str(cffi.__version__)
    except ImportError:  # pragma: no cover - kqueue_py needs cffi at build time only
        return "not installed"


def machine_facts() -> Dict[str, Any]:
    """CPU model and count, kernel, Python, cffi, kqueue_py's backend."""
    import kqueue_py
    from kqueue_py import _kqueue

    uname = platform.uname()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = []
    return {
        "cpu_model": _cpu_model(),
        "loadavg_at_start": load,
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "kernel": f"{uname.system} {uname.release}",
        "machine": uname.machine,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_build": " ".join(platform.python_build()),
        "executable": sys.executable,
        "cffi": _cffi_version(),
        "kqueue_py_version": kqueue_py.__version__,
        "kqueue_py_backend": kqueue_py.BACKEND,
        "kqueue_py_extension": _kqueue.__file__,
    }
