"""HTTP/1.1 as the example server speaks it (RFC 9110, RFC 9112), with no
event loop and no sockets: request parsing with limits, chunked request
bodies, routing, and response serialization.  It can be read, tested and
reused alone; ``kqueue_py.examples.http`` runs it on a kqueue loop.

What a request must be (anything else is a :class:`ParseError` carrying the
status to answer with, after which the connection closes):

* a request line ``method SP target SP HTTP/x.y`` of at most
  ``Limits.max_request_line`` bytes (longer: 414), after at most 4 empty
  lines (more: 400); the target in
  origin-form (``/path?query``), absolute-form (``http://host/path``, whose
  authority replaces ``Host``), ``*`` (OPTIONS) or authority-form (CONNECT);
  HTTP/1.0 and 1.1 (a later 1.x is read as 1.1); another major version is a
  505, anything not ``HTTP/DIGIT.DIGIT`` a 400;
* header lines ``name: value`` with CRLF endings: no obs-fold, no bare CR
  or LF, no control characters, no whitespace before the colon; at most
  ``Limits.max_headers`` lines in ``Limits.max_header_bytes`` bytes (431);
  an HTTP/1.1 request needs exactly one valid ``Host``;
* a body framed by one ``Content-Length`` (ASCII digits, leading zeros
  allowed; repeated only with the same value) or by ``Transfer-Encoding:
  chunked`` alone (chunk extensions ignored, trailers read and discarded).
  Both at once, ``chunked`` not last or given twice, or Transfer-Encoding
  on HTTP/1.0 are a 400; another transfer coding is a 501; a body over
  ``Limits.max_body_bytes`` is a 413, refused as soon as its size is known.

Responses: ``Content-Length`` framing, a ``Date`` (cached per second) and
``Connection``; no content for HEAD (the headers GET would have) nor for
204/205/304 (and no ``Content-Length`` on 204/304).  A handler's response
that would break the framing (``Content-Length``, ``Transfer-Encoding`` or
``Connection`` among its headers, a body on 204/205/304, CR/LF in a value,
a status outside 200-599) is refused: :func:`respond` answers 500 instead
and logs one line on stderr.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Callable, NamedTuple, Optional, Union
from urllib.parse import parse_qs

__all__ = ["Request", "Response", "Handler", "Router", "Limits", "ParseError", "Head",
           "ChunkedBody", "parse_head", "parse_request", "serialize", "error_response",
           "error_bytes", "respond", "run_handler", "http_date", "default_app",
           "CONTINUE", "REASONS"]


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: str
    version: str
    headers: dict[str, str]          # lower-cased names; repeated fields joined with ", "
    body: bytes
    keep_alive: bool
    host: str = ""                   # the absolute-form authority, else the Host header

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
    max_request_line: int = 8192      # method, target and version (414 beyond)
    max_header_bytes: int = 8192      # the header lines after the request line (431 beyond)
    max_headers: int = 100
    max_body_bytes: int = 1 << 20     # decoded body (413 beyond)


class ParseError(Exception):
    """A request the server answers with ``status`` and then closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


# Reason phrases of RFC 9110, section 15 (the stdlib's http module is not
# used: a copy of the server saved as http.py would shadow it).
REASONS = {
    100: "Continue", 101: "Switching Protocols",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
    204: "No Content", 205: "Reset Content", 206: "Partial Content",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 409: "Conflict",
    410: "Gone", 411: "Length Required", 412: "Precondition Failed",
    413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    416: "Range Not Satisfiable", 417: "Expectation Failed", 421: "Misdirected Request",
    422: "Unprocessable Content", 426: "Upgrade Required", 428: "Precondition Required",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    511: "Network Authentication Required",
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ")
# Control characters (a bare CR or LF among them) are not allowed in a header
# line or in a field value a handler gives, except HTAB (RFC 9110, section
# 5.5; RFC 9112, section 2.2).  Checked only when str.isprintable() says no.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
# The Host value: a uri-host with an optional port, or empty (RFC 9112, 3.2).
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
# absolute-form for the http and https schemes: scheme "://" authority path-abempty [ "?" query ]
_ABSOLUTE = re.compile(r"([Hh][Tt][Tt][Pp][Ss]?)://([^/?]*)(.*)")
_GOOD_HOSTS: set[str] = set()   # Host values already checked (clients repeat theirs)
# Header fields a handler may not set: the server owns the framing and the connection.
_SERVER_FIELDS = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive",
                            "upgrade", "trailer"))
_NO_CONTENT = frozenset((204, 205, 304))
_MAX_CHUNK_LINE = 1024          # a chunk-size line with its extensions


def _is_token(s: str) -> bool:
    return bool(s) and all(ord(c) < 128 and ord(c) in _TOKEN for c in s)


