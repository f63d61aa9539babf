"""Load benchmark of HTTP servers: ``python -m kqueue_py.bench.servers``.

Starts each server in its own process on 127.0.0.1, drives it with ``wrk``
(Debian package ``wrk``) for a bounded time, and prints requests/s and
latency percentiles side by side:

* ``kqueue_py``          — kqueue_py.examples.http, handlers inline;
* ``kqueue_py+pool``     — the same with a worker pool (EVFILT_USER wake-ups);
* ``selectors``          — the same HTTP logic on ``selectors.DefaultSelector``
                           (epoll on Linux), inline;
* ``asyncio``            — an asyncio ``Protocol`` with the same responses, on
                           the default event loop;
* ``asyncio+kqueue_py``  — that protocol on ``SelectorEventLoop(KqueueSelector())``;
* ``uvloop``             — that protocol on uvloop, when it is installed.

Then the stall test: while 3 connections keep requesting ``/sleep?ms=10``,
how long does ``GET /`` take on another connection, inline vs with 4 workers?
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from ..examples.http import HTTPServer
from ..examples.http_protocol import (
    Limits,
    ParseError,
    default_app,
    error_response,
    parse_request,
    respond,
    serialize,
)

KINDS = ["kqueue_py", "kqueue_py+pool", "selectors", "asyncio", "asyncio+kqueue_py", "uvloop"]


# ---------------------------------------------------------------------------
# Comparator servers: the same protocol functions on other loops.


class SelectorsHTTPServer:
    """The HTTP logic of kqueue_py.examples.http on ``selectors`` (inline
    handlers, level-triggered reads): the comparator for the same work."""

    def __init__(self, host: str, port: int) -> None:
        self.app = default_app()
        self.limits = Limits()
        self.sel = selectors.DefaultSelector()
        self.listener = socket.create_server((host, port), backlog=1024)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.bufs: dict[int, tuple[socket.socket, bytearray, bytearray]] = {}

    def serve_forever(self) -> None:
        while True:
            for key, mask in self.sel.select():
                if key.data is None:
                    self._accept()
                    continue
                sock, inbuf, outbuf = key.data
                if mask & selectors.EVENT_READ:
                    self._read(sock, inbuf, outbuf)
                elif mask & selectors.EVENT_WRITE:
                    self._flush(sock, outbuf, False)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sel.register(sock, selectors.EVENT_READ, (sock, bytearray(), bytearray()))

    def _read(self, sock: socket.socket, inbuf: bytearray, outbuf: bytearray) -> None:
        try:
            chunk = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(sock)
            return
        inbuf += chunk
        close = False
        while True:
            try:
                parsed = parse_request(inbuf, self.limits)
            except ParseError as exc:
                outbuf += serialize(error_response(exc.status), False)
                close = True
                break
            if parsed is None:
                break
            req, used = parsed
            del inbuf[:used]
            outbuf += respond(self.app, req)
            if not req.keep_alive:
                close = True
                break
        self._flush(sock, outbuf, close)

    def _flush(self, sock: socket.socket, outbuf: bytearray, close: bool) -> None:
        try:
            sent = sock.send(outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(sock)
            return
        del outbuf[:sent]
        key = self.sel.get_key(sock)
        if outbuf:
            self.sel.modify(sock, selectors.EVENT_WRITE, key.data)
        elif close:
            self._close(sock)
        elif key.events != selectors.EVENT_READ:
            self.sel.modify(sock, selectors.EVENT_READ, key.data)

    def _close(self, sock: socket.socket) -> None:
        self.sel.unregister(sock)
        sock.close()


class HTTPProtocol(asyncio.Protocol):
    """The same responses as an asyncio Protocol."""

    app = default_app()
    limits = Limits()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = bytearray()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            try:
                parsed = parse_request(self.buf, self.limits)
            except ParseError as exc:
                self.transport.write(serialize(error_response(exc.status), False))
                self.transport.close()
                return
            if parsed is None:
                return
            req, used = parsed
            del self.buf[:used]
            self.transport.write(respond(self.app, req))
            if not req.keep_alive:
                self.transport.close()
                return


def _serve(kind: str, port: int) -> None:
    host = "127.0.0.1"
    if kind in ("kqueue_py", "kqueue_py+pool"):
        HTTPServer(host=host, port=port, workers=4 if kind.endswith("pool") else 0).serve_forever()
    elif kind == "selectors":
        SelectorsHTTPServer(host, port).serve_forever()
    else:
        loop: asyncio.AbstractEventLoop
        if kind == "uvloop":
            import uvloop  # type: ignore[import-not-found,unused-ignore]
            loop = uvloop.new_event_loop()
        elif kind == "asyncio+kqueue_py":
            from ..selectors import KqueueSelector
            loop = asyncio.SelectorEventLoop(KqueueSelector())
        else:
            loop = asyncio.new_event_loop()
        server = loop.run_until_complete(loop.create_server(HTTPProtocol, host, port, backlog=1024))
        try:
            loop.run_forever()
        finally:
            server.close()
            loop.close()


# ---------------------------------------------------------------------------
# Driving.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(kind: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kqueue_py.bench.servers", "--serve", kind,
                             "--port", str(port)], stderr=subprocess.PIPE)
    wait_listening(proc, port, f"{kind} server", 10.0)
    return proc, port


def wait_listening(proc: subprocess.Popen[bytes], port: int, what: str, timeout: float) -> None:
    """Wait until the server ``proc`` accepts connections on ``port`` of
    127.0.0.1; ``RuntimeError`` if it exits first or ``timeout`` passes
    (then it is killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-500:] if proc.stderr is not None else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {err}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def run_wrk(port: int, seconds: float, connections: int, threads: int = 1,
            path: str = "/") -> dict[str, float]:
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                          "--latency",
                          f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "p50_ms": _ms(pct.get("50", "")), "p90_ms": _ms(pct.get("90", "")),
        "p99_ms": _ms(pct.get("99", "")),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 0.0 if not socket_errors else 1.0,
    }


