"""The HTTP example as RFC 9110/9112 and strict parsers want it, run as a
program (inline and with ``--workers 2``), with h11 as the client-side
oracle for the framing of every response: no content on HEAD, 204 or 304,
the server's framing only, chunked request bodies, absolute-form targets,
list-valued Connection and Expect, the right status for the malformed,
a Date header."""
from __future__ import annotations

import email.utils
import socket
import time
from typing import Iterator

import pytest

from helpers import H11Client, Server, exchange, http_server

# An app with the default routes plus handlers that try to break the
# framing.  It imports only what kqueue_py.examples.http has always exported.
_APP = """
from kqueue_py.examples.http import HTTPServer, Response, default_app
app = default_app()
route = app.route
FORGED = b"HTTP/1.1 200 OK\\r\\nContent-Length: 6\\r\\n\\r\\nforged"

@route("GET", "/cl")
def cl(req): return Response(200, b"abc", headers=[("Content-Length", "0")])
@route("GET", "/te")
def te(req): return Response(200, b"abc", headers=[("Transfer-Encoding", "chunked")])
@route("GET", "/conn")
def conn(req): return Response(200, b"abc", headers=[("connection", "close")])
@route("GET", "/204")
def no_content(req): return Response(204)
@route("GET", "/204-body")
def no_content_body(req): return Response(204, FORGED)
@route("GET", "/304")
def not_modified(req): return Response(304, headers=[("ETag", '"x"')])
@route("GET", "/304-body")
def not_modified_body(req): return Response(304, FORGED)
@route("GET", "/info")
def info(req):
    return Response(200, ("%s|%s|%s|%s" % (req.method, req.path, req.query,
                                           getattr(req, "host", "?"))).encode())
HTTPServer(app, port=0, workers=WORKERS).serve_forever()
"""


@pytest.fixture(scope="module", params=[0, 2], ids=["inline", "workers"])
def srv(request) -> Iterator[Server]:
    with http_server(script=_APP.replace("WORKERS", str(request.param))) as s:
        yield s
    assert s.proc.returncode == 0, s.stderr()




def status_of(addr, raw: bytes) -> int:
    out = exchange(addr, raw)
    assert out.startswith(b"HTTP/1.1 "), out[:200]
    return int(out[9:12])


# --------------------------------------------------------------------------
# 1, 2. HEAD


