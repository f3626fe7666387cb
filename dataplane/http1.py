"""A lean HTTP/1.1 front for the plain-HTTP listener: simple requests served directly,
everything else handed to aiohttp.

aiohttp's server machinery (request objects, a task per request, writer and
response preparation) is a large share of a proxied request's CPU (figures in
the git log and bench/peers.py). Most API traffic is the simplest case: HTTP/1.1, no request body, no
upgrade. llhttp (through httptools, as uvicorn uses it) parses every request
head; this protocol runs the bodyless HTTP/1.1 ones through the pipeline
(pipeline.py) and writes their answers with framing.TransportFront. A request llhttp
refuses (bare CR/LF, obs-fold, controls, Content-Length with Transfer-Encoding,
duplicate Content-Length, ...) gets a 400 and the connection is closed. Any
other request (a body, an upgrade, HTTP/1.0, not exactly one Host, a target
that is not origin-form) makes it hand the connection, unread bytes included,
to aiohttp's own protocol at the request's first byte: the parser is only ever
fed up to the end of a head, so a body is never read by two parsers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from .flow import WriteFlowControl
from .framing import Front, TransportFront, refusal_bytes
from .messages import Request, Sent
from .problems import refusal_phrase
from .webfront import ClientTimeouts

log = logging.getLogger("kubegate.dataplane")

MAX_HEAD = 8190  # aiohttp's default limit; a larger head is refused with 431
MAX_BUFFERED = 64 * 1024  # pipelined bytes held while a request is in flight before pausing reads
SWEEP_SECONDS = 5.0  # slow and idle connections are closed within this much after their timeout


class Target(NamedTuple):
    raw_path: str
    raw_query_string: str


class RequestHead:
    """llhttp's callbacks, one request head at a time; ``simple()`` says whether the front serves it.

    ``feed`` raises ``httptools.HttpParserError`` for a request llhttp refuses and
    ``httptools.HttpParserUpgrade`` for an upgrade (WebSocket, h2c) or CONNECT.
    """

    __slots__ = ("_parser", "complete", "headers", "hosts", "keep_alive", "method", "url", "version")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self.reset()

    def reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.hosts = 0
        self.complete = False
        self.keep_alive = True
        self.method = ""
        self.version = ""

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            self.hosts += 1
        # llhttp checked both (token name; no CR, LF or controls in the value) but keeps trailing OWS
        self.headers.append((name.decode("latin-1"), value.rstrip(b" \t").decode("utf-8", "surrogateescape")))

    def on_message_complete(self) -> None:
        parser = self._parser
        self.complete = True
        self.keep_alive = parser.should_keep_alive()
        self.method = parser.get_method().decode("ascii")
        self.version = parser.get_http_version()

    def simple(self) -> tuple[str, Target, list[tuple[str, str]], bool] | None:
        """(method, target, headers, close) of a complete request the front serves; None = aiohttp's."""
        url = self.url
        # url.find, not ``b"#" in url``: bytes ``in`` first tries its operand as an int, and the
        # TypeError it raises and clears costs more than the whole search (once per request)
        if self.version != "1.1" or self.hosts != 1 or url[:1] != b"/" or url.find(b"#") != -1:
            return None
        path, _, query = url.decode("latin-1").partition("?")  # llhttp allows visible ASCII only
        return self.method, (path, query), self.headers, not self.keep_alive  # a Target, as a plain tuple


Handler = Callable[[Request, Front], Awaitable[Sent]]


class ClientConnections:
    """The open front connections, with one periodic sweep closing idle ones and those whose
    request head is late (a timer per request would cost a heap push, a cancel and a pop on
    every request)."""

    def __init__(self, timeouts: ClientTimeouts | None = None) -> None:
        self.timeouts = timeouts or ClientTimeouts()
        self._conns: set[FastHttpProtocol] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._period = min(SWEEP_SECONDS, self.timeouts.header / 4, self.timeouts.idle / 4)

    def add(self, conn: FastHttpProtocol) -> None:
        self._conns.add(conn)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().call_later(self._period, self._sweep)

    def discard(self, conn: FastHttpProtocol) -> None:
        self._conns.discard(conn)

    def __iter__(self):
        return iter(list(self._conns))

    def _sweep(self) -> None:
        self._ticker = None
        now = asyncio.get_running_loop().time()
        header, idle = self.timeouts.header, self.timeouts.idle
        for conn in list(self._conns):
            if conn.busy:
                continue
            if conn.head_since is not None:
                if now - conn.head_since > header:
                    conn.close_if_idle()
            elif now - conn.idle_since > idle:
                conn.close_if_idle()
        if self._conns:
            self._ticker = asyncio.get_running_loop().call_later(self._period, self._sweep)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None