def _list(value: str) -> list[str]:
    """The lower-cased members of a comma-separated field value (RFC 9110, 5.6.1)."""
    return [m for m in (part.strip(" \t").lower() for part in value.split(",")) if m]


_DATE: tuple[int, str] = (0, "")


def http_date() -> str:
    """The current time as an IMF-fixdate, recomputed once per second."""
    global _DATE
    now = int(time.time())
    cached = _DATE
    if cached[0] != now:
        cached = _DATE = (now, formatdate(now, usegmt=True))
    return cached[1]


class Head(NamedTuple):
    """A parsed request line and header section; the body follows."""

    method: str
    target: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    host: str
    size: int            # bytes of the request line and header section, with the blank line
    length: int          # Content-Length (0 when chunked)
    chunked: bool        # Transfer-Encoding: chunked
    keep_alive: bool
    expect_continue: bool   # Expect lists 100-continue (HTTP/1.1)

    def request(self, body: bytes) -> Request:
        return Request(self.method, self.target, self.path, self.query, self.version,
                       self.headers, body, self.keep_alive, self.host)


def _split_target(method: str, target: str) -> tuple[str, str, Optional[str]]:
    """``(path, query, authority or None)`` of a request target (RFC 9112, 3.2)."""
    if target[0] == "/":
        path, _, query = target.partition("?")
        return path, query, None
    m = _ABSOLUTE.fullmatch(target)
    if m is not None:
        authority, rest = m.group(2), m.group(3)
        if not authority or not _HOST.fullmatch(authority):
            raise ParseError(400, "bad authority in an absolute-form target")
        if rest and rest[0] != "/" and rest[0] != "?":
            raise ParseError(400, "malformed request target")
        path, _, query = rest.partition("?")
        return path or "/", query, authority
    if target == "*" and method == "OPTIONS":
        return "*", "", None
    if method == "CONNECT" and _HOST.fullmatch(target):
        return target, "", None
    raise ParseError(400, "malformed request target")


def _too_long_line(buf: Union[bytes, bytearray], start: int, limit: int) -> ParseError:
    # The target is the only part of a request line that can be long: 414
    # when the line starts as one (a method and a space), else 400.
    if _METHOD.match(buf, start, start + limit) is not None:
        return ParseError(414, "request line too long")
    return ParseError(400, "request line too long")


def parse_head(buf: Union[bytes, bytearray], limits: Limits) -> Optional[Head]:
    """Parse the request line and headers at the start of ``buf``: a
    :class:`Head`, ``None`` when the header section is incomplete, or
    :class:`ParseError`.  A request line or header section over its limit,
    or a declared body over its limit, is refused before it has all arrived;
    the outcome does not depend on how the bytes are split."""
    # Up to 4 empty lines before the request line are ignored (RFC 9112,
    # section 2.2: some clients send a CRLF after a body).
    start = 0
    while start < 8 and buf.startswith(b"\r\n", start):
        start += 2
    eol = buf.find(b"\r\n", start, start + limits.max_request_line + 2)
    if eol < 0:
        if len(buf) - start >= limits.max_request_line + 2:
            raise _too_long_line(buf, start, limits.max_request_line)
        if buf.find(b"\n", start) >= 0:
            raise ParseError(400, "bare LF in the request line")
        return None
    # The field lines (each with its CRLF) end where the blank line starts:
    # "\r\n\r\n" found at index ``end`` means end - eol bytes of fields.
    end = buf.find(b"\r\n\r\n", eol, eol + limits.max_header_bytes + 4)
    if end < 0:
        if len(buf) > eol + limits.max_header_bytes + 3:
            raise ParseError(431, "request header section too large")
        if _BARE_LF.search(buf, eol + 2):
            raise ParseError(400, "bare LF in the header section")   # now, not at the deadline
        return None
    lines = bytes(buf[start:end]).decode("latin-1").split("\r\n")
    if not lines[0].isprintable():
        raise ParseError(400, "malformed request line")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _is_token(parts[0]) or not parts[1]:
        raise ParseError(400, "malformed request line")
    method, target, version = parts
    if not target.isascii() or "#" in target:
        raise ParseError(400, "malformed request target")
    vm = _VERSION.fullmatch(version)
    if vm is None:
        raise ParseError(400, "malformed HTTP version")
    if vm.group(1) != "1":
        raise ParseError(505, "HTTP version not supported")
    if vm.group(2) != "0":
        version = "HTTP/1.1"      # a later 1.x is read as 1.1 (RFC 9110, 2.5)
    path, query, authority = _split_target(method, target)
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
        host = ""
    elif host not in _GOOD_HOSTS:
        if not _HOST.fullmatch(host):
            raise ParseError(400, "invalid Host")
        if len(_GOOD_HOSTS) < 1024:
            _GOOD_HOSTS.add(host)
    if authority is not None:
        host = authority          # absolute-form: the target's authority wins (RFC 9112, 3.2.2)
    length = 0
    chunked = False
    te = headers.get("transfer-encoding")
    if te is not None:
        if version == "HTTP/1.0":
            raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if "content-length" in headers:
            raise ParseError(400, "both Transfer-Encoding and Content-Length")
        codings = _list(te)
        if not codings or codings[-1] != "chunked" or codings.count("chunked") > 1:
            raise ParseError(400, "chunked is not the final transfer coding")
        if len(codings) > 1:
            raise ParseError(501, "transfer coding not implemented")
        chunked = True
    else:
        text = headers.get("content-length")
        if text is not None:
            # ASCII digits only: str.isdigit() alone also accepts "²" and friends.
            if not (text.isascii() and text.isdigit()):
                raise ParseError(400, "bad Content-Length")
            digits = text.lstrip("0")
            if len(digits) > 18:
                raise ParseError(413, "request body too large")
            length = int(digits) if digits else 0
            if length > limits.max_body_bytes:
                raise ParseError(413, "request body too large")
    connection = headers.get("connection")
    options = _list(connection) if connection else ()
    if "close" in options:
        keep_alive = False
    else:
        keep_alive = version == "HTTP/1.1" or "keep-alive" in options
    expect = headers.get("expect")
    expect_continue = (expect is not None and version == "HTTP/1.1"
                       and "100-continue" in _list(expect))
    return Head(method, target, path, query, version, headers, host, end + 4, length, chunked,
                keep_alive, expect_continue)


