"""One upstream HTTP/1.1 connection and its exchanges: a request out, the response parsed by llhttp.

Responses are parsed by llhttp through httptools (Node's parser, also behind
uvicorn and aiohttp): framing and header syntax are security-sensitive, so they
are not hand-written here. A small body comes back in one piece (so the client
gets one ``send``); a large / chunked / close-delimited one streams through
:class:`_Body` with flow control both ways. The pool (upstream.py) owns the
connections.

Failures are :class:`UpstreamError` with a ``kind`` the proxy maps to
502/504: ``connect`` / ``connect_timeout`` (nothing was sent: always safe to
retry), ``timeout`` (the route's request timeout) and ``broken`` (the
connection failed mid-exchange, or the response was malformed).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httptools

from .flow import WriteFlowControl

if TYPE_CHECKING:
    from .upstream import Origin, UpstreamPool

SMALL_BODY = 64 * 1024  # responses up to this size (with Content-Length) are returned whole
MAX_HEAD = 64 * 1024  # upstream response head size limit
HIGH_WATER = 256 * 1024  # pause reading the upstream when this much is buffered unread
_NO_BODY_STATUSES = frozenset({204, 304})
_READ_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"date"})  # on_header's


class UpstreamError(Exception):
    """kind: connect | connect_timeout | timeout | broken."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class BadResponse(UpstreamError):
    def __init__(self, detail: str) -> None:
        super().__init__("broken", detail)


