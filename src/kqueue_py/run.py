"""``python -m kqueue_py.run [options] -- COMMAND ...``: run a command on kqueue.

The command, and every Python process it starts, runs with
:func:`kqueue_py.compat.install` in effect from start-up, before any code of
its own imports ``select`` or ``selectors``: ``select.kqueue``,
``select.kevent`` and the ``KQ_*`` constants exist and
``selectors.DefaultSelector`` is a kqueue selector, so code written for
BSD/macOS takes its kqueue path on Linux.

How: a private temporary directory holds a start-up hook (a
``sitecustomize`` module that installs kqueue_py, driven by the
``KQUEUE_PY_RUN`` environment variable, then runs any other
``sitecustomize`` the interpreter would have run); the directory is put first
on ``PYTHONPATH`` in the command's environment only, and removed when the
command ends.  Python processes the command starts inherit the environment
(``python -c`` children, multiprocessing's spawn and forkserver, process
managers); forked ones inherit the installation itself.  Nothing is written
into site-packages and nothing changes outside the command.

Not reached: interpreters started with ``-I``, ``-E`` or ``-S`` (they ignore
``PYTHONPATH`` or skip ``sitecustomize``), children given an environment
without ``PYTHONPATH`` and ``KQUEUE_PY_RUN``, another interpreter that cannot
import kqueue_py (it says so on stderr and runs without it), and programs
that are not Python.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "hook_environment", "activate", "ENV_VAR"]

#: The environment variable the start-up hook reads.
ENV_VAR = "KQUEUE_PY_RUN"
_HOOK_DIR_KEY = "dir"

# The start-up hook, written as sitecustomize.py into the private directory.
# It must stay importable even where kqueue_py is not: the chained
# sitecustomize still runs.
_HOOK_SOURCE = '''\
"""kqueue_py.run start-up hook: generated, removed when the command ends."""


def _kqueue_py_run_hook():
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        from kqueue_py.run import activate
    except Exception as exc:
        sys.stderr.write("kqueue_py.run: %s cannot import kqueue_py (%s): this process "
                         "runs without it\\n" % (sys.executable, exc))
    else:
        activate(os.environ.get("KQUEUE_PY_RUN", ""))
    # Run the sitecustomize this interpreter would have run without us.
    import importlib.machinery
    import importlib.util

    def _other(entry):
        try:
            return os.path.abspath(entry or os.curdir) != here
        except Exception:
            return True

    path = [entry for entry in sys.path if _other(entry)]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


_kqueue_py_run_hook()
del _kqueue_py_run_hook
'''


def encode_options(selector: str = "stdlib", hide_epoll: bool = False, hide_poll: bool = False,
                   force: bool = False, hook_dir: str = "") -> str:
    """The ``KQUEUE_PY_RUN`` value for these options."""
    fields = [f"selector={selector}", f"hide_epoll={int(hide_epoll)}",
              f"hide_poll={int(hide_poll)}", f"force={int(force)}"]
    if hook_dir:
        fields.append(f"{_HOOK_DIR_KEY}={hook_dir}")
    return ";".join(fields)


def decode_options(value: str) -> Dict[str, str]:
    """``KQUEUE_PY_RUN``'s fields (``name=value`` separated by ``;``)."""
    out: Dict[str, str] = {}
    for field in value.split(";"):
        if field:
            name, sep, val = field.partition("=")
            if not sep:
                raise ValueError(f"{ENV_VAR}: field {field!r} is not name=value")
            out[name.strip()] = val.strip()
    return out


def activate(value: str) -> bool:
    """Install kqueue_py as ``KQUEUE_PY_RUN``'s ``value`` says (what the
    start-up hook calls).  An empty value does nothing; returns whether
    kqueue_py is installed."""
    if not value:
        return False
    options = decode_options(value)
    from . import compat

    def flag(name: str) -> bool:
        return options.get(name, "0") not in ("", "0")

    return compat.install(force=flag("force"), selector=options.get("selector", "stdlib"),
                          hide_epoll=flag("hide_epoll"), hide_poll=flag("hide_poll"))


