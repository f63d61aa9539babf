"""The example servers as programs (``python -m kqueue_py.examples.http`` /
``.echo`` in a subprocess) against hostile clients written here: bytes that
must not kill the parser, clients that send without reading, slowloris
headers and bodies, a descriptor limit, resets while jobs wait, handlers
returning bad responses, SIGTERM under load.  Limits are set small on the
command line so that every test is quick; waits are for events (a response,
a closed socket, a process exit), bounded by generous timeouts."""
from __future__ import annotations

import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import (STATUS_LINE, Server, echo_server, exchange, http_server, read_response, request,
                     wait_until)

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
# Built with sanitizers (make asan sets it).
SANITIZED = bool(os.environ.get("KQUEUE_PY_SANITIZED"))
LINGER0 = struct.pack("ii", 1, 0)     # close() sends a reset




def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


@pytest.fixture(scope="module", params=[0, 2], ids=["inline", "workers"])
def shared(request) -> Iterator[Server]:
    with http_server(workers=request.param) as srv:
        yield srv
    assert srv.proc.returncode == 0, srv.stderr()


# --------------------------------------------------------------------------
# 1. No byte kills the server.


@pytest.mark.parametrize("digit", [b"\xb2", b"\xb3", b"\xb9", "\u0661".encode(), b"1\xb2",
                                   b"+5", b"-1", b" ", b"0x10", b"9" * 5000])
def test_content_length_takes_ascii_digits_only(shared, digit):
    raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: " + digit + b"\r\n\r\nabc"
    status = request(shared.addr, raw)[0]
    assert status in (400, 413)
    assert shared.alive(), shared.stderr()
    assert request(shared.addr, GET)[0] == 200


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(rng.randint(1, 6)):
        head_end = b.find(b"\r\n\r\n")
        if head_end <= 0:
            head_end = max(len(b), 1)
        op = rng.random()
        i = rng.randrange(head_end)
        digits = [j for j in range(head_end) if 0x30 <= b[j] <= 0x39]
        if op < 0.2 and digits:
            # Latin-1 superscripts: str.isdigit() says yes, int() says no.
            b[rng.choice(digits)] = rng.choice([0xb2, 0xb3, 0xb9])
        elif op < 0.5:
            b[i] = rng.choice([rng.randrange(256), 0xb2, 0xb3, 0xb9, 0x00, 0x0d, 0x0a, 0x20, 0x3a])
        elif op < 0.75:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        else:
            del b[i:i + rng.randint(1, 4)]
    return bytes(b)


def test_byte_fuzzer_over_request_line_and_headers(shared):
    rng = random.Random(20261201)
    bases = [GET,
             b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
             b"GET /sleep?ms=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
             b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"]
    for _ in range(250):
        raw = _mutate(rng, rng.choice(bases))
        out = exchange(shared.addr, raw)
        assert STATUS_LINE.match(out), (raw, out[:200])
    assert shared.alive(), shared.stderr()
    assert request(shared.addr, GET)[0] == 200


_token = st.sampled_from([b"GET", b"POST", b"GET", b"POST", b"DELETE", b"G\xb2T", b"", b"GET /"])
_target = st.one_of(st.sampled_from([b"/", b"/echo", b"/sleep?ms=1", b"/bytes?n=5", b"*"]),
                    st.binary(max_size=20), st.sampled_from([b"/", b"/echo"]))
_version = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0",
                           b"HTTP/1.\xb9", b"", b"http/1.1"])
_name = st.one_of(st.sampled_from([b"Host", b"Content-Length", b"Connection", b"Expect",
                                   b"Transfer-Encoding", b"X"]), st.binary(max_size=10))
_value = st.one_of(st.sampled_from([b"t", b"5", b"\xb2", b"\xb3", b"1\xb9", b"close",
                                    b"100-continue", b"chunked", b"99999999999999999999", b""]),
                   st.binary(max_size=12))