class _Body:
    """Streamed response body: a bounded buffer between the socket and the consumer."""

    __slots__ = ("_chunks", "_conn", "_size", "_waiter", "done", "error")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self.done = False
        self.error: BaseException | None = None

    def feed(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._size += len(data)
            if self._size > HIGH_WATER:
                self._conn.pause()
            self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done:
            self.done = True
            self.error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._size = 0
                self._conn.resume()
                yield data
                continue
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class UpstreamResponse:
    """Status, headers and either ``body`` (whole, small) or ``stream`` (async iterable).

    ``raw`` holds each header as (lower-case name, ``Name: value\\r\\n`` line) in bytes, as
    received (trailing whitespace of the value removed), so a relayed head is never decoded and
    encoded again; ``headers`` decodes them for aiohttp's writer."""

    __slots__ = ("_conn", "body", "connection", "content_length", "dated", "raw", "reason", "status", "stream")

    def __init__(self, conn: Connection, status: int, reason: str, raw: list[tuple[bytes, bytes]],
                 content_length: int | None) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.raw = raw
        self.content_length = content_length
        self.body: bytes | None = None
        self.stream: _Body | None = None
        self.connection: frozenset[bytes] = frozenset()  # lower-case tokens of its Connection header
        self.dated = False  # it has a Date header

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(line[:len(lower)].decode("latin-1"), line[len(lower) + 2:-2].decode("utf-8", "surrogateescape"))
                for lower, line in self.raw]

    def release(self) -> None:
        """Give the connection back (when the exchange completed cleanly) or close it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish_exchange()


class Connection(WriteFlowControl, asyncio.Protocol):
    """One upstream connection; at most one exchange at a time (no pipelining).

    llhttp (httptools) parses each response: status line, header syntax (no bare
    CR/LF, controls or obs-fold), framing (Content-Length, chunked, until EOF) and
    the smuggling checks (duplicate Content-Length, Content-Length with
    Transfer-Encoding). This class only decides what to hand back and whether the
    connection can be reused. An exchange gets a fresh parser unless llhttp itself ended the
    previous response (``_parser_at_rest``): no parser state (a HEAD response's advertised body,
    an error) carries over to the next.
    """

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        # llhttp itself ended the last response (its body framed by Content-Length or chunks): the
        # parser is at a message boundary, in the state a fresh one starts in, and the next exchange
        # keeps it (no parser per exchange). Never after a HEAD / 204 / 304 answer (which the
        # exchange ends, not llhttp: a HEAD answer's advertised body would be expected next), an
        # interim-only exchange or an error (the connection is not reused then).
        self._parser_at_rest = False
        self._state = 0  # 0 idle, 1 head, 2 small body (kept whole), 3 streamed body, 5 complete
        self._head_request = False
        self._head_size = 0  # bytes received while no head was complete
        self._header_bytes = 0  # names and values of the current head
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._length: int | None = None
        self._chunked = False
        self._connection: frozenset[bytes] = frozenset()
        self._dated = False
        self._parts: list[bytes] = []
        self._response: UpstreamResponse | None = None
        self._future: asyncio.Future[UpstreamResponse] | None = None
        self._keep_alive = True
        self._got_bytes = False
        self._paused = False
        self.deadline: float | None = None  # loop time; watched by the pool's sweep, not a timer of its own

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._state == 0 or self._state == 5:  # unsolicited bytes: the connection is unusable
            self._keep_alive = False
            self._close()
            return
        self._got_bytes = True
        if self._state == 1:
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("protocol switch that was not asked for"))
        except httptools.HttpParserError as exc:  # after a complete response: only closes the connection
            self._fail(BadResponse(str(exc) or "malformed response"))
        else:
            if self._state == 1 and self._head_size > MAX_HEAD:  # a head that never ends
                self._fail(BadResponse("response head too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self._state == 3 and exc is None and self._length is None and not self._chunked:
            self._keep_alive = False  # a close-delimited body ends here
            self._complete()
        elif self._state not in (0, 5):
            self._fail(UpstreamError("broken", "upstream closed the connection"))
        self._settle_drain(UpstreamError("broken", "upstream closed the connection"))
        self.pool.forget(self)

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._state != 1:  # a second response after the complete one: nothing asked for it
            raise BadResponse("unsolicited response")

    def _new_head(self) -> None:
        """Forget the head read so far: a new exchange's, or the next one after an interim 1xx."""
        self._reason = b""
        self._headers = []
        self._header_bytes = 0
        self._length = None
        self._chunked = False
        self._connection = frozenset()
        self._dated = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state != 1:
            return  # trailers after a chunked body: dropped
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEAD:  # one that arrived in a single read
            raise BadResponse("response head too large")
        value = value.rstrip(b" \t")  # llhttp keeps trailing OWS
        lower = name.lower()
        if lower in _READ_HEADERS:
            if lower == b"content-length":
                self._length = int(value)  # digits only, never repeated: llhttp checked
            elif lower == b"transfer-encoding":  # llhttp's rule: chunked iff it is the final coding
                self._chunked = value.rsplit(b",", 1)[-1].strip(b" \t").lower() == b"chunked"
            elif lower == b"connection":
                self._connection = frozenset(map(bytes.strip, value.lower().split(b",")))
            else:
                self._dated = True
        self._headers.append((lower, name + b": " + value + b"\r\n"))  # (cheaper than % formatting)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            self._new_head()
            return  # interim (100 Continue, 103 Early Hints): the final response follows; 101 fails the feed
        self._keep_alive = self._parser.should_keep_alive()
        response = self._response = UpstreamResponse(
            self, status, self._reason.decode("utf-8", "surrogateescape"), self._headers, self._length)
        response.connection = self._connection
        response.dated = self._dated
        if self._head_request or status in _NO_BODY_STATUSES:  # RFC 9112 6.3: no body, whatever the headers say
            response.body = b""
            self._complete()
            self._resolve()
        elif self._length is not None and self._length <= SMALL_BODY:
            self._state = 2
        else:
            self._state = 3
            response.stream = _Body(self)
            self._resolve()

    def on_body(self, data: bytes) -> None:
        if self._state == 2:
            self._parts.append(data)
        elif self._state == 3:
            self._response.stream.feed(data)
        else:  # bytes after a HEAD answer: do not trust the stream
            self._keep_alive = False

    def on_message_complete(self) -> None:
        state = self._state
        if state == 2:
            parts, self._parts = self._parts, []
            self._response.body = parts[0] if len(parts) == 1 else b"".join(parts)
            self._complete()
            self._parser_at_rest = True
            self._resolve()
        elif state == 3:
            self._complete()
            self._parser_at_rest = True
        # state 1: an interim response ended; state 5: a HEAD/204/304 answer, already complete

    # --- exchange ---------------------------------------------------------------------------

    def begin(self, head_request: bool, deadline: float | None) -> asyncio.Future[UpstreamResponse]:
        self._state = 1
        if not self._parser_at_rest:  # a fresh parser unless llhttp ended the last response itself
            self._parser = httptools.HttpResponseParser(self)
        self._parser_at_rest = False
        self._head_request = head_request
        self._head_size = 0
        self._new_head()
        self._keep_alive = True
        self._got_bytes = False
        self._parts = []
        self._future = self.loop.create_future()
        if deadline is not None:
            self.deadline = deadline
            self.pool.watch(self)
        return self._future

    def write(self, data: bytes) -> None:
        if self.transport is None:
            raise UpstreamError("broken", "upstream closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.transport is None:
            raise UpstreamError("broken", "upstream closed the connection")
        await self._wait_writable()

    def abort(self) -> None:
        """Give up on this exchange (client gone, body too large): never reuse the connection."""
        self._keep_alive = False
        self._clear_deadline()
        if self._state not in (0, 5):
            self._state = 5
            body = self._response.stream if self._response is not None else None
            if body is not None:
                body.finish(UpstreamError("broken", "exchange aborted"))
        self._close()

    def finish_exchange(self) -> None:
        if self._state == 5 and self._keep_alive and not self.closed:
            self._clear_deadline()
            self._state = 0
            self._response = None
            self._future = None
            self.pool.put_idle(self)
        else:
            self.abort()

    @property
    def got_bytes(self) -> bool:
        return self._got_bytes

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    # --- outcome --------------------------------------------------------------------------------

    def _resolve(self) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(self._response)

    def _complete(self) -> None:
        self._state = 5
        self._clear_deadline()
        response = self._response
        if response is not None and response.stream is not None:
            response.stream.finish()

    def _fail(self, error: UpstreamError) -> None:
        self._keep_alive = False
        self._state = 5
        self._clear_deadline()
        future = self._future
        if future is not None and not future.done():
            future.set_exception(error)
        elif self._response is not None and self._response.stream is not None:
            self._response.stream.finish(error)
        self._close()

    def on_timeout(self) -> None:
        self._fail(UpstreamError("timeout", "upstream timed out"))

    def _clear_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline = None
            self.pool.unwatch(self)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