class ChunkedBody:
    """Decodes a chunked request body (RFC 9112, section 7.1) as it arrives.

    It reads ``buf`` from offset ``start`` (just after the header section);
    :meth:`feed` is called again with the same, grown, buffer and goes on
    where it stopped.  Chunk extensions are ignored, trailer fields are
    checked like header lines and discarded.  The decoded size is bounded
    by ``max_body_bytes`` (413 as soon as a chunk size passes it), the
    framing (size lines, extensions, trailers) by ``max_header_bytes`` plus
    one byte per body byte (413), so that the encoded body never costs more
    than about twice the decoded one."""

    __slots__ = ("limits", "start", "pos", "need", "body", "trailers")

    def __init__(self, start: int, limits: Limits) -> None:
        self.limits = limits
        self.start = start
        self.pos = start          # where decoding goes on
        self.need = -1            # >= 0: data bytes of the current chunk; -1: a size line; -2: trailers
        self.body = bytearray()
        self.trailers = 0         # trailer lines seen

    def feed(self, buf: Union[bytes, bytearray]) -> Optional[int]:
        """The offset just past the body once all of it is in ``buf``, else
        ``None``; :class:`ParseError` for a malformed or oversized body."""
        limits = self.limits
        pos = self.pos
        n = len(buf)
        try:
            while True:
                need = self.need
                if need >= 0:
                    if n < pos + need + 2:
                        return None
                    if buf[pos + need:pos + need + 2] != b"\r\n":
                        raise ParseError(400, "chunk data not followed by CRLF")
                    self.body += buf[pos:pos + need]
                    pos += need + 2
                    self.need = -1
                    continue
                eol = buf.find(b"\r\n", pos, pos + _MAX_CHUNK_LINE + 2)
                if eol < 0:
                    if n - pos >= _MAX_CHUNK_LINE + 2:
                        raise ParseError(400 if need == -1 else 431, "chunk line too long")
                    if buf.find(b"\n", pos) >= 0:
                        raise ParseError(400, "bare LF in a chunk line")
                    return None
                line = bytes(buf[pos:eol])
                if _BAD_BYTES.search(line):
                    raise ParseError(400, "control character in a chunk line")
                pos = eol + 2
                if need == -1:
                    size_text = line.split(b";", 1)[0].rstrip(b" \t")
                    if not _HEX.fullmatch(size_text):
                        raise ParseError(400, "bad chunk size")
                    size = int(size_text, 16)
                    if len(self.body) + size > limits.max_body_bytes:
                        raise ParseError(413, "request body too large")
                    self.need = size if size else -2
                elif not line:
                    return pos                     # the blank line after the trailers
                else:
                    name, sep, _ = line.partition(b":")
                    if not sep or not _is_token(name.decode("latin-1")):
                        raise ParseError(400, "malformed trailer field")
                    self.trailers += 1
                    if self.trailers > limits.max_headers:
                        raise ParseError(431, "too many trailer fields")
                if pos - self.start - len(self.body) > limits.max_header_bytes + len(self.body):
                    raise ParseError(413, "chunk framing too large")
        finally:
            self.pos = pos


