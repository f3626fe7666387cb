"""A lean HTTP/1.1 client for the proxy's upstream leg: pooled keep-alive connections.

Why not aiohttp's ClientSession: per proxied request it spends more CPU on
request/response objects, timers, tracing hooks and header normalisation than
the rest of the gateway costs (bench/dataplane.py). The proxy needs far less:
write one request head (plus a small body) in one ``write``, then hand back a
small body in one piece or stream a large one (exchange.py: one connection,
llhttp parsing, the failure kinds). WebSockets still go through aiohttp (see
proxy.py).

A request on a *reused* keep-alive connection that dies before any response
byte is retried once on a fresh connection when its body can be replayed: the
upstream closed an idle connection at the same moment we picked it, and never
saw the request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .exchange import SMALL_BODY, Connection, UpstreamError, UpstreamResponse

IDLE_PER_ORIGIN = 256  # keep at most this many idle connections per origin
IDLE_SECONDS = 30.0  # drop connections idle longer than this (below common server keep-alives)
DEADLINE_TICK = 0.05  # request timeouts are checked this often (they fire up to this late)


@dataclass(frozen=True, slots=True)
class Origin:
    """One backend base URL, split once per config: where to connect and what to send."""

    host: str
    port: int
    tls: bool
    authority: str  # Host header value
    base_path: str  # path prefix of the base URL, no trailing slash ("" for none)
    key: tuple[str, int, bool]

    @classmethod
    def parse(cls, url: str) -> Origin:
        from yarl import URL

        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"backend URL {url!r} is not an absolute http(s) URL")
        tls = parsed.scheme == "https"
        port = parsed.port or (443 if tls else 80)
        host = parsed.raw_host or parsed.host
        shown = f"[{host}]" if ":" in host else host
        authority = shown if parsed.is_default_port() else f"{shown}:{port}"
        return cls(host, port, tls, authority, parsed.raw_path.rstrip("/"), (host, port, tls))


class UpstreamPool:
    """Keep-alive connections per origin, plus the request/response exchange."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self._idle: dict[tuple[str, int, bool], list[Connection]] = {}
        self._all: set[Connection] = set()
        self._ssl = ssl_context
        self._closed = False
        self._watched: set[Connection] = set()  # exchanges with a deadline
        self._ticker: asyncio.TimerHandle | None = None

    def watch(self, conn: Connection) -> None:
        """One periodic sweep for all request deadlines: a timer per request (heap push,
        cancel, pop with Python-level comparisons) costs more than the sweep."""
        self._watched.add(conn)
        if self._ticker is None:
            self._ticker = self.loop.call_later(DEADLINE_TICK, self._sweep)

    def unwatch(self, conn: Connection) -> None:
        self._watched.discard(conn)

    def _sweep(self) -> None:
        self._ticker = None
        now = self.loop.time()
        for conn in [c for c in self._watched if c.deadline is not None and c.deadline <= now]:
            conn.on_timeout()
        if self._watched and not self._closed:
            self._ticker = self.loop.call_later(DEADLINE_TICK, self._sweep)

    def put_idle(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.origin.key, [])
        if self._closed or len(idle) >= IDLE_PER_ORIGIN:
            conn.abort()
            return
        conn.reused = True
        conn.idle_since = self.loop.time()
        idle.append(conn)

    def forget(self, conn: Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.origin.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _reuse(self, origin: Origin) -> Connection | None:
        """An idle keep-alive connection to ``origin`` that is still fresh, if there is one."""
        idle = self._idle.get(origin.key)
        if idle:
            now = self.loop.time()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                    return conn
                conn.abort()
        return None

    async def _connect(self, origin: Origin, timeout: float | None) -> Connection:
        conn = Connection(self, origin)
        context = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(timeout):
                await self.loop.create_connection(lambda: conn, origin.host, origin.port, ssl=context)
        except TimeoutError:
            raise UpstreamError("connect_timeout", "upstream connect timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError("connect", type(exc).__name__) from None
        self._all.add(conn)
        return conn

    async def request(self, origin: Origin, method: str, head: bytes, body: bytes | AsyncIterator[bytes] | None,
                      *, chunked: bool, timeout: float | None,
                      connect_timeout: float | None) -> UpstreamResponse:
        """Send one request (``head`` is the full request head) and return once the
        response head has arrived; the caller must ``release()`` the response."""
        deadline = self.loop.time() + timeout if timeout else None
        replayable = not (body is not None and not isinstance(body, bytes))
        for _ in range(2):
            conn = self._reuse(origin) or await self._connect(origin, connect_timeout)
            future = conn.begin(method == "HEAD", deadline)
            try:
                if isinstance(body, bytes) and body:
                    conn.write(head + body if len(body) <= SMALL_BODY else head)
                    if len(body) > SMALL_BODY:
                        conn.write(body)
                else:
                    conn.write(head)
                    if body is not None and not isinstance(body, bytes):
                        await self._send_stream(conn, body, chunked)
                return await future
            except UpstreamError as exc:
                conn.abort()
                if exc.kind == "broken" and conn.reused and not conn.got_bytes and replayable:
                    continue  # a keep-alive connection closed under us: try a fresh one
                raise
            except BaseException:
                conn.abort()
                raise
        raise UpstreamError("broken", "upstream closed the connection")

    @staticmethod
    async def _send_stream(conn: Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
        async for chunk in body:
            if not chunk:
                continue
            if chunked:
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                conn.write(chunk)
            await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")

    async def close(self) -> None:
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        self._idle.clear()
