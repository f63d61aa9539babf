"""kqueue_py.selectors.KqueueSelector."""
from __future__ import annotations

import asyncio
import errno
import os
import selectors
import socket
import time

import pytest

from kqueue_py.selectors import EVENT_READ, EVENT_WRITE, KqueueSelector


@pytest.fixture
def sel():
    s = KqueueSelector()
    yield s
    s.close()


def test_is_a_base_selector(sel):
    assert isinstance(sel, selectors.BaseSelector)
    assert isinstance(sel.fileno(), int)
    assert os.get_inheritable(sel.fileno()) is False


def test_register_select_modify_unregister(sel, fds):
    a, b = fds.socketpair()
    key = sel.register(a, EVENT_READ | EVENT_WRITE, "data")
    assert key.fd == a.fileno() and key.data == "data"
    assert sel.get_key(a) is key and a.fileno() in sel.get_map()
    assert sel._filters == 2
    assert sel.select(0) == [(key, EVENT_WRITE)]
    b.send(b"x")
    ready = sorted(m for k, m in sel.select(1))
    assert ready == [EVENT_READ, EVENT_WRITE]
    key2 = sel.modify(a, EVENT_READ, "other")
    assert key2.events == EVENT_READ and key2.data == "other" and sel._filters == 1
    assert sel.select(0) == [(key2, EVENT_READ)]
    key3 = sel.modify(a, EVENT_READ, "third")      # data only
    assert key3.data == "third" and sel._filters == 1
    sel.modify(a, EVENT_WRITE)
    assert [m for _, m in sel.select(0)] == [EVENT_WRITE] and sel._filters == 1
    assert sel.unregister(a).fd == a.fileno()
    assert sel._filters == 0
    assert sel.select(0) == []
    with pytest.raises(KeyError):
        sel.unregister(a)
    with pytest.raises(KeyError):
        sel.modify(a, EVENT_READ)


def test_register_errors(sel, fds):
    a, _ = fds.socketpair()
    with pytest.raises(ValueError):
        sel.register(a, 0)
    with pytest.raises(ValueError):
        sel.register(a, 4)
    sel.register(a, EVENT_READ)
    with pytest.raises(KeyError):
        sel.register(a, EVENT_READ)
    with pytest.raises(ValueError):
        sel.modify(a, 0)
    r, w = fds.pipe()
    fds.close(r)
    with pytest.raises(OSError):
        sel.register(r, EVENT_READ)        # not open: EBADF, and not left registered
    assert r not in sel.get_map()
    assert sel._filters == 1


def test_select_with_nothing_registered_sleeps(sel):
    t0 = time.monotonic()
    assert sel.select(0.05) == []
    assert time.monotonic() - t0 >= 0.045
    assert sel.select(-1) == []           # negative: a poll


def test_max_events_counts_filters(sel, fds):
    """Every registered filter can report in one select()."""
    pairs = [fds.socketpair() for _ in range(20)]
    for a, b in pairs:
        sel.register(a, EVENT_READ | EVENT_WRITE)
        b.send(b"x")
    assert sel._filters == 40
    ready = sel.select(1)
    assert len(ready) == 40


def test_unregister_and_modify_after_the_fd_was_closed(sel, fds):
    a, b = fds.socketpair()
    c, d = fds.socketpair()
    sel.register(a, EVENT_READ)
    sel.register(c, EVENT_READ | EVENT_WRITE)
    a.close()
    key = sel.unregister(a)                 # looked up by object; no error from the queue
    assert key.fileobj is a
    c.close()
    # As EpollSelector (its EPOLL_CTL_MOD fails with EBADF): the modify
    # raises, and leaves the file object unregistered.
    with pytest.raises(OSError) as ei:
        sel.modify(c, EVENT_READ)
    assert ei.value.errno == errno.EBADF
    assert sel._filters == 0
    assert len(sel.get_map()) == 0


def _modify_outcome(selector_cls, scenario):
    """Run ``scenario(sel, r, w)`` on a pipe registered for READ; return
    what the modify raised and what is registered afterwards."""
    r, w = os.pipe()
    sel = selector_cls()
    try:
        sel.register(r, EVENT_READ, "d")
        try:
            scenario(sel, r, w)
            raised = None
        except Exception as e:  # the outcome is what is compared
            raised = (type(e), getattr(e, "errno", None))
        try:
            left = sel.get_key(r).events
        except KeyError:
            left = None
        return raised, left, len(sel.get_map())
    finally:
        sel.close()
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass


def _close_then_add_write(sel, r, w):
    os.close(r)
    sel.modify(r, EVENT_READ | EVENT_WRITE)


