"""Runnable servers built on kqueue_py, meant to be read and copied.

* ``python -m kqueue_py.examples.echo --port N``  — an echo server.
* ``python -m kqueue_py.examples.http --port N [--workers N]`` — an HTTP/1.1
  keep-alive server: a loop and worker processes over a protocol module
  that never touches a socket.
"""
