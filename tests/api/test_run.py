"""``python -m kqueue_py.run``, the pytest plugin, and an installation that
survives a fresh import of ``select``.

Every scenario runs real processes: the command under test starts real
Python children (``python -c``, multiprocessing pools with the spawn and
forkserver start methods) and each reports what its own ``select`` and
``selectors`` modules offer.  The stdlib's own modules are the oracle for
"untouched": without the command, a child has ``select.epoll`` and no
``select.kqueue``, as this Linux interpreter does.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest
from helpers import wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or hasattr(select, "kqueue"),
    reason="kqueue_py.run installs kqueue_py where select has no kqueue (Linux)")

RUN = [sys.executable, "-m", "kqueue_py.run"]

# What one process reports about itself: one JSON line.
REPORT = r"""
import json, os, select, selectors, sys
def report(who):
    return {"who": who, "pid": os.getpid(),
            "kqueue": getattr(select, "kqueue", None) is not None
                      and select.kqueue.__module__ == "kqueue_py.compat",
            "epoll": hasattr(select, "epoll"),
            "EPOLLIN": hasattr(select, "EPOLLIN"),
            "EpollSelector": hasattr(selectors, "EpollSelector"),
            "default": selectors.DefaultSelector.__module__ + "." + selectors.DefaultSelector.__name__}
"""

TREE = REPORT + r"""
import multiprocessing, subprocess

def child_report(_):
    return report(multiprocessing.current_process().name)

