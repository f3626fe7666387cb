"""Forwarding one request upstream: streamed both ways, pooled, with retries and WebSockets.

Everything that depends only on the route (backend URLs, cumulative weights,
timeouts) is an :class:`UpstreamPlan` built once per config snapshot; the
per-request work is header filtering, a weighted pick and byte copying.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from kubegate.config import CompiledRoute

from .bodies import BodyTooLarge
from .circuit import Breakers, EndpointBreaker, Overflow, RouteBreaker
from .exchange import UpstreamError, UpstreamResponse
from .framing import HOP_BY_HOP, request_head
from .messages import Relay, Request
from .upstream import Origin, UpstreamPool

# Set by the gateway itself; an incoming copy is replaced (X-Forwarded-For is appended to).
_OWN_HEADERS = frozenset({"host", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "x-forwarded-for"})
# Request headers never copied upstream: hop-by-hop, our own, and body framing (the
# sender frames the body itself); Expect is answered by the gateway, not relayed.
_SKIP = HOP_BY_HOP | _OWN_HEADERS | {"content-length", "expect"}
_SKIP_WS = HOP_BY_HOP | _OWN_HEADERS | {"expect"}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRY_STATUSES = frozenset({502, 503, 504})
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
CHUNK = 64 * 1024
SMALL_UPLOAD = 64 * 1024  # request bodies up to this size are read whole and sent in one write


class ProxyFailure(Exception):
    """A request the gateway answers itself (502/503/504/413), with a safe message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def build_session(*, limit: int = 1000, keepalive: float = 30.0) -> aiohttp.ClientSession:
    """The aiohttp session for upstream WebSockets (plain HTTP goes through upstream.UpstreamPool)."""
    connector = aiohttp.TCPConnector(
        limit=limit, limit_per_host=0, keepalive_timeout=keepalive, ttl_dns_cache=10, use_dns_cache=True,
    )
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"), read_bufsize=CHUNK,
        timeout=aiohttp.ClientTimeout(total=None),
    )


@dataclass(frozen=True, slots=True)
class UpstreamPlan:
    """Precomputed upstream settings of one route."""

    origins: tuple[Origin, ...]  # parsed backend base URLs
    cumulative: tuple[int, ...]  # running weight totals for bisect
    total_weight: int
    strip_prefix: str | None
    timeout: aiohttp.ClientTimeout  # for WebSockets (aiohttp)
    request_timeout: float | None
    connect_timeout: float | None
    retries: int
    breaker: RouteBreaker | None = None  # spec.circuitBreaker (circuit.py)

    @classmethod
    def for_route(cls, route: CompiledRoute, breakers: Breakers | None = None) -> UpstreamPlan:
        origins, cumulative, total = [], [], 0
        for backend in route.backends:
            if backend.weight <= 0:
                continue
            try:
                origins.append(Origin.parse(backend.url))
            except ValueError as exc:
                raise ValueError(f"route {route.id}: {exc}") from None
            total += backend.weight
            cumulative.append(total)
        prefix = route.strip_prefix.rstrip("/") if route.strip_prefix else None
        return cls(
            tuple(origins), tuple(cumulative), total, prefix or None,
            aiohttp.ClientTimeout(total=route.request_timeout, sock_connect=route.connect_timeout),
            route.request_timeout or None, route.connect_timeout or None, route.retries,
            breakers.for_route(route.id, route.circuit_breaker, [o.key for o in origins]) if breakers else None,
        )

    def pick(self, avoid: Origin | None = None) -> Origin | None:
        """Weighted random backend; on retry prefer one that was not just tried."""
        origins = self.origins
        if len(origins) == 1:
            return origins[0]
        if not origins:
            return None
        for _ in range(3):
            origin = origins[bisect.bisect_right(self.cumulative, random.randrange(self.total_weight))]
            if origin is not avoid:
                return origin
        return origin

    def upstream_path(self, path: str) -> str:
        """Apply stripPrefix on a segment boundary; the result always starts with '/'."""
        prefix = self.strip_prefix
        if prefix and path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            return path[len(prefix):] or "/"
        return path


_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)


def request_id(incoming: str | None) -> str:
    """Keep a well-formed incoming X-Request-Id (trace continuity); otherwise mint one.

    Minted ids are a per-process random prefix plus a counter (32 hex digits):
    unique without paying for 16 random bytes per request.
    """
    if incoming and REQUEST_ID.fullmatch(incoming):
        return incoming
    return _ID_PREFIX + "%016x" % (next(_ids) & 0xFFFFFFFFFFFFFFFF)


