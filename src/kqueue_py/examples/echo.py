"""An echo server on kqueue_py: ``python -m kqueue_py.examples.echo --port N``.

Non-blocking sockets with edge-triggered reads (``EV_CLEAR``): on each READ
event the connection is read until ``EAGAIN`` -- but at most ``READ_BUDGET``
bytes per loop turn, so one client streaming cannot starve the others (a
connection stopped early waits on a ready list for its next turn).  What
cannot be written at once waits for a WRITE event; once a connection's
unsent bytes pass ``max_pending`` its READ registration is disabled until
they drain (backpressure: a client that sends without reading costs a
bounded amount of memory).  When ``accept()`` fails with EMFILE the
listener rests for ``accept_backoff`` seconds.  Binds 127.0.0.1 unless told
otherwise; SIGINT and SIGTERM stop it with exit status 0.
"""
from __future__ import annotations

import argparse
import errno
import signal
import socket
import sys
from typing import Any, Optional

from .. import (
    EV_ADD,
    EV_CLEAR,
    EV_DISABLE,
    EV_ENABLE,
    EV_EOF,
    EV_ONESHOT,
    EVFILT_READ,
    EVFILT_TIMER,
    EVFILT_USER,
    EVFILT_WRITE,
    KQueue,
)
from ..queue import Change
from ..raw import lib

_STOP = 1    # EVFILT_USER ident that stops the loop
_RETRY = 1   # EVFILT_TIMER ident (one-shot): accept again after EMFILE
RECV_SIZE = 65536
READ_BUDGET = 256 << 10   # bytes read from one connection per loop turn


