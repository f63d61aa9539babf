"""The example servers under real sockets: correctness, limits, the worker
pool, and robustness (slow clients, disconnects, malformed input, idle and
thousands of connections, a full backlog).  No timings are asserted."""
from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

from kqueue_py import EVFILT_READ, KQueue
from kqueue_py.examples.echo import EchoServer
from kqueue_py.examples.http import HTTPServer, Request, Response, Router

from helpers import read_response, request


def _open_fds() -> int:
    """Descriptors open now, after the process-wide ones the Linux backend
    makes once, with the first queue (kept for the life of the process)."""
    KQueue().close()
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def running(server) -> Iterator[tuple[str, int]]:
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.address
    finally:
        server.stop()
        t.join(10)
        assert not t.is_alive(), "server did not stop"






def closed_by_peer(s: socket.socket, timeout: float = 5.0) -> bool:
    s.settimeout(timeout)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


# --------------------------------------------------------------------------
# Echo


def test_echo_server_echoes_many_connections_and_large_payloads():
    fds_before = _open_fds()
    server = EchoServer()
    with running(server) as addr:
        clients = [socket.create_connection(addr) for _ in range(200)]
        for i, c in enumerate(clients):
            c.sendall(b"msg %d\n" % i)
        for i, c in enumerate(clients):
            assert c.recv(100) == b"msg %d\n" % i
        big = os.urandom(2 << 20)                     # forces the WRITE path
        c = clients[0]
        got = bytearray()
        t = threading.Thread(target=c.sendall, args=(big,))
        t.start()
        while len(got) < len(big):
            got += c.recv(1 << 20)
        t.join()
        assert bytes(got) == big
        for c in clients:
            c.close()
    assert _open_fds() == fds_before


def test_echo_server_closes_after_peer_shutdown():
    server = EchoServer()
    with running(server) as addr:
        c = socket.create_connection(addr)
        c.sendall(b"bye")
        c.shutdown(socket.SHUT_WR)
        data = b""
        c.settimeout(5)
        while True:
            chunk = c.recv(100)
            if not chunk:
                break
            data += chunk
        assert data == b"bye"
        c.close()


# --------------------------------------------------------------------------
# HTTP: protocol


@pytest.fixture(params=[0, 2], ids=["inline", "workers"])
def http(request):
    server = HTTPServer(workers=request.param)
    with running(server) as addr:
        yield server, addr


def test_get_root_is_200_with_text(http):
    _, addr = http
    status, headers, body = request(addr, GET)
    assert status == 200 and body == b"Hello from kqueue_py\n"
    assert headers["connection"] == "keep-alive"


def test_keep_alive_and_pipelining_answer_in_order(http):
    _, addr = http
    with socket.create_connection(addr, timeout=5) as s:
        f = s.makefile("rb")
        for _ in range(3):                            # keep-alive
            s.sendall(GET)
            assert read_response(f)[0] == 200
        s.sendall(b"".join(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n%d" % i
                           for i in range(5)))        # pipelined
        assert [read_response(f)[2] for _ in range(5)] == [b"%d" % i for i in range(5)]
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_response(f)
        assert status == 200 and headers["connection"] == "close"
        assert closed_by_peer(s)


def test_http10_closes_unless_keep_alive(http):
    _, addr = http
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_response(s.makefile("rb"))[0] == 200
        assert closed_by_peer(s)


@pytest.mark.parametrize("raw, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nbad header line\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101)) + b"\r\n", 431),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", 404),
    (b"DELETE / HTTP/1.1\r\nHost: t\r\n\r\n", 405),
])
def test_bad_requests_get_the_right_status(http, raw, status):
    _, addr = http
    assert request(addr, raw)[0] == status


def test_errors_close_the_connection_and_the_server_carries_on(http):
    _, addr = http
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, _ = read_response(s.makefile("rb"))
        assert status == 400 and headers["connection"] == "close"
        assert closed_by_peer(s)
    assert request(addr, GET)[0] == 200