def upstream_headers(headers: CIMultiDictProxy[str], *, peer: str, proto: str, host: str, rid: str,
                     drop: frozenset[str] = frozenset(), websocket: bool = False,
                     hide_api_key: bool = False) -> list[tuple[str, str]]:
    """Request headers for the upstream: hop-by-hop removed, X-Forwarded-* and X-Request-Id set.

    ``drop`` holds lower-case header names the gateway itself fills (forwarded JWT
    claims) or consumes (``X-API-Key``), so a client cannot spoof them and keys
    never reach backends; ``hide_api_key`` also drops ``Authorization: ApiKey``.
    Content-Length is left to the sender, which frames the body (see :func:`forward`).
    """
    listed = headers.get("Connection")
    connection_named = (
        frozenset(t.strip().lower() for t in listed.split(",")) if listed else frozenset()
    )
    out: list[tuple[str, str]] = []
    forwarded_for = None
    skip = _SKIP_WS if websocket else _SKIP
    for name, value in headers.items():
        lower = name.lower()
        if hide_api_key and lower == "authorization" and value[:7].lower() == "apikey ":
            continue
        if lower in skip or lower in drop or lower in connection_named:
            if lower == "x-forwarded-for":
                forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
            continue
        if websocket and lower.startswith("sec-websocket-"):
            continue  # aiohttp's ws_connect writes its own handshake headers
        out.append((name, value))
    out.append(("X-Forwarded-For", f"{forwarded_for}, {peer}" if forwarded_for else peer))
    out.append(("X-Forwarded-Proto", proto))
    if host:
        out.append(("X-Forwarded-Host", host))
    out.append(("X-Request-Id", rid))
    return out


