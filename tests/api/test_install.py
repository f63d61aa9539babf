"""kqueue_py.compat.install(): unmodified kqueue code on kqueue_py.

Every scenario runs as a real program in a subprocess, so this test
process's select/selectors modules stay untouched.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap


PRELUDE = """
import asyncio, select, selectors, socket, sys
import kqueue_py.compat as compat
NATIVE = hasattr(select, "kqueue")
assert "site-packages" in compat.__file__, compat.__file__   # the installed package
"""


def run(body: str, timeout: float = 30) -> str:
    code = PRELUDE + textwrap.dedent(body)
    # Not from the checkout: "-c" puts the working directory on sys.path.
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_install_patches_modules_imported_before_it():
    out = run("""
        assert not NATIVE, "this test is for platforms without select.kqueue"
        before_default = selectors.DefaultSelector
        assert not hasattr(selectors, "KqueueSelector")
        assert compat.install() is True
        assert compat.installed()
        assert select.kqueue is compat.kqueue and select.kevent is compat.kevent
        for name, value in compat.CONSTANTS.items():
            assert getattr(select, name) == value, name
        assert selectors.DefaultSelector is selectors.KqueueSelector
        assert compat.install() is True                   # idempotent
        assert selectors.DefaultSelector is selectors.KqueueSelector
        sel = selectors.DefaultSelector()
        assert isinstance(sel._selector, compat.kqueue)   # the stdlib class on our kqueue
        sel.close()
        compat.uninstall()
        assert not compat.installed()
        assert not hasattr(select, "kqueue") and not hasattr(select, "KQ_FILTER_READ")
        assert not hasattr(selectors, "KqueueSelector")
        assert selectors.DefaultSelector is before_default
        compat.uninstall()                                # idempotent too
        assert compat.install() is True                   # and installable again
        assert selectors.DefaultSelector is selectors.KqueueSelector
        print("ok")
    """)
    assert out.strip() == "ok"


def test_install_gives_the_stdlib_class_itself_when_selectors_came_first():
    # selectors was imported (PRELUDE) while select had no kqueue, so it has
    # no KqueueSelector: install() must build the stdlib's own class, from
    # the stdlib's file, living in the selectors module -- not a stand-in.
    out = run("""
        assert not NATIVE, "this test is for platforms without select.kqueue"
        import ast, kqueue_py.selectors
        assert "KqueueSelector" not in vars(selectors)
        compat.install()
        cls = selectors.DefaultSelector
        assert cls is selectors.KqueueSelector and cls is not kqueue_py.selectors.KqueueSelector
        assert (cls.__module__, cls.__qualname__) == ("selectors", "KqueueSelector")
        with open(selectors.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        [node] = [n for n in ast.walk(tree)
                  if isinstance(n, ast.ClassDef) and n.name == "KqueueSelector"]
        [init] = [n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
        code = cls.__init__.__code__
        assert (code.co_filename, code.co_firstlineno) == (selectors.__file__, init.lineno), \
            (code.co_filename, code.co_firstlineno, init.lineno)
        assert cls.__init__.__globals__ is vars(selectors)   # the module's own namespace
        sel = selectors.DefaultSelector()
        assert isinstance(sel._selector, compat.kqueue)
        a, b = socket.socketpair()
        sel.register(a, selectors.EVENT_READ, "a")
        b.send(b"x")
        assert [(k.data, m) for k, m in sel.select(1)] == [("a", selectors.EVENT_READ)]
        sel.close(); a.close(); b.close()
        compat.uninstall()
        assert "KqueueSelector" not in vars(selectors)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_install_before_selectors_is_imported():
    code = textwrap.dedent("""
        import sys
        import kqueue_py.compat as compat
        assert "selectors" not in sys.modules and "asyncio" not in sys.modules
        compat.install()
        import selectors, select
        assert selectors.DefaultSelector is selectors.KqueueSelector
        assert select.kqueue is compat.kqueue
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_install_respects_a_native_kqueue_unless_forced():
    out = run("""
        sentinel = object()
        select.kqueue = sentinel                 # pretend the platform has one
        assert compat.install() is False
        assert select.kqueue is sentinel and not compat.installed()
        assert compat.install(force=True) is True
        assert select.kqueue is compat.kqueue
        compat.uninstall()
        assert select.kqueue is sentinel
        print("ok")
    """)
    assert out.strip() == "ok"


def test_stdlib_selectors_module_directly():
    out = run("""
        compat.install()
        sel = selectors.DefaultSelector()
        a, b = socket.socketpair()
        a.setblocking(False); b.setblocking(False)
        sel.register(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "a")
        ready = sel.select(0)
        assert [(k.data, m) for k, m in ready] == [("a", selectors.EVENT_WRITE)], ready
        sel.modify(a, selectors.EVENT_READ, "a2")
        assert sel.select(0) == []
        b.send(b"x")
        ready = sel.select(1)
        assert [(k.data, m) for k, m in ready] == [("a2", selectors.EVENT_READ)], ready
        sel.unregister(a)
        a.close()
        import time
        t0 = time.monotonic()
        assert sel.select(0.05) == []            # nothing registered: still waits
        assert time.monotonic() - t0 >= 0.045
        sel.close()
        print("ok")
    """)
    assert out.strip() == "ok"


ASYNCIO_PROGRAM = """
compat.install()

async def handle(reader, writer):
    while data := await reader.read(1024):
        writer.write(data.upper())
        await writer.drain()
    writer.close()

async def tcp_echo():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(20):
        msg = f"hello {i} ".encode() * 100
        writer.write(msg)
        await writer.drain()
        assert await reader.readexactly(len(msg)) == msg.upper()
    big = b"x" * 1_000_000                      # more than the socket buffers
    writer.write(big)
    got = await reader.readexactly(len(big))
    assert got == big.upper()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()

async def subprocesses():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read()[::-1]); sys.exit(7)",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate(b"abc")
    assert out == b"cba" and proc.returncode == 7, (out, proc.returncode)

async def timeouts_and_cancellation():
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        await asyncio.wait_for(asyncio.sleep(10), 0.05)
    except asyncio.TimeoutError:
        pass
    else:
        raise AssertionError("no timeout")
    assert 0.04 <= loop.time() - t0 < 2
    rsock, wsock = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=rsock)
    task = asyncio.ensure_future(reader.read(10))
    await asyncio.sleep(0.02)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("not cancelled")
    writer.close()
    wsock.close()
    fut = loop.create_future()
    loop.call_later(0.02, fut.set_result, "later")
    assert await fut == "later"

async def main():
    loop = asyncio.get_running_loop()
    name = type(loop._selector).__name__
    assert name == "KqueueSelector", name
    assert isinstance(loop._selector._selector, compat.kqueue)
    await tcp_echo()
    await subprocesses()
    await timeouts_and_cancellation()
    print("ok")

asyncio.run(main())
"""


def test_asyncio_program_on_installed_kqueue():
    assert run(ASYNCIO_PROGRAM).strip() == "ok"


def test_asyncio_with_asyncio_imported_and_a_loop_run_before_install():
    out = run("""
        asyncio.run(asyncio.sleep(0))            # epoll loop, before install
        compat.install()
        async def main():
            return type(asyncio.get_running_loop()._selector).__name__
        print(asyncio.run(main()))
        compat.uninstall()
        print(asyncio.run(main()))
    """)
    assert out.split() == ["KqueueSelector", "EpollSelector"]