@st.composite
def _requests(draw) -> bytes:
    if draw(st.integers(0, 3)):
        line = draw(_token) + b" " + draw(_target) + b" " + draw(_version)
        headers = draw(st.lists(st.tuples(_name, _value), max_size=5))
        if draw(st.booleans()):
            headers.insert(draw(st.integers(0, len(headers))), (b"Content-Length", draw(_value)))
        head = line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
        return head + b"\r\n" + draw(st.binary(max_size=8))
    return draw(st.binary(min_size=1, max_size=64))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=_requests())
def test_parser_fuzz_every_request_gets_a_well_formed_status(shared, raw):
    out = exchange(shared.addr, raw)
    assert STATUS_LINE.match(out), (raw, out[:200])
    assert shared.alive(), shared.stderr()


def test_protocol_405_has_allow_and_host_is_required(shared):
    status, headers, _ = request(shared.addr, b"DELETE / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert request(shared.addr, b"GET / HTTP/1.1\r\n\r\n")[0] == 400
    assert request(shared.addr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")[0] == 400
    assert request(shared.addr, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")[0] == 400
    assert request(shared.addr, b"GET / HTTP/1.0\r\n\r\n")[0] == 200      # 1.0 needs none


def test_expect_100_continue(shared):
    with socket.create_connection(shared.addr, timeout=10) as s, s.makefile("rb") as f:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 5\r\n\r\n")
        s.settimeout(0.9)     # curl gives up waiting after 1 s
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert f.readline() == b"\r\n"
        s.settimeout(10)
        s.sendall(b"hello")
        assert read_response(f)[::2] == (200, b"hello")
    # Refused up front: a 413 instead of the 100.
    raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 9999999\r\n\r\n"
    assert request(shared.addr, raw)[0] == 413


# --------------------------------------------------------------------------
# 2. Backpressure.


def _pipeline_without_reading(addr, unit: bytes, cap: int) -> tuple[socket.socket, int]:
    """Send ``unit`` again and again, reading nothing, until a send blocks
    for a second (the server stopped reading) or ``cap`` bytes are out."""
    s = socket.create_connection(addr)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    s.settimeout(1.0)
    sent = 0
    view = memoryview(unit)
    while sent < cap:
        try:
            n = s.send(view[sent % len(unit):])
        except socket.timeout:
            break
        sent += n
    return s, sent


@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "workers"])
def test_http_non_reading_pipeliner_is_bounded(workers):
    body = b"x" * (512 << 10)
    unit = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with http_server(workers=workers) as srv:
        base = srv.status("VmRSS")
        hog, sent = _pipeline_without_reading(srv.addr, unit, 160 << 20)
        try:
            # Meanwhile another client is answered.
            assert request(srv.addr, GET)[0] == 200
            peak = srv.status("VmHWM")
        finally:
            hog.close()                               # a reset
        assert sent < 64 << 20, f"the server kept reading: {sent} bytes taken"
        if not SANITIZED:
            # Under AddressSanitizer freed memory sits in its quarantine
            # (256 MiB by default) and RSS says nothing about what is held.
            assert peak - base < 48 << 20, f"RSS grew by {(peak - base) >> 20} MiB"
        if not SANITIZED and sys.implementation.name == "cpython":
            # Freed at once where finalization is prompt (CPython's reference
            # counting); PyPy's GC returns memory to the system when it likes.
            deadline = time.monotonic() + 5
            while srv.status("VmRSS") - base > 16 << 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert srv.status("VmRSS") - base <= 16 << 20, "the gone client's memory is still held"
        assert request(srv.addr, GET)[0] == 200


def test_echo_non_reading_client_is_bounded():
    with echo_server() as srv:
        base = srv.status("VmRSS")
        hog, sent = _pipeline_without_reading(srv.addr, os.urandom(1 << 20), 160 << 20)
        try:
            with socket.create_connection(srv.addr, timeout=5) as c:
                c.sendall(b"ping")
                assert c.recv(10) == b"ping"
            peak = srv.status("VmHWM")
        finally:
            hog.close()
        assert sent < 64 << 20, f"the server kept reading: {sent} bytes taken"
        assert peak - base < 48 << 20, f"RSS grew by {(peak - base) >> 20} MiB"


# --------------------------------------------------------------------------
# 3. Fairness and 4. no pipelining stall.


def test_echo_streaming_client_does_not_starve_others():
    with echo_server() as srv:
        stop = threading.Event()
        a = socket.create_connection(srv.addr)

        def pump() -> None:
            data = b"s" * (1 << 20)
            try:
                while not stop.is_set():
                    a.sendall(data)
            except OSError:
                pass

        def drain() -> None:
            try:
                while not stop.is_set() and a.recv(1 << 20):
                    pass
            except OSError:
                pass

        threads = [threading.Thread(target=pump, daemon=True),
                   threading.Thread(target=drain, daemon=True)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.2)                 # the stream is flowing
            for _ in range(3):
                with socket.create_connection(srv.addr, timeout=5) as b:
                    b.sendall(b"hello")
                    assert b.recv(10) == b"hello"
        finally:
            stop.set()
            a.shutdown(socket.SHUT_RDWR)
            for t in threads:
                t.join(5)
            a.close()


def _count_responses(sock: socket.socket, n: int, got: list[int], done: threading.Event) -> None:
    with sock.makefile("rb") as f:
        for _ in range(n):
            if not f.readline():
                break
            while f.readline() != b"\r\n":
                pass
            f.read(len(b"Hello from kqueue_py\n"))
            got[0] += 1
    done.set()


def _hold_the_loop(addr, ms: int) -> socket.socket:
    """An inline handler sleeping ``ms``: meanwhile the loop reads nothing,
    so what other clients send piles up in their sockets."""
    blocker = socket.create_connection(addr, timeout=10)
    blocker.sendall(b"GET /sleep?ms=%d HTTP/1.1\r\nHost: t\r\n\r\n" % ms)
    time.sleep(0.05)
    return blocker


def test_http_pipeline_in_the_socket_is_answered_to_the_end():
    # Requests of 7 KB with small answers: the server can stop reading with
    # plenty left in the socket and nothing left to send, the case in which
    # an edge-triggered reader that stops early never hears of it again.
    pad = b"X-Pad: " + b"p" * 7000 + b"\r\n"
    one = b"GET / HTTP/1.1\r\nHost: t\r\n" + pad + b"\r\n"
    n = 300             # 2.1 MB
    with http_server() as srv:
        for _ in range(3):
            a = socket.create_connection(srv.addr, timeout=30)
            # Warm-up: a busy connection's receive buffer grows (Linux
            # autotuning), so that later the whole pipeline fits in it.
            got, done = [0], threading.Event()
            t = threading.Thread(target=_count_responses, args=(a, 2 * n, got, done), daemon=True)
            t.start()
            a.sendall(one * n)
            blocker = _hold_the_loop(srv.addr, 200)
            a.sendall(one * n)
            assert done.wait(15), f"pipeline stalled after {got[0]} of {2 * n} responses"
            a.close()
            blocker.close()


def test_http_deep_pipeline_does_not_starve_others():
    n = 40_000          # 1.1 MB of requests, all waiting in the socket at once
    with http_server() as srv:
        a = socket.create_connection(srv.addr, timeout=30)
        got, done = [0], threading.Event()
        t = threading.Thread(target=_count_responses, args=(a, 2 * n, got, done), daemon=True)
        t.start()
        a.sendall(GET * n)                  # warm-up: the receive buffer grows
        blocker = _hold_the_loop(srv.addr, 100)
        t0 = time.monotonic()
        a.sendall(GET * n)
        t1 = time.monotonic()
        assert request(srv.addr, GET, timeout=30)[0] == 200
        other = time.monotonic() - t1
        assert done.wait(30), f"pipeline stalled after {got[0]} of {2 * n} responses"
        whole = time.monotonic() - t0
        # The other client waits for a turn, not for the pipeline.
        assert other < whole / 2, f"other client {other:.2f} s, pipeline {whole:.2f} s"
        a.close()
        blocker.close()


def test_http_deep_pipeline_with_workers():
    n = 10_000
    with http_server(workers=2) as srv:
        a = socket.create_connection(srv.addr, timeout=30)
        got, done = [0], threading.Event()
        t = threading.Thread(target=_count_responses, args=(a, n, got, done), daemon=True)
        t.start()
        a.sendall(GET * n)
        assert request(srv.addr, GET, timeout=30)[0] == 200
        assert done.wait(30), f"pipeline stalled after {got[0]} of {n} responses"
        a.close()


# --------------------------------------------------------------------------
# 5. Deadlines.


def test_slowloris_headers_are_cut_at_the_header_deadline():
    with http_server("--header-timeout", "0.3", "--idle-timeout", "30") as srv:
        socks = [socket.create_connection(srv.addr) for _ in range(20)]
        for s in socks:
            s.sendall(b"GET / HTTP/1.1\r\n")
            s.setblocking(False)
        open_ = set(range(len(socks)))
        deadline = time.monotonic() + 5
        while open_ and time.monotonic() < deadline:
            for i in list(open_):
                try:
                    socks[i].send(b"X")           # one header byte per tick
                    data = socks[i].recv(4096)
                    if not data or data.startswith(b"HTTP/1.1 408"):
                        open_.discard(i)
                except BlockingIOError:
                    pass
                except OSError:
                    open_.discard(i)
            time.sleep(0.05)
        for s in socks:
            s.close()
        assert not open_, f"{len(open_)} slowloris connections still open"
        assert request(srv.addr, GET)[0] == 200


def test_slow_body_is_cut_by_the_minimum_rate_and_a_fast_one_is_not():
    with http_server("--header-timeout", "0.3", "--min-body-rate", "2000",
                     "--idle-timeout", "30") as srv:
        with socket.create_connection(srv.addr, timeout=5) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
            cut = False
            end = time.monotonic() + 5
            while time.monotonic() < end:
                try:
                    s.send(b"b")                  # 20 bytes/s
                except OSError:
                    cut = True
                    break
                s.settimeout(0.05)
                try:
                    data = s.recv(4096)
                    if not data or data.startswith(b"HTTP/1.1 408"):
                        cut = True
                        break
                except socket.timeout:
                    pass
                except OSError:
                    cut = True
                    break
            assert cut, "a body at 20 bytes/s was never cut"
        # 100 KB at about 1 MB/s, spread over more than the header timeout.
        with socket.create_connection(srv.addr, timeout=10) as s, s.makefile("rb") as f:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
            for _ in range(20):
                s.sendall(b"y" * 5000)
                time.sleep(0.025)
            assert read_response(f)[::2] == (200, b"y" * 100000)


def test_progressing_download_is_not_idle():
    n = 8_000_000
    with http_server("--idle-timeout", "0.3") as srv:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect(srv.addr)
        s.settimeout(10)
        s.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % n)
        got = 0
        with s, s.makefile("rb") as f:
            while f.readline() != b"\r\n":
                pass
            while got < n:
                chunk = f.read1(min(n - got, 256 << 10))
                if not chunk:
                    break
                got += len(chunk)
                time.sleep(0.01)                     # the download takes about 1 s
        assert got == n, f"download cut after {got} of {n} bytes"
        # An idle keep-alive connection is still closed.
        with socket.create_connection(srv.addr) as idle:
            assert closed_by_peer(idle, 5)