def _close_then_swap(sel, r, w):
    os.close(r)
    sel.modify(r, EVENT_WRITE)


def _closed_selector(sel, r, w):
    sel._kq.close() if isinstance(sel, KqueueSelector) else sel._selector.close()
    sel.modify(r, EVENT_WRITE)


def _fine(sel, r, w):
    sel.modify(r, EVENT_READ | EVENT_WRITE, "e")


@pytest.mark.parametrize("scenario", [_close_then_add_write, _close_then_swap,
                                      _closed_selector, _fine])
def test_modify_that_raises_leaves_the_file_object_unregistered(scenario):
    """``EpollSelector.modify`` (Lib/selectors.py): ``except:
    super().unregister(fileobj); raise`` -- and ``BaseSelector.modify``
    unregisters before it registers again: a modify that raises leaves the
    file object unregistered.  KqueueSelector against EpollSelector."""
    want = _modify_outcome(selectors.EpollSelector, scenario)
    got = _modify_outcome(KqueueSelector, scenario)
    assert got == want


def test_modify_failure_removes_the_kernel_registrations_too(sel, fds):
    """Unregistered after a failed modify means nothing is reported for the
    file any more, under its number or a new owner of it."""
    r, w = fds.pipe()
    sel.register(r, EVENT_READ)
    fds.close(r)
    with pytest.raises(OSError):
        sel.modify(r, EVENT_READ | EVENT_WRITE)
    assert sel._filters == 0
    r2, w2 = fds.pipe()
    os.write(w2, b"x")
    assert sel.select(0) == []


def test_fd_closed_while_registered_does_not_report(sel, fds):
    r, w = fds.pipe()
    sel.register(r, EVENT_READ)
    os.write(w, b"x")
    fds.close(r)
    assert sel.select(0) == []
    sel.unregister(r)


def _closed_before_unregister(selector_cls):
    """selectors' contract is "unregister before close".  Broken while a
    dup() keeps the socket's file open: what select() reports before the
    unregister, after it once the file is closed everywhere, and whether
    that second select() slept."""
    sel = selector_cls()
    a, b = socket.socketpair()
    keep = os.dup(a.fileno())
    try:
        sel.register(a, EVENT_READ, "k")
        b.send(b"x")
        a.close()
        before = [(key.data, ev) for key, ev in sel.select(0.5)]
        sel.unregister(a)
        os.close(keep)
        keep = -1
        t0 = time.monotonic()
        after = sel.select(0.2)
        return before, after, time.monotonic() - t0 >= 0.15
    finally:
        sel.close()
        b.close()
        if keep >= 0:
            os.close(keep)


def test_closed_before_unregister_reports_as_epoll_selector():
    want = _closed_before_unregister(selectors.EpollSelector)
    assert want == ([("k", EVENT_READ)], [], True)
    assert _closed_before_unregister(KqueueSelector) == want


def _ready_sets(selector_cls, pairs, decode_in_c=True):
    """Sockets registered for READ, WRITE or both, some with data waiting
    (a socketpair delivers at once): what select() reports, each key's
    events merged (kqueue reports READ and WRITE of one descriptor as two
    entries, epoll as one)."""
    def merged(ready):
        out: dict = {}
        for key, ev in ready:
            out[str(key.data)] = out.get(str(key.data), 0) | ev
        return sorted(out.items())

    sel = selector_cls()
    try:
        if not decode_in_c:
            sel._ready_c = None          # the Python loop (PyPy's, and the fallback)
        for i, (a, b) in enumerate(pairs):
            sel.register(a, (EVENT_READ, EVENT_WRITE, EVENT_READ | EVENT_WRITE)[i % 3], i)
            if i % 2 == 0:
                b.send(b"x")
        got = merged(sel.select(1))
        sel.modify(pairs[0][0], EVENT_WRITE, "changed")
        sel.unregister(pairs[1][0])
        return got, merged(sel.select(1))
    finally:
        sel.close()


def test_select_decodes_as_epoll_selector_in_c_and_in_python(fds):
    pairs = [fds.socketpair() for _ in range(40)]
    want = _ready_sets(selectors.EpollSelector, pairs)
    assert {ev for _, ev in want[0]} == {EVENT_READ, EVENT_WRITE, EVENT_READ | EVENT_WRITE}
    assert _ready_sets(KqueueSelector, pairs) == want
    assert _ready_sets(KqueueSelector, pairs, decode_in_c=False) == want


