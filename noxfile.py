"""The test suite on CPython 3.9-3.13 (pyenv) and PyPy 3 (Debian's pypy3).

Each interpreter gets its own venv and runs the suite against an installed
wheel, never the checkout: one cp39-abi3 wheel is built once and installed
on every CPython; PyPy builds and installs its own.

    nox                     # the whole matrix (`make matrix` installs nox first)
    nox -s "tests-3.12"     # one interpreter
    nox --list

Interpreters: pyenv's versions are not on PATH as python3.X (only pyenv's
shims are, and those fail for versions pyenv has not selected), so their bin
directories are put first on PATH below; pypy3 is Debian's (apt-get install
pypy3 pypy3-venv pypy3-dev; tools/matrix.sh does that when it is missing).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
WHEEL_DIR = ROOT / "dist" / "matrix"
CPYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]

# A missing interpreter is a failure, not a skip (nox only defaults to that
# on CI); never try to download one (nox's "auto" fetches standalone builds).
nox.options.error_on_missing_interpreters = True
nox.options.download_python = "never"
nox.options.sessions = ["tests"]


def _pyenv_bin_dirs() -> list[str]:
    """The bin directory of the newest pyenv install of each CPython we test."""
    try:
        root = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    dirs: list[str] = []
    for minor in CPYTHONS:
        found = sorted(
            Path(root, "versions").glob(f"{minor}.*/bin/python{minor}"),
            # Newest patch release last ("3.9.18" > "3.9.9").
            key=lambda p: [int(x) if x.isdigit() else -1 for x in p.parent.parent.name.split(".")],
        )
        if found:
            dirs.append(str(found[-1].parent))
    return dirs


# Ahead of pyenv's shims, so that "3.9" resolves to a real python3.9.
os.environ["PATH"] = os.pathsep.join([*_pyenv_bin_dirs(), os.environ.get("PATH", "")])

# Which interpreter and which kqueue_py a session tests (tools/matrix.sh greps it).
_SHOW = (
    "import sys, kqueue_py; print('interpreter:', sys.implementation.name, "
    "sys.version.split()[0], kqueue_py.__file__)"
)

# The abi3 wheel of this nox run, built by the first CPython session.
_abi3_wheel: Path | None = None


def _fresh_build_dir() -> None:
    # setuptools reuses stale objects in build/ (even a sanitizer build's).
    shutil.rmtree(ROOT / "build", ignore_errors=True)


def _abi3(session: nox.Session) -> Path:
    """Build the cp39-abi3 wheel once per nox run (with 3.9 when the whole
    matrix runs, as 3.9 comes first) and return its path."""
    global _abi3_wheel
    if _abi3_wheel is None:
        _fresh_build_dir()
        shutil.rmtree(WHEEL_DIR, ignore_errors=True)
        WHEEL_DIR.mkdir(parents=True)
        session.run("python", "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(WHEEL_DIR), ".")
        wheels = sorted(WHEEL_DIR.glob("kqueue_py-*-cp39-abi3-*.whl"))
        if len(wheels) != 1:
            session.error(f"expected one cp39-abi3 wheel in {WHEEL_DIR}, found {wheels}")
        _abi3_wheel = wheels[0]
    return _abi3_wheel


@nox.session(python=[*CPYTHONS, "pypy3"])
def tests(session: nox.Session) -> None:
    """The whole suite against the installed wheel."""
    session.install("--upgrade", "pip", "setuptools", "wheel")
    session.install("--group", "test")   # pyproject.toml's dependency group
    if session.python == "pypy3":
        # PyPy: its own (non-abi3) build; cffi is built into PyPy.
        _fresh_build_dir()
        session.install("--force-reinstall", "--no-deps", ".")
    else:
        wheel = _abi3(session)
        session.install("cffi")
        session.install("--force-reinstall", "--no-deps", str(wheel))
    # -I: without the checkout on sys.path, so this shows the installed copy.
    session.run("python", "-I", "-c", _SHOW)
    # The tests import the installed wheel: the package's source is in src/.
    session.run("pytest", "-q", "-p", "no:cacheprovider", *session.posargs)
