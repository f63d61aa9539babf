"""An HTTP/1.1 keep-alive server on kqueue_py, in the shape of the sx
language's ``std.http``: ``python -m kqueue_py.examples.http --port N [--workers N]``.

* Keep-alive and pipelining; request parsing with limits (header bytes,
  number of headers, body bytes) answered with 431 / 413 / 400; an HTTP/1.1
  request without exactly one ``Host`` is a 400 (RFC 9112, section 3.2);
  ``Expect: 100-continue`` is answered with ``100 Continue``.
* ``workers=0`` (the default) runs handlers inline on the loop thread.
  ``workers=N`` hands each parsed request to a pool of N threads: the
  connection freezes while its handler runs (it is neither read nor
  evicted; bytes that arrive wait in the socket), completions are queued
  under a lock and wake the loop through ``EVFILT_USER``, a full backlog
  sheds with 503.  A job or a completion for a connection closed meanwhile
  (a reset, shutdown) is dropped (generation check: fd numbers are reused,
  generations are not).
* Hostile clients are bounded: a connection whose unsent output passes
  ``max_output`` stops being read (its READ registration is disabled) until
  the output drains; each connection gets a bounded amount of work per loop
  turn (the rest waits on a ready list, so an early stop always leads to a
  later read); a header section must arrive within ``header_timeout``, a
  body at ``min_body_rate`` bytes/s at least; idle keep-alive connections
  close after ``idle_timeout`` (a download that is still progressing is not
  idle); ``accept()`` failing with EMFILE disables the listener for
  ``accept_backoff`` seconds.
* No exception from parsing, routing, a handler or serialization ends the
  loop or a worker thread: a handler that raises or returns a bad
  :class:`Response` gives that request a 500.
* SIGINT/SIGTERM (through ``EVFILT_SIGNAL`` where the backend has it, a
  plain signal handler otherwise) and :meth:`HTTPServer.stop` drain: stop
  accepting, finish requests in flight for up to ``grace`` seconds, answer
  what is left with 503, return.

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
import re
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable, NamedTuple, Optional, Union
from urllib.parse import parse_qs

from .. import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_DISABLE,
    EV_ENABLE,
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
           "parse_request", "parse_head", "serialize", "respond", "default_app", "run"]


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
# Control characters (a bare CR or LF among them) are not allowed in a header
# line or in a field value a handler gives, except HTAB (RFC 9110, section
# 5.5; RFC 9112, section 2.2).  Checked only when str.isprintable() says no.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# The Host value: a uri-host with an optional port, or empty (RFC 9112, 3.2).
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_GOOD_HOSTS: set[str] = set()   # Host values already checked (clients repeat theirs)


def _is_token(s: str) -> bool:
    return bool(s) and all(ord(c) < 128 and ord(c) in _TOKEN for c in s)


class Head(NamedTuple):
    """A parsed request line and header section; the body follows."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    size: int            # bytes of the request line and header section, with the blank line
    length: int          # Content-Length
    keep_alive: bool

    def request(self, buf: Union[bytes, bytearray]) -> Request:
        """The request, once ``buf`` holds at least ``size + length`` bytes."""
        path, _, query = self.target.partition("?")
        return Request(self.method, self.target, path, query, self.version, self.headers,
                       bytes(buf[self.size:self.size + self.length]), self.keep_alive)