@pytest.mark.parametrize("ready_for", [EVENT_READ, EVENT_WRITE], ids=["read", "write"])
def test_one_ready_descriptor_reports_as_epoll_selector(fds, ready_for):
    """One event among idle registrations (PyPy decodes it without a
    loop; CPython in C, or in Python without the C decode)."""
    pairs = [fds.socketpair() for _ in range(5)]

    def once(selector_cls, decode_in_c=True):
        sel = selector_cls()
        try:
            if not decode_in_c:
                sel._ready_c = None
            for i, (a, _b) in enumerate(pairs):
                # The others wait for data that never comes.
                sel.register(a, ready_for if i == 2 else EVENT_READ, i)
            if ready_for == EVENT_READ:
                pairs[2][1].send(b"x")
            got = [(key.data, ev) for key, ev in sel.select(1)]
            if ready_for == EVENT_READ:
                pairs[2][0].recv(1)
            return got
        finally:
            sel.close()

    want = once(selectors.EpollSelector)
    assert want == [(2, ready_for)]
    assert once(KqueueSelector) == want
    assert once(KqueueSelector, decode_in_c=False) == want


def test_c_decode_rejects_what_it_cannot_read():
    from kqueue_py import _core
    if _core._select_ready is None:
        pytest.skip("CPython's C decode only")
    sel = KqueueSelector()
    try:
        buf = sel._buf
        for args in [(buf.addr, buf.cap + 1, {}), (buf.addr, -1, {}), (buf.addr, 0, []),
                     (0, 1, {}), (buf.addr, 0)]:
            with pytest.raises(TypeError):
                _core._select_ready(*args)
        assert _core._select_ready(buf.addr, 0, {}) == []
    finally:
        sel.close()


def test_close(fds):
    sel = KqueueSelector()
    a, _ = fds.socketpair()
    sel.register(a, EVENT_READ)
    sel.close()
    assert sel.get_map() is None
    with pytest.raises(ValueError):
        sel.fileno()
    with KqueueSelector() as other:   # context manager
        assert other.get_map() is not None
    assert other.get_map() is None


def test_select_readiness_of_listening_socket(sel, fds):
    lst = fds.tcp_listener()
    sel.register(lst, EVENT_READ, "listener")
    assert sel.select(0) == []
    c = fds.sock(socket.create_connection(lst.getsockname()))
    (key, mask), = sel.select(1)
    assert key.data == "listener" and mask == EVENT_READ
    conn, _ = lst.accept()
    conn.close()
    c.close()


# --------------------------------------------------------------------------
# asyncio.SelectorEventLoop(KqueueSelector())


def run_loop(coro):
    loop = asyncio.SelectorEventLoop(KqueueSelector())
    try:
        assert type(loop._selector) is KqueueSelector
        return loop.run_until_complete(asyncio.wait_for(coro, 20))
    finally:
        loop.close()


def test_asyncio_echo_streams():
    async def handle(reader, writer):
        while data := await reader.read(4096):
            writer.write(data[::-1])
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for n, (reader, writer) in enumerate(clients):
            msg = bytes([65 + n]) * 1000 + b"!"
            writer.write(msg)
            await writer.drain()
            assert await reader.readexactly(len(msg)) == msg[::-1]
        for reader, writer in clients:
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return "done"

    assert run_loop(main()) == "done"


def test_asyncio_sock_methods():
    async def main():
        loop = asyncio.get_running_loop()
        lst = socket.create_server(("127.0.0.1", 0))
        lst.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        try:
            accept = asyncio.ensure_future(loop.sock_accept(lst))
            await loop.sock_connect(client, lst.getsockname())
            server, _ = await accept
            server.setblocking(False)
            big = os.urandom(2_000_000)     # larger than the socket buffers: write readiness
            send = asyncio.ensure_future(loop.sock_sendall(client, big))
            got = bytearray()
            while len(got) < len(big):
                chunk = await loop.sock_recv(server, 65536)
                assert chunk
                got += chunk
            await send
            assert bytes(got) == big
            buf = bytearray(5)
            await loop.sock_sendall(server, b"hello")
            n = await loop.sock_recv_into(client, buf)
            assert buf[:n] == b"hello"[:n]
            server.close()
            assert await loop.sock_recv(client, 10) in (b"", b"hello"[n:])
        finally:
            client.close()
            lst.close()
        return "done"

    assert run_loop(main()) == "done"


def test_asyncio_timers_and_cancellation():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(0.05)
        assert loop.time() - t0 >= 0.045
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(5), 0.02)
        a, b = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=a)
        task = asyncio.ensure_future(reader.read(1))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        writer.close()
        b.close()
        fut = loop.create_future()
        loop.call_soon_threadsafe(fut.set_result, 1)   # self-pipe wake-up
        return await fut

    assert run_loop(main()) == 1
