"""An HTTP/1.1 keep-alive server on kqueue_py, in the shape of the sx
language's ``std.http``: ``python -m kqueue_py.examples.http --port N [--workers N]``.

This module is the event loop; the protocol (parsing, limits, chunked
bodies, serialization, routing) is ``kqueue_py.examples.http_protocol``,
which never touches a socket.  Every name used from kqueue_py is one the
package exports, so a copy of this file runs as it is.

* Keep-alive and pipelining (answers in order); ``Expect: 100-continue`` is
  answered with ``100 Continue`` once the header section passes the limits.
* ``workers=0`` (the default) runs handlers inline on the loop thread.
  ``workers=N`` hands each parsed request to a pool of N threads: the
  connection is in the HANDLER phase while its handler runs (it is neither
  read nor timed out; bytes that arrive wait in the socket), completions are
  queued under a lock and wake the loop through ``EVFILT_USER``; more than
  ``max_queued`` waiting requests shed with 503.  A job or a completion for a
  connection closed meanwhile is dropped (generation check: fd numbers are
  reused, generations are not).
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
import enum
import errno
import itertools
import queue as _queue
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from kqueue_py import (
    CONSTANTS,
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
    NOTE_NSECONDS,
    Change,
    KQueue,
)
from kqueue_py.examples.http_protocol import (
    CONTINUE,
    ChunkedBody,
    Handler,
    Head,
    Limits,
    ParseError,
    Request,
    Response,
    Router,
    default_app,
    error_bytes,
    error_response,
    log_failure,
    parse_head,
    respond,
    serialize,
)

__all__ = ["HTTPServer", "ServerConfig", "Phase", "Connection", "WorkerPool", "run", "main",
           # the protocol, re-exported for handlers written against this module
           "Request", "Response", "Router", "Limits", "ParseError", "default_app"]

# NOTE_NODATA exists on the Linux backend only (0: not available).
_NODATA = CONSTANTS.get("NOTE_NODATA", 0)
_WAKE = 1       # EVFILT_USER: worker completions are queued
_STOP = 2       # EVFILT_USER: stop() was called
_SWEEP = 1      # EVFILT_TIMER: deadlines and idle sweep
_RETRY = 2      # EVFILT_TIMER (one-shot): accept again after EMFILE

RECV_SIZE = 65536
READ_BUDGET = 256 << 10    # bytes read from one connection per loop turn
REQUEST_BUDGET = 64        # requests answered for one connection per loop turn


@dataclass(frozen=True)
class ServerConfig:
    """What :class:`HTTPServer` bounds, with the command line's defaults."""

    workers: int = 0                 # handler threads; 0: handlers run inline on the loop
    max_queued: int = 1024           # requests waiting for a worker; beyond it, 503
    backlog: int = 1024              # the listen backlog (as in the echo example)
    limits: Limits = field(default_factory=Limits)
    idle_timeout: float = 30.0       # keep-alive idle, or a response making no progress
    header_timeout: float = 10.0     # from a request's first byte to its blank line
    min_body_rate: float = 1024.0    # bytes/s a body averages once header_timeout has passed
    max_output: int = 1 << 20        # unsent bytes at which a connection stops being read
    accept_backoff: float = 0.1      # the listener's rest after accept() fails with EMFILE
    grace: float = 10.0              # seconds a drain waits for requests in flight

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "header_timeout", "accept_backoff", "grace"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        if not self.min_body_rate >= 0:
            raise ValueError(f"min_body_rate must be non-negative, not {self.min_body_rate!r}")
        for name in ("max_output", "max_queued"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be positive, not {value!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be non-negative, not {self.workers!r}")
        if self.backlog < 0:
            raise ValueError(f"backlog must be non-negative, not {self.backlog!r}")


class Phase(enum.Enum):
    """Where a connection is in its request/response cycle; each phase has
    one deadline (see ``HTTPServer._sweep``)."""

    IDLE = "idle"          # nothing of a next request yet (keep-alive wait): idle_timeout
    HEAD = "head"          # part of a request's head is in: header_timeout from its first byte
    BODY = "body"          # the head is parsed, the body arriving: min_body_rate
    HANDLER = "handler"    # a worker holds its request: no reads, no deadline
    CLOSING = "closing"    # a last response is queued: flush it, then close


IDLE, HEAD, BODY, HANDLER, CLOSING = (Phase.IDLE, Phase.HEAD, Phase.BODY, Phase.HANDLER,
                                      Phase.CLOSING)


class Connection:
    """One client.  ``phase`` and ``since`` (when that phase began) say
    what it waits for; the four flags below mirror the socket and the
    kqueue registrations, not the protocol."""

    __slots__ = ("sock", "fd", "gen", "inbuf", "outbuf", "phase", "since", "last_sent",
                 "head", "chunks", "more", "eof", "writing", "paused")

    def __init__(self, sock: socket.socket, gen: int, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.gen = gen
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.phase = IDLE
        self.since = now           # when the phase began
        self.last_sent = now       # last progress of the output (a download is activity)
        self.head: Optional[Head] = None          # BODY: the parsed head
        self.chunks: Optional[ChunkedBody] = None  # BODY: the chunked decoder, if chunked
        self.more = True           # the socket may hold unread bytes (READ is edge-triggered)
        self.eof = False           # the client shut down its side
        self.writing = False       # a one-shot WRITE registration is pending
        self.paused = False        # too much unsent output: READ disabled


class WorkerPool:
    """Threads that run handlers off the loop.

    The loop submits a request with its connection's fd and generation; a
    worker skips it if ``alive(fd, gen)`` says the client has left (counted
    in ``skipped``), else runs the handler and serializes the answer (a
    failure in either is a 500), appends ``(fd, gen, bytes, keep_alive)``
    to the completions and, if that list was empty, triggers the
    ``EVFILT_USER`` event ``wake`` on the loop's queue (one trigger covers
    any number of completions), and the loop takes them."""

    def __init__(self, app: Handler, workers: int, max_queued: int, queue: KQueue, wake: int,
                 alive: Callable[[int, int], bool], draining: Callable[[], bool]) -> None:
        self.app = app
        self.size = workers
        self.skipped = 0           # jobs of clients that had left
        self._queue = queue
        self._wake = wake
        self._alive = alive
        self._draining = draining
        self._lock = threading.Lock()
        self._done: list[tuple[int, int, bytes, bool]] = []
        self._jobs: _queue.Queue[Optional[tuple[int, int, Request]]] = \
            _queue.Queue(maxsize=max_queued)
        self._threads = [threading.Thread(target=self._run, name=f"http-worker-{i}", daemon=True)
                         for i in range(workers)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def submit(self, fd: int, gen: int, req: Request) -> bool:
        """Queue a request; False when ``max_queued`` are already waiting."""
        try:
            self._jobs.put_nowait((fd, gen, req))
        except _queue.Full:
            return False
        return True

    def take(self) -> list[tuple[int, int, bytes, bool]]:
        """The completions so far: ``(fd, gen, response bytes, keep_alive)``."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def discard(self) -> None:
        """Drop the requests not started yet."""
        while True:
            try:
                self._jobs.get_nowait()
            except _queue.Empty:
                return

    def stop(self, timeout: float) -> None:
        """End the threads; a handler still running is waited for
        ``timeout`` seconds at most (the threads are daemons)."""
        self.discard()
        for _ in self._threads:
            try:
                self._jobs.put_nowait(None)
            except _queue.Full:
                break
        end = time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=max(0.0, end - time.monotonic()))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fd, gen, req = job
            try:
                if not self._alive(fd, gen):
                    # The client left while its job waited: skip the work.
                    with self._lock:
                        self.skipped += 1
                    continue
                keep_alive = req.keep_alive and not self._draining()
                data = respond(self.app, req, keep_alive)
            except Exception:   # noqa: BLE001 - a worker thread never dies
                keep_alive = False
                data = serialize(error_response(500), False, req.method == "HEAD")
            with self._lock:
                wake = not self._done
                self._done.append((fd, gen, data, keep_alive))
            if wake:
                try:
                    self._queue.trigger(self._wake)
                except (OSError, ValueError):
                    return   # the server is shutting down


class HTTPServer:
    """The kqueue_py HTTP/1.1 server.  ``serve_forever()`` runs the loop on
    the calling thread; ``stop()`` is safe from any thread.

    ``HTTPServer(app, host, port, config)`` with a :class:`ServerConfig`, or
    its fields as keywords (``HTTPServer(app, port=8080, workers=4)``).
    On the main thread (``handle_signals=None``, the default) or with
    ``handle_signals=True``, ``serve_forever()`` announces itself on stderr
    and turns SIGINT and SIGTERM into a graceful drain and a normal return.
    """

    def __init__(self, app: Optional[Handler] = None, host: str = "127.0.0.1", port: int = 0,
                 config: Optional[ServerConfig] = None, *, handle_signals: Optional[bool] = None,
                 **options: Any) -> None:
        if config is None:
            config = ServerConfig(**options)
        elif options:
            raise TypeError(f"give a config or keyword options, not both: {sorted(options)}")
        self.config = config
        self.app: Handler = app if app is not None else default_app()
        self.limits = config.limits
        self.handle_signals = handle_signals
        self.listener = socket.create_server((host, port), backlog=config.backlog)
        self.listener.setblocking(False)
        self.queue = KQueue(max_events=512)
        self.address = self.listener.getsockname()
        self.conns: dict[int, Connection] = {}
        self._gens = itertools.count(1)
        self._changes: list[Change] = []
        self._ready: dict[int, Connection] = {}    # connections with work left over
        self._draining = False
        self.pool: Optional[WorkerPool] = None
        if config.workers:
            self.pool = WorkerPool(self.app, config.workers, config.max_queued, self.queue, _WAKE,
                                   self._alive, lambda: self._draining)
        self._deadline = 0.0
        self._listening = True
        self.stats = {"accepted": 0, "requests": 0, "shed_503": 0, "stale_dropped": 0,
                      "idle_closed": 0, "timed_out": 0, "paused": 0,
                      "accept_backoff": 0, "errors": 0, "drain_503": 0}
        self.queue.add_reader(self.listener)
        self.queue.add_user(_WAKE)
        self.queue.add_user(_STOP)
        tick = min(config.idle_timeout, config.header_timeout) / 2
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
                  f"(workers={self.config.workers})", file=sys.stderr, flush=True)
        if self.pool is not None:
            self.pool.start()
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
        self._deadline = time.monotonic() + self.config.grace
        self._stop_listening()
        for conn in list(self.conns.values()):
            # Idle, or no complete request head yet: nothing to finish.
            if not conn.outbuf and (conn.phase is IDLE or (
                    conn.phase is HEAD and conn.inbuf.find(b"\r\n\r\n") < 0)):
                self._close(conn)

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
        if self.pool is not None:
            self.pool.discard()
        for conn in list(self.conns.values()):
            if conn.phase is HANDLER:
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
        if self.pool is not None:
            self.pool.discard()
        for conn in list(self.conns.values()):
            self._close(conn)
        self._stop_listening()
        self.queue.close()
        if self.pool is not None:
            self.pool.stop(timeout=1.0)   # a handler still running is not waited for long

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
                self._changes.append(Change(_RETRY, EVFILT_TIMER, EV_ADD | EV_ONESHOT, NOTE_NSECONDS,
                                            int(self.config.accept_backoff * 1e9)))
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log_failure("accept")
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
        if eof:
            conn.eof = True
        phase = conn.phase
        if phase is HANDLER or phase is CLOSING:
            # Not read: what arrives waits in the socket (HANDLER: read when
            # the handler completes; CLOSING: never).
            return
        inbuf = conn.inbuf
        # Edge-triggered (EV_CLEAR): read until the socket is dry, but at most
        # READ_BUDGET bytes per turn, and not while the output is backed up or
        # the buffer already holds plenty.  A connection stopped early is put
        # on the ready list, which guarantees it a later turn.
        if conn.more and not conn.paused and (phase is BODY or len(inbuf) < READ_BUDGET + (
                self.limits.max_request_line + self.limits.max_header_bytes)):
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
                    conn.eof = True
                    conn.more = False
                    break
                inbuf += chunk
                if len(chunk) < RECV_SIZE:
                    conn.more = False   # a short read: dry, new bytes bring a new event
                    break
                budget -= len(chunk)
                if budget <= 0:
                    break
        self._process(conn)

    def _answered(self, conn: Connection, keep_alive: bool, now: float) -> None:
        """A response is queued: the next phase."""
        if not keep_alive:
            conn.phase = CLOSING
        else:
            conn.phase = HEAD if conn.inbuf else IDLE
        conn.since = now
        conn.last_sent = now   # the clock of a stalled response starts here

    def _process(self, conn: Connection) -> None:
        """Answer complete requests in the buffer (pipelining), in order, up
        to REQUEST_BUDGET per turn and while the output is below max_output."""
        inbuf = conn.inbuf
        budget = REQUEST_BUDGET
        limits = self.limits
        if inbuf and conn.phase is IDLE:
            conn.phase = HEAD      # the first bytes of a request
            conn.since = time.monotonic()
        while inbuf and (conn.phase is HEAD or conn.phase is BODY):
            if budget == 0 or len(conn.outbuf) >= self.config.max_output:
                self._ready[conn.fd] = conn   # more next turn (or pause, after the flush)
                break
            head = conn.head
            try:
                if head is None:
                    head = parse_head(inbuf, limits)
                    if head is None:
                        break
                if head.chunked:
                    chunks = conn.chunks or ChunkedBody(head.size, limits)
                    end = chunks.feed(inbuf)
                    body = None if end is None else bytes(chunks.body)
                else:
                    chunks = None
                    end = head.size + head.length
                    if len(inbuf) < end:
                        body = None
                    else:
                        body = bytes(inbuf[head.size:end]) if head.length else b""
            except ParseError as exc:
                conn.outbuf += error_bytes(exc, inbuf)
                self._answered(conn, False, time.monotonic())
                break
            if body is None or end is None:
                if conn.head is None:
                    conn.head = head
                    conn.chunks = chunks
                    conn.phase = BODY
                    conn.since = time.monotonic()
                    if head.expect_continue:
                        conn.outbuf += CONTINUE
                break
            del inbuf[:end]
            conn.head = None
            conn.chunks = None
            budget -= 1
            self.stats["requests"] += 1
            req = head.request(body)
            keep_alive = req.keep_alive and not self._draining
            if self.pool is not None:
                self._dispatch(self.pool, conn, req, keep_alive)
            else:
                conn.outbuf += respond(self.app, req, keep_alive)
                self._answered(conn, keep_alive, time.monotonic())
        phase = conn.phase
        if phase is HEAD or phase is BODY or phase is IDLE:
            if conn.more:
                if not conn.paused:
                    self._ready[conn.fd] = conn   # stopped reading early: read again next turn
            elif conn.eof and phase is not IDLE and conn.fd not in self._ready:
                # The client shut down with an incomplete request: answer and close.
                conn.outbuf += serialize(error_response(400), False)
                self._answered(conn, False, time.monotonic())
        self._flush(conn)

    def _dispatch(self, pool: WorkerPool, conn: Connection, req: Request, keep_alive: bool) -> None:
        if not pool.submit(conn.fd, conn.gen, req):
            self.stats["shed_503"] += 1
            conn.outbuf += serialize(error_response(503), keep_alive, req.method == "HEAD")
            self._answered(conn, keep_alive, time.monotonic())
            return
        conn.phase = HANDLER   # frozen until the completion: no reads, no deadline
        conn.since = time.monotonic()

    def _flush(self, conn: Connection) -> None:
        out = conn.outbuf
        max_output = self.config.max_output
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
                conn.last_sent = time.monotonic()   # a progressing download is activity
            if out:
                conn.writing = True
                self._changes.append(Change(conn.fd, EVFILT_WRITE, EV_ADD | EV_ONESHOT))
        if len(out) >= max_output:
            if not conn.paused:
                # Backpressure: the client is not reading its answers, so
                # its requests are not read either until they drain.
                conn.paused = True
                self.stats["paused"] += 1
                self._ready.pop(conn.fd, None)
                self._changes.append(Change(conn.fd, EVFILT_READ, EV_DISABLE))
            return
        if conn.paused and len(out) <= max_output // 2:
            conn.paused = False
            self._changes.append(Change(conn.fd, EVFILT_READ, EV_ENABLE))
            self._ready[conn.fd] = conn
        if not out and (conn.phase is CLOSING
                        or (conn.phase is IDLE and conn.eof and not conn.more)):
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
        conn.chunks = None
        conn.phase = CLOSING

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
        except OSError:
            return False
        if sent:
            del conn.outbuf[:sent]
            conn.last_sent = now
        return sent > 0

    def _sweep(self) -> None:
        """The deadline of each connection's phase: a header section within
        header_timeout, a body at min_body_rate, an idle connection or a
        response making no progress after idle_timeout.  A connection
        waiting for its handler has none."""
        now = time.monotonic()
        cfg = self.config
        idle_deadline = now - cfg.idle_timeout
        for conn in list(self.conns.values()):
            phase = conn.phase
            if phase is HANDLER:
                continue
            if conn.outbuf:
                if conn.last_sent < idle_deadline and not self._send_progress(conn, now):
                    self.stats["idle_closed"] += 1    # the client stopped reading
                    self._close(conn)
            elif phase is BODY:
                elapsed = now - conn.since
                got = len(conn.inbuf) - conn.head.size if conn.head is not None else 0
                if elapsed > cfg.header_timeout and got < cfg.min_body_rate * elapsed:
                    self._timeout(conn)
            elif phase is HEAD:
                if now - conn.since > cfg.header_timeout:
                    self._timeout(conn)
            elif phase is IDLE and max(conn.since, conn.last_sent) < idle_deadline:
                self.stats["idle_closed"] += 1
                self._close(conn)

    # -- the worker pool ------------------------------------------------------
    def _alive(self, fd: int, gen: int) -> bool:
        """Whether the connection a job came from is still there (any thread)."""
        conn = self.conns.get(fd)
        return conn is not None and conn.gen == gen

    def _on_completions(self) -> None:
        if self.pool is None:
            return
        done = self.pool.take()
        now = time.monotonic()
        for fd, gen, data, keep_alive in done:
            conn = self.conns.get(fd)
            if conn is None or conn.gen != gen:
                self.stats["stale_dropped"] += 1    # closed (and maybe reused) meanwhile
                continue
            conn.outbuf += data
            self._answered(conn, keep_alive and not self._draining, now)
            # Read what arrived while frozen (its edge has passed), then
            # answer pipelined requests.
            try:
                if conn.phase is CLOSING:
                    self._flush(conn)
                else:
                    self._on_readable(conn, 0, 0)
            except Exception:   # noqa: BLE001
                self._internal_error(fd)


# ---------------------------------------------------------------------------
# Command line.


def run(app: Optional[Handler] = None, host: str = "127.0.0.1", port: int = 8080,
        config: Optional[ServerConfig] = None, **options: Any) -> int:
    """Serve ``app`` until SIGINT or SIGTERM, as a program: a startup line
    on stderr, a graceful drain on either signal, and an exit status (0; 1
    with one line on stderr when the address cannot be bound).  ``options``
    are :class:`ServerConfig`'s fields, or ``handle_signals``."""
    options.setdefault("handle_signals", True)
    try:
        server = HTTPServer(app, host, port, config, **options)
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
    ap.add_argument("--max-queued", type=int, default=1024,
                    help="requests waiting for a worker before 503 (1024)")
    ap.add_argument("--backlog", type=int, default=1024, help="listen backlog (1024)")
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
    try:
        config = ServerConfig(
            workers=args.workers, max_queued=args.max_queued, backlog=args.backlog,
            idle_timeout=args.idle_timeout, header_timeout=args.header_timeout,
            min_body_rate=args.min_body_rate, max_output=args.max_output,
            accept_backoff=args.accept_backoff, grace=args.grace)
    except ValueError as exc:
        ap.error(str(exc))
    return run(host=args.host, port=args.port, config=config)


if __name__ == "__main__":
    raise SystemExit(main())