def test_head_responses_carry_no_content(srv):
    with H11Client(srv.addr) as c:
        # Pipelined: any content after a HEAD response would be read by the
        # client as the start of the next response.
        c.send_raw(b"HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"HEAD /bytes?n=5000 HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = c.response("HEAD")
        assert (status, body) == (404, b"")
        status, headers, body = c.response("HEAD")
        assert (status, headers["content-length"], body) == (200, "5000", b"")
        assert c.response("GET")[::2] == (200, b"Hello from kqueue_py\n")


def test_head_is_served_wherever_get_is(srv):
    with H11Client(srv.addr) as c:
        c.send_request("GET", "/")
        _, get_headers, _ = c.response()
        c.send_request("HEAD", "/")
        status, headers, body = c.response()
        assert (status, body) == (200, b"")
        for name in ("content-length", "content-type", "connection"):
            assert headers[name] == get_headers[name]
        c.send_request("DELETE", "/")
        status, headers, _ = c.response()
        assert status == 405 and headers["allow"] == "GET, HEAD"


def test_refused_head_request_has_no_content(srv):
    # A parse error (no Host) on a HEAD: the 400 comes without its text.
    with H11Client(srv.addr) as c:
        c.send_raw(b"HEAD / HTTP/1.1\r\n\r\n")
        status, headers, body = c.response("HEAD")
        assert (status, headers["connection"], body) == (400, "close", b"")
        assert c.closed_by_peer()


# --------------------------------------------------------------------------
# 3. Framing headers from a handler


@pytest.mark.parametrize("path, name", [("/cl", "Content-Length"), ("/te", "Transfer-Encoding"),
                                        ("/conn", "connection")])
def test_handler_framing_headers_are_a_500_and_a_log_line(srv, path, name):
    with H11Client(srv.addr) as c:
        c.send_request("GET", path)
        status, headers, body = c.response()
        assert status == 500 and "transfer-encoding" not in headers
        assert headers["content-length"] == str(len(body))
        c.send_request("GET", "/")                    # the connection goes on
        assert c.response()[::2] == (200, b"Hello from kqueue_py\n")
    line = f"http: response for GET {path}: ValueError: header {name!r} is set by the server"
    assert srv.wait_stderr(line), srv.stderr()


# --------------------------------------------------------------------------
# 4. 204 and 304


@pytest.mark.parametrize("path", ["/204", "/304"])
def test_no_content_and_not_modified_have_no_content(srv, path):
    with H11Client(srv.addr) as c:
        c.send_raw(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n"
                   .encode())
        status, headers, body = c.response("GET")
        assert (status, body) == (int(path[1:]), b"")
        assert "content-length" not in headers and "transfer-encoding" not in headers
        assert c.response("GET")[::2] == (200, b"Hello from kqueue_py\n")


@pytest.mark.parametrize("path", ["/204-body", "/304-body"])
def test_a_body_on_204_or_304_is_refused_not_sent(srv, path):
    with H11Client(srv.addr) as c:
        c.send_raw(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n"
                   .encode())
        assert c.response("GET")[0] == 500
        assert c.response("GET")[::2] == (200, b"Hello from kqueue_py\n")   # not "forged"
    assert srv.wait_stderr(f"http: response for GET {path}: ValueError: a {path[1:4]} response "
                           "has no content"), srv.stderr()


# --------------------------------------------------------------------------
# 5. Chunked request bodies


def test_chunked_body_from_h11(srv):
    with H11Client(srv.addr) as c:
        c.send_request("POST", "/echo", chunks=[b"hello ", b"chunked ", b"world"])
        assert c.response()[::2] == (200, b"hello chunked world")
        c.send_request("POST", "/echo", chunks=[])                     # an empty body
        assert c.response()[::2] == (200, b"")


def test_chunked_body_extensions_trailers_and_pipelining(srv):
    raw = (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n"
           b"5;name=value;flag\r\nhello\r\n000A \t;x=\"q\"\r\n, chunked!\r\n"
           b"0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n"
           b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    for split in (len(raw), 60, 75, 111):          # whole, and cut inside the chunks
        with H11Client(srv.addr) as c:
            c.send_raw(raw[:split])
            time.sleep(0.02)
            c.send_raw(raw[split:])
            assert c.response("POST")[::2] == (200, b"hello, chunked!")
            assert c.response("GET")[::2] == (200, b"Hello from kqueue_py\n")


def test_chunked_body_over_the_limit_is_413_before_it_arrives(srv):
    with H11Client(srv.addr) as c:
        c.send_raw(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"100001\r\n")                  # 1 MiB + 1 announced, not sent
        status, headers, _ = c.response("POST")
        assert status == 413 and headers["connection"] == "close"
        assert c.closed_by_peer()


@pytest.mark.parametrize("raw, status", [
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding:\r\n\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n", 413),
    (b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nbad trailer\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked\r\n\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n", 400),
])
def test_chunked_smuggling_shapes_are_refused_with_a_close(srv, raw, status):
    out = exchange(srv.addr, b"POST /echo HTTP/1.1\r\nHost: t\r\n" + raw
                       + b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:200]
    assert out.count(b"HTTP/1.1 ") == 1, out                 # nothing after: closed


def test_transfer_encoding_on_http10_is_refused(srv):
    raw = b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert status_of(srv.addr, raw) == 400


# --------------------------------------------------------------------------
# 6. Absolute-form


def test_absolute_form_target_is_routed_by_its_path(srv):
    with H11Client(srv.addr) as c:
        c.send_request("GET", "http://example.com:8080/info?x=1")
        assert c.response()[::2] == (200, b"GET|/info|x=1|example.com:8080")
        c.send_request("GET", "HTTP://a")
        assert c.response()[::2] == (200, b"Hello from kqueue_py\n")
        c.send_request("GET", "https://a/?q")
        assert c.response()[::2] == (200, b"Hello from kqueue_py\n")


@pytest.mark.parametrize("target", [b"ftp://a/", b"http://user@a/", b"http:///x", b"x/y",
                                    b"http://a/#frag"])
def test_bad_targets_are_400(srv, target):
    assert status_of(srv.addr, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n") == 400


# --------------------------------------------------------------------------
# 7. Content-Length with leading zeros, Connection and Expect as lists


@pytest.mark.parametrize("value", [b"0000000000000000003", b"0000000000000000000000000003", b"03"])
def test_content_length_with_leading_zeros(srv, value):
    with H11Client(srv.addr) as c:
        c.send_raw(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: " + value + b"\r\n\r\nabc")
        assert c.response("POST")[::2] == (200, b"abc")


def test_content_length_over_the_limit_with_leading_zeros_is_413(srv):
    assert status_of(srv.addr, b"POST /echo HTTP/1.1\r\nHost: t\r\n"
                               b"Content-Length: 00000000000001048577\r\n\r\n") == 413


@pytest.mark.parametrize("version, value, keep", [
    (b"HTTP/1.0", b"keep-alive, close", False),
    (b"HTTP/1.0", b"close, keep-alive", False),
    (b"HTTP/1.0", b"Keep-Alive", True),
    (b"HTTP/1.0", b"foo, keep-alive", True),
    (b"HTTP/1.0", b"not-keep-alive", False),
    (b"HTTP/1.1", b"foo, Close", False),
    (b"HTTP/1.1", b"closed", True),
])
def test_connection_is_a_list_of_options(srv, version, value, keep):
    with H11Client(srv.addr) as c:
        c.send_raw(b"GET / " + version + b"\r\nHost: t\r\nConnection: " + value + b"\r\n\r\n")
        status, headers, _ = c.response("GET")
        assert (status, headers["connection"]) == (200, "keep-alive" if keep else "close")
        if keep:
            c.send_raw(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert c.response("GET")[0] == 200
        else:
            assert c.closed_by_peer()


@pytest.mark.parametrize("expect, framing, body", [
    (b"Expect: 100-continue, foo\r\n", b"Content-Length: 5\r\n", b"hello"),
    (b"Expect: foo\r\nExpect: 100-Continue\r\n", b"Content-Length: 5\r\n", b"hello"),
    (b"Expect: 100-continue\r\n", b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
])
def test_expect_as_a_list_gets_its_100_continue(srv, expect, framing, body):
    with socket.create_connection(srv.addr, timeout=10) as s, s.makefile("rb") as f:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\n" + expect + framing + b"\r\n")
        s.settimeout(0.9)     # curl gives up waiting after 1 s
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert f.readline() == b"\r\n"
        s.settimeout(10)
        s.sendall(body)
        assert f.readline().startswith(b"HTTP/1.1 200 ")


# --------------------------------------------------------------------------
# 8. Statuses for the malformed


@pytest.mark.parametrize("version, status", [(b"HTTP/1.10", 400), (b"HTTP/01.1", 400),
                                             (b"HTTP/1", 400), (b"HTTP/1.1 ", 400),
                                             (b"HTTP/2.0", 505), (b"HTTP/0.9", 505)])
def test_malformed_versions_are_400_unsupported_505(srv, version, status):
    assert status_of(srv.addr, b"GET / " + version + b"\r\nHost: t\r\n\r\n") == status


def test_empty_lines_before_a_request_line_are_ignored_up_to_four(srv):
    with H11Client(srv.addr) as c:
        c.send_raw(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi\r\n"
                   b"\r\n\r\n\r\nHEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.response("POST")[::2] == (200, b"hi")
        assert c.response("HEAD")[::2] == (200, b"")
    assert status_of(srv.addr, b"\r\n" * 5 + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n") == 400


@pytest.mark.parametrize("raw", [b"GET / HTTP/1.1\nHost: t\n\n", b"GET / HTTP/1.1\r\nHost: t\n\n",
                                 b"GET / HTTP/1.1\r\nHost: t\r\n\n"])
def test_bare_lf_line_ends_are_refused_at_once(srv, raw):
    # Not at the header deadline: the client does not shut down its side.
    with socket.create_connection(srv.addr, timeout=3) as s, s.makefile("rb") as f:
        s.sendall(raw)
        assert f.readline().startswith(b"HTTP/1.1 400 ")


def test_later_http1_minor_version_is_read_as_11(srv):
    with H11Client(srv.addr) as c:
        c.send_raw(b"GET / HTTP/1.2\r\nHost: t\r\n\r\n")
        status, headers, _ = c.response("GET")
        assert (status, headers["connection"]) == (200, "keep-alive")


def test_long_target_is_414_and_a_long_one_within_the_limit_is_served(srv):
    assert status_of(srv.addr, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n") == 414
    # 8192 bytes of request line is the limit: "GET " + target + " HTTP/1.1".
    target = b"/info?" + b"q" * (8192 - len(b"GET  HTTP/1.1") - 6)
    line = b"GET " + target + b" HTTP/1.1"
    assert len(line) == 8192
    with H11Client(srv.addr) as c:
        c.send_raw(line + b"\r\nHost: t\r\n\r\n")
        assert c.response("GET")[0] == 200
    assert status_of(srv.addr, b"GET " + target + b"q HTTP/1.1\r\nHost: t\r\n\r\n") == 414


def _head_block(field_bytes: int) -> bytes:
    """A GET whose header lines (each with its CRLF) take ``field_bytes``."""
    fixed = b"Host: t\r\nX-Pad: \r\n"
    pad = b"p" * (field_bytes - len(fixed))
    return b"GET / HTTP/1.1\r\nHost: t\r\nX-Pad: " + pad + b"\r\n\r\n"


@pytest.mark.parametrize("field_bytes, status", [(8190, 200), (8191, 200), (8192, 200),
                                                 (8193, 431), (8194, 431)])
def test_header_limit_does_not_depend_on_how_tcp_splits_the_bytes(srv, field_bytes, status):
    raw = _head_block(field_bytes)
    for cut in (None, 1, 2, 3, 4, 5):
        with socket.create_connection(srv.addr, timeout=10) as s, s.makefile("rb") as f:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if cut is None:
                s.sendall(raw)
            else:
                # The cut falls inside the final CRLFCRLF (or just before
                # it); the pause gives the server a turn to look at the
                # partial head, which cannot be observed from outside.
                s.sendall(raw[:-cut])
                time.sleep(0.05)
                s.sendall(raw[-cut:])
            line = f.readline()
            assert line.startswith(b"HTTP/1.1 %d " % status), (cut, line)


# --------------------------------------------------------------------------
# 9. Date


def test_every_response_has_a_date(srv):
    with H11Client(srv.addr) as c:
        answers = []
        for method, target in (("GET", "/"), ("HEAD", "/"), ("GET", "/nope"), ("GET", "/204"),
                               ("DELETE", "/"), ("GET", "/cl")):
            c.send_request(method, target)
            answers.append(c.response())
    answers.append(_refused(srv.addr))
    now = time.time()
    for status, headers, _ in answers:
        date = email.utils.parsedate_to_datetime(headers["date"])
        assert headers["date"].endswith(" GMT"), headers["date"]
        assert abs(date.timestamp() - now) < 60, (status, headers["date"])


def _refused(addr):
    """A parse error's answer."""
    with H11Client(addr) as c:
        c.send_raw(b"GET / HTTP/1.10\r\nHost: t\r\n\r\n")
        return c.response("GET")


def test_date_is_computed_once_per_second():
    from kqueue_py.examples.http_protocol import http_date
    for _ in range(100):
        second = int(time.time())
        first, again = http_date(), http_date()
        if int(time.time()) == second:
            assert again is first          # the cached string, not a new one
            assert email.utils.parsedate_to_datetime(first).timestamp() == second
            return
    raise AssertionError("the clock changed second during every try")
