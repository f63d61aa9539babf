"""An echo server on kqueue_py: ``python -m kqueue_py.examples.echo --port N``.

The shape of a kqueue server, short enough to read first:

* the listener and each connection have a level-triggered ``EVFILT_READ``
  registration, and each READ event gets one ``recv()``: every ready
  connection is served once per loop turn, so a client that streams
  cannot starve the others;
* what cannot be sent at once waits for a one-shot ``EVFILT_WRITE``;
* backpressure: once a connection's unsent bytes reach ``max_pending``,
  its READ registration is disabled (``EV_DISABLE``) until they drain
  below half, so a client that sends without reading costs bounded memory;
* when ``accept()`` fails with EMFILE the listener is disabled and a
  one-shot ``EVFILT_TIMER`` enables it again ``accept_backoff`` s later;
* ``stop()`` triggers an ``EVFILT_USER`` event (safe from any thread);
  SIGINT and SIGTERM are counted in the queue (``EVFILT_SIGNAL``) and
  stop it too, and the program exits with status 0.

The HTTP example (``kqueue_py.examples.http``) runs the same loop
edge-triggered, with read budgets, deadlines, a worker pool and a drain.
Only names that ``kqueue_py`` exports are used: a copy of this file runs
as it is.
"""
from __future__ import annotations

import argparse
import errno
import signal
import socket
import sys
from typing import Any, Optional

from kqueue_py import (
    EV_ADD,
    EV_DISABLE,
    EV_ENABLE,
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

_STOP = 1    # EVFILT_USER ident that stops the loop
_RETRY = 1   # EVFILT_TIMER ident (one-shot): accept again after EMFILE
RECV_SIZE = 65536


class _Conn:
    __slots__ = ("sock", "out", "paused", "eof")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()     # unsent output
        self.paused = False        # READ disabled until ``out`` drains
        self.eof = False           # the client shut down: close once flushed


class EchoServer:
    """Echo every byte back.  ``serve_forever()`` runs the loop; ``stop()`` is
    safe from any thread.  ``backlog`` is the listen backlog."""

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
        self.address = self.listener.getsockname()
        self.queue = KQueue(max_events=256)
        self.conns: dict[int, _Conn] = {}
        self._changes: list[Change] = []     # applied at the next wait
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
        try:
            while True:
                changes, self._changes = self._changes, []
                self.queue.apply(changes, raise_errors=False)
                for ident, filt, _, _, _, _ in self.queue.wait_tuples():
                    if filt == EVFILT_USER or filt == EVFILT_SIGNAL:
                        return
                    if filt == EVFILT_TIMER:
                        self._changes.append(Change(lfd, EVFILT_READ, EV_ENABLE))
                    elif ident == lfd:
                        self._accept()
                    elif ident in self.conns:
                        if filt == EVFILT_READ:
                            self._read(ident, self.conns[ident])
                        else:
                            self._flush(ident, self.conns[ident])
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
                                            NOTE_NSECONDS, int(self.accept_backoff * 1e9)))
                return
            sock.setblocking(False)
            self.conns[sock.fileno()] = _Conn(sock)
            self.stats["accepted"] += 1
            self._changes.append(Change(sock.fileno(), EVFILT_READ, EV_ADD))

    def _read(self, fd: int, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(fd, conn)      # a reset: nothing to echo
            return
        if not data:
            conn.eof = True            # level-triggered EOF would fire again: stop reading
            self._changes.append(Change(fd, EVFILT_READ, EV_DISABLE))
        conn.out += data
        self._flush(fd, conn)

    def _flush(self, fd: int, conn: _Conn) -> None:
        out = conn.out
        if out:
            try:
                sent = conn.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(fd, conn)
                return
            del out[:sent]             # bytearray drops a prefix in place
        if out:
            self._changes.append(Change(fd, EVFILT_WRITE, EV_ADD | EV_ONESHOT))
            if len(out) >= self.max_pending and not conn.paused:
                conn.paused = True     # backpressure: stop reading this client
                self.stats["paused"] += 1
                self._changes.append(Change(fd, EVFILT_READ, EV_DISABLE))
        elif conn.eof:
            self._close(fd, conn)
            return
        if conn.paused and not conn.eof and len(out) <= self.max_pending // 2:
            conn.paused = False
            self._changes.append(Change(fd, EVFILT_READ, EV_ENABLE))

    def _close(self, fd: int, conn: _Conn) -> None:
        del self.conns[fd]
        # Changes queued for this number would hit a closed (or reused) one.
        self._changes = [c for c in self._changes if c.ident != fd or c.filter == EVFILT_TIMER]
        conn.sock.close()              # closing removes its registrations


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kqueue_py.examples.echo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--backlog", type=int, default=1024, help="listen backlog (1024)")
    ap.add_argument("--max-pending", type=int, default=1 << 20,
                    help="unsent bytes at which a connection stops being read (1 MiB)")
    ap.add_argument("--accept-backoff", type=float, default=0.1,
                    help="seconds the listener rests after accept() fails with EMFILE (0.1)")
    args = ap.parse_args(argv)
    try:
        server = EchoServer(args.host, args.port, args.backlog, max_pending=args.max_pending,
                            accept_backoff=args.accept_backoff)
    except OSError as exc:
        print(f"echo server: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr, flush=True)
        return 1
    stop: Any = lambda *_: server.stop()  # noqa: E731
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Counted in the queue, as on BSD (the default action ignored): a
        # signal that comes just before the loop blocks wakes it all the
        # same, where a Python handler would wait for the next event to
        # run.  A backend without EVFILT_SIGNAL gets the handler.
        try:
            signal.signal(signum, signal.SIG_IGN)
            server.queue.add_signal(signum)
        except OSError:
            signal.signal(signum, stop)
    print(f"echo server on {server.address[0]}:{server.address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()
    print("echo server stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