class FastHttpProtocol(WriteFlowControl, asyncio.Protocol):
    """One client connection: simple requests one at a time; otherwise aiohttp takes over."""

    def __init__(self, handler: Handler, fallback: Callable[[], asyncio.Protocol],
                 connections: ClientConnections) -> None:
        self._handler = handler
        self._fallback = fallback
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._front = TransportFront(self)
        self._remote = ""
        self._buf = b""  # received bytes from the current request's first byte on
        self._fed = 0  # how many of them llhttp has seen (all part of the current head)
        self._reader = RequestHead()
        self._task: asyncio.Task | None = None  # serves this connection's requests, one after another
        self._waiter: asyncio.Future[None] | None = None  # the task waits here between requests
        self._paused = False
        self.idle_since = self._loop.time()
        self.head_since: float | None = None  # when the head being received started (header timeout)
        self._close_after = False
        self._request: Request | None = None  # the one in flight

    @property
    def busy(self) -> bool:
        return self._request is not None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if peer else ""
        self._connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data
        if self._request is None:
            self._next()
        elif len(self._buf) > MAX_BUFFERED and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # like aiohttp: EOF closes, and connection_lost cancels the request in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self.transport = None
        if self._task is not None:
            self._task.cancel()  # the client is gone: stop the upstream exchange too
        self._settle_drain(ConnectionResetError("client closed the connection"))

    # --- requests -----------------------------------------------------------------------------

    def _next(self) -> None:
        """Parse the next buffered request head: serve it, hand the connection over, or refuse it."""
        buf = self._buf
        if not buf or self.transport is None:
            return
        end = buf.find(b"\r\n\r\n", max(0, self._fed - 3))
        stop = len(buf) if end == -1 else end + 4  # never past a head's blank line: a body stays unread
        if stop > MAX_HEAD:
            self._refuse(431, "request head too large")
            return
        reader = self._reader
        try:
            reader.feed(buf[self._fed:stop])
        except httptools.HttpParserUpgrade:
            self._hand_off()
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, refusal_phrase(str(exc)))
            return
        self._fed = stop
        if not reader.complete:
            if end != -1:
                self._hand_off()  # the head is complete and a body follows: aiohttp reads it
            elif self.head_since is None:
                self.head_since = self._loop.time()
            return
        self.head_since = None
        parsed = reader.simple()
        if parsed is None:
            self._hand_off()
            return
        reader.reset()
        self._buf, self._fed = buf[stop:], 0
        method, target, headers, close = parsed
        view = CIMultiDictProxy(CIMultiDict(headers))
        path, query = target
        request = Request(method, path, path, query, view, self._remote,
                          self.transport, content_length=0 if "Content-Length" in view else None, vetted=True,
                          close=close)
        self._request = request
        if self._close_after:  # draining: this answer is the connection's last
            request.close = True
        self._wake()

    def _wake(self) -> None:
        """Have the connection's task look at ``_request`` (and at ``transport``: None ends it); the
        first request starts the task. One task per connection, not one per request."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif self._task is None and self._request is not None:
            self._task = self._loop.create_task(self._work())

    def _refuse(self, status: int, message: str) -> None:
        """A request llhttp refused, or an oversized head: answer, then close (the stream is unusable)."""
        transport, self.transport = self.transport, None
        self._buf = b""
        log.info("refused a malformed request from %s: %s", self._remote, message)
        transport.write(refusal_bytes(status, message))
        transport.close()
        self._wake()

    def _hand_off(self) -> None:
        transport = self.transport
        if transport is None:
            return
        self._connections.discard(self)
        self.head_since = None
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buf = self._buf, b""
        self.transport = None
        if self._paused:
            transport.resume_reading()
        self._wake()
        if data:
            protocol.data_received(data)

    async def _work(self) -> None:
        """Answer the connection's requests one at a time (one coroutine level: this loop serves
        each request itself); ends when the connection is done (closed, cut or cancelled)."""
        try:
            while self.transport is not None:
                request = self._request
                if request is None:
                    self._waiter = self._loop.create_future()
                    await self._waiter
                    continue
                try:
                    await self._handler(request, self._front)
                    if self._write_paused:  # a client that pipelines without reading waits for its answers
                        await self._wait_writable()
                except (asyncio.CancelledError, ConnectionError):
                    if self.transport is not None:
                        self.transport.abort()
                    return
                except Exception:
                    log.exception("request failed")
                    if self.transport is not None:
                        self.transport.abort()
                    return
                finally:
                    self._request = None
                transport = self.transport
                if transport is None:
                    return
                if request.close or self._close_after:
                    transport.close()
                    return
                if self._paused:
                    self._paused = False
                    transport.resume_reading()
                self.idle_since = self._loop.time()
                self._next()
        finally:
            self._task = None

    def _arm_idle(self) -> None:
        self.idle_since = self._loop.time()

    # --- framing.Connection ------------------------------------------------------------------

    async def wait_writable(self) -> None:
        await self._wait_writable()

    def cut(self) -> None:
        self._close_after = True
        if self.transport is not None:
            self.transport.abort()

    def close_if_idle(self) -> None:
        if self._request is None and self.transport is not None:
            self.transport.close()

    def drain(self) -> None:
        """Shutting down: an idle connection closes now; a busy one answers its request in flight with
        ``Connection: close`` (when its head is not out yet) and then closes."""
        self._close_after = True
        if self._request is not None:
            self._request.close = True
        self.close_if_idle()