# --------------------------------------------------------------------------
# 6. EMFILE.


NOFILE = 48


def _cpu_while_out_of_descriptors(srv: Server, clients: list[socket.socket]) -> float:
    """The server's CPU seconds over 2 s once every one of its descriptors
    is taken (so accept() fails with EMFILE from then on)."""
    full = wait_until(lambda: len(os.listdir(f"/proc/{srv.proc.pid}/fd")) >= NOFILE, timeout=10.0)
    assert full, "the server never ran out of descriptors"
    t0 = srv.cpu_seconds()
    time.sleep(2.0)                 # the measuring window, not a synchronisation
    return srv.cpu_seconds() - t0


def test_http_emfile_backs_off_and_recovers():
    with http_server("--accept-backoff", "0.05", nofile=NOFILE) as srv:
        clients = [socket.create_connection(srv.addr) for _ in range(60)]
        try:
            cpu = _cpu_while_out_of_descriptors(srv, clients)
            assert cpu < 0.6, f"{cpu:.2f} s of CPU in 2 s while out of descriptors (spinning?)"
        finally:
            for c in clients[:30]:
                c.close()
        # Freed descriptors are used: the waiting clients and a new one are served.
        for c in clients[30:]:
            c.settimeout(10)
            c.sendall(GET)
            assert read_response(c.makefile("rb"))[0] == 200
            c.close()
        assert request(srv.addr, GET)[0] == 200