def parse_head(buf: Union[bytes, bytearray], limits: Limits) -> Optional[Head]:
    """Parse the request line and headers at the start of ``buf``: a
    :class:`Head`, ``None`` when the header section is incomplete, or
    :class:`ParseError`.  An oversized header section or declared body is
    refused before it has arrived."""
    end = buf.find(b"\r\n\r\n", 0, limits.max_header_bytes + 4)
    if end < 0:
        if len(buf) > limits.max_header_bytes:
            raise ParseError(431, "request header section too large")
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    if not lines[0].isprintable():
        raise ParseError(400, "malformed request line")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _is_token(parts[0]) or not parts[1]:
        raise ParseError(400, "malformed request line")
    method, target, version = parts
    if not target.isascii():
        raise ParseError(400, "malformed request target")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise ParseError(505, "HTTP version not supported")
        raise ParseError(400, "malformed request line")
    if len(lines) - 1 > limits.max_headers:
        raise ParseError(431, "too many headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line.isprintable() and _BAD_VALUE.search(line):
            raise ParseError(400, "control character in a header")
        name, sep, value = line.partition(":")
        if not sep or not _is_token(name):
            raise ParseError(400, "malformed header")
        name = name.lower()
        value = value.strip(" \t")
        old = headers.get(name)
        if old is None:
            headers[name] = value
        elif name == "content-length":
            if old != value:
                raise ParseError(400, "conflicting Content-Length")
        elif name == "host":
            raise ParseError(400, "more than one Host")
        else:
            headers[name] = old + ", " + value
    host = headers.get("host")
    if host is None:
        if version == "HTTP/1.1":
            raise ParseError(400, "HTTP/1.1 request without Host")
    elif host not in _GOOD_HOSTS:
        if not _HOST.fullmatch(host):
            raise ParseError(400, "invalid Host")
        if len(_GOOD_HOSTS) < 1024:
            _GOOD_HOSTS.add(host)
    if "transfer-encoding" in headers:
        raise ParseError(501, "Transfer-Encoding is not supported")
    length = 0
    text = headers.get("content-length")
    if text is not None:
        # ASCII digits only: str.isdigit() alone also accepts "²" and friends.
        if not (text.isascii() and text.isdigit()):
            raise ParseError(400, "bad Content-Length")
        if len(text) > 18:
            raise ParseError(413, "request body too large")
        length = int(text)
        if length > limits.max_body_bytes:
            raise ParseError(413, "request body too large")
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection
    return Head(method, target, version, headers, end + 4, length, keep_alive)


def parse_request(buf: Union[bytes, bytearray], limits: Limits) -> Optional[tuple[Request, int]]:
    """Parse one request from the start of ``buf``.

    Returns ``(request, bytes consumed)``, ``None`` when more bytes are
    needed, or raises :class:`ParseError`.
    """
    head = parse_head(buf, limits)
    if head is None:
        return None
    total = head.size + head.length
    if len(buf) < total:
        return None
    return head.request(buf), total


def serialize(resp: Response, keep_alive: bool) -> bytes:
    """The bytes of ``resp``; ``TypeError``/``ValueError`` for a response
    that cannot be sent (a status outside 200-599, a body that is not bytes,
    a header that is not latin-1 or would break the framing)."""
    status = resp.status
    if type(status) is not int or not 200 <= status <= 599:
        raise ValueError(f"bad status {status!r}")
    body = resp.body
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    ctype = resp.content_type
    if not isinstance(ctype, str) or _BAD_VALUE.search(ctype):
        raise ValueError(f"bad content type {ctype!r}")
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Length: {len(body)}\r\nContent-Type: {ctype}\r\n"
            + ("Connection: keep-alive\r\n" if keep_alive else "Connection: close\r\n"))
    for name, value in resp.headers:
        if not isinstance(name, str) or not _is_token(name) or not isinstance(value, str) \
                or _BAD_VALUE.search(value):
            raise ValueError(f"bad header {name!r}: {value!r}")
        head += f"{name}: {value}\r\n"
    return (head + "\r\n").encode("latin-1") + body


def error_response(status: int) -> Response:
    return Response(status, f"{status} {_REASONS.get(status, 'Error')}\n".encode())


