"""``pytest -p kqueue_py.pytest_plugin --kqueue``: a test run on kqueue.

The same as ``python -m kqueue_py.run -- pytest ...`` from inside pytest:
with ``--kqueue``, :func:`kqueue_py.compat.install` takes effect before
``conftest.py`` files and test modules are imported, and the Python
processes the tests start get it too (the run's start-up hook, through
``PYTHONPATH`` and ``KQUEUE_PY_RUN`` in ``os.environ``).  At the end of the
run everything is undone: ``compat.uninstall()``, the environment restored,
the hook's temporary directory removed.  Without ``--kqueue`` the plugin
does nothing.  It is never loaded unless asked for with ``-p``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Dict, Optional

import pytest

_STASH: Dict[str, Any] = {}


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("kqueue", "kqueue_py")
    group.addoption("--kqueue", action="store_true", default=False,
                    help="run with kqueue_py installed as select.kqueue, in this process and "
                         "in the Python processes the tests start")
    group.addoption("--kqueue-hide-epoll", action="store_true", default=False,
                    help="with --kqueue, for testing only: remove select.epoll, EPOLL* and "
                         "selectors.EpollSelector")
    group.addoption("--kqueue-hide-poll", action="store_true", default=False,
                    help="with --kqueue, for testing only: remove select.poll, POLL* and "
                         "selectors.PollSelector")
    group.addoption("--kqueue-selector", choices=("stdlib", "kqueue"), default="stdlib",
                    help="with --kqueue: the class selectors.DefaultSelector becomes "
                         "(default: the standard library's KqueueSelector)")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: Any, parser: Any, args: Any) -> None:
    ns = early_config.known_args_namespace
    if not getattr(ns, "kqueue", False):
        return
    from . import compat
    from .run import hook_environment

    options = dict(selector=ns.kqueue_selector, hide_epoll=ns.kqueue_hide_epoll,
                   hide_poll=ns.kqueue_hide_poll)
    hook_dir = tempfile.mkdtemp(prefix="kqueue_py-pytest-")
    saved_env: Dict[str, Optional[str]] = {name: os.environ.get(name)
                                           for name in ("PYTHONPATH", "KQUEUE_PY_RUN")}
    try:
        env = hook_environment(hook_dir, **options)
        compat.install(**options)
    except BaseException:
        shutil.rmtree(hook_dir, ignore_errors=True)
        raise
    for name in saved_env:
        os.environ[name] = env[name]
    _STASH.update(hook_dir=hook_dir, saved_env=saved_env, installed_here=compat.installed())


def pytest_unconfigure(config: Any) -> None:
    if not _STASH:
        return
    from . import compat

    if _STASH["installed_here"]:
        compat.uninstall()
    for name, value in _STASH["saved_env"].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(_STASH["hook_dir"], ignore_errors=True)
    _STASH.clear()


def pytest_report_header(config: Any) -> Optional[str]:
    if not config.getoption("kqueue", False):
        return None
    import select
    import selectors

    kqueue = getattr(select, "kqueue", None)
    return (f"kqueue_py: select.kqueue is "
            f"{kqueue.__module__ + '.kqueue' if kqueue is not None else 'missing'}, "
            f"selectors.DefaultSelector is {selectors.DefaultSelector.__module__}."
            f"{selectors.DefaultSelector.__name__}, "
            f"select.epoll {'present' if hasattr(select, 'epoll') else 'hidden'}")