def test_handler_exception_is_a_500_not_a_dead_server():
    app = Router()

    @app.route("GET", "/boom")
    def boom(req: Request) -> Response:
        raise RuntimeError("handler bug")

    for workers in (0, 1):
        server = HTTPServer(app, workers=workers)
        with running(server) as addr:
            assert request(addr, b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 500
            assert request(addr, b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 500


# --------------------------------------------------------------------------
# HTTP: robustness


def test_slow_client_one_byte_at_a_time(http):
    _, addr = http
    with socket.create_connection(addr, timeout=5) as s:
        for b in b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello":
            s.send(bytes([b]))
        status, _, body = read_response(s.makefile("rb"))
        assert (status, body) == (200, b"hello")


def test_disconnects_mid_request_and_mid_response_leave_no_leak(http):
    server, addr = http
    for _ in range(20):
        s = socket.create_connection(addr)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\npartial")
        s.close()                                     # mid-request
    big = os.urandom(1_000_000)                       # within the 1 MiB body limit
    for _ in range(5):
        s = socket.create_connection(addr)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(big))
        s.sendall(big[:300_000])
        s.close()                                     # the body never completes
        s = socket.create_connection(addr)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
        s.recv(10)
        s.close()                                     # mid-response, with a reset
    assert request(addr, GET)[0] == 200
    deadline = time.monotonic() + 5
    while len(server.conns) > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(server.conns) == 0, "connections leaked"


def test_http_close_ends_the_registrations_a_dup_would_keep():
    # The server registers reads with NOTE_NODATA (epoll's contract on the
    # Linux backend): a registration outlives close() while another
    # descriptor -- here a dup(), in a prefork server a fork() child's copy --
    # holds the socket, unless the server deletes it before closing.
    seen: list[tuple] = []

    class Recording(KQueue):
        __slots__ = ()

        def wait_tuples(self, timeout=None, max_events=None):
            events = super().wait_tuples(timeout, max_events)
            seen.extend(events)
            return events

    server = HTTPServer()
    server.queue.__class__ = Recording
    with running(server) as addr, socket.create_connection(addr, timeout=5) as c:
        deadline = time.monotonic() + 5
        while not server.conns and time.monotonic() < deadline:
            time.sleep(0.01)
        (fd,) = list(server.conns)
        keep = os.dup(fd)
        try:
            c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert read_response(c.makefile("rb"))[0] == 200
            while fd in server.conns and time.monotonic() < deadline:
                time.sleep(0.01)
            assert fd not in server.conns
            time.sleep(0.05)
            del seen[:]
            c.sendall(b"more")       # arrives on the socket the dup keeps open
            time.sleep(0.3)
            assert [e for e in seen if e[0] == fd and e[1] == EVFILT_READ] == []
        finally:
            os.close(keep)


def test_idle_connections_time_out_through_the_timer():
    server = HTTPServer(idle_timeout=0.2)
    with running(server) as addr:
        with socket.create_connection(addr) as s:
            s.sendall(GET)
            assert read_response(s.makefile("rb"))[0] == 200
            assert closed_by_peer(s, timeout=5)
        assert server.stats["idle_closed"] >= 1


def test_full_worker_queue_sheds_with_503():
    server = HTTPServer(workers=1, max_queued=1)
    with running(server) as addr:
        socks = [socket.create_connection(addr, timeout=10) for _ in range(6)]
        for s in socks:
            s.sendall(b"GET /sleep?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n")
        statuses = sorted(read_response(s.makefile("rb"))[0] for s in socks)
        for s in socks:
            s.close()
        # One worker busy for 300 ms, room for one more: the rest are shed.
        assert set(statuses) == {200, 503} and statuses.count(503) >= 4, statuses
        assert server.stats["shed_503"] == statuses.count(503)


def test_completion_for_a_closed_connection_is_dropped():
    server = HTTPServer(workers=1)
    with running(server) as addr:
        s = socket.create_connection(addr)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.sendall(b"GET /sleep?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.05)
        s.close()                                     # a reset while the worker has it
        # The closed number is likely reused by this new connection.
        with socket.create_connection(addr, timeout=5) as s2:
            s2.sendall(GET)
            status, _, body = read_response(s2.makefile("rb"))
            assert (status, body) == (200, b"Hello from kqueue_py\n")
            deadline = time.monotonic() + 5
            while server.stats["stale_dropped"] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        assert server.stats["stale_dropped"] == 1


def test_worker_pool_keeps_other_connections_moving():
    server = HTTPServer(workers=4)
    with running(server) as addr:
        slow = socket.create_connection(addr, timeout=10)
        slow.sendall(b"GET /sleep?ms=1000 HTTP/1.1\r\nHost: t\r\n\r\n")
        # While a handler sleeps, other connections are answered.
        t0 = time.monotonic()
        for _ in range(20):
            assert request(addr, GET)[0] == 200
        fast_done = time.monotonic()
        assert read_response(slow.makefile("rb"))[0] == 200
        slow_done = time.monotonic()
        slow.close()
        assert fast_done < slow_done, "fast requests waited behind the slow handler"
        assert fast_done - t0 < 1.0


_SERVER_SCRIPT = """
import resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
from kqueue_py.examples.http import HTTPServer
s = HTTPServer(port=0, backlog=4096, idle_timeout=120, handle_signals=True)
print(s.address[1], flush=True)
s.serve_forever()
"""


def test_ten_thousand_idle_connections():
    n = 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < n + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {n + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    proc = subprocess.Popen([sys.executable, "-c", _SERVER_SCRIPT], stdout=subprocess.PIPE,
                            cwd="/")
    socks: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        # All idle; the server still answers a new client and old ones.
        assert request(("127.0.0.1", port), GET, timeout=30)[0] == 200
        for s in (socks[0], socks[n // 2], socks[-1]):
            s.sendall(GET)
            assert read_response(s.makefile("rb"))[0] == 200
        assert proc.poll() is None
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_sigterm_stops_the_server_gracefully():
    proc = subprocess.Popen([sys.executable, "-m", "kqueue_py.examples.http", "--port", "0"],
                            stderr=subprocess.PIPE, cwd="/")
    try:
        line = proc.stderr.readline().decode()
        assert "http server on" in line
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        assert request(("127.0.0.1", port), GET)[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert b"stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_server_leaves_no_descriptors_behind():
    before = _open_fds()
    for workers in (0, 2):
        server = HTTPServer(workers=workers)
        with running(server) as addr:
            for _ in range(5):
                assert request(addr, GET)[0] == 200
    assert _open_fds() == before


def test_http_server_takes_a_config_or_its_fields_not_both():
    from kqueue_py.examples.http import ServerConfig
    with pytest.raises(TypeError, match="not both"):
        HTTPServer(config=ServerConfig(), workers=2)
    for bad in ({"idle_timeout": 0}, {"max_queued": 0}, {"workers": -1}, {"backlog": -1},
                {"min_body_rate": -1.0}, {"max_output": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServerConfig(**bad)
    pooled = HTTPServer(config=ServerConfig(workers=1, max_queued=3, backlog=7))
    inline = HTTPServer(workers=0)
    try:
        assert pooled.config.max_queued == 3 and pooled.pool is not None and pooled.pool.size == 1
        assert inline.pool is None
    finally:
        for server in (pooled, inline):
            server.listener.close()
            server.queue.close()


@pytest.mark.parametrize("module", ["echo", "http", "http_protocol"])
def test_examples_import_only_what_kqueue_py_exports(module):
    import ast
    from pathlib import Path

    import kqueue_py
    import kqueue_py.examples
    tree = ast.parse((Path(kqueue_py.examples.__file__).parent / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import in {module}.py: line {node.lineno}"
            if node.module and node.module.startswith("kqueue_py"):
                assert node.module in ("kqueue_py", "kqueue_py.examples.http_protocol"), node.module
                if node.module == "kqueue_py":
                    for alias in node.names:
                        assert alias.name in kqueue_py.__all__, alias.name
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("kqueue_py") for a in node.names)
            # The stdlib's http package: a copy saved as http.py would shadow it.
            assert not any(a.name == "http" or a.name.startswith("http.") for a in node.names)
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.module != "http" and not node.module.startswith("http."), node.module


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_echo_program_stops_on_a_signal_right_after_an_exchange(sig):
    """SIGINT and SIGTERM stop the program with status 0, sent as its loop
    goes back to waiting, five times over.  (They are counted in the queue:
    a Python handler, which ran at the interpreter's next check, could miss
    a wait that had just begun -- seen once on PyPy under load; that race
    is too rare for this test to show.)"""
    from helpers import Server
    for _ in range(5):
        srv = Server(["kqueue_py.examples.echo", "--port", "0"])
        try:
            with socket.create_connection(srv.addr, timeout=5) as c:
                c.sendall(b"ping")
                assert c.recv(10) == b"ping"
                srv.proc.send_signal(sig)
                assert srv.proc.wait(10) == 0
        finally:
            if srv.proc.poll() is None:
                srv.proc.kill()
            srv.stop()
        assert "stopped" in srv.stderr() and "Traceback" not in srv.stderr()