def hook_environment(hook_dir: str, env: Optional[Dict[str, str]] = None, *,
                     selector: str = "stdlib", hide_epoll: bool = False, hide_poll: bool = False,
                     force: bool = False) -> Dict[str, str]:
    """Write the start-up hook into ``hook_dir`` and return a copy of ``env``
    (default: ``os.environ``) that runs it: ``hook_dir`` first on
    ``PYTHONPATH``, the options in ``KQUEUE_PY_RUN``."""
    from . import compat

    if selector not in compat.SELECTOR_CHOICES:
        raise ValueError(f"selector must be one of {compat.SELECTOR_CHOICES}, got {selector!r}")
    with open(os.path.join(hook_dir, "sitecustomize.py"), "w", encoding="utf-8") as f:
        f.write(_HOOK_SOURCE)
    new = dict(os.environ if env is None else env)
    rest = new.get("PYTHONPATH", "")
    new["PYTHONPATH"] = hook_dir + (os.pathsep + rest if rest else "")
    new[ENV_VAR] = encode_options(selector, hide_epoll, hide_poll, force, hook_dir)
    return new


def _parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m kqueue_py.run",
        usage="%(prog)s [--hide-epoll] [--hide-poll] [--selector {stdlib,kqueue}] [--force] "
              "-- COMMAND [ARG ...]",
        description=(
            "Run COMMAND with kqueue_py installed as select.kqueue in it and in every Python "
            "process it starts (python children, multiprocessing spawn/forkserver, process "
            "managers), before their own code imports select or selectors: code written for "
            "BSD/macOS takes its kqueue path on Linux.  Nothing is installed outside COMMAND "
            "(a start-up hook in a private temporary directory, put on COMMAND's PYTHONPATH and "
            "removed at the end).  The exit status is COMMAND's (128+N if signal N ended it); "
            "SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH sent to this "
            "process are passed on to COMMAND; its standard streams are COMMAND's own."),
        epilog=(
            "Not reached: Python started with -I, -E or -S, children given an environment "
            "without PYTHONPATH/KQUEUE_PY_RUN, an interpreter that cannot import kqueue_py "
            "(it says so on stderr), programs that are not Python.  Examples:  "
            "python -m kqueue_py.run -- pytest -q;  "
            "python -m kqueue_py.run --hide-epoll -- python my_server.py"),
    )
    parser.add_argument(
        "--hide-epoll", action="store_true",
        help="for testing only: remove select.epoll, select.EPOLL* and selectors.EpollSelector "
             "in COMMAND, so code that prefers epoll when it exists takes its kqueue branch")
    parser.add_argument(
        "--hide-poll", action="store_true",
        help="for testing only: also remove select.poll, select.POLL* and selectors.PollSelector")
    parser.add_argument(
        "--selector", choices=("stdlib", "kqueue"), default="stdlib",
        help="selectors.DefaultSelector/KqueueSelector: 'stdlib' (default) is the standard "
             "library's own KqueueSelector on kqueue_py's select.kqueue, as on BSD; 'kqueue' is "
             "kqueue_py.selectors.KqueueSelector")
    parser.add_argument(
        "--force", action="store_true",
        help="install kqueue_py even where select has a native kqueue (BSD/macOS)")
    parser.add_argument("command", nargs="*", metavar="COMMAND",
                        help="the command and its arguments, after --")
    return parser


_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")


def _run(argv: List[str], env: Dict[str, str]) -> int:
    """Start ``argv``, pass signals on, wait; the shell's exit status."""
    import signal

    forwarded = {getattr(signal, name) for name in _FORWARDED if hasattr(signal, name)}
    waited = forwarded | {signal.SIGCHLD}
    # A parent that ignores SIGCHLD passes that on to us; the kernel would
    # then reap the command itself, leaving no exit status to report.  The
    # command still starts with it ignored, as a shell would start it.
    chld_ignored = _ignored(signal.SIGCHLD)
    if chld_ignored:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Block the signals before the child exists, so none is lost or acted on
    # by default in this process; the child starts with the mask we had and
    # with the dispositions a shell would give it (Python ignores SIGPIPE).
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    watch: Optional[_SignalWatch] = None
    try:
        if _SignalWatch.available():
            try:
                watch = _SignalWatch(waited)
            except OSError as exc:
                sys.stderr.write(f"kqueue_py.run: cannot watch for signals: {exc.strerror}\n")
                return 126
        try:
            pid = _spawn(argv, env, old_mask, chld_ignored)
        except OSError as exc:
            sys.stderr.write(f"kqueue_py.run: cannot run {argv[0]!r}: {exc.strerror}\n")
            return 127 if isinstance(exc, FileNotFoundError) else 126
        if watch is not None:
            status = _wait_forwarding(pid, watch)
        else:
            status = _wait_with_handlers(pid, forwarded, old_mask)
    finally:
        if watch is not None:
            watch.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if chld_ignored:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _ignored(signo: int) -> bool:
    """Whether ``signo`` is ignored in this process, as the kernel holds it
    (PyPy's ``signal.getsignal`` reports a signal ignored since exec as
    ``SIG_DFL``)."""
    import signal

    from ._kqueue import lib

    if hasattr(lib, "kqueue_py_signal_ignored"):
        found = lib.kqueue_py_signal_ignored(signo)
        if found < 0:
            raise OSError(-found, os.strerror(-found))
        return found == 1
    return signal.getsignal(signo) == signal.SIG_IGN


