"""The benchmark's own plumbing (never its numbers: those come from a run of
``python -m kqueue_py.bench``, not from the suite).

* The raw-C comparator, ``src/kqueue_py/bench/rawc_bench.c``, is package data and
  builds warning-free (-Wall -Wextra -Werror) against the installed
  ``<sys/event.h>`` with the extension's own constants, and runs.
* The report: the running interpreter in its header, the short output of
  ``--quick`` (the per-variant breakdown only under ``--verbose``), one epoll
  call behind the empty-poll ratio wherever it is quoted, and the chart's
  speed-ups in one direction (> 1 = kqueue_py faster).
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kqueue_py
from kqueue_py.bench import rawc

LINUX = sys.platform.startswith("linux")


def test_rawc_source_is_package_data():
    src = rawc.SOURCE_PATH
    assert src.name == "rawc_bench.c" and src.is_file()
    assert Path(kqueue_py.__file__).resolve().parent in src.resolve().parents
    text = rawc.source()
    assert "#include <sys/event.h>" in text
    assert "int main(int argc, char **argv)" in text


@pytest.mark.skipif(not LINUX, reason="the backend's header is installed on Linux only")
def test_backend_header_is_installed_with_the_package():
    installed = Path(kqueue_py.__file__).resolve().parent / "include" / "sys" / "event.h"
    assert installed.is_file()
    assert rawc._include_dirs() == [str(installed.parent.parent)]


def _cc() -> str:
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    pytest.fail("no C compiler (cc/gcc/clang): the extension itself needs one to build")


def test_rawc_builds_with_warnings_as_errors_and_runs(tmp_path):
    exe = tmp_path / "rawc_bench"
    cmd = rawc.compile_command(_cc(), str(rawc.SOURCE_PATH), str(exe))
    assert {"-Wall", "-Wextra", "-Werror"} <= set(cmd)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr     # not even a note
    so = kqueue_py._kqueue.__file__
    r = subprocess.run([str(exe), so, "empty_poll", "0", "200000", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [ln.split() for ln in r.stdout.splitlines()]
    assert [ln[0] for ln in lines] == (["kq", "epoll"] if LINUX else ["kq"])
    for ln in lines:
        assert int(ln[1]) >= 1 and len(ln) == 4 and all(float(x) > 0 for x in ln[2:])


def test_rawc_build_fails_when_header_and_extension_disagree(tmp_path):
    """The -DKQ_* values are checked against the header: a different
    struct size is a compile error, not a silently wrong benchmark."""
    cmd = rawc.compile_command(_cc(), str(rawc.SOURCE_PATH), str(tmp_path / "x"))
    size = next(a for a in cmd if a.startswith("-DKQ_SIZEOF_KEVENT="))
    bad = [a if a != size else "-DKQ_SIZEOF_KEVENT=24" for a in cmd]
    r = subprocess.run(bad, capture_output=True, text=True)
    assert r.returncode != 0
    assert "struct kevent: header and extension differ" in r.stderr


def _bench(tmp_path, *args):
    r = subprocess.run([sys.executable, "-m", "kqueue_py.bench", "--quick", "--repeats", "1",
                        *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_report_names_the_running_interpreter_and_quotes_one_empty_poll_ratio(tmp_path):
    out = _bench(tmp_path, "--only", "empty_poll", "--json", str(tmp_path / "r.json"))
    me = f"{platform.python_implementation()} {platform.python_version()}"
    assert f"python: {me};" in out
    assert f"Targets ({me}, ratios from this run):" in out
    assert "Every variant" not in out and "--verbose" in out
    # The table's kqueue_py/stdlib column and the target line: the same number.
    row = next(ln for ln in out.splitlines() if ln.startswith("empty_poll "))
    table_ratio = row.split()[-2]
    target = next(ln for ln in out.splitlines() if "empty poll: kq_wait / the stdlib's poll" in ln)
    if LINUX:
        assert "stdlib epoll.poll(0, 64)]" in target
    if "SUSPECT" not in target:        # (a flagged run prints no ratio in the table)
        assert re.search(r": ([0-9.]+x) \(target", target).group(1) == table_ratio
    doc = json.loads((tmp_path / "r.json").read_text())
    # The run's time is recorded when it is made.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["settings"]["started_utc"])
    assert doc["settings"]["finished_utc"] >= doc["settings"]["started_utc"]
    sc = doc["scenarios"]["empty_poll"]
    stdlib_variants = [v for v in sc["variants"] if v.startswith("stdlib epoll")]
    assert len(stdlib_variants) <= 1          # one epoll call, not two to choose from
    # Speed-ups: comparator time / kqueue_py time, so > 1 means kqueue_py is faster.
    kp = sc["variants"][sc["roles"]["kqueue_py"]]["value_ns"]
    ct = sc["variants"][sc["roles"]["ctypes"]]["value_ns"]
    if not sc["suspect"]:
        assert sc["speedups"]["ctypes"] == pytest.approx(ct / kp)
    # --replot draws the chart from this file: it reads back what was measured.
    from kqueue_py.bench.report import Run, speedups

    run = Run.read(str(tmp_path / "r.json"))
    assert run.python == me
    assert [r.name for r in run.results] == ["empty_poll"]
    assert speedups(run.results[0]) == pytest.approx(sc["speedups"])


@pytest.mark.slow
def test_quick_output_is_short_and_verbose_adds_the_breakdown(tmp_path):
    out = _bench(tmp_path, "--only", "empty_poll,active1of10")
    verbose = _bench(tmp_path, "--only", "empty_poll,active1of10", "--verbose")
    assert len(out.splitlines()) <= 60
    assert "Every variant" in verbose
    assert len(verbose.splitlines()) > len(out.splitlines()) + 10
    for name in ("kqueue_py KQueue.wait", "kqueue_py KQueue.wait_tuples"):
        assert name in verbose               # the Pythonic API's variants always run


def test_targets_are_one_table_beside_the_scenarios():
    """Every target names scenarios that exist; the retired one is gone."""
    from kqueue_py.bench.scenarios import SCENARIOS, TARGETS

    names = {s.name for s in SCENARIOS}
    assert TARGETS and all(t.scenario in names and (t.den_scenario or t.scenario) in names
                           for t in TARGETS)
    assert not any("64 ready" in t.label and t.num == "ctypes" for t in TARGETS)


def test_trigger_wake_and_asyncio_scenarios_run(tmp_path):
    out = _bench(tmp_path, "--only", "trigger,user_wake_rt,asyncio_echo", "--no-rawc",
                 "--json", str(tmp_path / "r.json"))
    doc = json.loads((tmp_path / "r.json").read_text())
    # The wake round trip, like the echo, times its program twice (A/A).
    wake = doc["scenarios"]["user_wake_rt"]
    assert wake["variants"][wake["roles"]["kqueue_py again"]]["value_ns"] > 0
    assert re.search(r"wake round trip: kq_apply/kq_wait .*\(A/A \d+\.\d\dx\)", out)
    for name in ("trigger", "user_wake_rt", "asyncio_echo"):
        sc = doc["scenarios"][name]
        assert sc["error"] is None, sc["error"]
        assert sc["variants"][sc["roles"]["kqueue_py"]]["value_ns"] > 0
        assert sc["variants"][sc["roles"]["stdlib"]]["value_ns"] > 0
    echo = doc["scenarios"]["asyncio_echo"]
    assert echo["variants"][echo["roles"]["stdlib again"]]["value_ns"] > 0
    assert re.search(r"asyncio echo: .*\(A/A \d+\.\d\dx\)", out)
    assert "KQueue.trigger, per call" in out
