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
              "ready:4", "--rounds", "4", "--repeats", "1", "--batch-ms", "2")
    assert p.returncode == 0, p.stderr
    assert "4 alternated rounds" in p.stdout
    for scenario in ("empty_poll:0", "ready:4"):
        assert re.search(rf"{scenario}  installed {NUM} \(1\.00x\)  "
                         rf"installed:KQUEUE_PY_IO_URING=0 {NUM} \(\d+\.\d\dx, middle half "
                         rf"\d+\.\d\d-\d+\.\d\dx\)  ", p.stdout), p.stdout
        assert re.search(rf"{scenario}  .*  \[epoll: {NUM}\]", p.stdout), p.stdout
    # The first build again, as another (A/A): the noise floor.
    assert re.search(rf"empty_poll:0  .*  installed again {NUM} \(\d+\.\d\dx, middle half",
                     p.stdout), p.stdout
    # ready: the epoll + FIONREAD floor too.
    assert re.search(rf"ready:4 .*\[epoll\+FIONREAD: {NUM}\]", p.stdout), p.stdout


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
                     rf"\(\d+\.\d\dx\)", p.stdout), p.stdout


@pytest.mark.parametrize("args, says", [
    (["no-such-revision", "installed"], "'no-such-revision' is not a revision"),
    (["installed:FOO"], "the environment is NAME=VALUE"),
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
