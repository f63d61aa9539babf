"""``tools/compare-builds.py``: builds of the backend side by side on the
raw-C benchmark program (its numbers are never checked here, only that it
runs each build, in each environment, and refuses bad input clearly).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "compare-builds.py"

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="the raw-C program's floors and the backend are Linux's"),
    pytest.mark.skipif(not TOOL.is_file(), reason="not a checkout"),
    pytest.mark.skipif(not any(shutil.which(c) for c in ("cc", "gcc", "clang")),
                       reason="no C compiler"),
]

NUM = r"\d+\.\d{3} (?:µs|ms)"


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=600, check=False)


def test_one_build_in_two_environments() -> None:
    p = _tool("installed", "installed:KQUEUE_PY_IO_URING=0", "--scenario", "empty_poll",
              "ready:4", "user_rt", "--rounds", "2", "--repeats", "4", "--batch-ms", "2")
    assert p.returncode == 0, p.stderr
    assert "2 rounds of 4 batches per build" in p.stdout
    for scenario in ("empty_poll:0", "ready:4", "user_rt:0"):
        assert re.search(rf"{scenario}  installed {NUM} \(1\.00x\)  "
                         rf"installed:KQUEUE_PY_IO_URING=0 {NUM} \(\d+\.\d{{3}}x, middle half "
                         rf"\d+\.\d{{3}}-\d+\.\d{{3}}x\)  ", p.stdout), p.stdout
        assert re.search(rf"{scenario}  .*  \[epoll: {NUM}\]", p.stdout), p.stdout
    # The first build again, as another (A/A): the noise floor.
    assert re.search(rf"empty_poll:0  .*  installed again {NUM} \(\d+\.\d{{3}}x, middle half",
                     p.stdout), p.stdout
    # ready: the epoll + FIONREAD floor, and with the identity probe.
    assert re.search(rf"ready:4 .*\[epoll\+FIONREAD: {NUM}\]", p.stdout), p.stdout
    assert re.search(rf"ready:4 .*\[epoll\+FIONREAD\+probe: {NUM}\]", p.stdout), p.stdout


def test_builds_run_side_by_side_in_one_process_each_under_its_settings(tmp_path: Path) -> None:
    """The raw-C program itself: every build listed is loaded (a file
    each), its first queue made under its own settings, and every build's
    batches are timed.  Where this process may use io_uring, the two
    copies of one extension decide differently: one ring is made (strace),
    by the copy without KQUEUE_PY_IO_URING=0."""
    from kqueue_py import _kqueue
    from kqueue_py.bench.rawc import RawC

    so = Path(str(_kqueue.__file__))
    copies = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        copies.append(tmp_path / name / so.name)
        shutil.copy2(so, copies[-1])
    builds = f"{copies[0]},{copies[1]};KQUEUE_PY_IO_URING=0"
    program = RawC(builds)
    got = program.run("ready", 4, 0.002, repeats=1, group=3)
    assert {"kq", "kq@1", "epoll", "epoll+FIONREAD", "epoll+FIONREAD+probe",
            "epoll+FIONREAD+MOD"} <= set(got)
    # The kernel's part through io_uring, wherever the backend uses it.
    assert ("epoll+ring" in got) == bool(_kqueue.lib.kqueue_py_io_uring())
    assert len(got["kq"].samples_ns) == len(got["kq@1"].samples_ns) == 3
    strace = shutil.which("strace")
    if strace is None or not _kqueue.lib.kqueue_py_io_uring():
        return
    trace = tmp_path / "trace"
    out = subprocess.run([strace, "-f", "-e", "trace=io_uring_setup", "-o", str(trace),
                          program.build().binary, builds, "empty_poll", "0", "1000000", "1"],
                         capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0 and "ptrace" in out.stderr:
        return      # strace may not trace here (a container without ptrace)
    assert out.returncode == 0, out.stderr
    rings = [line for line in trace.read_text().splitlines()
             if "io_uring_setup(" in line and not re.search(r"= -1 ", line)]
    assert len(rings) == 1, rings


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                    reason="no git checkout")
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                    reason="building a revision offline needs setuptools here")
def test_a_revision_is_built_and_compared() -> None:
    p = _tool("HEAD", "installed", "--scenario", "empty_poll", "--rounds", "1",
              "--repeats", "1", "--batch-ms", "2")
    assert p.returncode == 0, p.stderr
    assert "building HEAD" in p.stderr
    assert re.search(rf"empty_poll:0  HEAD {NUM} \(1\.00x\)  installed {NUM} "
                     rf"\(\d+\.\d{{3}}x\)", p.stdout), p.stdout


def test_a_built_extension_is_compared_by_its_path(tmp_path: Path) -> None:
    """A variant built by hand, named by the path of its extension file."""
    from kqueue_py import _kqueue

    so = tmp_path / Path(str(_kqueue.__file__)).name
    shutil.copy2(str(_kqueue.__file__), so)
    p = _tool(str(so), "installed", "--scenario", "empty_poll", "--rounds", "1",
              "--repeats", "1", "--batch-ms", "2")
    assert p.returncode == 0, p.stderr
    assert "building" not in p.stderr
    assert re.search(rf"empty_poll:0  {re.escape(str(so))} {NUM} \(1\.00x\)  installed {NUM} "
                     rf"\(\d+\.\d{{3}}x\)", p.stdout), p.stdout


@pytest.mark.parametrize("args, says", [
    (["no-such-revision", "installed"], "'no-such-revision' is not a revision"),
    (["installed:FOO"], "the environment is NAME=VALUE"),
    (["installed:A=1;B=2"], "a setting cannot hold ';'"),
    ([":A=1"], "no revision"),
    (["installed", "--scenario", "ready:many"], "a scenario is NAME or NAME:N"),
    (["installed", "--rounds", "0"], "--rounds and --repeats must be at least 1"),
    (["installed", "--scenario", "no_such_scenario"], "no_such_scenario"),
])
def test_bad_input_is_refused_with_a_reason(args: list[str], says: str) -> None:
    p = _tool(*args, "--batch-ms", "1", *(["--rounds", "1"] if "--rounds" not in args else []))
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert says in p.stderr
    assert "Traceback" not in p.stderr
