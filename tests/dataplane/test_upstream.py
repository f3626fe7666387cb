"""The lean upstream client against a real TCP server that answers with exact bytes.

Each scripted server reads one request head at a time and replies with the next
canned answer, so framing cases (chunked, close-delimited, HEAD, 1xx, stale
keep-alive) are exercised byte for byte over real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from kubegate.dataplane.exchange import MAX_HEAD, SMALL_BODY, UpstreamError
from kubegate.dataplane.upstream import Origin, UpstreamPool

Answer = bytes | Callable[[asyncio.StreamWriter], None] | None  # None: read the request, say nothing


class Scripted:
    """A server replying to the n-th request of each connection with answers[conn][n]."""

    def __init__(self, *connections: list[Answer]) -> None:
        self.connections = list(connections)
        self.accepted = 0
        self.requests: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return Origin.parse(f"http://127.0.0.1:{port}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answers = self.connections[min(self.accepted, len(self.connections) - 1)]
        self.accepted += 1
        try:
            for answer in answers:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                if answer is None:
                    continue
                if callable(answer):
                    answer(writer)
                else:
                    writer.write(answer)
                await writer.drain()
            await reader.read()  # hold the connection until the client closes it
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"


async def _get(pool: UpstreamPool, origin: Origin, method: str = "GET", body: bytes | None = None,
               timeout: float | None = 5) -> tuple[int, dict[str, str], bytes]:
    head = f"{method} /p HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode()
    response = await pool.request(origin, method, head, body, chunked=False, timeout=timeout, connect_timeout=2)
    try:
        if response.body is not None:
            data = response.body
        else:
            data = b"".join([chunk async for chunk in response.stream]) if response.stream else b""
        return response.status, dict(response.headers), data
    finally:
        response.release()


@pytest.fixture
async def pool():
    p = UpstreamPool()
    yield p
    await p.close()


async def test_small_body_whole_and_connection_reused(pool):
    server = Scripted([OK, OK, OK])
    origin = await server.start()
    for _ in range(3):
        status, headers, body = await _get(pool, origin)
        assert (status, headers["X-A"], body) == (200, "1", b"ok")
    assert server.accepted == 1
    await server.stop()


async def test_chunked_with_extensions_and_trailers_then_reuse(pool):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    server = Scripted([lambda w: [w.write(chunked[i:i + 7]) for i in range(0, len(chunked), 7)], OK])
    origin = await server.start()
    assert (await _get(pool, origin))[2] == b"hello world"
    assert (await _get(pool, origin))[2] == b"ok"
    assert server.accepted == 1
    await server.stop()


async def test_close_delimited_body_is_read_to_eof_and_not_reused(pool):
    def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        writer.close()

    server = Scripted([answer], [OK])
    origin = await server.start()
    assert (await _get(pool, origin))[2] == b"until the end"
    assert (await _get(pool, origin))[2] == b"ok"
    assert server.accepted == 2
    await server.stop()


async def test_head_and_204_have_no_body_and_keep_the_connection(pool):
    server = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n", OK])
    origin = await server.start()
    status, headers, body = await _get(pool, origin, "HEAD")
    assert (status, headers["Content-Length"], body) == (200, "1000", b"")
    assert (await _get(pool, origin))[:3:2] == (204, b"")
    assert (await _get(pool, origin))[2] == b"ok"
    assert server.accepted == 1
    await server.stop()


async def test_interim_1xx_responses_are_skipped(pool):
    server = Scripted([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK])
    origin = await server.start()
    assert (await _get(pool, origin))[::2] == (200, b"ok")
    await server.stop()


async def test_large_body_streams_in_pieces(pool):
    size = SMALL_BODY * 8

    def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"z" * size)

    server = Scripted([answer, OK])
    origin = await server.start()
    head = f"GET /big HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode()
    response = await pool.request(origin, "GET", head, None, chunked=False, timeout=5, connect_timeout=2)
    assert response.body is None and response.content_length == size
    pieces = [chunk async for chunk in response.stream]
    response.release()
    assert sum(map(len, pieces)) == size
    assert (await _get(pool, origin))[2] == b"ok"  # the connection was clean to reuse
    await server.stop()


async def test_stale_keepalive_connection_is_retried_once_on_a_fresh_one(pool):
    def drop(writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()  # read the request, answer nothing, close: a keep-alive race

    server = Scripted([OK, drop], [OK])
    origin = await server.start()
    assert (await _get(pool, origin))[2] == b"ok"
    assert (await _get(pool, origin))[2] == b"ok"  # first try hit the dying connection
    assert server.accepted == 2
    await server.stop()


async def test_streamed_body_is_not_replayed(pool):
    def drop(writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    server = Scripted([OK, None, drop], [OK])
    origin = await server.start()
    await _get(pool, origin)

    async def body():
        yield b"abc"

    head = f"POST /p HTTP/1.1\r\nHost: {origin.authority}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    with pytest.raises(UpstreamError) as caught:
        response = await pool.request(origin, "POST", head, body(), chunked=True, timeout=0.5, connect_timeout=2)
        response.release()
    assert caught.value.kind in ("broken", "timeout")
    assert server.accepted == 1
    await server.stop()


async def test_timeout_connect_failure_and_garbage(pool, free_port):
    server = Scripted([None], [b"SPDY/9 what\r\n\r\n"])
    origin = await server.start()
    with pytest.raises(UpstreamError) as caught:
        await _get(pool, origin, timeout=0.2)
    assert caught.value.kind == "timeout"
    with pytest.raises(UpstreamError) as caught:
        await _get(pool, origin)
    assert caught.value.kind == "broken"
    with pytest.raises(UpstreamError) as caught:
        await _get(pool, Origin.parse(f"http://127.0.0.1:{free_port()}"))
    assert caught.value.kind == "connect"
    await server.stop()


def test_origin_parsing():
    assert Origin.parse("http://svc.ns:8080/base/").authority == "svc.ns:8080"
    assert Origin.parse("http://svc.ns:8080/base/").base_path == "/base"
    assert Origin.parse("https://api.test").port == 443
    assert Origin.parse("https://api.test").authority == "api.test"
    assert Origin.parse("http://[::1]:81").authority == "[::1]:81"
    with pytest.raises(ValueError):
        Origin.parse("ftp://x")


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",  # bare CR: response splitting
    b"HTTP/1.1 200 OK\r\nX-A: a\nSet-Cookie: x\r\nContent-Length: 0\r\n\r\n",  # bare LF
    b"HTTP/1.1 200 OK\r\nX-A: a\x00\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",  # bad chunk size
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",  # never asked for
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * (MAX_HEAD + 10) + b"\r\nContent-Length: 0\r\n\r\n",
])
async def test_response_heads_that_could_split_or_smuggle_are_refused(pool, head):
    server = Scripted([head])
    origin = await server.start()
    with pytest.raises(UpstreamError) as caught:
        await _get(pool, origin)
    assert caught.value.kind == "broken"
    await server.stop()


async def test_truncated_bodies_are_errors_not_short_answers(pool):
    def cut(answer: bytes) -> Callable[[asyncio.StreamWriter], None]:
        def send(writer: asyncio.StreamWriter) -> None:
            writer.write(answer)
            writer.close()
        return send

    server = Scripted([cut(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")],
                      [cut(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")],
                      [cut(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nabc" % (SMALL_BODY + 1))])
    origin = await server.start()
    for _ in range(3):
        with pytest.raises(UpstreamError) as caught:
            await _get(pool, origin)
        assert caught.value.kind == "broken"
    await server.stop()


async def test_bytes_after_the_body_stop_reuse(pool):
    server = Scripted([OK + b"HTTP/1.1 200 OK\r\n"], [OK])
    origin = await server.start()
    assert (await _get(pool, origin))[2] == b"ok"  # the answer itself is whole
    assert (await _get(pool, origin))[2] == b"ok"
    assert server.accepted == 2  # but the stray bytes made the first connection unusable
    await server.stop()


async def test_head_answer_with_chunked_framing_then_reuse(pool):
    server = Scripted([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A:  padded \t\r\n\r\n", OK])
    origin = await server.start()
    status, headers, body = await _get(pool, origin, "HEAD")
    assert (status, headers["X-A"], body) == (200, "padded", b"")  # trailing whitespace is not the value
    assert (await _get(pool, origin))[2] == b"ok"
    assert server.accepted == 1
    await server.stop()


async def test_status_line_split_across_packets(pool):
    async def slowly(writer: asyncio.StreamWriter) -> None:
        for piece in (b"HTTP/1.1 203 Non-Auth", b"oritative Info\r\nContent-Le", b"ngth: 2\r\n\r", b"\nok"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)

    server = Scripted([lambda w: asyncio.ensure_future(slowly(w))])
    origin = await server.start()
    head = f"GET /p HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode()
    response = await pool.request(origin, "GET", head, None, chunked=False, timeout=5, connect_timeout=2)
    assert (response.status, response.reason, response.body) == (203, "Non-Authoritative Info", b"ok")
    response.release()
    await server.stop()


@pytest.mark.parametrize("bad", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
])
async def test_a_kept_parser_is_as_strict_as_a_fresh_one(pool, bad):
    """The parser of a connection whose last response llhttp ended itself is kept for the next
    exchange: what it refuses on a fresh connection it refuses there too, and a HEAD answer
    (whose advertised body never comes) is never followed by a kept parser."""
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    server = Scripted([OK, chunked, OK, head, OK, bad])
    origin = await server.start()
    assert (await _get(pool, origin))[2] == b"ok"
    assert (await _get(pool, origin))[2] == b"ok"
    assert (await _get(pool, origin))[2] == b"ok"
    assert (await _get(pool, origin, "HEAD"))[2] == b""
    assert (await _get(pool, origin))[2] == b"ok"  # the 5 advertised bytes were never expected
    with pytest.raises(UpstreamError) as caught:
        await _get(pool, origin)
    assert caught.value.kind == "broken"
    assert server.accepted == 1  # one connection all along
    await server.stop()
