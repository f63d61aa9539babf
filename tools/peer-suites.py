#!/usr/bin/env python3
"""Run real projects' own test suites on their kqueue path, on Linux.

    python3 tools/peer-suites.py                 # everything; rewrites docs/peers.md
    python3 tools/peer-suites.py --only eventlet # one project (the doc keeps the other's part)

For each project (pinned versions below) this script makes a virtualenv in a
cache directory (``--cache``, default ``~/.cache/kqueue_py-peers``), installs
the project from its PyPI sdist with its test dependencies and kqueue_py
built from this checkout, unpacks the sdist's tests, and runs the project's
own suite twice, unmodified:

* the **baseline**: the project's own Linux path (watchdog's inotify
  emitter, eventlet's epoll hub);
* the **kqueue** run: the same suite under ``python -m kqueue_py.run --
  python -m pytest ...``, so the suite and every Python process it starts
  see ``select.kqueue``, with the project's kqueue path chosen as below.

How each project's kqueue path is chosen, without editing its code or tests:

* **watchdog** picks its emitter from ``sys.platform`` (inotify on Linux,
  ``KqueueEmitter`` on BSD), which kqueue_py.run does not change: the kqueue
  run also loads a four-line pytest plugin (written into the cache
  directory) that sets watchdog's own platform switch,
  ``watchdog.utils.platform.__platform__``, to ``"bsd"`` before the suite's
  conftest imports anything, so ``Observer``, the tests' ``Emitter`` and
  their BSD expectations are those of a BSD machine; its ``test_kqueue.py``
  (skipped where ``select`` has no kqueue) runs because of kqueue_py.run.
* **eventlet** reads ``EVENTLET_HUB``: ``epolls`` for the baseline,
  ``kqueue`` for the kqueue run (its kqueue hub takes ``select`` from a fresh
  import, ``eventlet.patcher.original('select')``, which the installation
  survives).  ``hub_test.py::test_repeated_select_bad_fd`` runs apart in
  both runs: on the kqueue hub it leaves the hub broken and the tests after
  it fail in tearDown in cascade, which would hide everything else.

Each run's per-test outcomes come from pytest's JUnit XML.  Every test whose
outcome differs is then run again alone (with the others that differ), twice
on each path, to tell a difference of behaviour from a suite's flakiness on a
loaded machine.  The script then
writes ``docs/peers.md``: the date, versions and machine, a summary per
project, every test whose outcome differs with its note (``NOTES`` below:
who the difference belongs to, with the evidence), and the full per-test
tables.  Nothing here is part of ``make test``: ``make peers`` runs it.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent

# Pinned versions: the projects and everything their suites need.
PROJECTS = {
    "watchdog": {
        "version": "7.1.1",
        "test_deps": ["pytest==9.2.0", "pytest-timeout==2.4.0", "flaky==3.8.1", "PyYAML==6.0.3"],
    },
    "eventlet": {
        "version": "0.41.3",
        "test_deps": ["pytest==9.2.0", "pytest-timeout==2.4.0", "dnspython==2.9.2",
                      "greenlet==3.5.6"],
    },
}
KQUEUE_PY_DEPS = ["cffi==2.1.1"]
RUN_TIMEOUT_S = 40 * 60    # one suite run, at most
TEST_TIMEOUT_S = 120       # one test, at most (pytest-timeout)

EVENTLET_APART = "tests/hub_test.py::test_repeated_select_bad_fd"

WATCHDOG_BSD_PLUGIN = '''\
"""Loaded with -p by tools/peer-suites.py: watchdog's platform switch set to BSD."""
from watchdog.utils import platform

