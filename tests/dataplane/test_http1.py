"""The lean HTTP/1.1 front: what it serves itself, what it hands to aiohttp, over raw sockets."""

from __future__ import annotations

import asyncio
import json

import pytest
from kubegate.dataplane.http1 import parse_simple

from kubegate.config import CompiledConfig


def test_parse_simple_accepts_the_plain_case():
    method, target, headers, close = parse_simple(b"GET /a/b?x=1&y HTTP/1.1\r\nHost: api.test\r\nX-A:  v \r\n"
                                                  b"Content-Length: 0\r\nConnection: close")
    assert (method, target.raw_path, target.raw_query_string, close) == ("GET", "/a/b", "x=1&y", True)
    assert headers == [("Host", "api.test"), ("X-A", "v"), ("Content-Length", "0"), ("Connection", "close")]


@pytest.mark.parametrize("head", [
    b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5",  # a body
    b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked",
    b"GET /a HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade",
    b"GET /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue",
    b"GET /a HTTP/1.0\r\nHost: a",
    b"GET /a HTTP/1.1",  # no Host
    b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b",
    b"GET /a HTTP/1.1\r\nHost: a\r\nX: 1\r\n continued",  # obs-fold
    b"GET /a HTTP/1.1\r\nHost: a\r\nBad Name: 1",
    b"GET /a HTTP/1.1\r\nHost: a\r\nX: a\nb",  # bare LF
    b"GET /a HTTP/1.1\r\nHost: a\r\nX: \x00",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a",
    b"GET http://a/x HTTP/1.1\r\nHost: a",  # absolute-form
    b"GET /a#frag HTTP/1.1\r\nHost: a",
    b"GET  /a HTTP/1.1\r\nHost: a",
    b"G(T /a HTTP/1.1\r\nHost: a",
])
def test_parse_simple_leaves_everything_else_to_aiohttp(head):
    assert parse_simple(head) is None


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


async def test_garbage_is_refused_by_aiohttp_not_served(start_gateway, make_route, backend):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    raw = await _exchange(gw.ports["http"], b"GET /a HTTP/1.1\r\nHost: t\r\nX: a\nb\r\n\r\n")
    assert raw.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request") and b.received == []


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

    monkeypatch.setattr(http1, "KEEPALIVE_SECONDS", 0.1)
    monkeypatch.setattr(http1, "SWEEP_SECONDS", 0.05)
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports["http"])
    writer.write(b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 3) is not None  # body, then EOF once swept
    assert reader.at_eof()
    writer.close()