def test_echo_emfile_backs_off_and_recovers():
    with echo_server("--accept-backoff", "0.05", nofile=NOFILE) as srv:
        clients = [socket.create_connection(srv.addr) for _ in range(60)]
        try:
            cpu = _cpu_while_out_of_descriptors(srv, clients)
            assert cpu < 0.6, f"{cpu:.2f} s of CPU in 2 s while out of descriptors (spinning?)"
        finally:
            for c in clients[:30]:
                c.close()
        for c in clients[30:]:
            c.settimeout(10)
            c.sendall(b"back")
            assert c.recv(10) == b"back"
            c.close()


# --------------------------------------------------------------------------
# 7. Jobs of clients that left are dropped.


def test_reset_while_queued_drops_the_job():
    with http_server(workers=1) as srv:
        gone = []
        for _ in range(8):
            s = socket.create_connection(srv.addr)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            s.sendall(b"GET /sleep?ms=1000 HTTP/1.1\r\nHost: t\r\n\r\n")
            gone.append(s)
        time.sleep(0.1)
        for s in gone:
            s.close()                               # resets while the jobs wait
        t0 = time.monotonic()
        assert request(srv.addr, GET, timeout=20)[0] == 200
        waited = time.monotonic() - t0
        # One 1 s job may already run; the 7 queued ones must not (7+ s).
        assert waited < 3.5, f"a new client waited {waited:.1f} s behind dead clients' jobs"