platform.__platform__ = platform.PLATFORM_BSD
'''

# Who each difference from the baseline belongs to, with the evidence.  A
# test with a difference but no note here is listed as "not yet explained".
# Keys: (project, test id as pytest prints it).
NOTES: Dict[Tuple[str, str], str] = {
    ("watchdog", "tests/test_emitter.py::test_delete"): (
        "**kqueue_py's bug** (Linux backend, descriptor lifetime). The `KqueueEmitter` thread "
        "dies with `KeyError` in `get_for_fd`: after a file's `NOTE_DELETE` watchdog closes the "
        "file's descriptor without `EV_DELETE` (on BSD `close()` removes the registration), and "
        "the backend then reports another `NOTE_DELETE` under the closed number (inotify's "
        "`IN_DELETE_SELF` comes only when that last descriptor is closed). Reproduced without "
        "watchdog: unlink a watched file, take its `NOTE_DELETE\\|NOTE_ATTRIB`, close the "
        "descriptor: the next `control()` returns `NOTE_DELETE` for the closed number."),
    ("watchdog", "tests/test_kqueue.py::test_delete_unregisters_descriptor[True]"): (
        "**kqueue_py's limitation** (Linux backend, `EVFILT_VNODE`): `rmdir()` of a watched "
        "directory reports no `NOTE_DELETE` for it. FreeBSD's `vop_rmdir_post` posts "
        "`NOTE_WRITE\\|NOTE_LINK` on the parent (kqueue_py reports that) and `NOTE_DELETE` on the "
        "directory; inotify sends `IN_DELETE_SELF` only when the last reference goes, and the "
        "watching descriptor is one. Listed in docs/linux-backend.md; the file case "
        "(`[False]`) passes."),
    ("eventlet", "tests/hub_test.py::test_fork"): (
        "**kqueue_py's bug** (fork behaviour of `compat.kqueue`), seen when the timing makes "
        "the forked child wait: its `server.accept()` goes to the hub, whose `control()` on the "
        "queue made before the fork raises `ValueError: I/O operation on closed kqueue object` "
        "(what CPython 3.12.1 and later do) where this interpreter's own `select.kqueue` "
        "(3.11) raises `OSError(EBADF)`; eventlet's kqueue hub makes a new queue only on "
        "`OSError`. When the parent's connection is already there, `accept()` never waits and "
        "the test passes, hence passes alone. kqueue_py must behave as the running "
        "interpreter's `select.kqueue` does (the fork-behaviour work)."),
    ("eventlet", "tests/hub_test.py::test_repeated_select_bad_fd"): (
        "**eventlet's expectation, not BSD's**: the kqueue hub builds `select.kevent(-1, ...)`, "
        "which raises `OverflowError: can't convert negative value to size_t`, as CPython's own "
        "`select.kevent` does on FreeBSD and macOS (`kqueue_event_init` converts an int ident "
        "with `PyLong_AsSize_t`); the test expects the `ValueError` of the epoll, poll and select "
        "hubs. Run apart: the hub's `add()` has already registered a listener for fd -1 when the "
        "exception comes, so every later test's tearDown check (`Readers: Listener "
        "FdListener('read', -1, ...)`) fails in cascade."),
}


@dataclass
class Outcome:
    outcome: str             # passed, failed, error, skipped
    message: str = ""
    seconds: float = 0.0
    reruns: List[str] = field(default_factory=list)   # outcomes of the tests re-run alone


@dataclass
class Run:
    name: str                # baseline, kqueue
    command: List[str]
    backend: str = ""        # what the probe saw in use
    returncode: int = 0
    outcomes: Dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0


def log(msg: str) -> None:
    print(f"[peer-suites] {msg}", flush=True)


def sh(cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess:
    log("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], check=True, **kw)  # type: ignore[call-overload]


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(cache: Path, name: str, python: str) -> Path:
    spec = PROJECTS[name]
    pins = [f"{name}=={spec['version']}", *spec["test_deps"], *KQUEUE_PY_DEPS]
    venv = cache / f"venv-{name}"
    stamp = venv / "peer-suites-pins.txt"
    want = "\n".join([sys.version.split()[0], python, *pins]) + "\n"
    if stamp.exists() and stamp.read_text() == want:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    sh([python, "-m", "venv", venv])
    py = venv_python(venv)
    sh([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip"])
    # The project itself from its sdist, as its tests come from there too.
    sh([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
        "--no-binary", name, *pins])
    stamp.write_text(want)
    return venv


def fetch_sdist(cache: Path, name: str, py: Path) -> Path:
    version = PROJECTS[name]["version"]
    dist = cache / "sdists"
    dist.mkdir(parents=True, exist_ok=True)
    archive = dist / f"{name}-{version}.tar.gz"
    if not archive.exists():
        sh([py, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
            "--no-binary", ":all:", "-d", dist, f"{name}=={version}"])
    # A clean copy of the sources every time (a suite writes into its tree).
    tree = cache / "src" / f"{name}-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    tree.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tree.parent, **kwargs)  # type: ignore[arg-type]
    return tree


def build_kqueue_py(cache: Path, py: Path) -> Path:
    """A wheel of this checkout, built once per run of this script."""
    out = cache / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(ROOT / "build", ignore_errors=True)   # setuptools reuses objects there
    sh([py, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
        "-w", out, ROOT])
    [wheel] = sorted(out.glob("kqueue_py-*.whl"))
    return wheel


def install_kqueue_py(py: Path, wheel: Path) -> None:
    sh([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall",
        "--no-deps", wheel])


def parse_junit(path: Path) -> Dict[str, Outcome]:
    outcomes: Dict[str, Outcome] = {}
    if not path.exists():
        return outcomes
    for case in ET.parse(path).getroot().iter("testcase"):
        classname = case.get("classname", "")
        name = case.get("name", "")
        test_id = junit_id(classname, name, case.get("file"))
        outcome = Outcome("passed", seconds=float(case.get("time") or 0))
        for child in case:
            tag = child.tag
            if tag in ("failure", "error", "skipped"):
                kind = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                if outcome.outcome in ("failed", "error") and kind == "skipped":
                    continue
                msg = (child.get("message") or child.text or "").strip().splitlines()
                outcome = Outcome(kind, msg[0][:160] if msg else "", outcome.seconds)
        previous = outcomes.get(test_id)
        if previous is None or previous.outcome == "passed":
            outcomes[test_id] = outcome
    return outcomes


def junit_id(classname: str, name: str, file: Optional[str]) -> str:
    """``tests/x_test.py::Class::test`` from JUnit's dotted classname."""
    if not classname:   # a module skipped or failed at collection
        return name.replace(".", "/") + ".py"
    parts = classname.split(".")
    # The module is the longest prefix that is a file of the suite.
    for i in range(len(parts), 0, -1):
        module = "/".join(parts[:i]) + ".py"
        if file and file.endswith(module):
            return "::".join([module, *parts[i:], name])
    for i in range(len(parts), 0, -1):
        if parts[i - 1].startswith("test") or parts[i - 1].endswith("_test"):
            return "::".join(["/".join(parts[:i]) + ".py", *parts[i:], name])
    return "::".join([classname, name])


def probe(tree: Path, py: Path, env: Dict[str, str], kqueue: bool, code: str,
          run_args: Sequence[str] = ()) -> str:
    """What the suite's processes will use, asked the same way (evidence for the doc)."""
    cmd = [str(py), "-c", code]
    if kqueue:
        cmd = [str(py), "-m", "kqueue_py.run", *run_args, "--", *cmd]
    proc = subprocess.run(cmd, cwd=tree, env=env, text=True, capture_output=True)
    out = (proc.stdout.strip() or proc.stderr.strip().splitlines()[-1:] or ["?"])
    return out if isinstance(out, str) else out[0]


def run_suite(name: str, run_name: str, tree: Path, py: Path, results: Path,
              pytest_args: List[str], env: Dict[str, str], kqueue: bool,
              run_args: Sequence[str] = ()) -> Run:
    xml = results / f"{name}-{run_name}.xml"
    logfile = results / f"{name}-{run_name}.log"
    xml.unlink(missing_ok=True)
    pytest = [str(py), "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=",
              f"--timeout={TEST_TIMEOUT_S}", f"--junitxml={xml}", "-o", "junit_family=xunit1",
              "-rfE", *pytest_args]
    command = ([str(py), "-m", "kqueue_py.run", *run_args, "--", *pytest] if kqueue else pytest)
    log(f"{name} {run_name}: {' '.join(command)}  (log: {logfile})")
    start = datetime.datetime.now()
    with open(logfile, "w") as out:
        try:
            proc = subprocess.run(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT_S)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = -1
            out.write(f"\n[peer-suites] timed out after {RUN_TIMEOUT_S} s\n")
    seconds = (datetime.datetime.now() - start).total_seconds()
    run = Run(run_name, command, returncode=rc, outcomes=parse_junit(xml), seconds=seconds)
    counts = summarize(run.outcomes)
    log(f"{name} {run_name}: exit {rc} in {seconds:.0f} s: {counts}")
    return run


def summarize(outcomes: Dict[str, Outcome]) -> str:
    counts: Dict[str, int] = {}
    for o in outcomes.values():
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    order = ("passed", "failed", "error", "skipped")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))


def base_env(py: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "KQUEUE_PY_RUN", "EVENTLET_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = str(py.parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


RERUNS = 2


def fill_module_skips(run: Run, ids: Sequence[str]) -> None:
    """A test of a module skipped whole (at collection) is skipped too."""
    for test_id in ids:
        module = run.outcomes.get(test_id.split("::")[0])
        if test_id not in run.outcomes and module is not None and module.outcome == "skipped":
            run.outcomes[test_id] = Outcome("skipped", "the whole module: " + module.message)


def differing(base: Run, kq: Run) -> List[str]:
    """Tests whose outcome differs, not counting a test one path skips."""
    every = sorted(set(base.outcomes) | set(kq.outcomes))
    fill_module_skips(base, every)
    fill_module_skips(kq, every)
    out = []
    for test_id in sorted(set(base.outcomes) | set(kq.outcomes)):
        b, k = base.outcomes.get(test_id), kq.outcomes.get(test_id)
        pair = {b.outcome if b else "not run", k.outcome if k else "not run"}
        if len(pair) > 1 and not pair <= {"passed", "skipped", "not run"}:
            out.append(test_id)
    return out


def rerun_differences(name: str, runs: List[Tuple[Run, Dict[str, str], bool, List[str]]],
                      tree: Path, py: Path, results: Path, exclude: Sequence[str] = ()) -> None:
    """Run each differing test again, alone with the others that differ, RERUNS
    times on each path: a difference that comes and goes is the suite's
    flakiness under load, not a behaviour of either path."""
    (base, *_), (kq, *_) = runs
    ids = [test_id for test_id in differing(base, kq) if test_id not in exclude]
    if not ids:
        return
    for run, env, kqueue, extra in runs:
        # Only what ran on this path (pytest refuses an id in a skipped module).
        mine = [test_id for test_id in ids
                if test_id in run.outcomes and run.outcomes[test_id].outcome != "skipped"]
        if not mine:
            continue
        for i in range(RERUNS):
            again = run_suite(name, f"{run.name}-rerun{i + 1}", tree, py, results,
                              [*extra, *mine], env, kqueue)
            for test_id in mine:
                o = run.outcomes.get(test_id)
                if o is not None:
                    r = again.outcomes.get(test_id)
                    o.reruns.append(r.outcome if r else "not run")


def run_watchdog(cache: Path, wheel: Optional[Path], python: str) -> Dict[str, object]:
    venv = ensure_venv(cache, "watchdog", python)
    py = venv_python(venv)
    if wheel is not None:
        install_kqueue_py(py, wheel)
    tree = fetch_sdist(cache, "watchdog", py)
    results = cache / "results"
    results.mkdir(exist_ok=True)
    plugin_dir = cache / "plugins"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / "peer_watchdog_bsd.py").write_text(WATCHDOG_BSD_PLUGIN)
    env = base_env(py)
    which = ("import select\nfrom watchdog.observers import Observer\n"
             "kq = getattr(select, 'kqueue', None)\n"
             "print(Observer.__name__ + ', select.kqueue:',"
             " kq.__module__ + '.' + kq.__name__ if kq else None)")
    base = run_suite("watchdog", "baseline", tree, py, results, ["tests"], env, kqueue=False)
    base.backend = probe(tree, py, env, False, which)
    kq_env = dict(env)
    # The plugin's directory goes after the hook's on PYTHONPATH (kqueue_py.run prepends).
    kq_env["PYTHONPATH"] = str(plugin_dir)
    kq = run_suite("watchdog", "kqueue", tree, py, results,
                   ["-p", "peer_watchdog_bsd", "tests"], kq_env, kqueue=True)
    kq.backend = probe(tree, py, kq_env, True, "import peer_watchdog_bsd\n" + which)
    rerun_differences("watchdog", [(base, env, False, []),
                                   (kq, kq_env, True, ["-p", "peer_watchdog_bsd"])],
                      tree, py, results)
    return {"runs": [base, kq], "py": py, "how": {
        "baseline": "`python -m pytest tests` (Linux: inotify emitter)",
        "kqueue": "`python -m kqueue_py.run -- python -m pytest -p peer_watchdog_bsd tests` "
                  "(watchdog's platform switch set to BSD: KqueueEmitter, BSD expectations)",
    }}


def run_eventlet(cache: Path, wheel: Optional[Path], python: str) -> Dict[str, object]:
    venv = ensure_venv(cache, "eventlet", python)
    py = venv_python(venv)
    if wheel is not None:
        install_kqueue_py(py, wheel)
    tree = fetch_sdist(cache, "eventlet", py)
    results = cache / "results"
    results.mkdir(exist_ok=True)
    runs = []
    envs = []
    for run_name, hub, kqueue in (("baseline", "epolls", False), ("kqueue", "kqueue", True)):
        env = base_env(py)
        env["EVENTLET_HUB"] = hub
        main = run_suite("eventlet", run_name, tree, py, results,
                         ["--deselect", EVENTLET_APART, "tests"], env, kqueue)
        apart = run_suite("eventlet", run_name + "-apart", tree, py, results,
                          [EVENTLET_APART], env, kqueue)
        main.outcomes.update(apart.outcomes)
        main.backend = probe(tree, py, env, kqueue,
                             "import eventlet.hubs\nhub = eventlet.hubs.get_hub()\n"
                             "q = type(getattr(hub, 'kqueue', getattr(hub, 'poll', None)))\n"
                             "print(type(hub).__module__ + '.Hub on', q.__module__ + '.' + q.__name__)")
        main.seconds += apart.seconds
        runs.append(main)
        envs.append(env)
    rerun_differences("eventlet", [(runs[0], envs[0], False, ["--deselect", EVENTLET_APART]),
                                   (runs[1], envs[1], True, ["--deselect", EVENTLET_APART])],
                      tree, py, results, exclude=[EVENTLET_APART])
    return {"runs": runs, "py": py, "how": {
        "baseline": "`EVENTLET_HUB=epolls python -m pytest tests` (the epoll hub)",
        "kqueue": "`EVENTLET_HUB=kqueue python -m kqueue_py.run -- python -m pytest tests` "
                  "(the kqueue hub)",
    }}


RUNNERS = {"watchdog": run_watchdog, "eventlet": run_eventlet}


def git_describe() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
        return rev + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions(py: Path, names: Sequence[str]) -> str:
    code = ("import importlib.metadata as m, sys\n"
            "print(', '.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))")
    return subprocess.run([str(py), "-c", code, *names], text=True, capture_output=True,
                          check=True).stdout.strip()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()} {platform.machine()}, {cpu}, "
            f"{os.cpu_count()} CPUs")


def cell(o: Optional[Outcome]) -> str:
    if o is None:
        return "not run"
    again = f" (alone, again: {', '.join(o.reruns)})" if o.reruns else ""
    if o.outcome == "passed":
        return "passed" + again
    text = o.message.replace("|", "\\|").replace("\n", " ")
    return (f"{o.outcome}: {text}" if text else o.outcome) + again


def section(name: str, result: Dict[str, object], meta: str) -> str:
    base, kq = result["runs"]  # type: ignore[misc]
    py: Path = result["py"]  # type: ignore[assignment]
    how: Dict[str, str] = result["how"]  # type: ignore[assignment]
    spec = PROJECTS[name]
    deps = [d.split("==")[0] for d in spec["test_deps"]]
    lines = [f"## {name} {spec['version']}", "", meta, ""]
    lines.append(f"Installed: {versions(py, [name, 'kqueue_py', *deps])}.")
    lines.append("")
    lines.append("| run | command | in use (asked the same way) | exit | time | outcomes |")
    lines.append("|---|---|---|---|---|---|")
    for run in (base, kq):
        backend = run.backend.replace("|", "\\|")
        lines.append(f"| {run.name} | {how[run.name]} | `{backend}` | {run.returncode} "
                     f"| {run.seconds:.0f} s | {summarize(run.outcomes)} |")
    lines.append("")
    ids = sorted(set(base.outcomes) | set(kq.outcomes))
    real_ids = set(differing(base, kq))
    real, other_path = [], []
    for test_id in ids:
        b, k = base.outcomes.get(test_id), kq.outcomes.get(test_id)
        if (b.outcome if b else "not run") == (k.outcome if k else "not run"):
            continue
        # A test that only one path has (skipped on the other by the suite
        # itself) is not a difference of behaviour; it is listed apart.
        (real if test_id in real_ids else other_path).append((test_id, b, k))
    lines.append(f"### Differences from the baseline ({len(real)})")
    lines.append("")
    if real:
        lines.append("| test | baseline | kqueue | whose, and the evidence |")
        lines.append("|---|---|---|---|")
        for test_id, b, k in real:
            note = NOTES.get((name, test_id))
            if note is None:
                flaky = any(o is not None and o.reruns and set(o.reruns) != {o.outcome}
                            for o in (b, k))
                note = ("flaky: the outcome changed when the test was run again alone "
                        "(the suite's timing under load)" if flaky else "**not yet explained**")
            lines.append(f"| `{test_id}` | {cell(b)} | {cell(k)} | {note} |")
    else:
        lines.append("None: every test that ran on both paths has the same outcome.")
    lines.append("")
    lines.append(f"### Tests that run on one path only ({len(other_path)})")
    lines.append("")
    lines.append("Skipped by the suite itself on the other path (a backend-specific test, or "
                 "one the suite marks for one platform); passed where it ran:")
    lines.append("")
    lines.append("<details><summary>the list</summary>")
    lines.append("")
    lines.append("| test | baseline | kqueue |")
    lines.append("|---|---|---|")
    for test_id, b, k in other_path:
        lines.append(f"| `{test_id}` | {cell(b)} | {cell(k)} |")
    lines.append("")
    lines.append("</details>")
    lines.append("")
    lines.append(f"### Every test ({len(ids)})")
    lines.append("")
    lines.append("<details><summary>the full table</summary>")
    lines.append("")
    lines.append("| test | baseline | kqueue |")
    lines.append("|---|---|---|")
    for test_id in ids:
        b, k = base.outcomes.get(test_id), kq.outcomes.get(test_id)
        lines.append(f"| `{test_id}` | {b.outcome if b else 'not run'} "
                     f"| {k.outcome if k else 'not run'} |")
    lines.append("")
    lines.append("</details>")
    lines.append("")
    return "\n".join(lines)


HEADER = """\
# Peers: real projects' suites on their kqueue path, on Linux

Generated by `make peers` (`tools/peer-suites.py`): do not edit by hand.
Each project's own test suite, unmodified, from its PyPI sdist, runs twice:
on its Linux path (the baseline) and on its kqueue path through
`python -m kqueue_py.run` ([docs/run.md](run.md) explains the command and
how each project's kqueue path is chosen).  A difference is a test whose
outcome is not the same on both paths; each one is explained: kqueue_py's
bug, or the project's expectation of BSD/macOS.

"""


def write_doc(path: Path, sections: Dict[str, str]) -> None:
    old: Dict[str, str] = {}
    if path.exists():
        # Keep the sections of projects not run this time.
        text = path.read_text()
        for name in PROJECTS:
            begin, end = f"<!-- peers:{name}:begin -->", f"<!-- peers:{name}:end -->"
            if begin in text and end in text:
                old[name] = text[text.index(begin) + len(begin):text.index(end)].strip("\n")
    parts = [HEADER]
    for name in PROJECTS:
        body = sections.get(name, old.get(name))
        if body is None:
            continue
        parts += [f"<!-- peers:{name}:begin -->", body, f"<!-- peers:{name}:end -->", ""]
    path.write_text("\n".join(parts).rstrip("\n") + "\n")
    log(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "kqueue_py-peers",
                        help="venvs, sdists and results (default: %(default)s)")
    parser.add_argument("--only", choices=sorted(PROJECTS), action="append",
                        help="run this project only (repeatable)")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter for the venvs (default: this one)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "peers.md")
    args = parser.parse_args()
    cache: Path = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    names = args.only or list(PROJECTS)
    wheel: Optional[Path] = None
    sections: Dict[str, str] = {}
    pyver = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"],
                           text=True, capture_output=True, check=True).stdout.strip()
    described = git_describe()   # what the wheel is built from
    for name in names:
        meta = (f"Run of {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
                f"kqueue_py at {described}, CPython {pyver}, {machine()}.")
        py = venv_python(ensure_venv(cache, name, args.python))
        if wheel is None:
            sh([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "setuptools",
                "wheel", *KQUEUE_PY_DEPS])
            wheel = build_kqueue_py(cache, py)
        result = RUNNERS[name](cache, wheel, args.python)
        sections[name] = section(name, result, meta)
        write_doc(args.output, sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