def _log_failure(what: str) -> None:
    exc = sys.exc_info()[1]
    print(f"http: {what}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def run_handler(app: Handler, req: Request) -> Response:
    """Call a handler; an exception becomes a 500, never a dead server."""
    try:
        resp = app(req)
        if not isinstance(resp, Response):
            raise TypeError(f"handler returned {type(resp).__name__}, not Response")
        return resp
    except Exception:   # noqa: BLE001 - the server must survive any handler
        _log_failure(f"handler for {req.method} {req.path}")
        return error_response(500)


def respond(app: Handler, req: Request, keep_alive: Optional[bool] = None) -> bytes:
    """The response to ``req`` as bytes: the handler and the serialization
    both run inside the guard, so a failure in either is a 500."""
    if keep_alive is None:
        keep_alive = req.keep_alive
    try:
        return serialize(run_handler(app, req), keep_alive)
    except Exception:   # noqa: BLE001 - a bad Response is the handler's bug, not the server's
        _log_failure(f"response for {req.method} {req.path}")
        return serialize(error_response(500), keep_alive)


class Router:
    """``(method, path) -> handler``; 404 for unknown paths, 405 with an
    ``Allow`` header for a known path with another method."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Handler] = {}
        self._methods: dict[str, list[str]] = {}

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            m = method.upper()
            self._routes[(m, path)] = fn
            methods = self._methods.setdefault(path, [])
            if m not in methods:
                methods.append(m)
                methods.sort()
            return fn
        return register

    def __call__(self, req: Request) -> Response:
        fn = self._routes.get((req.method, req.path))
        if fn is not None:
            return fn(req)
        methods = self._methods.get(req.path)
        if methods:
            resp = error_response(405)
            resp.headers.append(("Allow", ", ".join(methods)))
            return resp
        return error_response(404)


HELLO = b"Hello from kqueue_py\n"
MAX_DOWNLOAD = 64 << 20


def default_app() -> Router:
    """``GET /`` -> 200 and a short text; ``POST /echo`` echoes the body;
    ``GET /sleep?ms=N`` sleeps N ms (at most 5 s) first, to show what a slow
    handler does to the loop with and without workers; ``GET /bytes?n=N``
    sends N bytes (at most 64 MiB), a download."""
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

    @app.route("GET", "/bytes")
    def download(req: Request) -> Response:
        try:
            n = int(req.args().get("n", ["0"])[0])
        except ValueError:
            return error_response(400)
        if not 0 <= n <= MAX_DOWNLOAD:
            return error_response(400)
        return Response(200, b"x" * n, content_type="application/octet-stream")

    return app


# ---------------------------------------------------------------------------
# The server.

_NODATA = getattr(lib, "NOTE_NODATA", 0)
_NSECONDS = lib.NOTE_NSECONDS
_WAKE = 1       # EVFILT_USER: worker completions are queued
_STOP = 2       # EVFILT_USER: stop() was called
_SWEEP = 1      # EVFILT_TIMER: deadlines and idle sweep
_RETRY = 2      # EVFILT_TIMER (one-shot): accept again after EMFILE

RECV_SIZE = 65536
READ_BUDGET = 256 << 10    # bytes read from one connection per loop turn
REQUEST_BUDGET = 64        # requests answered for one connection per loop turn
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Connection:
    __slots__ = ("sock", "fd", "gen", "inbuf", "outbuf", "busy", "close_after",
                 "peer_done", "last_active", "writing", "paused", "more", "head",
                 "request_start", "body_start")

    def __init__(self, sock: socket.socket, gen: int, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.gen = gen
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.busy = False          # a worker holds its request: frozen
        self.close_after = False   # close once outbuf is flushed
        self.peer_done = False     # the client shut down its side
        self.last_active = now     # last byte read or sent
        self.writing = False       # a WRITE registration is pending
        self.paused = False        # too much unsent output: READ disabled
        self.more = True           # the socket may hold unread bytes
        self.head: Optional[Head] = None   # parsed head of a request whose body is arriving
        self.request_start = 0.0   # first byte of the partial request in inbuf (0: none)
        self.body_start = 0.0      # when the head of that request was complete


class HTTPServer:
    """The kqueue_py HTTP/1.1 server.  ``serve_forever()`` runs the loop on
    the calling thread; ``stop()`` is safe from any thread.

    On the main thread (``handle_signals=None``, the default) or with
    ``handle_signals=True``, ``serve_forever()`` announces itself on stderr
    and turns SIGINT and SIGTERM into a graceful drain and a normal return.
    """

    def __init__(self, app: Optional[Handler] = None, host: str = "127.0.0.1", port: int = 0,
                 *, workers: int = 0, backlog: int = 1024, limits: Limits = Limits(),
                 idle_timeout: float = 30.0, header_timeout: float = 10.0,
                 min_body_rate: float = 1024.0, max_output: int = 1 << 20,
                 accept_backoff: float = 0.1, grace: float = 10.0,
                 listen_backlog: int = 1024, handle_signals: Optional[bool] = None) -> None:
        for name, value in (("idle_timeout", idle_timeout), ("header_timeout", header_timeout),
                            ("accept_backoff", accept_backoff), ("grace", grace)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        if not min_body_rate >= 0:
            raise ValueError(f"min_body_rate must be non-negative, not {min_body_rate!r}")
        if max_output < 1:
            raise ValueError(f"max_output must be positive, not {max_output!r}")
        if workers < 0:
            raise ValueError(f"workers must be non-negative, not {workers!r}")
        self.app: Handler = app if app is not None else default_app()
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.min_body_rate = min_body_rate
        self.max_output = max_output
        self.accept_backoff = accept_backoff
        self.grace = grace
        self.handle_signals = handle_signals
        self.listener = socket.create_server((host, port), backlog=listen_backlog)
        self.listener.setblocking(False)
        self.queue = KQueue(max_events=512)
        self.address = self.listener.getsockname()
        self.conns: dict[int, Connection] = {}
        self._gens = itertools.count(1)
        self._changes: list[Change] = []
        self._ready: dict[int, Connection] = {}    # connections with work left over
        self._lock = threading.Lock()
        self._completions: list[tuple[int, int, bytes, bool]] = []
        self._jobs: _queue.Queue[Optional[tuple[int, int, Request]]] = _queue.Queue(maxsize=backlog)
        self._workers = [threading.Thread(target=self._worker, name=f"http-worker-{i}", daemon=True)
                         for i in range(workers)]
        self._draining = False
        self._deadline = 0.0
        self._listening = True
        self.stats = {"accepted": 0, "requests": 0, "shed_503": 0, "stale_dropped": 0,
                      "jobs_skipped": 0, "idle_closed": 0, "timed_out": 0, "paused": 0,
                      "accept_backoff": 0, "errors": 0, "drain_503": 0}
        self.queue.add_reader(self.listener)
        self.queue.add_user(_WAKE)
        self.queue.add_user(_STOP)
        tick = min(idle_timeout, header_timeout) / 2
        self.queue.add_timer(_SWEEP, min(1.0, max(tick, 0.01)))

    # -- lifecycle ----------------------------------------------------------
    def _watch_signals(self) -> list[tuple[int, Any]]:
        previous: list[tuple[int, Any]] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous.append((signum, signal.getsignal(signum)))
            try:
                # As on BSD: ignore the signal's default action, count it in
                # the queue.  Where the backend has no EVFILT_SIGNAL, a plain
                # handler triggers the stop event instead.
                signal.signal(signum, signal.SIG_IGN)
                self.queue.add_signal(signum)
            except OSError:
                signal.signal(signum, lambda *_: self.stop())
        return previous

    def stop(self) -> None:
        """Drain and return from ``serve_forever()`` (safe from any thread)."""
        try:
            self.queue.trigger(_STOP)
        except (OSError, ValueError):
            pass   # already stopped: the queue is closed

    def serve_forever(self) -> None:
        own = self.handle_signals
        if own is None:
            own = threading.current_thread() is threading.main_thread()
        previous = self._watch_signals() if own else []
        if own:
            print(f"http server on http://{self.address[0]}:{self.address[1]}/ "
                  f"(workers={len(self._workers)})", file=sys.stderr, flush=True)
        for t in self._workers:
            t.start()
        try:
            self._loop()
        finally:
            self._shutdown()
            for signum, handler in previous:
                try:
                    signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
            if own:
                print("http server stopped", file=sys.stderr, flush=True)

    def _loop(self) -> None:
        lfd = self.listener.fileno()
        conns = self.conns
        wait = self.queue.wait_tuples
        while True:
            if self._changes:
                changes, self._changes = self._changes, []
                self.queue.apply(changes, raise_errors=False)
            timeout: Optional[float] = 0 if self._ready else None
            if self._draining:
                if not conns:
                    return
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self._end_drain()
                    return
                timeout = 0 if self._ready else left
            for ident, filt, flags, fflags, _, _ in wait(timeout):
                try:
                    if filt == EVFILT_READ:
                        if ident == lfd:
                            if self._listening:
                                self._accept()
                        else:
                            conn = conns.get(ident)
                            if conn is not None:
                                conn.more = True
                                self._on_readable(conn, flags & EV_EOF, fflags)
                    elif filt == EVFILT_WRITE:
                        conn = conns.get(ident)
                        if conn is not None:
                            conn.writing = False
                            self._flush(conn)
                    elif filt == EVFILT_USER:
                        if ident == _STOP:
                            self._begin_drain()
                        else:
                            self._on_completions()
                    elif filt == EVFILT_TIMER:
                        if ident == _RETRY:
                            if self._listening:
                                self._changes.append(Change(lfd, EVFILT_READ, EV_ENABLE))
                        else:
                            self._sweep()
                    elif filt == EVFILT_SIGNAL:
                        self._begin_drain()
                except Exception:   # noqa: BLE001 - one connection's trouble must not end the loop
                    self._internal_error(ident if filt in (EVFILT_READ, EVFILT_WRITE) else -1)
            conn = None   # no reference keeps a closed connection's buffers alive
            if self._ready:
                ready, self._ready = self._ready, {}
                for conn in ready.values():
                    if conns.get(conn.fd) is conn:
                        try:
                            self._on_readable(conn, 0, 0)
                        except Exception:   # noqa: BLE001
                            self._internal_error(conn.fd)
                ready = {}
                conn = None

    def _internal_error(self, fd: int) -> None:
        self.stats["errors"] += 1
        print("http: internal error, connection closed:\n" + traceback.format_exc(),
              file=sys.stderr, flush=True)
        conn = self.conns.get(fd)
        if conn is not None:
            self._close(conn)

    def _begin_drain(self) -> None:
        if self._draining:
            self._deadline = 0.0   # a second signal: stop now
            return
        self._draining = True
        self._deadline = time.monotonic() + self.grace
        self._stop_listening()
        for conn in list(self.conns.values()):
            if not conn.busy and not conn.outbuf and conn.head is None and (
                    not conn.inbuf or conn.inbuf.find(b"\r\n\r\n") < 0):
                self._close(conn)    # idle, or no complete request yet

    def _stop_listening(self) -> None:
        if self._listening:
            self._listening = False
            lfd = self.listener.fileno()
            self._changes = [c for c in self._changes
                             if c.ident != lfd or c.filter != EVFILT_READ]
            self.listener.close()   # new connections are refused from here on

    def _end_drain(self) -> None:
        """The grace period is over: whatever is still waiting for a handler
        gets a 503; everything closes."""
        while True:
            try:
                self._jobs.get_nowait()
            except _queue.Empty:
                break
        for conn in list(self.conns.values()):
            if conn.busy:
                self.stats["drain_503"] += 1
                conn.outbuf += serialize(error_response(503), False)
            if conn.outbuf:
                try:
                    conn.sock.send(conn.outbuf)
                except OSError:
                    pass
            self._close(conn)

    def _shutdown(self) -> None:
        self._draining = True
        while True:
            try:
                self._jobs.get_nowait()
            except _queue.Empty:
                break
        for _ in self._workers:
            try:
                self._jobs.put_nowait(None)
            except _queue.Full:
                break
        for conn in list(self.conns.values()):
            self._close(conn)
        self._stop_listening()
        self.queue.close()
        end = time.monotonic() + 1.0   # a handler still running is not waited for long
        for t in self._workers:
            if t.is_alive():
                t.join(timeout=max(0.0, end - time.monotonic()))

    # -- connections --------------------------------------------------------
    def _accept(self) -> None:
        listener = self.listener
        now = time.monotonic()
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                # Out of descriptors (or memory): the listener is level-
                # triggered and would fire again at once, so it is disabled
                # for accept_backoff seconds; the backlog waits meanwhile.
                self.stats["accept_backoff"] += 1
                lfd = listener.fileno()
                self._changes.append(Change(lfd, EVFILT_READ, EV_DISABLE))
                self._changes.append(Change(_RETRY, EVFILT_TIMER, EV_ADD | EV_ONESHOT, _NSECONDS,
                                            int(self.accept_backoff * 1e9)))
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    _log_failure("accept")
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, next(self._gens), now)
            self.conns[conn.fd] = conn
            self.stats["accepted"] += 1
            # NOTE_NODATA (Linux backend): readiness only -- this server reads
            # 64 KiB at a time anyway, so the backend's per-event byte count
            # (an ioctl) would be wasted, and so would the per-event check
            # that the number still names the socket: like epoll, a closed
            # number is then only safe because nothing else (no dup(), no
            # fork() child) holds the socket.  Elsewhere it is 0 and ignored.
            self._changes.append(Change(conn.fd, EVFILT_READ, EV_ADD | EV_CLEAR, _NODATA))

    def _on_readable(self, conn: Connection, eof: int, error: int) -> None:
        if eof and not error:
            # kqueue(2) puts a pending socket error in fflags only where the
            # system can read it without clearing it (not on Linux): ask the
            # socket itself, once, at EOF.
            error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if eof and error:
            self._close(conn)   # a reset: nothing can be answered; a queued job is skipped
            return
        if conn.busy:
            # Frozen: not read (what arrives waits in the socket and is read
            # when the handler completes).
            if eof:
                conn.peer_done = True
            return
        if eof:
            conn.peer_done = True
        inbuf = conn.inbuf
        # Edge-triggered (EV_CLEAR): read until the socket is dry, but at most
        # READ_BUDGET bytes per turn, and not while the output is backed up or
        # the buffer already holds plenty.  A connection stopped early is put
        # on the ready list, which guarantees it a later turn.
        if conn.more and not conn.paused and not conn.close_after and (
                conn.head is not None or len(inbuf) < READ_BUDGET + self.limits.max_header_bytes):
            sock = conn.sock
            budget = READ_BUDGET
            while True:
                try:
                    chunk = sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    conn.more = False
                    break
                except OSError:
                    self._close(conn)
                    return
                if not chunk:
                    conn.peer_done = True
                    conn.more = False
                    break
                inbuf += chunk
                if len(chunk) < RECV_SIZE:
                    conn.more = False   # a short read: dry, new bytes bring a new event
                    break
                budget -= len(chunk)
                if budget <= 0:
                    break
            conn.last_active = time.monotonic()
        self._process(conn)

    def _process(self, conn: Connection) -> None:
        """Answer complete requests in the buffer (pipelining), in order, up
        to REQUEST_BUDGET per turn and while the output is below max_output."""
        inbuf = conn.inbuf
        budget = REQUEST_BUDGET
        limits = self.limits
        while not conn.busy and not conn.close_after:
            if budget == 0 or len(conn.outbuf) >= self.max_output:
                self._ready[conn.fd] = conn   # more next turn (or pause, after the flush)
                break
            head = conn.head
            if not inbuf:
                break
            try:
                if head is None:
                    head = parse_head(inbuf, limits)
                    if head is None:
                        break
            except ParseError as exc:
                conn.outbuf += serialize(error_response(exc.status), False)
                conn.close_after = True
                break
            total = head.size + head.length
            if len(inbuf) < total:
                if conn.head is None:
                    conn.head = head
                    conn.body_start = time.monotonic()
                    if head.version == "HTTP/1.1" and \
                            head.headers.get("expect", "").lower() == "100-continue":
                        conn.outbuf += _CONTINUE
                break
            req = head.request(inbuf)
            del inbuf[:total]
            conn.head = None
            conn.request_start = 0.0
            budget -= 1
            self.stats["requests"] += 1
            keep_alive = req.keep_alive and not self._draining
            if self._workers:
                self._dispatch(conn, req, keep_alive)
            else:
                conn.outbuf += respond(self.app, req, keep_alive)
                if not keep_alive:
                    conn.close_after = True
        if conn.more and not conn.busy and not conn.close_after and not conn.paused:
            self._ready[conn.fd] = conn   # stopped reading early: read again next turn
        if inbuf:
            if not conn.request_start:
                conn.request_start = time.monotonic()
            if conn.peer_done and not conn.more and not conn.busy and not conn.close_after \
                    and conn.fd not in self._ready:
                # The client shut down with an incomplete request: answer and close.
                conn.outbuf += serialize(error_response(400), False)
                conn.close_after = True
        self._flush(conn)

    def _dispatch(self, conn: Connection, req: Request, keep_alive: bool) -> None:
        try:
            self._jobs.put_nowait((conn.fd, conn.gen, req))
        except _queue.Full:
            self.stats["shed_503"] += 1
            conn.outbuf += serialize(error_response(503), keep_alive)
            if not keep_alive:
                conn.close_after = True
            return
        conn.busy = True   # frozen until the completion: no reads, no eviction

    def _flush(self, conn: Connection) -> None:
        out = conn.outbuf
        if out and not conn.writing:
            try:
                sent = conn.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            if sent:
                del out[:sent]
                conn.last_active = time.monotonic()   # a progressing download is activity
            if out:
                conn.writing = True
                self._changes.append(Change(conn.fd, EVFILT_WRITE, EV_ADD | EV_ONESHOT))
        if len(out) >= self.max_output:
            if not conn.paused:
                # Backpressure: the client is not reading its answers, so
                # its requests are not read either until they drain.
                conn.paused = True
                self.stats["paused"] += 1
                self._ready.pop(conn.fd, None)
                self._changes.append(Change(conn.fd, EVFILT_READ, EV_DISABLE))
            return
        if conn.paused and len(out) <= self.max_output // 2:
            conn.paused = False
            self._changes.append(Change(conn.fd, EVFILT_READ, EV_ENABLE))
            self._ready[conn.fd] = conn
        if not out and not conn.busy and (
                conn.close_after or (conn.peer_done and not conn.inbuf and not conn.more)):
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
        self._ready.pop(conn.fd, None)
        # Pending changes for this fd would hit a closed (or reused) number,
        # so they are dropped.
        if self._changes:
            self._changes = [c for c in self._changes if c.ident != conn.fd
                             or c.filter in (EVFILT_USER, EVFILT_TIMER)]
        if _NODATA:
            # A NOTE_NODATA read registration takes epoll's contract: it ends
            # at close() only if no other descriptor (a dup(), a fork() child
            # of a prefork server) still holds the socket, so delete it
            # first.  One kevent() call per connection, where the flag saves
            # an ioctl on every event.  (The WRITE registration has no such
            # flag: the backend checks its number on every event.)  A read
            # registration never applied fails with ENOENT, ignored.  Where
            # the flag is 0 (BSD), close() ends every registration.
            self.queue.apply((Change(conn.fd, EVFILT_READ, EV_DELETE),), raise_errors=False)
        conn.sock.close()
        conn.inbuf = bytearray()    # freed now, whoever still holds the connection
        conn.outbuf = bytearray()
        conn.head = None

    def _timeout(self, conn: Connection) -> None:
        self.stats["timed_out"] += 1
        try:
            conn.sock.send(serialize(error_response(408), False))
        except OSError:
            pass
        self._close(conn)

    def _send_progress(self, conn: Connection, now: float) -> bool:
        """Whether the client still reads: WRITE events come only once a
        good part of the socket buffer is free, so a slow but steady download
        can look idle between them.  Any room the kernel has now is progress."""
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False
        if sent:
            del conn.outbuf[:sent]
            conn.last_active = now
        return sent > 0

    def _sweep(self) -> None:
        """Deadlines: a header section within header_timeout, a body at
        min_body_rate, a stalled download or an idle connection after
        idle_timeout.  A connection waiting for its handler is exempt."""
        now = time.monotonic()
        idle_deadline = now - self.idle_timeout
        for conn in list(self.conns.values()):
            if conn.busy:
                continue
            if conn.outbuf:
                if conn.last_active < idle_deadline and not self._send_progress(conn, now):
                    self.stats["idle_closed"] += 1    # the client stopped reading
                    self._close(conn)
            elif conn.head is not None:
                elapsed = now - conn.body_start
                got = len(conn.inbuf) - conn.head.size
                if elapsed > self.header_timeout and got < self.min_body_rate * elapsed:
                    self._timeout(conn)
            elif conn.inbuf:
                if conn.request_start and now - conn.request_start > self.header_timeout:
                    self._timeout(conn)
            elif conn.last_active < idle_deadline:
                self.stats["idle_closed"] += 1
                self._close(conn)

    # -- the worker pool ------------------------------------------------------
    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fd, gen, req = job
            try:
                conn = self.conns.get(fd)
                if conn is None or conn.gen != gen:
                    # The client left while its job waited: skip the work.
                    with self._lock:
                        self.stats["jobs_skipped"] += 1
                    continue
                resp = run_handler(self.app, req)
                keep_alive = req.keep_alive and not self._draining
                try:
                    data = serialize(resp, keep_alive)
                except Exception:   # noqa: BLE001 - a bad Response is a 500
                    _log_failure(f"response for {req.method} {req.path}")
                    data = serialize(error_response(500), keep_alive)
            except Exception:   # noqa: BLE001 - a worker thread never dies
                keep_alive = False
                data = serialize(error_response(500), False)
            with self._lock:
                wake = not self._completions
                self._completions.append((fd, gen, data, keep_alive))
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
            if not keep_alive or self._draining:
                conn.close_after = True
            # Read what arrived while frozen (its edge has passed), then
            # answer pipelined requests.
            try:
                self._on_readable(conn, 0, 0)
            except Exception:   # noqa: BLE001
                self._internal_error(fd)


# ---------------------------------------------------------------------------
# Command line.


def run(app: Optional[Handler] = None, host: str = "127.0.0.1", port: int = 8080,
        **options: Any) -> int:
    """Serve ``app`` until SIGINT or SIGTERM, as a program: a startup line
    on stderr, a graceful drain on either signal, and an exit status (0; 1
    with one line on stderr when the address cannot be bound)."""
    options.setdefault("handle_signals", True)
    try:
        server = HTTPServer(app, host, port, **options)
    except OSError as exc:
        print(f"http server: cannot listen on {host}:{port}: {exc.strerror or exc}",
              file=sys.stderr, flush=True)
        return 1
    server.serve_forever()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kqueue_py.examples.http",
                                 description="HTTP/1.1 keep-alive server on kqueue_py")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--workers", type=int, default=0,
                    help="handler threads (0: handlers run inline on the loop)")
    ap.add_argument("--backlog", type=int, default=1024, help="worker backlog before 503")
    ap.add_argument("--idle-timeout", type=float, default=30.0,
                    help="seconds a keep-alive connection may idle, or a download stall (30)")
    ap.add_argument("--header-timeout", type=float, default=10.0,
                    help="seconds for a request's header section to arrive (10)")
    ap.add_argument("--min-body-rate", type=float, default=1024.0,
                    help="bytes/s a body must average once header-timeout has passed (1024)")
    ap.add_argument("--max-output", type=int, default=1 << 20,
                    help="unsent bytes at which a connection stops being read (1 MiB)")
    ap.add_argument("--accept-backoff", type=float, default=0.1,
                    help="seconds the listener rests after accept() fails with EMFILE (0.1)")
    ap.add_argument("--grace", type=float, default=10.0,
                    help="seconds to finish requests in flight on SIGTERM/SIGINT (10)")
    args = ap.parse_args(argv)
    return run(host=args.host, port=args.port, workers=args.workers, backlog=args.backlog,
               idle_timeout=args.idle_timeout, header_timeout=args.header_timeout,
               min_body_rate=args.min_body_rate, max_output=args.max_output,
               accept_backoff=args.accept_backoff, grace=args.grace)


if __name__ == "__main__":
    raise SystemExit(main())