async def stream_body(content: aiohttp.StreamReader, limit: int) -> AsyncIterator[bytes]:
    """Relay the request body chunk by chunk, refusing it once it exceeds ``limit``."""
    seen = 0
    async for chunk in content.iter_chunked(CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge()
        yield chunk


async def read_body(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Read a whole (bounded) body, for schema validation or a small upload; BodyTooLarge past ``limit``."""
    parts, seen = [], 0
    async for chunk in content.iter_chunked(CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge()
        parts.append(chunk)
    return b"".join(parts)


async def forward(request: Request, pool: UpstreamPool, plan: UpstreamPlan, target: str,
                  headers: list[tuple[str, str]], body: bytes | AsyncIterator[bytes] | None,
                  extra: dict[str, str], on_headers: Callable[[float], None] | None = None) -> Relay:
    """Send the request upstream (retrying where safe) and return the answer to relay once its head is in.

    ``target`` is the path + query for the upstream; ``extra`` the gateway's response headers.
    ``on_headers`` is called with the upstream latency when response headers arrive (for
    metrics). A small upstream body comes whole (one write to the client); others stream.
    """
    method = request.method
    attempts = 1 + (plan.retries if replayable(body) and method in IDEMPOTENT else 0)
    if body is None:
        length = request.headers.get("Content-Length")
        framing = f"Content-Length: {length}\r\n\r\n" if length is not None else "\r\n"
        chunked = False
    elif isinstance(body, bytes):
        framing, chunked = f"Content-Length: {len(body)}\r\n\r\n", False
    elif request.content_length is not None:
        framing, chunked = f"Content-Length: {request.content_length}\r\n\r\n", False
    else:
        framing, chunked = "Transfer-Encoding: chunked\r\n\r\n", True
    if plan.breaker is not None:
        return await _forward_guarded(method, pool, plan, plan.breaker, target, headers, body, extra,
                                      on_headers, framing, chunked, attempts)
    loop = pool.loop
    origin: Origin | None = None
    failure: ProxyFailure | None = None
    origins = plan.origins
    for attempt in range(attempts):
        origin = origins[0] if len(origins) == 1 else plan.pick(avoid=origin)  # (pick's answer for one)
        if origin is None:
            raise failure or _no_backend()
        started = loop.time()
        try:
            upstream = await _attempt(pool, plan, origin, method, target, headers, framing, body, chunked)
        except UpstreamError as exc:
            failure, again = upstream_failure(exc, replayable(body) and method in IDEMPOTENT)
            if again:
                continue
            raise failure from None
        if upstream.status in RETRY_STATUSES and attempt + 1 < attempts:
            upstream.release()
            continue
        if on_headers is not None:
            on_headers(loop.time() - started)
        return Relay(upstream, extra, upstream.release)
    raise failure or _no_backend()


async def _forward_guarded(method: str, pool: UpstreamPool, plan: UpstreamPlan, breaker: RouteBreaker,
                           target: str, headers: list[tuple[str, str]], body: bytes | AsyncIterator[bytes] | None,
                           extra: dict[str, str], on_headers: Callable[[float], None] | None, framing: str,
                           chunked: bool, attempts: int) -> Relay:
    """:func:`forward` for a route with a circuit breaker: per-endpoint slots and outlier detection."""
    loop = asyncio.get_running_loop()
    origin: Origin | None = None
    failure: ProxyFailure | None = None
    for attempt in range(attempts):
        picked = breaker.pick(plan, origin)
        if picked is None:
            raise failure or _no_backend()
        index, origin = picked
        endpoint = breaker.endpoints[index]
        try:
            await endpoint.acquire()
        except Overflow:
            breaker.overflowed()
            raise ProxyFailure(503, "overflow", "too many requests to this backend") from None
        started = loop.time()
        try:
            upstream = await _attempt(pool, plan, origin, method, target, headers, framing, body, chunked)
        except UpstreamError as exc:
            endpoint.release()
            if exc.kind in ("connect", "connect_timeout"):
                breaker.failed(endpoint)
            failure, again = upstream_failure(exc, replayable(body) and method in IDEMPOTENT)
            if again:
                continue
            raise failure from None
        except BaseException:
            endpoint.release()
            raise
        if upstream.status >= 500:
            breaker.failed(endpoint)
        else:
            breaker.succeeded(endpoint)
        if upstream.status in RETRY_STATUSES and attempt + 1 < attempts:
            upstream.release()
            endpoint.release()
            continue
        if on_headers is not None:
            on_headers(loop.time() - started)
        return Relay(upstream, extra, _releaser(upstream, endpoint))
    raise failure or _no_backend()


def _attempt(pool: UpstreamPool, plan: UpstreamPlan, origin: Origin, method: str, target: str,
             headers: list[tuple[str, str]], framing: str, body: bytes | AsyncIterator[bytes] | None,
             chunked: bool) -> Awaitable[UpstreamResponse]:
    """One try of the exchange with ``origin``, under the route's timeouts (forward's and _forward_guarded's)."""
    return pool.request(origin, method, request_head(method, origin, target, headers, framing), body,
                        chunked=chunked, timeout=plan.request_timeout, connect_timeout=plan.connect_timeout)


def _no_backend() -> ProxyFailure:
    return ProxyFailure(503, "no_backend", "no backend available")


def _releaser(upstream: UpstreamResponse, endpoint: EndpointBreaker) -> Callable[[], None]:
    def release() -> None:
        try:
            upstream.release()
        finally:
            endpoint.release()
    return release


def upstream_failure(exc: UpstreamError, retryable: bool) -> tuple[ProxyFailure, bool]:
    """What the client gets for an upstream error, and whether another attempt may follow: a
    connect failure always may (nothing was sent); a broken exchange only for a replayable request."""
    if exc.kind == "connect_timeout":
        return ProxyFailure(504, "upstream_connect_timeout", "upstream connect timed out"), True
    if exc.kind == "connect":
        return ProxyFailure(502, "upstream_unreachable", "upstream connection failed"), True
    if exc.kind == "timeout":
        return ProxyFailure(504, "upstream_timeout", "upstream timed out"), False
    return ProxyFailure(502, "upstream_error", "upstream connection failed"), retryable


def replayable(body: bytes | AsyncIterator[bytes] | None) -> bool:
    return body is None or isinstance(body, bytes)


def is_websocket_upgrade(headers: CIMultiDictProxy[str]) -> bool:
    upgrade = headers.get("Upgrade")
    return bool(upgrade) and upgrade.lower() == "websocket" and "upgrade" in headers.get("Connection", "").lower()


async def relay_websocket(request: web.BaseRequest, session: aiohttp.ClientSession, plan: UpstreamPlan,
                          target: str, headers: list[tuple[str, str]],
                          response_headers: dict[str, str]) -> web.StreamResponse:
    """Open the upstream WebSocket first, then accept the client's and relay frames both ways."""
    origin = plan.pick()
    if origin is None:
        raise ProxyFailure(503, "no_backend", "no backend available")
    base = f"{'https' if origin.tls else 'http'}://{origin.authority}{origin.base_path}"
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    try:
        upstream = await session.ws_connect(
            URL(base + target, encoded=True), headers=CIMultiDict(headers), protocols=offered, autoclose=False,
            max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=plan.timeout.sock_connect or 2.0),
            compress=0,
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise ProxyFailure(502, "upstream_ws_refused", f"upstream refused the WebSocket ({exc.status})") from None
    except aiohttp.ClientError:
        raise ProxyFailure(502, "upstream_unreachable", "upstream connection failed") from None
    client = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (), autoclose=False, max_msg_size=0,
    )
    for name, value in response_headers.items():
        client.headers[name] = value
    try:
        await client.prepare(request)
        await asyncio.gather(_pump(client, upstream), _pump(upstream, client))
    finally:
        await upstream.close()
        await client.close()
    return client


async def _pump(source, sink) -> None:
    async for msg in source:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING) or msg.type == aiohttp.WSMsgType.ERROR:
            break
    if not sink.closed:
        code = source.close_code or aiohttp.WSCloseCode.OK
        await sink.close(code=code)
