"""The HTTP example's protocol layer alone (kqueue_py.examples.http_protocol,
no sockets): requests parsed as h11 parses them, whatever the split of the
bytes, and incremental chunked decoding that agrees with decoding at once."""
from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kqueue_py.examples.http_protocol import ChunkedBody, Limits, ParseError, parse_head

LIMITS = Limits()


def incremental(pieces: list[bytes]) -> list[tuple[str, str, bytes]]:
    """Feed ``pieces`` one after another the way the server does (the head
    parsed once, a chunked body decoded where it stopped); the requests."""
    buf = bytearray()
    out: list[tuple[str, str, bytes]] = []
    head = None
    chunks = None
    for piece in pieces:
        buf += piece
        while buf:
            if head is None:
                head = parse_head(buf, LIMITS)
                if head is None:
                    break
                chunks = ChunkedBody(head.size, LIMITS) if head.chunked else None
            if chunks is not None:
                end = chunks.feed(buf)
                if end is None:
                    break
                body = bytes(chunks.body)
            else:
                end = head.size + head.length
                if len(buf) < end:
                    break
                body = bytes(buf[head.size:end])
            out.append((head.method, head.target, body))
            del buf[:end]
            head = chunks = None
    assert not buf, f"left over: {bytes(buf)!r}"
    return out


def h11_requests(raw: bytes) -> list[tuple[str, str, bytes]]:
    """The same bytes through h11 as a server."""
    conn = h11.Connection(our_role=h11.SERVER)
    conn.receive_data(raw)
    out: list[tuple[str, str, bytes]] = []
    method = target = ""
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            break
        if isinstance(event, h11.Request):
            method, target, body = event.method.decode(), event.target.decode(), bytearray()
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.append((method, target, bytes(body)))
            conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
    return out


PIPELINE = (b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n"
            b"HEAD /d HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n"
            b"PUT /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")


def test_pipeline_agrees_with_h11_at_every_split():
    want = h11_requests(PIPELINE)
    assert [r[1] for r in want] == ["/a", "/b", "/c", "/d", "/e"]
    assert incremental([PIPELINE]) == want
    for cut in range(1, len(PIPELINE)):
        assert incremental([PIPELINE[:cut], PIPELINE[cut:]]) == want, cut
    assert incremental([bytes([b]) for b in PIPELINE]) == want     # byte by byte


_ext = st.sampled_from([b"", b";a", b";a=b", b';name="q v"', b"; x = 1", b";a;b=c"])


@st.composite
def chunked_messages(draw) -> tuple[bytes, bytes]:
    pieces = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=6))
    enc = bytearray()
    for p in pieces:
        size = b"%x" % len(p)
        if draw(st.booleans()):
            size = size.upper()
        enc += b"0" * draw(st.integers(0, 3)) + size + draw(_ext) + b"\r\n" + p + b"\r\n"
    enc += b"0" + draw(_ext) + b"\r\n"
    for i in range(draw(st.integers(0, 2))):
        enc += b"X-T%d: v\r\n" % i
    enc += b"\r\n"
    head = b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + bytes(enc), b"".join(pieces)


@settings(max_examples=200, deadline=None)
@given(msg=chunked_messages(), data=st.data())
def test_chunked_bodies_decode_as_h11_decodes_them(msg, data):
    raw, body = msg
    assert h11_requests(raw) == [("POST", "/x", body)]
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=4)))
    pieces = [raw[i:j] for i, j in zip([0, *cuts], [*cuts, len(raw)])]
    assert incremental(pieces) == [("POST", "/x", body)]


@pytest.mark.parametrize("body, status", [
    (b"5\r\nhello\r\n0\r\n\r\n", None),
    (b"5\r\nhelloX\r\n0\r\n\r\n", 400),
    (b"g\r\n", 400),
    (b"100001\r\n", 413),
    (b"1;" + b"e" * 2000 + b"\r\n", 400),
    (b"1\r\na\r\n" * 10 + b"0\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
])
def test_chunked_errors(body, status):
    raw = b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    head = parse_head(raw, LIMITS)
    assert head is not None and head.chunked
    decoder = ChunkedBody(head.size, LIMITS)
    if status is None:
        assert decoder.feed(raw) == len(raw) and decoder.body == b"hello"
    else:
        with pytest.raises(ParseError) as err:
            decoder.feed(raw)
        assert err.value.status == status


def test_chunk_framing_is_bounded():
    # One-byte chunks with 1000-byte extensions: the framing may not pass
    # the header limit (8192) plus the body size.
    head = b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"1;" + b"e" * 1000 + b"\r\na\r\n"
    size = parse_head(head, LIMITS).size
    assert ChunkedBody(size, LIMITS).feed(head + chunk * 7) is None      # 7 KiB: waits for more
    with pytest.raises(ParseError) as err:
        ChunkedBody(size, LIMITS).feed(head + chunk * 9)
    assert err.value.status == 413
