"""An HTTP/1.1 keep-alive server on kqueue_py, in the shape of the origin
module's ``std.http``: ``python -m kqueue_py.examples.http --port N [--workers N]``.

* Keep-alive and pipelining; request parsing with limits (header bytes,
  number of headers, body bytes) answered with 431 / 413 / 400.
* ``workers=0`` (the default) runs handlers inline on the loop thread.
  ``workers=N`` hands each parsed request to a pool of N threads: the
  connection freezes while its handler runs (it is neither read nor
  evicted; bytes that arrive wait in the socket), completions are queued
  under a lock and wake the loop through ``EVFILT_USER``, a full backlog
  sheds with 503, and a completion for a connection closed meanwhile (a
  reset, shutdown) is dropped (generation check: fd numbers are reused,
  generations are not).
* Idle connections time out through one periodic ``EVFILT_TIMER``.
* SIGINT/SIGTERM stop the server gracefully through ``EVFILT_SIGNAL`` where
  the backend has it (a plain signal handler otherwise).

A handler is ``Callable[[Request], Response]``; :class:`Router` maps
``(method, path)`` to one::

    app = Router()

    @app.route("GET", "/hello")
    def hello(req: Request) -> Response:
        return Response(200, b"hi\\n")

    HTTPServer(app, port=8080, workers=4).serve_forever()
"""
from __future__ import annotations

import argparse
import errno
import itertools
import queue as _queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Callable, Optional
from urllib.parse import parse_qs

from .. import (
    EV_ADD,
    EV_CLEAR,
    EV_EOF,
    EV_ONESHOT,
    EVFILT_READ,
    EVFILT_SIGNAL,
    EVFILT_TIMER,
    EVFILT_USER,
    EVFILT_WRITE,
    KQueue,
)
from ..queue import Change
from ..raw import lib

__all__ = ["Request", "Response", "Router", "Limits", "HTTPServer", "ParseError",
           "parse_request", "serialize", "default_app"]


# ---------------------------------------------------------------------------
# Protocol: parsing and serializing, independent of any event loop.


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: str
    version: str
    headers: dict[str, str]          # lower-cased names
    body: bytes
    keep_alive: bool

    def args(self) -> dict[str, list[str]]:
        return parse_qs(self.query)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 8192      # request line + headers
    max_headers: int = 100
    max_body_bytes: int = 1 << 20


class ParseError(Exception):
    """A request the server answers with ``status`` and then closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _is_token(s: str) -> bool:
    return bool(s) and all(ord(c) < 128 and ord(c) in _TOKEN for c in s)


def parse_request(buf: bytearray, limits: Limits) -> Optional[tuple[Request, int]]:
    """Parse one request from the start of ``buf``.

    Returns ``(request, bytes consumed)``, ``None`` when more bytes are
    needed, or raises :class:`ParseError`.  Limits are enforced as soon as
    they can be: an oversized header section or declared body is refused
    before it has arrived.
    """
    end = buf.find(b"\r\n\r\n", 0, limits.max_header_bytes + 4)
    if end < 0:
        if len(buf) > limits.max_header_bytes:
            raise ParseError(431, "request header section too large")
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _is_token(parts[0]) or not parts[1]:
        raise ParseError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise ParseError(505, "HTTP version not supported")
        raise ParseError(400, "malformed request line")
    if len(lines) - 1 > limits.max_headers:
        raise ParseError(431, "too many headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _is_token(name):
            raise ParseError(400, "malformed header")
        name = name.lower()
        value = value.strip(" \t")
        if name in headers:
            if name == "content-length" and headers[name] != value:
                raise ParseError(400, "conflicting Content-Length")
            headers[name] = headers[name] + ", " + value
        else:
            headers[name] = value
    if "transfer-encoding" in headers:
        raise ParseError(501, "Transfer-Encoding is not supported")
    length = 0
    if "content-length" in headers:
        text = headers["content-length"]
        if not text.isdigit():
            raise ParseError(400, "bad Content-Length")
        length = int(text)
        if length > limits.max_body_bytes:
            raise ParseError(413, "request body too large")
    total = end + 4 + length
    if len(buf) < total:
        return None
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection
    path, _, query = target.partition("?")
    return Request(method, target, path, query, version, headers,
                   bytes(buf[end + 4:total]), keep_alive), total


def serialize(resp: Response, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(resp.status).phrase
    except ValueError:
        reason = "Unknown"
    head = [f"HTTP/1.1 {resp.status} {reason}",
            f"Content-Length: {len(resp.body)}",
            f"Content-Type: {resp.content_type}",
            "Connection: keep-alive" if keep_alive else "Connection: close"]
    head.extend(f"{k}: {v}" for k, v in resp.headers)
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body


def error_response(status: int) -> Response:
    try:
        text = HTTPStatus(status).phrase
    except ValueError:
        text = "Error"
    return Response(status, f"{status} {text}\n".encode())


def run_handler(app: Handler, req: Request) -> Response:
    """Call a handler; an exception becomes a 500, never a dead server."""
    try:
        resp = app(req)
        if not isinstance(resp, Response):
            raise TypeError(f"handler returned {type(resp).__name__}, not Response")
        return resp
    except Exception:   # noqa: BLE001 - the server must survive any handler
        return error_response(500)


class Router:
    """``(method, path) -> handler``; 404 for unknown paths, 405 for a known
    path with another method."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Handler] = {}
        self._paths: set[str] = set()

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self._routes[(method.upper(), path)] = fn
            self._paths.add(path)
            return fn
        return register

    def __call__(self, req: Request) -> Response:
        fn = self._routes.get((req.method, req.path))
        if fn is not None:
            return fn(req)
        return error_response(405 if req.path in self._paths else 404)