def _spawn(argv: List[str], env: Dict[str, str], mask: Any, chld_ignored: bool) -> int:
    """Start ``argv`` with the signal mask ``mask`` (and SIGCHLD ignored if
    ``chld_ignored``), as subprocess starts a program otherwise (SIGPIPE and
    SIGXFSZ back to their default action); its pid.  Not posix_spawn:
    glibc's leaves its internal signals ignored in the new program."""
    import signal
    import subprocess

    def child_signals() -> None:
        if chld_ignored:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    proc = subprocess.Popen(argv, env=env, restore_signals=True, preexec_fn=child_signals)
    proc.returncode = 0   # reaped here, by waitpid: Popen must not track it
    return proc.pid


def _forward(pid: int, signo: int) -> None:
    try:
        os.kill(pid, signo)
    except ProcessLookupError:
        pass


class _SignalWatch:
    """The blocked signals taken one at a time with their sender, from a
    signalfd (Linux): the same on every interpreter, PyPy included, which
    has no ``signal.sigtimedwait``."""

    def __init__(self, signals: Any) -> None:
        from ._kqueue import ffi, lib

        signos = sorted(int(s) for s in signals)
        fd = lib.kqueue_py_signalfd(ffi.new("int[]", signos), len(signos))
        if fd < 0:
            raise OSError(-fd, os.strerror(-fd))
        self.fd = fd
        self._ffi = ffi
        self._size = ffi.sizeof("struct signalfd_siginfo")
        #: si_code of a signal the kernel itself sent (a terminal's).
        self.si_kernel: int = lib.SI_KERNEL

    @staticmethod
    def available() -> bool:
        from ._kqueue import lib

        return hasattr(lib, "kqueue_py_signalfd")

    def take(self) -> Tuple[int, int, int]:
        """The next signal (waiting for one): its number, si_code, sender's pid."""
        data = os.read(self.fd, self._size)   # PEP 475: retried if interrupted
        info = self._ffi.from_buffer("struct signalfd_siginfo *", data)
        return int(info.ssi_signo), int(info.ssi_code), int(info.ssi_pid)

    def close(self) -> None:
        os.close(self.fd)


def _wait_forwarding(pid: int, watch: _SignalWatch) -> int:
    """Wait for ``pid`` with the signals blocked, taking each one with its
    sender, and pass it on."""
    import signal

    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid == pid:
            return status
        # The command's exit is a SIGCHLD, which ends the wait: blocked since
        # before the command started, it cannot be missed.
        signo, code, sender = watch.take()
        if signo == signal.SIGCHLD:
            continue
        # A signal the terminal sent (from the kernel, no sending process)
        # went to the whole foreground process group, the command included:
        # passing it on would deliver it twice.
        if sender == 0 and code == watch.si_kernel:
            continue
        _forward(pid, signo)


def _wait_with_handlers(pid: int, forwarded: Any, old_mask: Any) -> int:
    """Where there is no signalfd (BSD, macOS): handlers pass the signals
    on, without knowing who sent them."""
    import signal

    previous = {signo: signal.signal(signo, lambda signo, frame: _forward(pid, signo))
                for signo in forwarded}
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return os.waitpid(pid, 0)[1]   # PEP 475: retried after each handler
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)


def main(args: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit status."""
    import shutil
    import tempfile

    argv = list(sys.argv[1:] if args is None else args)
    parser = _parser()
    if "--" in argv:
        split = argv.index("--")
        own, command = argv[:split], argv[split + 1:]
    else:
        own, command = argv, []
    opts = parser.parse_args(own)
    if opts.command:
        parser.error(f"put the command after --: {' '.join(['--', *opts.command])}")
    if not command:
        parser.error("no command given (after --)")
    hook_dir = tempfile.mkdtemp(prefix="kqueue_py-run-")
    try:
        env = hook_environment(hook_dir, selector=opts.selector, hide_epoll=opts.hide_epoll,
                               hide_poll=opts.hide_poll, force=opts.force)
        return _run(command, env)
    finally:
        shutil.rmtree(hook_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