# --------------------------------------------------------------------------
# 8. A handler's bad Response.

_BAD_APP = """
import sys
from kqueue_py.examples.http import HTTPServer, Request, Response, Router
app = Router()
@app.route("GET", "/")
def ok(req): return Response(200, b"ok")
@app.route("GET", "/str")
def text(req): return Response(200, "a str body")
@app.route("GET", "/euro")
def euro(req): return Response(200, b"x", headers=[("X-Price", "5 \\u20ac")])
@app.route("GET", "/split")
def split(req): return Response(200, b"x", headers=[("X-A", "a\\r\\nSet-Cookie: evil=1")])
@app.route("GET", "/status")
def status(req): return Response(99, b"x")
@app.route("GET", "/ctype")
def ctype(req): return Response(200, b"x", content_type="text/\\u2603")
@app.route("GET", "/none")
def none(req): return None
@app.route("GET", "/raise")
def boom(req): raise RuntimeError("handler bug")
HTTPServer(app, port=0, workers=int(sys.argv[1])).serve_forever()
"""


@pytest.mark.parametrize("workers", [0, 1], ids=["inline", "workers"])
def test_bad_response_is_a_500_and_the_server_goes_on(workers):
    script = _BAD_APP.replace("int(sys.argv[1])", str(workers))
    with http_server(script=script) as srv:
        for path in ("/str", "/euro", "/split", "/status", "/ctype", "/none", "/raise") * 2:
            status, headers, _ = request(srv.addr, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"
                                         % path.encode())
            assert status == 500, path
            assert "set-cookie" not in headers
            assert request(srv.addr, GET)[::2] == (200, b"ok")
        assert srv.alive()
    assert srv.proc.returncode == 0
    assert "Traceback" not in srv.stderr()


