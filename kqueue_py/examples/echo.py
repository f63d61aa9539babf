"""An echo server on kqueue_py: ``python -m kqueue_py.examples.echo --port N``.

Non-blocking sockets with edge-triggered reads (``EV_CLEAR``): on each READ
event the connection is read until ``EAGAIN``; what cannot be written at once
waits for a WRITE event.  Binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import argparse
import errno
import signal
import socket
import sys
from typing import Optional

from .. import EV_ADD, EV_CLEAR, EV_EOF, EV_ONESHOT, EVFILT_READ, EVFILT_USER, EVFILT_WRITE, KQueue
from ..queue import Change

_STOP = 1   # EVFILT_USER ident that stops the loop


class EchoServer:
    """Echo every byte back.  ``serve_forever()`` runs the loop; ``stop()`` is
    safe from any thread (it triggers a user event)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, backlog: int = 1024) -> None:
        self.queue = KQueue(max_events=256)
        self.listener = socket.create_server((host, port), backlog=backlog)
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        self.conns: dict[int, socket.socket] = {}
        self.pending: dict[int, bytearray] = {}   # unsent output, by fd
        self.draining: set[int] = set()           # peer done: close once flushed
        self.queue.add_reader(self.listener)
        self.queue.add_user(_STOP)

    def stop(self) -> None:
        self.queue.trigger(_STOP)

    def serve_forever(self) -> None:
        lfd = self.listener.fileno()
        try:
            while True:
                for ident, filt, flags, _, data, _ in self.queue.wait_tuples():
                    if filt == EVFILT_READ:
                        if ident == lfd:
                            self._accept(data)
                        else:
                            self._on_readable(ident, data, flags & EV_EOF)
                    elif filt == EVFILT_WRITE:
                        self._flush(ident)
                    elif filt == EVFILT_USER:
                        return
        finally:
            self.close()

    def close(self) -> None:
        for sock in self.conns.values():
            sock.close()
        self.conns.clear()
        self.listener.close()
        self.queue.close()

    def _accept(self, backlog: int) -> None:
        changes = []
        for _ in range(max(backlog, 1)):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:   # EMFILE and friends: try again later
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    break
                raise
            sock.setblocking(False)
            self.conns[sock.fileno()] = sock
            changes.append(Change(sock.fileno(), EVFILT_READ, EV_ADD | EV_CLEAR))
        if changes:
            self.queue.apply(changes)

    def _on_readable(self, fd: int, available: int, eof: int) -> None:
        sock = self.conns.get(fd)
        if sock is None:
            return
        # Edge-triggered: read until the socket is dry.  kqueue's data says
        # how much is there, and a short read means dry (new bytes bring a
        # new event), which saves the recv() that would fail with EAGAIN.
        want = min(max(available, 4096), 1 << 20)
        while True:
            try:
                chunk = sock.recv(want)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(fd)
                return
            if not chunk:
                eof = True
                break
            self._send(fd, chunk)
            if fd not in self.conns:
                return
            if len(chunk) < want:
                break
        if eof:
            if fd in self.pending:
                self.draining.add(fd)
            else:
                self._close(fd)

    def _send(self, fd: int, data: bytes) -> None:
        out = self.pending.get(fd)
        if out is not None:          # already waiting for room: keep order
            out += data
            return
        try:
            sent = self.conns[fd].send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(fd)
            return
        if sent < len(data):
            self.pending[fd] = bytearray(data[sent:])
            self.queue.apply([Change(fd, EVFILT_WRITE, EV_ADD | EV_ONESHOT)])

    def _flush(self, fd: int) -> None:
        out = self.pending.pop(fd, None)
        if out is not None and fd in self.conns:
            self._send(fd, bytes(out))
        if fd in self.draining and fd not in self.pending:
            self._close(fd)

    def _close(self, fd: int) -> None:
        self.pending.pop(fd, None)
        self.draining.discard(fd)
        sock = self.conns.pop(fd, None)
        if sock is not None:
            sock.close()   # closing removes its registrations


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kqueue_py.examples.echo", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7000)
    args = ap.parse_args(argv)
    server = EchoServer(args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    print(f"echo server on {server.address[0]}:{server.address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