SLEEPERS = 3   # fewer than the pool's 4 workers: a slow handler must not stall others


def stall_test(workers: int, seconds: float = 2.0) -> dict[str, float]:
    """Latency of GET / while SLEEPERS connections keep a 10 ms handler busy."""
    proc, port = _start("kqueue_py+pool" if workers else "kqueue_py")
    stop = threading.Event()

    def sleeper() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            f = s.makefile("rb")
            while not stop.is_set():
                s.sendall(b"GET /sleep?ms=10 HTTP/1.1\r\nHost: x\r\n\r\n")
                read_response_body(f)

    threads = [threading.Thread(target=sleeper, daemon=True) for _ in range(SLEEPERS)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    lat: list[float] = []
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            f = s.makefile("rb")
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.perf_counter()
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                read_response_body(f)
                lat.append((time.perf_counter() - t0) * 1e3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=2)
        _stop(proc)
    lat.sort()
    return {"requests": float(len(lat)), "p50_ms": statistics.median(lat),
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "max_ms": lat[-1]}


def read_response_body(f: Any) -> bytes:
    """Read one response from the file object ``f``; return its body (by
    its Content-Length)."""
    length = 0
    while True:
        line = f.readline()
        if not line:
            raise ConnectionError("closed")
        if line == b"\r\n":
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return f.read(length)  # type: ignore[no-any-return]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kqueue_py.bench.servers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=5.0, help="wrk duration per server")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="runs per server, taking turns")
    ap.add_argument("--only", action="append", choices=KINDS)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.port)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    kinds = []
    for kind in args.only or KINDS:
        if kind == "uvloop":
            try:
                import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
            except ImportError:
                print("uvloop: not installed (pip install uvloop), skipped", file=sys.stderr)
                continue
        kinds.append(kind)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "platform": sys.platform},
                               "wrk": {"seconds": args.seconds, "connections": args.connections,
                                       "rounds": args.rounds}}
    # Loopback load on a small VM drifts: the servers take turns, round after
    # round, and each one's median round is reported.
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for rnd in range(args.rounds):
        for kind in kinds:
            print(f"round {rnd + 1}/{args.rounds} {kind}: wrk -c{args.connections} "
                  f"for {args.seconds:g}s ...", file=sys.stderr, flush=True)
            proc, port = _start(kind)
            try:
                run_wrk(port, 1.0, args.connections)          # warm-up
                runs[kind].append(run_wrk(port, args.seconds, args.connections))
            finally:
                _stop(proc)
    rows = []
    for kind in kinds:
        ordered = sorted(runs[kind], key=lambda r: r["rps"])
        median = ordered[len(ordered) // 2]
        results[kind] = {**median, "rps_every_round": [r["rps"] for r in runs[kind]]}
        rows.append((kind, median))
    base = results.get("selectors", {}).get("rps")
    print(f"\nHTTP/1.1 keep-alive, GET /, wrk -t1 -c{args.connections} -d{args.seconds:g}s, "
          f"median of {args.rounds} rounds, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'server':<20} {'req/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'vs selectors':>13} {'non-2xx':>8}  every round (req/s)")
    for kind, r in rows:
        ratio = f"{r['rps'] / base:.2f}x" if base else "-"
        spread = ", ".join(f"{run['rps']:,.0f}" for run in runs[kind])
        print(f"{kind:<20} {r['rps']:>10,.0f} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {ratio:>13} {r['non_2xx']:>8.0f}  {spread}")
    if not args.only or any(k.startswith("kqueue_py") for k in args.only):
        print(f"\nstall test: GET / latency while {SLEEPERS} connections run a 10 ms handler",
              file=sys.stderr)
        stall = {"inline": stall_test(0), "workers=4": stall_test(4)}
        results["stall"] = stall
        print(f"\nGET / while {SLEEPERS} connections run a 10 ms handler")
        print(f"{'kqueue_py server':<20} {'GET / p50 ms':>13} {'p99 ms':>8} {'max ms':>8} {'requests':>9}")
        for name, s in stall.items():
            print(f"{name:<20} {s['p50_ms']:>13.2f} {s['p99_ms']:>8.2f} {s['max_ms']:>8.2f} "
                  f"{s['requests']:>9.0f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