# --------------------------------------------------------------------------
# 9. SIGTERM drains.


def test_sigterm_under_load_answers_everyone_and_exits_0():
    with http_server("--grace", "0.7", workers=2) as srv:
        clients = []
        for _ in range(12):
            s = socket.create_connection(srv.addr, timeout=10)
            s.sendall(b"GET /sleep?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n")
            clients.append(s)
        time.sleep(0.1)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        statuses = []
        for s in clients:
            with s, s.makefile("rb") as f:
                statuses.append(read_response(f)[0])
                assert f.read() == b""                  # and then closed
        assert srv.proc.wait(10) == 0
        took = time.monotonic() - t0
        assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
        assert took < 3, f"exit took {took:.1f} s"
        with pytest.raises(OSError):
            socket.create_connection(srv.addr, timeout=2).close()
        assert "Traceback" not in srv.stderr()


def test_sigterm_lets_an_inflight_download_finish():
    n = 8_000_000
    with http_server("--grace", "5") as srv:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect(srv.addr)
        s.settimeout(10)
        idle = socket.create_connection(srv.addr)
        s.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % n)
        with s, s.makefile("rb") as f:
            assert f.readline().startswith(b"HTTP/1.1 200")
            srv.proc.send_signal(signal.SIGTERM)
            assert closed_by_peer(idle, 5)              # idle keep-alive: closed at once
            while f.readline() != b"\r\n":
                pass
            assert len(f.read(n)) == n
        assert srv.proc.wait(10) == 0
        idle.close()


# --------------------------------------------------------------------------
# Programs: startup line, signals, an address in use.


@pytest.mark.parametrize("module", ["http", "echo"])
def test_address_in_use_is_one_line_and_a_failure(module):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", f"kqueue_py.examples.{module}", "--port",
                            str(port)], capture_output=True, text=True, timeout=30, cwd="/")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0].lower(), r.stderr


@pytest.mark.parametrize("module", ["http", "echo"])
def test_a_copy_of_an_example_runs_as_it_is(module, tmp_path):
    # Copied alone into another directory and run as a script: it imports
    # only what kqueue_py exports (http.py also its protocol module, from
    # the installed package), and nothing it imports needs the stdlib's
    # http package, which a copy named http.py shadows.
    import kqueue_py.examples
    source = Path(kqueue_py.examples.__file__).parent / f"{module}.py"
    copy = tmp_path / f"{module}.py"
    copy.write_text(source.read_text())
    srv = Server(["--port", "0"], path=str(copy))
    try:
        if module == "http":
            assert request(srv.addr, GET)[::2] == (200, b"Hello from kqueue_py\n")
        else:
            with socket.create_connection(srv.addr, timeout=5) as c:
                c.sendall(b"ping")
                assert c.recv(10) == b"ping"
    finally:
        assert srv.stop() == 0, srv.stderr()
    assert "Traceback" not in srv.stderr()


def _own_handler_snippet() -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "servers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    snippet = next(b for b in blocks if "@app.route" in b and "HTTPServer(" in b)
    assert "port=8080" in snippet
    return snippet.replace("port=8080", "port=0")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_documented_own_handler_snippet_runs_and_stops_gracefully(sig):
    with http_server(script=_own_handler_snippet()) as srv:
        assert "http server on http://127.0.0.1:" in srv.err[0].decode()
        assert request(srv.addr, b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")[::2] == (200, b"hi\n")
        srv.proc.send_signal(sig)
        assert srv.proc.wait(10) == 0
    assert "Traceback" not in srv.stderr() and "KeyboardInterrupt" not in srv.stderr()