def parse_request(buf: Union[bytes, bytearray], limits: Limits) -> Optional[tuple[Request, int]]:
    """Parse one request from the start of ``buf``.

    Returns ``(request, bytes consumed)``, ``None`` when more bytes are
    needed, or raises :class:`ParseError`.  (Stateless: a chunked body is
    decoded from its start on every call; a server keeps a
    :class:`ChunkedBody` instead.)"""
    head = parse_head(buf, limits)
    if head is None:
        return None
    if head.chunked:
        decoder = ChunkedBody(head.size, limits)
        end = decoder.feed(buf)
        if end is None:
            return None
        return head.request(bytes(decoder.body)), end
    total = head.size + head.length
    if len(buf) < total:
        return None
    return head.request(bytes(buf[head.size:total])), total


def serialize(resp: Response, keep_alive: bool, head: bool = False) -> bytes:
    """The bytes of ``resp``, with ``head=True`` for a HEAD request (the
    headers GET would have, no content).  ``TypeError``/``ValueError`` for a
    response that cannot be sent: a status outside 200-599, a body that is
    not bytes or is not empty on 204/205/304, a header that is not latin-1,
    has CR/LF or another control character, or sets the framing or the
    connection (``Content-Length``, ``Transfer-Encoding``, ``Connection``,
    ``Keep-Alive``, ``Upgrade``, ``Trailer``: the server's own)."""
    status = resp.status
    if type(status) is not int or not 200 <= status <= 599:
        raise ValueError(f"bad status {status!r}")
    body = resp.body
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    ctype = resp.content_type
    if not isinstance(ctype, str) or _BAD_VALUE.search(ctype):
        raise ValueError(f"bad content type {ctype!r}")
    out = [f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"]
    if status in _NO_CONTENT:
        if body:
            raise ValueError(f"a {status} response has no content, got {len(body)} bytes")
        if status == 205:
            out.append("Content-Length: 0\r\n")
    else:
        out.append(f"Content-Length: {len(body)}\r\nContent-Type: {ctype}\r\n")
    out.append("Connection: keep-alive\r\n" if keep_alive else "Connection: close\r\n")
    date = True
    for name, value in resp.headers:
        if not isinstance(name, str) or not _is_token(name) or not isinstance(value, str) \
                or _BAD_VALUE.search(value):
            raise ValueError(f"bad header {name!r}: {value!r}")
        lname = name.lower()
        if lname in _SERVER_FIELDS:
            raise ValueError(f"header {name!r} is set by the server (message framing)")
        if lname == "date":
            date = False
        out.append(f"{name}: {value}\r\n")
    if date:
        out.append(f"Date: {http_date()}\r\n")
    out.append("\r\n")
    data = "".join(out).encode("latin-1")
    return data if head or not body else data + body


def error_response(status: int) -> Response:
    return Response(status, f"{status} {REASONS.get(status, 'Error')}\n".encode())


def error_bytes(exc: ParseError, buf: Union[bytes, bytearray]) -> bytes:
    """The answer to a request refused with ``exc`` (then the connection
    closes); without content if the request was a HEAD."""
    return serialize(error_response(exc.status), False, head=bytes(buf[:13]).lstrip(b"\r\n")[:5] == b"HEAD ")


def log_failure(what: str) -> None:
    """One line on stderr about the exception being handled."""
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
        log_failure(f"handler for {req.method} {req.path}")
        return error_response(500)


def respond(app: Handler, req: Request, keep_alive: Optional[bool] = None) -> bytes:
    """The response to ``req`` as bytes: the handler and the serialization
    both run inside the guard, so a failure in either is a 500 (and a line
    on stderr)."""
    if keep_alive is None:
        keep_alive = req.keep_alive
    head = req.method == "HEAD"
    try:
        return serialize(run_handler(app, req), keep_alive, head)
    except Exception:   # noqa: BLE001 - a bad Response is the handler's bug, not the server's
        log_failure(f"response for {req.method} {req.path}")
        return serialize(error_response(500), keep_alive, head)


class Router:
    """``(method, path) -> handler``; HEAD runs the GET handler where no HEAD
    route exists (the response is sent without its content); 404 for
    unknown paths, 405 with an ``Allow`` header for a known path with
    another method."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Handler] = {}
        self._methods: dict[str, list[str]] = {}

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            m = method.upper()
            self._routes[(m, path)] = fn
            methods = self._methods.setdefault(path, [])
            for add in (m, "HEAD") if m == "GET" else (m,):
                if add not in methods:
                    methods.append(add)
            methods.sort()
            return fn
        return register

    def __call__(self, req: Request) -> Response:
        fn = self._routes.get((req.method, req.path))
        if fn is None and req.method == "HEAD":
            fn = self._routes.get(("GET", req.path))
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
    sends N bytes (at most 64 MiB), a download.  HEAD works wherever GET does."""
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
