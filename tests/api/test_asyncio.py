"""asyncio on kqueue_py sees socket errors exactly as on the default (epoll) loop.

The same small asyncio programs -- a refused connect through
loop.sock_connect() and loop.create_connection(), a peer's reset, an ICMP
error on a connected UDP endpoint -- run three ways, each in a fresh
interpreter: on the default loop (epoll), on a SelectorEventLoop over
kqueue_py.selectors.KqueueSelector, and after kqueue_py.compat.install()
(the stdlib's selectors.KqueueSelector on kqueue_py's select.kqueue).  All
three must record the same callbacks and exceptions.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="compares with the epoll loop")

PROGRAM = r'''
import asyncio, errno, json, selectors, socket, struct, sys

MODE = sys.argv[1]
if MODE == "install":
    import kqueue_py.compat
    assert kqueue_py.compat.install() is True
    assert "site-packages" in kqueue_py.compat.__file__


def new_loop():
    if MODE == "kqueue_selector":
        from kqueue_py.selectors import KqueueSelector
        return asyncio.SelectorEventLoop(KqueueSelector())
    return asyncio.new_event_loop()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def describe(exc):
    if exc is None:
        return None
    return [type(exc).__name__, getattr(exc, "errno", None)]


async def refused_sock_connect():
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", closed_port())), 5)
        return ["connected", s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)]
    except OSError as exc:
        return ["raised"] + describe(exc)
    finally:
        s.close()


async def refused_create_connection():
    loop = asyncio.get_running_loop()
    try:
        tr, _ = await asyncio.wait_for(
            loop.create_connection(asyncio.Protocol, "127.0.0.1", closed_port()), 5)
        tr.close()
        return ["connected"]
    except OSError as exc:
        return ["raised"] + describe(exc)


class Recorder(asyncio.Protocol):
    def __init__(self):
        self.calls = []
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.calls.append(["connection_made"])

    def data_received(self, data):
        self.calls.append(["data_received", data.decode()])

    def eof_received(self):
        self.calls.append(["eof_received"])

    def connection_lost(self, exc):
        self.calls.append(["connection_lost", describe(exc)])
        if not self.done.done():
            self.done.set_result(None)


async def peer_reset():
    loop = asyncio.get_running_loop()
    lst = socket.create_server(("127.0.0.1", 0))
    lst.setblocking(False)
    try:
        tr, proto = await loop.create_connection(Recorder, *lst.getsockname())
        peer, _ = await loop.sock_accept(lst)
        await loop.sock_sendall(peer, b"hello")
        while not any(c[0] == "data_received" for c in proto.calls):
            await asyncio.sleep(0.005)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()                                  # RST
        await asyncio.wait_for(proto.done, 5)
        return proto.calls
    finally:
        lst.close()


async def peer_clean_close():
    loop = asyncio.get_running_loop()
    lst = socket.create_server(("127.0.0.1", 0))
    lst.setblocking(False)
    try:
        tr, proto = await loop.create_connection(Recorder, *lst.getsockname())
        peer, _ = await loop.sock_accept(lst)
        peer.close()                                  # FIN
        await asyncio.wait_for(proto.done, 5)
        return proto.calls
    finally:
        lst.close()


class DatagramRecorder(asyncio.DatagramProtocol):
    def __init__(self):
        self.calls = []
        self.got_error = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.calls.append(["connection_made"])

    def datagram_received(self, data, addr):
        self.calls.append(["datagram_received"])

    def error_received(self, exc):
        self.calls.append(["error_received", describe(exc)])
        if not self.got_error.done():
            self.got_error.set_result(None)

    def connection_lost(self, exc):
        self.calls.append(["connection_lost", describe(exc)])


async def udp_refused():
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_datagram_endpoint(
        DatagramRecorder, remote_addr=("127.0.0.1", closed_port()))
    tr.sendto(b"ping")
    try:
        await asyncio.wait_for(proto.got_error, 2)
    except asyncio.TimeoutError:
        proto.calls.append(["no error_received within 2 s"])
    tr.close()
    await asyncio.sleep(0.01)
    return proto.calls


async def main():
    loop = asyncio.get_running_loop()
    sel = type(loop._selector)
    out = {"selector": sel.__module__ + "." + sel.__qualname__}
    for prog in (refused_sock_connect, refused_create_connection, peer_reset,
                 peer_clean_close, udp_refused):
        out[prog.__name__] = await prog()
    return out


loop = new_loop()
try:
    print(json.dumps(loop.run_until_complete(main())))
finally:
    loop.close()
'''


def run(mode: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(textwrap.dedent(PROGRAM))
    proc = subprocess.run([sys.executable, f.name, mode], capture_output=True, text=True,
                          timeout=60, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, f"{mode}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def results() -> dict:
    return {mode: run(mode) for mode in ("epoll", "kqueue_selector", "install")}


def test_each_run_used_the_selector_it_claims(results):
    assert results["epoll"]["selector"] == "selectors.EpollSelector"
    assert results["kqueue_selector"]["selector"] == "kqueue_py.selectors.KqueueSelector"
    # After install(): the stdlib's own KqueueSelector, on kqueue_py's select.kqueue.
    assert results["install"]["selector"] == "selectors.KqueueSelector"


def test_the_epoll_loop_sees_the_errors(results):
    # The oracle itself: what asyncio reports on Linux's native loop.
    ep = results["epoll"]
    assert ep["refused_sock_connect"] == ["raised", "ConnectionRefusedError", 111]
    assert ep["refused_create_connection"] == ["raised", "ConnectionRefusedError", 111]
    assert ep["peer_reset"] == [["connection_made"], ["data_received", "hello"],
                                ["connection_lost", ["ConnectionResetError", 104]]]
    assert ep["peer_clean_close"] == [["connection_made"], ["eof_received"],
                                      ["connection_lost", None]]
    assert ep["udp_refused"][:2] == [["connection_made"],
                                     ["error_received", ["ConnectionRefusedError", 111]]]


@pytest.mark.parametrize("mode", ["kqueue_selector", "install"])
@pytest.mark.parametrize("program", ["refused_sock_connect", "refused_create_connection",
                                     "peer_reset", "peer_clean_close", "udp_refused"])
def test_kqueue_loops_see_what_the_epoll_loop_sees(results, mode, program):
    assert results[mode][program] == results["epoll"][program]