HELLO = b"Hello from kqueue_py\n"


def default_app() -> Router:
    """``GET /`` -> 200 and a short text; ``POST /echo`` echoes the body;
    ``GET /sleep?ms=N`` sleeps N ms (at most 5 s) first, to show what a slow
    handler does to the loop with and without workers."""
    app = Router()

    @app.route("GET", "/")
    def index(req: Request) -> Response:
        return Response(200, HELLO)

    @app.route("POST", "/echo")
    def echo(req: Request) -> Response:
        return Response(200, req.body, content_type="application/octet-stream")

    @app.route("GET", "/sleep")
    def sleep(req: Request) -> Response:
        try:
            ms = min(max(int(req.args().get("ms", ["10"])[0]), 0), 5000)
        except ValueError:
            return error_response(400)
        time.sleep(ms / 1000)
        return Response(200, b"slept %d ms\n" % ms)

    return app


# ---------------------------------------------------------------------------
# The server.

_NODATA = getattr(lib, "NOTE_NODATA", 0)
_WAKE = 1       # EVFILT_USER: worker completions are queued
_STOP = 2       # EVFILT_USER: stop() was called
_SWEEP = 1      # EVFILT_TIMER: idle sweep


class Connection:
    __slots__ = ("sock", "fd", "gen", "inbuf", "outbuf", "busy", "close_after",
                 "peer_done", "last_active", "writing")

    def __init__(self, sock: socket.socket, gen: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.gen = gen
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.busy = False          # a worker holds its request: frozen
        self.close_after = False   # close once outbuf is flushed
        self.peer_done = False     # the client shut down its side
        self.last_active = time.monotonic()
        self.writing = False       # a WRITE registration is pending


class HTTPServer:
    """The kqueue_py HTTP/1.1 server.  ``serve_forever()`` runs the loop on
    the calling thread; ``stop()`` is safe from any thread."""

    def __init__(self, app: Optional[Handler] = None, host: str = "127.0.0.1", port: int = 0,
                 *, workers: int = 0, backlog: int = 1024, limits: Limits = Limits(),
                 idle_timeout: float = 30.0, listen_backlog: int = 1024,
                 handle_signals: bool = False) -> None:
        self.app: Handler = app if app is not None else default_app()
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.queue = KQueue(max_events=512)
        self.listener = socket.create_server((host, port), backlog=listen_backlog)
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        self.conns: dict[int, Connection] = {}
        self._gens = itertools.count(1)
        self._changes: list[Change] = []
        self._lock = threading.Lock()
        self._completions: list[tuple[int, int, bytes, bool]] = []
        self._jobs: _queue.Queue[Optional[tuple[int, int, Request]]] = _queue.Queue(maxsize=backlog)
        self._workers = [threading.Thread(target=self._worker, name=f"http-worker-{i}", daemon=True)
                         for i in range(workers)]
        self.stats = {"accepted": 0, "requests": 0, "shed_503": 0, "stale_dropped": 0,
                      "idle_closed": 0}
        self.queue.add_reader(self.listener)
        self.queue.add_user(_WAKE)
        self.queue.add_user(_STOP)
        self.queue.add_timer(_SWEEP, min(1.0, max(idle_timeout / 2, 0.01)))
        self._signals = self._watch_signals() if handle_signals else []

    # -- lifecycle ----------------------------------------------------------
    def _watch_signals(self) -> list[int]:
        watched: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                # As on BSD: ignore the signal's default action, count it in
                # the queue.  Where the backend has no EVFILT_SIGNAL, a plain
                # handler triggers the stop event instead.
                signal.signal(signum, signal.SIG_IGN)
                self.queue.add_signal(signum)
                watched.append(signum)
            except OSError:
                signal.signal(signum, lambda *_: self.stop())
        return watched

    def stop(self) -> None:
        try:
            self.queue.trigger(_STOP)
        except ValueError:
            pass   # already stopped: the queue is closed

    def serve_forever(self) -> None:
        for t in self._workers:
            t.start()
        lfd = self.listener.fileno()
        try:
            while True:
                if self._changes:
                    changes, self._changes = self._changes, []
                    self.queue.apply(changes, raise_errors=False)
                for ident, filt, flags, fflags, data, _ in self.queue.wait_tuples():
                    if filt == EVFILT_READ:
                        if ident == lfd:
                            self._accept(data)
                        else:
                            conn = self.conns.get(ident)
                            if conn is not None:
                                self._on_readable(conn, data, flags & EV_EOF, fflags)
                    elif filt == EVFILT_WRITE:
                        conn = self.conns.get(ident)
                        if conn is not None:
                            conn.writing = False
                            self._flush(conn)
                    elif filt == EVFILT_USER:
                        if ident == _STOP:
                            return
                        self._on_completions()
                    elif filt == EVFILT_TIMER:
                        self._sweep_idle()
                    elif filt == EVFILT_SIGNAL:
                        return
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for _ in self._workers:
            try:
                self._jobs.put(None, timeout=1)
            except _queue.Full:
                break
        for conn in list(self.conns.values()):
            self._close(conn)
        self.listener.close()
        self.queue.close()
        for t in self._workers:
            t.join(timeout=5)

    # -- connections --------------------------------------------------------
    def _accept(self, backlog: int) -> None:
        for _ in range(max(backlog, 1)):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                                 errno.ECONNABORTED):
                    return    # out of descriptors: the backlog waits for the next turn
                raise
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, next(self._gens))
            self.conns[conn.fd] = conn
            self.stats["accepted"] += 1
            # NOTE_NODATA (Linux backend): readiness only -- this server reads
            # 64 KiB at a time anyway, so the backend's per-event byte count
            # (an ioctl) would be wasted.  Elsewhere it is 0 and ignored.
            self._changes.append(Change(conn.fd, EVFILT_READ, EV_ADD | EV_CLEAR, _NODATA))

    def _on_readable(self, conn: Connection, available: int, eof: int, error: int = 0) -> None:
        if conn.busy:
            # Frozen: not read (what arrives waits in the socket and is read
            # when the handler completes).  A reset ends it now, and the
            # worker's completion will then be dropped as stale.  kqueue(2)
            # puts the error in fflags only where the system can read it
            # without clearing it (not on Linux), so ask the socket.
            if eof and not error:
                error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._close(conn)
            elif eof:
                conn.peer_done = True
            return
        sock = conn.sock
        # Edge-triggered (EV_CLEAR): read what is there, at least 64 KiB at a
        # time (more when kqueue's data says so).  A short read means the
        # socket is dry, and new bytes bring a new event, so no extra recv()
        # has to run into EAGAIN.
        want = min(max(available, 65536), 1 << 20)
        while True:
            try:
                chunk = sock.recv(want)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            if not chunk:
                conn.peer_done = True
                break
            conn.inbuf += chunk
            if len(chunk) < want:
                break
            if len(conn.inbuf) > self.limits.max_header_bytes + self.limits.max_body_bytes + 65536:
                break   # parse now: it refuses what is too large
        if eof:
            conn.peer_done = True
        conn.last_active = time.monotonic()
        self._process(conn)

    def _process(self, conn: Connection) -> None:
        """Answer every complete request in the buffer (pipelining), in order."""
        while not conn.busy and not conn.close_after:
            try:
                parsed = parse_request(conn.inbuf, self.limits)
            except ParseError as exc:
                conn.outbuf += serialize(error_response(exc.status), False)
                conn.close_after = True
                break
            if parsed is None:
                break
            req, used = parsed
            del conn.inbuf[:used]
            self.stats["requests"] += 1
            if self._workers:
                self._dispatch(conn, req)
            else:
                conn.outbuf += serialize(run_handler(self.app, req), req.keep_alive)
                if not req.keep_alive:
                    conn.close_after = True
        if conn.peer_done and not conn.busy and not conn.inbuf and not conn.outbuf:
            self._close(conn)
            return
        if conn.peer_done and not conn.busy and not conn.close_after and conn.inbuf:
            # The client shut down with an incomplete request: answer and close.
            conn.outbuf += serialize(error_response(400), False)
            conn.close_after = True
        self._flush(conn)

    def _dispatch(self, conn: Connection, req: Request) -> None:
        try:
            self._jobs.put_nowait((conn.fd, conn.gen, req))
        except _queue.Full:
            self.stats["shed_503"] += 1
            conn.outbuf += serialize(error_response(503), req.keep_alive)
            if not req.keep_alive:
                conn.close_after = True
            return
        conn.busy = True   # frozen until the completion: no reads, no eviction

    def _flush(self, conn: Connection) -> None:
        if conn.outbuf and not conn.writing:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            del conn.outbuf[:sent]
            if conn.outbuf:
                conn.writing = True
                self._changes.append(Change(conn.fd, EVFILT_WRITE, EV_ADD | EV_ONESHOT))
                return
        if not conn.outbuf and not conn.busy and (
                conn.close_after or (conn.peer_done and not conn.inbuf)):
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
        # Closing removes the registrations; pending changes for this fd
        # would hit a closed (or reused) number, so they are dropped.
        self._changes = [c for c in self._changes if c.ident != conn.fd]
        conn.sock.close()

    def _sweep_idle(self) -> None:
        deadline = time.monotonic() - self.idle_timeout
        for conn in list(self.conns.values()):
            if not conn.busy and conn.last_active < deadline:
                self.stats["idle_closed"] += 1
                self._close(conn)

    # -- the worker pool ------------------------------------------------------
    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fd, gen, req = job
            data = serialize(run_handler(self.app, req), req.keep_alive)
            with self._lock:
                wake = not self._completions
                self._completions.append((fd, gen, data, req.keep_alive))
            if wake:
                try:
                    self.queue.trigger(_WAKE)
                except (OSError, ValueError):
                    return   # the server is shutting down

    def _on_completions(self) -> None:
        with self._lock:
            done, self._completions = self._completions, []
        for fd, gen, data, keep_alive in done:
            conn = self.conns.get(fd)
            if conn is None or conn.gen != gen:
                self.stats["stale_dropped"] += 1    # closed (and maybe reused) meanwhile
                continue
            conn.busy = False
            conn.outbuf += data
            if not keep_alive:
                conn.close_after = True
            # Read what arrived while frozen (its edge has passed), then
            # answer pipelined requests.
            self._on_readable(conn, 0, 0)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kqueue_py.examples.http",
                                 description="HTTP/1.1 keep-alive server on kqueue_py")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--workers", type=int, default=0,
                    help="handler threads (0: handlers run inline on the loop)")
    ap.add_argument("--backlog", type=int, default=1024, help="worker backlog before 503")
    ap.add_argument("--idle-timeout", type=float, default=30.0)
    args = ap.parse_args(argv)
    server = HTTPServer(host=args.host, port=args.port, workers=args.workers,
                        backlog=args.backlog, idle_timeout=args.idle_timeout,
                        handle_signals=True)
    print(f"http server on http://{server.address[0]}:{server.address[1]}/ "
          f"(workers={args.workers})", file=sys.stderr, flush=True)
    server.serve_forever()
    print("http server stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
