"""tools/bench-docs.py: the benchmark numbers in the docs are generated from
the benchmark's JSON, and only between their marker comments."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "bench-docs.py"
RUNS = ROOT / "docs" / "bench"

pytestmark = pytest.mark.skipif(not TOOL.exists(), reason="tools/bench-docs.py not in this tree")


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_docs", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_docs"] = mod
    spec.loader.exec_module(mod)
    return mod


def _variant(ns: float) -> Dict[str, Any]:
    return {"value_ns": ns, "median_ns": ns * 1.1, "min_ns": ns * 0.9, "batch": 10,
            "repeats": 35, "group": 5, "samples_ns": []}


def _run(python: str, kq: float, ct: float) -> Dict[str, Any]:
    roles = {"kqueue_py": "kqueue_py kq_wait", "ctypes": "ctypes",
             "stdlib": "stdlib epoll.poll(0, 64)"}
    return {
        "machine": {"python": python, "cpu_model": "Test CPU", "cpu_count": 2, "cpu_usable": 2,
                    "kernel": "Linux 6.1", "machine": "x86_64", "cffi": "1.17",
                    "kqueue_py_version": "0.1.0", "kqueue_py_backend": "linux-backend",
                    "loadavg_at_start": [0.1, 0.1, 0.1]},
        "settings": {"mode": "full", "docs_stamp_utc": "2030-01-02T03:04:05Z"},
        "scenarios": {
            "empty_poll": {"title": "empty poll", "unit": "poll", "roles": roles, "notes": [],
                           "error": None,
                           "variants": {"kqueue_py kq_wait": _variant(kq), "ctypes": _variant(ct),
                                        "stdlib epoll.poll(0, 64)": _variant(500),
                                        "rawC kevent": _variant(200)}},
            "ready64": {"title": "64 ready", "unit": "wait of 64", "roles": roles, "notes": [],
                        "error": "skipped: not here", "variants": {}},
        },
        "targets": [{"target": "empty poll: ctypes / kqueue_py", "value": ct / kq, "op": ">=",
                     "bound": 2.5, "met": ct / kq >= 2.5}],
    }


DOC = """# Title
Hand-written text stays.
<!-- bench:main:begin -->
stale numbers
<!-- bench:main:end -->
More text.
<!-- bench:headline:begin -->
<!-- bench:headline:end -->
<!-- bench:variants-empty_poll:begin -->
<!-- bench:variants-empty_poll:end -->
<!-- bench:pypy:begin -->
<!-- bench:pypy:end -->
"""


def test_rewrites_only_between_markers(tmp_path: Path) -> None:
    tool = _tool()
    cp, pp = tmp_path / "cp.json", tmp_path / "pp.json"
    cp.write_text(json.dumps(_run("CPython 3.12.1", 400, 1600)))
    pp.write_text(json.dumps(_run("PyPy 3.10.14", 100, 5000)))
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    assert tool.main(["--cpython", str(cp), "--pypy", str(pp), str(doc)]) == 0
    out = doc.read_text()
    assert "stale numbers" not in out
    assert out.startswith("# Title\nHand-written text stays.\n") and "More text.\n" in out
    # 1600 / 400: the speed-up over ctypes; 500 / 400 over the stdlib.
    assert "| `empty_poll` | poll | 400 ns | 1,600 ns | 500 ns | 200 ns | – | **4.00x** | 1.25x | 0.50x |" in out
    assert "skipped: not here" in out
    assert "CPython 3.12.1 on Test CPU" in out and "(2030-01-02)" in out
    assert "PyPy 3.10.14: empty poll 100 ns (50.00x faster than ctypes)" in out
    assert "| `empty_poll` | 400 ns | 100 ns | 4.00x | 50.00x | 1.25x | 5.00x |" in out
    # Idempotent, and --check agrees.
    assert tool.main(["--cpython", str(cp), "--pypy", str(pp), str(doc), "--check"]) == 0
    doc.write_text(out.replace("4.00x", "9.99x"))
    assert tool.main(["--cpython", str(cp), "--pypy", str(pp), str(doc), "--check"]) == 1


def test_unknown_marker_is_an_error(tmp_path: Path) -> None:
    tool = _tool()
    cp = tmp_path / "cp.json"
    cp.write_text(json.dumps(_run("CPython 3.12.1", 400, 1600)))
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- bench:mian:begin -->\nold\n<!-- bench:mian:end -->\n")
    with pytest.raises(SystemExit, match="mian"):
        tool.main(["--cpython", str(cp), str(doc)])
    assert "old" in doc.read_text()


@pytest.mark.skipif(not (RUNS / "cpython.json").exists(), reason="no committed benchmark run")
def test_committed_docs_match_the_committed_runs(tmp_path: Path) -> None:
    """Nobody edited the generated numbers by hand: regenerating them from
    docs/bench/*.json changes nothing (works on copies, writes nothing)."""
    files = [ROOT / "docs" / "benchmarks.md", ROOT / "README.md"]
    copies = []
    for f in files:
        c = tmp_path / f.name
        c.write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
        copies.append(str(c))
    argv = [sys.executable, str(TOOL), "--check", "--cpython", str(RUNS / "cpython.json")]
    if (RUNS / "pypy.json").exists():
        argv += ["--pypy", str(RUNS / "pypy.json")]
    r = subprocess.run(argv + copies, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
