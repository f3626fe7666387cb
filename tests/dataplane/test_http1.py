"""The lean HTTP/1.1 front: what it serves itself, what it hands to aiohttp, over raw sockets."""

from __future__ import annotations

import asyncio
import json
import logging

import httptools
import pytest
from kubegate.dataplane.http1 import RequestHead, Target

from kubegate.config import CompiledConfig

PLAIN = (b"GET /a/b?x=1&y HTTP/1.1\r\nHost: api.test\r\nX-A:  v \t\r\nContent-Length: 0\r\n"
         b"Connection: close\r\n\r\n")


def _head(*pieces: bytes) -> RequestHead:
    reader = RequestHead()
    for piece in pieces:
        reader.feed(piece)
    return reader


def test_simple_request_parsed_whole_or_byte_by_byte():
    expected = ("GET", Target("/a/b", "x=1&y"),
                [("Host", "api.test"), ("X-A", "v"), ("Content-Length", "0"), ("Connection", "close")], True)
    assert _head(PLAIN).simple() == expected
    assert _head(*(PLAIN[i:i + 1] for i in range(len(PLAIN)))).simple() == expected
    reader = _head(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reader.simple()[3] is False  # keep-alive
    reader.reset()
    reader.feed(b"HEAD /two HTTP/1.1\r\nHost: b\r\n\r\n")  # the same parser, the next request
    assert reader.simple()[:2] == ("HEAD", Target("/two", ""))


@pytest.mark.parametrize("head", [
    b"GET /a HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET /a HTTP/1.1\r\n\r\n",  # no Host
    b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n",  # absolute-form
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_complete_requests_the_front_leaves_to_aiohttp(head):
    reader = _head(head)
    assert reader.complete and reader.simple() is None


@pytest.mark.parametrize("head", [
    b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_a_body_is_left_unread(head):
    assert not _head(head).complete  # the head is done, the message is not: aiohttp gets it all


@pytest.mark.parametrize("head", [
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
])
def test_upgrades_are_signalled(head):
    with pytest.raises(httptools.HttpParserUpgrade):
        _head(head)


SMUGGLING = [
    b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",  # CL + TE
    b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",  # TE + CL
    b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nX: 1\r\n continued\r\n\r\n",  # obs-fold
    b"GET /a HTTP/1.1\r\nHost: a\nX-Injected: 1\r\n\r\n",  # bare LF
    b"GET /a HTTP/1.1\nHost: a\n\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nX: a\rX-Injected: 1\r\n\r\n",  # bare CR
    b"GET /a HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost : a\r\n\r\n",  # whitespace before the colon
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"G(T /a HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS on the plain port
]


@pytest.mark.parametrize("head", SMUGGLING)
def test_smuggling_and_injection_attempts_are_parse_errors(head):
    with pytest.raises(httptools.HttpParserError) as caught:
        _head(head)
    assert not isinstance(caught.value, httptools.HttpParserUpgrade)


async def _exchange(port: int, data: bytes, *, until_close: bool = True, wait: float = 5) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if until_close:
            return await asyncio.wait_for(reader.read(), wait)
        return await asyncio.wait_for(reader.read(65536), wait)
    finally:
        writer.close()


def _responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a keep-alive byte stream of Content-Length framed responses."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split(" ")[1]), headers, rest[:length]))
        raw = rest[length:]
    return out


async def test_pipelined_simple_requests_answered_in_order_then_close(backend, start_gateway, make_route):
    b = await backend("a")
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    raw = await _exchange(gw.ports["http"], b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n"
                                            b"HEAD /two HTTP/1.1\r\nHost: t\r\n\r\n"
                                            b"GET /missing/../../x HTTP/1.1\r\nHost: t\r\n\r\n"
                                            b"GET /three HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    first, head, bad, last = _split_head_aware(raw)
    assert first[0] == 200 and json.loads(first[2])["path"] == "/one"
    assert first[1]["x-request-id"] and first[1]["x-backend"] == "a" and "x-hop" not in first[1]
    assert head[0] == 200 and head[2] == b"" and int(head[1]["content-length"]) > 0
    assert bad[0] == 400 and b"path escapes the root" in bad[2]
    assert last[0] == 200 and last[1]["connection"] == "close"
    assert [(r["method"], r["path"]) for r in b.received] == [("GET", "/one"), ("HEAD", "/two"), ("GET", "/three")]


def _split_head_aware(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Like _responses, but the 2nd response answers a HEAD: no body despite Content-Length."""
    out = []
    index = 0
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = 0 if index == 1 else int(headers.get("content-length", "0"))
        out.append((int(lines[0].split(" ")[1]), headers, rest[:length]))
        raw = rest[length:]
        index += 1
    return out


async def test_connection_moves_to_aiohttp_for_a_body_after_simple_requests(backend, start_gateway, make_route):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    raw = await _exchange(gw.ports["http"], b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
                                            b"POST /second HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                                            b"Connection: close\r\n\r\nhello")
    first, second = _responses(raw)
    assert first[0] == second[0] == 200
    assert json.loads(second[2])["body_len"] == 5 and json.loads(second[2])["method"] == "POST"


@pytest.mark.parametrize("fast_http", [True, False], ids=["lean front", "aiohttp"])
async def test_malformed_requests_get_a_400_and_a_closed_connection(start_gateway, make_route, backend, fast_http,
                                                                    caplog):
    caplog.set_level(logging.DEBUG)
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)), fast_http=fast_http)
    for head in SMUGGLING:
        # a valid request pipelined behind the bad one must never be served
        raw = await _exchange(gw.ports["http"], head + b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n", wait=2)
        status_line, _, rest = raw.partition(b"\r\n")
        assert status_line.endswith(b" 400 Bad Request"), head
        if fast_http:
            body = json.loads(rest.partition(b"\r\n\r\n")[2])
            assert body["status"] == 400 and body["reason"] == "bad_request" and body["error"]
    # HTTP/2's preface: its first head is well-formed, so aiohttp gets the connection and refuses it
    raw = await _exchange(gw.ports["http"], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", wait=2)
    assert raw.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    assert b.received == [] and not b.hits
    # a stranger's malformed request is one INFO line at most, never an ERROR with a traceback
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_oversized_head_gets_a_431(start_gateway, make_route, backend):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    for head in (b"GET /a HTTP/1.1\r\nHost: t\r\nX-Big: " + b"x" * 9000 + b"\r\n\r\n",
                 b"GET /a HTTP/1.1\r\nHost: t\r\nX-Big: " + b"x" * 9000):  # never ends: no hang either
        raw = await _exchange(gw.ports["http"], head, wait=2)
        assert raw.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b.received == []


async def test_heads_split_anywhere_including_the_blank_line(backend, start_gateway, make_route):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports["http"])
    for piece in (b"GET /one HTTP/1.1\r\nHo", b"st: t\r\n\r", b"\nPOST /two HTTP/1.1\r\nHost: t\r\n",
                  b"Content-Length: 5\r\nConnection: close\r\n\r", b"\nhel", b"lo"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.02)
    first, second = _responses(await asyncio.wait_for(reader.read(), 5))
    writer.close()
    assert first[0] == second[0] == 200
    assert json.loads(first[2])["path"] == "/one"
    assert (json.loads(second[2])["method"], json.loads(second[2])["body_len"]) == ("POST", 5)


async def test_client_gone_mid_request_cancels_the_upstream_exchange(backend, start_gateway, make_route):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    _, writer = await asyncio.open_connection("127.0.0.1", gw.ports["http"])
    writer.write(b"GET /slow?s=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.2)
    assert not any(conn.busy for conn in gw._fast_connections)
    status, _, body = _responses(await _exchange(gw.ports["http"],
                                                 b"GET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))[0]
    assert status == 200 and json.loads(body)["path"] == "/after"


async def test_large_upstream_answer_streams_with_its_length(backend, start_gateway, make_route):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    raw = await _exchange(gw.ports["http"], b"GET /big?n=200000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Length: 200000" in head and body == b"x" * 200000


async def test_chunked_upstream_answer_is_rechunked(start_gateway, make_route):
    async def chunked_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"2\r\nde\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(chunked_backend, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", url),)))
    raw = await _exchange(gw.ports["http"], b"GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    decoded, rest = b"", body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        decoded, rest = decoded + rest[:size], rest[size + 2:]
    assert decoded == b"abcde"
    server.close()


async def test_idle_keepalive_connections_are_swept(backend, start_gateway, make_route, monkeypatch):
    from kubegate.dataplane import http1
    from kubegate.dataplane.webfront import ClientTimeouts

    monkeypatch.setattr(http1, "SWEEP_SECONDS", 0.05)
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)),
                             timeouts=ClientTimeouts(header=5, idle=0.1))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports["http"])
    writer.write(b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 3) is not None  # body, then EOF once swept
    assert reader.at_eof()
    writer.close()