class _Conn:
    __slots__ = ("sock", "fd", "out", "paused", "more", "peer_done", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.out = bytearray()     # unsent output
        self.paused = False        # READ disabled until ``out`` drains
        self.more = True           # the socket may hold unread bytes
        self.peer_done = False     # the client shut down: close once flushed
        self.writing = False       # a WRITE registration is pending


class EchoServer:
    """Echo every byte back.  ``serve_forever()`` runs the loop; ``stop()`` is
    safe from any thread (it triggers a user event)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, backlog: int = 1024, *,
                 max_pending: int = 1 << 20, accept_backoff: float = 0.1) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be positive, not {max_pending!r}")
        if not accept_backoff > 0:
            raise ValueError(f"accept_backoff must be positive, not {accept_backoff!r}")
        self.max_pending = max_pending
        self.accept_backoff = accept_backoff
        self.listener = socket.create_server((host, port), backlog=backlog)
        self.listener.setblocking(False)
        self.queue = KQueue(max_events=256)
        self.address = self.listener.getsockname()
        self.conns: dict[int, _Conn] = {}
        self._ready: dict[int, _Conn] = {}    # connections stopped early
        self._changes: list[Change] = []
        self.stats = {"accepted": 0, "paused": 0, "accept_backoff": 0}
        self.queue.add_reader(self.listener)
        self.queue.add_user(_STOP)

    def stop(self) -> None:
        try:
            self.queue.trigger(_STOP)
        except (OSError, ValueError):
            pass   # already stopped

    def serve_forever(self) -> None:
        lfd = self.listener.fileno()
        conns = self.conns
        try:
            while True:
                if self._changes:
                    changes, self._changes = self._changes, []
                    self.queue.apply(changes, raise_errors=False)
                for ident, filt, flags, fflags, _, _ in self.queue.wait_tuples(
                        0 if self._ready else None):
                    if filt == EVFILT_READ:
                        if ident == lfd:
                            self._accept()
                            continue
                        conn = conns.get(ident)
                        if conn is None:
                            continue
                        if flags & EV_EOF:
                            if not fflags:
                                # kqueue(2) puts a pending socket error in
                                # fflags only where the system can read it
                                # without clearing it (not on Linux): ask the
                                # socket itself, once, at EOF.
                                fflags = conn.sock.getsockopt(socket.SOL_SOCKET,
                                                              socket.SO_ERROR)
                            if fflags:
                                self._close(conn)   # a reset: nothing to echo
                                continue
                            conn.peer_done = True
                        conn.more = True
                        self._on_readable(conn)
                    elif filt == EVFILT_WRITE:
                        conn = conns.get(ident)
                        if conn is not None:
                            conn.writing = False
                            self._flush(conn)
                    elif filt == EVFILT_TIMER:
                        self._changes.append(Change(lfd, EVFILT_READ, EV_ENABLE))
                    elif filt == EVFILT_USER:
                        return
                conn = None   # no reference keeps a closed connection's buffer alive
                if self._ready:
                    ready, self._ready = self._ready, {}
                    for conn in ready.values():
                        if conns.get(conn.fd) is conn:
                            self._on_readable(conn)
                    ready = {}
                    conn = None
        finally:
            self.close()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.sock.close()
        self.conns.clear()
        self.listener.close()
        self.queue.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                # EMFILE and friends: the level-triggered listener would fire
                # again at once, so it rests for accept_backoff seconds.
                self.stats["accept_backoff"] += 1
                self._changes.append(Change(self.listener.fileno(), EVFILT_READ, EV_DISABLE))
                self._changes.append(Change(_RETRY, EVFILT_TIMER, EV_ADD | EV_ONESHOT,
                                            lib.NOTE_NSECONDS, int(self.accept_backoff * 1e9)))
                return
            sock.setblocking(False)
            conn = _Conn(sock)
            self.conns[conn.fd] = conn
            self.stats["accepted"] += 1
            self._changes.append(Change(conn.fd, EVFILT_READ, EV_ADD | EV_CLEAR))

    def _on_readable(self, conn: _Conn) -> None:
        # Edge-triggered: read until the socket is dry (a short read means
        # dry: new bytes bring a new event), but at most READ_BUDGET bytes
        # per turn and not while the output is backed up.
        if conn.paused or not conn.more:
            return
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
                conn.more = False
                conn.peer_done = True
                break
            self._send(conn, chunk)
            if conn.fd not in self.conns or conn.paused:
                return
            if len(chunk) < RECV_SIZE:
                conn.more = False
                break
            budget -= len(chunk)
            if budget <= 0:
                self._ready[conn.fd] = conn   # the rest next turn
                break
        if conn.peer_done and not conn.out and not conn.more:
            self._close(conn)

    def _send(self, conn: _Conn, data: bytes) -> None:
        if not conn.out:
            try:
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]  # type: ignore[assignment]
        conn.out += data   # behind what already waits: keep order
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        out = conn.out
        if out and not conn.writing:
            try:
                sent = conn.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            del out[:sent]          # no copy of the rest (bytearray drops a prefix in place)
            if out:
                conn.writing = True
                self._changes.append(Change(conn.fd, EVFILT_WRITE, EV_ADD | EV_ONESHOT))
        if len(out) >= self.max_pending:
            if not conn.paused:
                conn.paused = True
                self.stats["paused"] += 1
                self._ready.pop(conn.fd, None)
                self._changes.append(Change(conn.fd, EVFILT_READ, EV_DISABLE))
            return
        if conn.paused and len(out) <= self.max_pending // 2:
            conn.paused = False
            self._changes.append(Change(conn.fd, EVFILT_READ, EV_ENABLE))
            self._ready[conn.fd] = conn
        if conn.peer_done and not out and not conn.more:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
        self._ready.pop(conn.fd, None)
        if self._changes:
            self._changes = [c for c in self._changes if c.ident != conn.fd
                             or c.filter in (EVFILT_USER, EVFILT_TIMER)]
        conn.sock.close()   # closing removes its registrations
        conn.out = bytearray()   # freed now


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kqueue_py.examples.echo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--max-pending", type=int, default=1 << 20,
                    help="unsent bytes at which a connection stops being read (1 MiB)")
    ap.add_argument("--accept-backoff", type=float, default=0.1,
                    help="seconds the listener rests after accept() fails with EMFILE (0.1)")
    args = ap.parse_args(argv)
    try:
        server = EchoServer(args.host, args.port, max_pending=args.max_pending,
                            accept_backoff=args.accept_backoff)
    except OSError as exc:
        print(f"echo server: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr, flush=True)
        return 1
    stop: Any = lambda *_: server.stop()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"echo server on {server.address[0]}:{server.address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()
    print("echo server stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