if __name__ == "__main__":
    out = [report("command")]
    child = subprocess.run([sys.executable, "-c", {child!r}], capture_output=True, text=True,
                           check=True)
    out.append(json.loads(child.stdout))
    for method in ("spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            for r in pool.map(child_report, range(2)):
                r["who"] = method
                out.append(r)
    print(json.dumps(out))
"""
CHILD = REPORT + "print(json.dumps(report('python -c')))"


def run(cmd, tmp_path: Path, input: str | None = None, timeout: float = 120,
        env: dict | None = None) -> subprocess.CompletedProcess:
    # From a scratch directory: not from the checkout (src/ is never imported).
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, input=input,
                          timeout=timeout, env=env)


def tree_reports(tmp_path: Path, *options: str) -> list[dict]:
    script = tmp_path / "tree.py"
    script.write_text(TREE.replace("{child!r}", repr(CHILD)))
    proc = run([*RUN, *options, "--", sys.executable, str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    reports = json.loads(proc.stdout)
    assert [r["who"] for r in reports] == ["command", "python -c", "spawn", "spawn",
                                           "forkserver", "forkserver"]
    assert len({r["pid"] for r in reports}) >= 4   # real, distinct processes
    return reports


def test_every_python_process_of_the_command_sees_kqueue(tmp_path):
    # The oracle first: the same tree run directly is the stdlib's own.
    script = tmp_path / "tree.py"
    script.write_text(TREE.replace("{child!r}", repr(CHILD)))
    proc = run([sys.executable, str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for r in json.loads(proc.stdout):
        assert not r["kqueue"] and r["epoll"], r
        assert r["default"] == "selectors.EpollSelector", r
    for r in tree_reports(tmp_path):
        assert r["kqueue"], r
        assert r["default"] == "selectors.KqueueSelector", r
        assert r["epoll"] and r["EpollSelector"], r      # nothing hidden unless asked


def test_hide_epoll_reaches_every_python_process(tmp_path):
    for r in tree_reports(tmp_path, "--hide-epoll", "--selector", "kqueue"):
        assert r["kqueue"], r
        assert not r["epoll"] and not r["EPOLLIN"] and not r["EpollSelector"], r
        assert r["default"] == "kqueue_py.selectors.KqueueSelector", r


def _site_files() -> set[str]:
    files = set()
    for key in ("purelib", "platlib"):
        root = sysconfig.get_paths()[key]
        for dirpath, _, names in os.walk(root):
            files.update(os.path.join(dirpath, n) for n in names if not n.endswith(".pyc"))
    return files


def test_nothing_outside_the_command_changes(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    env.pop("PYTHONPATH", None)
    before = _site_files()
    meta_path = list(sys.meta_path)
    import selectors
    default = selectors.DefaultSelector
    proc = run([*RUN, "--hide-epoll", "--", sys.executable, "-c", CHILD], tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    inside = json.loads(proc.stdout)
    assert inside["kqueue"] and not inside["epoll"]
    # The hook's private directory lived in TMPDIR and is gone.
    assert list(scratch.iterdir()) == []
    assert _site_files() == before
    # This process: its select, selectors, import machinery and environment untouched.
    assert not hasattr(select, "kqueue") and hasattr(select, "epoll")
    assert selectors.DefaultSelector is default and not hasattr(selectors, "KqueueSelector")
    assert sys.meta_path == meta_path
    assert "KQUEUE_PY_RUN" not in os.environ
    # A process started afterwards, outside the command, is the stdlib's own.
    after = json.loads(run([sys.executable, "-c", CHILD], tmp_path, env=env).stdout)
    assert not after["kqueue"] and after["epoll"]


def test_other_sitecustomize_still_runs(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['THEIRS'] = 'ran'\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    code = CHILD.replace("print(", "print(os.environ.get('THEIRS'), ")
    proc = run([*RUN, "--", sys.executable, "-c", code], tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    theirs, _, rest = proc.stdout.partition(" ")
    assert theirs == "ran" and json.loads(rest)["kqueue"]


def test_isolated_child_is_not_reached(tmp_path):
    """The documented limit: ``python -I`` ignores PYTHONPATH."""
    proc = run([*RUN, "--", sys.executable, "-I", "-c", CHILD], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not json.loads(proc.stdout)["kqueue"]


def test_streams_and_exit_status_pass_through(tmp_path):
    proc = run([*RUN, "--", sys.executable, "-c",
                "import sys; sys.stdout.write(sys.stdin.read().upper()); "
                "sys.stderr.write('err'); sys.exit(7)"], tmp_path, input="hello")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "HELLO", "err")


@pytest.mark.parametrize("signo", [signal.SIGKILL, signal.SIGTERM])
def test_a_command_killed_by_a_signal_exits_128_plus_it(tmp_path, signo):
    proc = run([*RUN, "--", sys.executable, "-c",
                f"import os; os.kill(os.getpid(), {int(signo)})"], tmp_path)
    assert proc.returncode == 128 + signo   # as sh -c reports it


def test_missing_command(tmp_path):
    proc = run([*RUN, "--", str(tmp_path / "no-such-program")], tmp_path)
    assert proc.returncode == 127 and "no-such-program" in proc.stderr
    proc = run([*RUN], tmp_path)
    assert proc.returncode == 2 and "no command" in proc.stderr


WAITS_FOR_SIGNALS = r"""
import signal, sys
def handler(signo, frame):
    print("got", signal.Signals(signo).name, flush=True)
    if signo == signal.SIGTERM:
        sys.exit(5)
signal.signal(signal.SIGTERM, handler)
signal.signal(signal.SIGUSR1, handler)
print("ready", flush=True)
while True:
    signal.pause()
"""


def _start(tmp_path: Path, code: str) -> subprocess.Popen:
    # SIGINT at its default action, even when this test runs as a background
    # job (which starts with SIGINT ignored, and so would the command).
    proc = subprocess.Popen([*RUN, "--", sys.executable, "-c", code], cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"   # the command is up, its handlers set
    return proc


def test_signals_sent_to_the_runner_reach_the_command(tmp_path):
    proc = _start(tmp_path, WAITS_FOR_SIGNALS)
    assert proc.stdout is not None
    proc.send_signal(signal.SIGUSR1)
    assert proc.stdout.readline() == "got SIGUSR1\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "got SIGTERM\n"
    assert proc.wait(30) == 5


def test_sigint_sent_to_the_runner_interrupts_the_command(tmp_path):
    proc = _start(tmp_path, "import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    # KeyboardInterrupt in the command, which then ends itself by SIGINT.
    assert proc.wait(30) == 128 + signal.SIGINT
    assert time.monotonic() - t0 < 30


REIMPORT = r"""
import importlib, sys
import select, selectors
import kqueue_py.compat as compat

def fresh(name):
    # What eventlet.patcher.original(name) does: pop the module, import it
    # again, put the old one back.
    saved = sys.modules.pop(name)
    try:
        return importlib.import_module(name)
    finally:
        sys.modules[name] = saved

def inject_selectors():
    # eventlet.patcher.inject('selectors', globals(), ('select', green_select)):
    # a fresh selectors built on a stand-in select, on purpose.
    import types
    green = types.ModuleType("select")
    green.select = select.select
    saved = {n: sys.modules.pop(n) for n in ("select", "selectors")}
    sys.modules["select"] = green
    try:
        mod = importlib.import_module("selectors")
    finally:
        for n in ("select", "selectors"):
            sys.modules.pop(n, None)
        sys.modules.update(saved)
    assert mod.select is green
    return sorted(n for n in vars(mod) if n.endswith("Selector")), mod.DefaultSelector.__name__

HIDE = sys.argv[1] == "hide"
stand_in = inject_selectors()
assert stand_in[1] == "SelectSelector", stand_in
epoll = select.epoll
meta_path = list(sys.meta_path)
stdlib_default = selectors.DefaultSelector
assert compat.install(hide_epoll=True) if HIDE else compat.install()
s1 = fresh("select")
assert s1 is not select and s1.kqueue is compat.kqueue and s1.kevent is compat.kevent
assert s1.KQ_FILTER_READ == compat.KQ_FILTER_READ
assert hasattr(s1, "epoll") is hasattr(s1, "EPOLLIN") is (not HIDE)
sel1 = fresh("selectors")
assert sel1 is not selectors and sel1.DefaultSelector is sel1.KqueueSelector
assert hasattr(sel1, "EpollSelector") is (not HIDE)
# Building the fresh selectors left the live select as installed (on PyPy,
# select is built in, and a careless copy of it re-initialises the live one).
assert sys.modules["select"] is select and select.kqueue is compat.kqueue
assert hasattr(select, "epoll") is hasattr(select, "EPOLLIN") is (not HIDE)
with sel1.DefaultSelector() as sel:                # a working selector on the fresh modules
    import socket
    a, b = socket.socketpair()
    sel.register(a, sel1.EVENT_READ, "a")
    b.send(b"x")
    assert [k.data for k, _ in sel.select(1)] == ["a"]
assert inject_selectors() == stand_in                # a stand-in select is left alone
importlib.reload(select)                           # a reload keeps the installation too
assert select.kqueue is compat.kqueue and hasattr(select, "epoll") is (not HIDE)
compat.uninstall()
assert sys.meta_path == meta_path
for module in (select, s1):
    assert not hasattr(module, "kqueue") and not hasattr(module, "KQ_FILTER_READ"), module
    assert hasattr(module, "epoll") and hasattr(module, "EPOLLIN"), module
assert select.epoll is epoll
assert selectors.DefaultSelector is stdlib_default and not hasattr(selectors, "KqueueSelector")
assert sel1.DefaultSelector is sel1.EpollSelector and not hasattr(sel1, "KqueueSelector")
s2 = fresh("select")                               # after uninstall: the stdlib's own again
assert not hasattr(s2, "kqueue") and hasattr(s2, "epoll")
print("ok")
"""


@pytest.mark.parametrize("mode", ["plain", "hide"])
def test_installation_survives_a_fresh_import_of_select(tmp_path, mode):
    proc = run([sys.executable, "-c", REIMPORT, mode], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_install_with_other_options_is_refused(tmp_path):
    code = textwrap.dedent("""
        import kqueue_py.compat as compat
        assert compat.install(selector="kqueue")
        assert compat.install(selector="kqueue")          # the same: idempotent
        try:
            compat.install(hide_epoll=True)
        except ValueError as e:
            assert "uninstall" in str(e)
        else:
            raise AssertionError("no ValueError")
        try:
            compat.install(selector="epoll")
        except ValueError as e:
            assert "selector" in str(e)
        else:
            raise AssertionError("no ValueError")
        print("ok")
    """)
    proc = run([sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_pytest_plugin(tmp_path):
    tests = tmp_path / "suite"
    tests.mkdir()
    (tests / "conftest.py").write_text("import select\nHAS_EPOLL = hasattr(select, 'epoll')\n")
    (tests / "test_it.py").write_text(textwrap.dedent(f"""
        import json, os, subprocess, sys
        import select, selectors
        import conftest

        def test_here():
            assert os.environ.get("EXPECT") == ("kqueue" if hasattr(select, "kqueue") else "none")

        def test_in_conftest_and_a_child():
            out = json.loads(subprocess.run([sys.executable, "-c", {CHILD!r}],
                                            capture_output=True, text=True, check=True).stdout)
            print("REPORT", json.dumps(dict(out, conftest_epoll=conftest.HAS_EPOLL)))
    """))
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s",
            "-p", "kqueue_py.pytest_plugin", str(tests)]

    def reports(*args: str, expect: str) -> dict:
        env = dict(os.environ, EXPECT=expect)
        proc = run([*base, *args], tmp_path, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        [found] = re.findall(r"REPORT (\{.*\})", proc.stdout)   # after pytest's progress dots
        return json.loads(found)

    on = reports("--kqueue", "--kqueue-hide-epoll", expect="kqueue")
    assert on["kqueue"] and not on["epoll"] and not on["conftest_epoll"], on
    off = reports(expect="none")                 # loaded but not asked: nothing changes
    assert not off["kqueue"] and off["epoll"] and off["conftest_epoll"], off


# Counts each delivery of SIGINT (the interpreter runs a Python handler once
# for deliveries that come close together, but writes one byte per delivery
# to its wakeup descriptor); prints the count at each SIGUSR1.
COUNTS_SIGINT = r"""
import os, signal, sys
r, w = os.pipe()
os.set_blocking(r, False)
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
count = 0
def on_int(signo, frame):
    print("got SIGINT", flush=True)
def on_usr1(signo, frame):
    global count
    try:
        count += os.read(r, 4096).count(bytes([signal.SIGINT]))
    except BlockingIOError:
        pass
    print("count", count, flush=True)
signal.signal(signal.SIGINT, on_int)
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(0))
print("ready", flush=True)
while True:
    signal.pause()
"""


def _proc_status(pid: int, field: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == field:
                return value.strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _sigint_pending(pid: int) -> bool:
    """Whether SIGINT is pending for the process ``pid``."""
    return bool(int(_proc_status(pid, "ShdPnd"), 16) & (1 << (signal.SIGINT - 1)))


def test_ctrl_c_at_a_terminal_reaches_the_command_once(tmp_path):
    """The terminal sends SIGINT to the whole foreground process group, the
    command included; the runner must not pass its own copy on as well.  A
    SIGINT sent to the runner alone is passed on, once."""
    import pty

    pid, master = pty.fork()
    if pid == 0:   # the child: a new session with the pty as its terminal
        os.chdir(tmp_path)
        os.execv(sys.executable, [*RUN, "--", sys.executable, "-c", COUNTS_SIGINT])
    out = b""

    def read_until(pattern: bytes) -> None:
        nonlocal out
        while not re.search(pattern, out):
            assert select.select([master], [], [], 60)[0], out   # fail, never hang
            try:
                chunk = os.read(master, 4096)
            except OSError:   # EIO: the terminal's other side is gone
                chunk = b""
            assert chunk, out
            out += chunk

    try:
        read_until(b"ready\r?\n")
        # The kernel keeps one pending instance of a standard signal: a copy
        # the runner passed on while the command had not yet taken the
        # terminal's would merge with it, unseen.  So the runner is stopped
        # while the command takes the terminal's SIGINT, and acts on its own
        # only afterwards: any copy it passes on then is a second delivery.
        os.kill(pid, signal.SIGSTOP)
        assert wait_until(lambda: _proc_status(pid, "State").startswith("T"), timeout=60)
        os.write(master, b"\x03")                 # Ctrl-C
        read_until(b"got SIGINT")
        assert _sigint_pending(pid)              # the runner's own copy, not yet taken
        os.kill(pid, signal.SIGCONT)
        assert wait_until(lambda: not _sigint_pending(pid), timeout=60)
        # Signals from a process are passed on, in order (lower numbers
        # first): SIGUSR1 reaches the command after any SIGINT the runner
        # forwarded.
        os.kill(pid, signal.SIGUSR1)
        read_until(rb"count \d+\r?\n")
        assert re.search(rb"count 1\r?\n", out), out
        # SIGINT sent to the runner alone by a process: passed on, once.
        os.kill(pid, signal.SIGINT)
        read_until(b"got SIGINT(.|\n)*got SIGINT")
        os.kill(pid, signal.SIGUSR1)
        read_until(rb"count \d+\r?\n(.|\n)*count \d+\r?\n")
        assert re.search(rb"count 1\r?\n(.|\n)*count 2\r?\n", out), out
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.killpg(pid, signal.SIGKILL)   # the runner leads the session and group
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_runner_started_with_sigchld_ignored_still_reports_the_exit_status(tmp_path):
    """A parent that ignores SIGCHLD passes that on; the runner must still
    learn the command's exit status, and the command starts with SIGCHLD
    ignored as it would if started directly (the oracle)."""
    probe = [sys.executable, "-I", "-c",
             "import sys; sys.stdout.write(next(line for line in open('/proc/self/status')"
             " if line.startswith('SigIgn:'))); sys.exit(3)"]

    def ignoring_sigchld(cmd: list) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))

    direct = ignoring_sigchld(probe)
    under = ignoring_sigchld([*RUN, "--", *probe])
    assert direct.returncode == under.returncode == 3, under.stderr
    assert under.stdout == direct.stdout
    ignored = int(under.stdout.split()[-1], 16)
    assert ignored & (1 << (signal.SIGCHLD - 1))


def test_the_command_starts_with_the_signal_state_a_shell_gives(tmp_path):
    """No signal blocked, none ignored that a plain start leaves at its
    default (Python itself ignores SIGPIPE; the runner blocks the signals it
    passes on): the oracle is the same program started by subprocess."""
    probe = ["sh", "-c", "grep -E '^(SigBlk|SigIgn)' /proc/self/status"]
    direct = run(probe, tmp_path)
    under = run([*RUN, "--", *probe], tmp_path)
    assert direct.returncode == under.returncode == 0, under.stderr
    assert under.stdout == direct.stdout
    assert "SigBlk:\t0000000000000000" in under.stdout
