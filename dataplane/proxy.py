"""Forwarding one request upstream: streamed both ways, pooled, with retries and WebSockets.

Everything that depends only on the route (backend URLs, cumulative weights,
timeouts) is an :class:`UpstreamPlan` built once per config snapshot; the
per-request work is header filtering, a weighted pick and byte copying.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from kubegate.config import CompiledRoute

from .bodies import BodyTooLarge

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Set by the gateway itself; an incoming copy is replaced (X-Forwarded-For is appended to).
_OWN_HEADERS = frozenset({"host", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "x-forwarded-for"})
_RESPONSE_SKIP = HOP_BY_HOP | {"content-length"}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRY_STATUSES = frozenset({502, 503, 504})
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
CHUNK = 64 * 1024


class ProxyFailure(Exception):
    """A request the gateway answers itself (502/503/504/413), with a safe message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def build_session(*, limit: int = 1000, keepalive: float = 30.0) -> aiohttp.ClientSession:
    """One pooled session per Gateway: keep-alive upstream connections are the biggest win."""
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

    bases: tuple[str, ...]  # backend base URLs without a trailing slash
    cumulative: tuple[int, ...]  # running weight totals for bisect
    total_weight: int
    strip_prefix: str | None
    timeout: aiohttp.ClientTimeout
    retries: int

    @classmethod
    def for_route(cls, route: CompiledRoute) -> UpstreamPlan:
        bases, cumulative, total = [], [], 0
        for backend in route.backends:
            if backend.weight <= 0:
                continue
            url = URL(backend.url)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(f"route {route.id}: backend URL {backend.url!r} is not an absolute http(s) URL")
            total += backend.weight
            bases.append(backend.url.rstrip("/"))
            cumulative.append(total)
        prefix = route.strip_prefix.rstrip("/") if route.strip_prefix else None
        return cls(
            tuple(bases), tuple(cumulative), total, prefix or None,
            aiohttp.ClientTimeout(total=route.request_timeout, sock_connect=route.connect_timeout),
            route.retries,
        )

    def pick(self, avoid: str | None = None) -> str | None:
        """Weighted random backend; on retry prefer one that was not just tried."""
        if not self.bases:
            return None
        if len(self.bases) == 1:
            return self.bases[0]
        for _ in range(3):
            base = self.bases[bisect.bisect_right(self.cumulative, random.randrange(self.total_weight))]
            if base != avoid:
                return base
        return base

    def upstream_path(self, path: str) -> str:
        """Apply stripPrefix on a segment boundary; the result always starts with '/'."""
        prefix = self.strip_prefix
        if prefix and path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            return path[len(prefix):] or "/"
        return path


def request_id(incoming: str | None) -> str:
    """Keep a well-formed incoming X-Request-Id (trace continuity); otherwise mint one."""
    if incoming and REQUEST_ID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)


def upstream_headers(headers: CIMultiDictProxy[str], *, peer: str, proto: str, host: str, rid: str,
                     drop: frozenset[str] = frozenset(), websocket: bool = False) -> CIMultiDict[str]:
    """Request headers for the upstream: hop-by-hop removed, X-Forwarded-* and X-Request-Id set.

    ``drop`` holds lower-case header names the gateway itself fills (forwarded JWT
    claims), so a client cannot spoof them.
    """
    listed = headers.get("Connection")
    connection_named = (
        frozenset(t.strip().lower() for t in listed.split(",")) if listed else frozenset()
    )
    out: CIMultiDict[str] = CIMultiDict()
    forwarded_for = None
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _OWN_HEADERS or lower in drop or lower in connection_named:
            if lower == "x-forwarded-for":
                forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
            continue
        if websocket and lower.startswith("sec-websocket-"):
            continue  # aiohttp's ws_connect writes its own handshake headers
        out.add(name, value)
    out["X-Forwarded-For"] = f"{forwarded_for}, {peer}" if forwarded_for else peer
    out["X-Forwarded-Proto"] = proto
    if host:
        out["X-Forwarded-Host"] = host
    out["X-Request-Id"] = rid
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
    """Read a whole (bounded) body, for schema validation; BodyTooLarge past ``limit``."""
    parts, seen = [], 0
    async for chunk in content.iter_chunked(CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge()
        parts.append(chunk)
    return b"".join(parts)


async def forward(request: web.BaseRequest, session: aiohttp.ClientSession, plan: UpstreamPlan, target: str,
                  headers: CIMultiDict[str], body: bytes | AsyncIterator[bytes] | None,
                  response_headers: dict[str, str], on_headers=None) -> web.StreamResponse:
    """Send the request upstream (retrying where safe) and stream the answer back.

    ``target`` is the path + query for the upstream. ``on_headers`` is called with
    the upstream latency when response headers arrive (for metrics).
    """
    method = request.method
    attempts = 1 + (plan.retries if body is None and method in IDEMPOTENT else 0)
    loop = asyncio.get_running_loop()
    base: str | None = None
    failure = ProxyFailure(503, "no_backend", "no backend available")
    for attempt in range(attempts):
        base = plan.pick(avoid=base)
        if base is None:
            raise failure
        started = loop.time()
        try:
            upstream = await session.request(
                method, URL(base + target, encoded=True), headers=headers, data=body,
                allow_redirects=False, timeout=plan.timeout, compress=None,
            )
        except BodyTooLarge:
            raise ProxyFailure(413, "body_too_large", "request body too large") from None
        except aiohttp.ConnectionTimeoutError:
            failure = ProxyFailure(504, "upstream_connect_timeout", "upstream connect timed out")
            continue
        except aiohttp.ClientConnectorError:
            failure = ProxyFailure(502, "upstream_unreachable", "upstream connection failed")
            continue
        except TimeoutError:
            raise ProxyFailure(504, "upstream_timeout", "upstream timed out") from None
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, BodyTooLarge) or isinstance(exc.__context__, BodyTooLarge):
                raise ProxyFailure(413, "body_too_large", "request body too large") from None
            failure = ProxyFailure(502, "upstream_error", "upstream connection failed")
            if body is None and method in IDEMPOTENT:
                continue
            raise failure from None
        try:
            if upstream.status in RETRY_STATUSES and attempt + 1 < attempts:
                continue
            if on_headers is not None:
                on_headers(loop.time() - started)
            return await _relay_response(request, upstream, response_headers)
        finally:
            upstream.release()
    raise failure


async def _relay_response(request: web.BaseRequest, upstream: aiohttp.ClientResponse,
                          extra: dict[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    out = response.headers
    listed = upstream.headers.get("Connection")
    named = frozenset(t.strip().lower() for t in listed.split(",")) if listed else frozenset()
    for name, value in upstream.headers.items():
        lower = name.lower()
        if lower not in _RESPONSE_SKIP and lower not in named:
            out.add(name, value)
    for name, value in extra.items():
        out[name] = value
    length = upstream.content_length
    if length is not None:
        response.content_length = length
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(CHUNK):
            await response.write(chunk)
        await response.write_eof()
    except (aiohttp.ClientError, TimeoutError, ConnectionResetError):
        # Headers are already sent: the only honest signal left is a cut connection.
        if request.transport is not None:
            request.transport.abort()
    return response


def is_websocket_upgrade(headers: CIMultiDictProxy[str]) -> bool:
    upgrade = headers.get("Upgrade")
    return bool(upgrade) and upgrade.lower() == "websocket" and "upgrade" in headers.get("Connection", "").lower()


async def relay_websocket(request: web.BaseRequest, session: aiohttp.ClientSession, plan: UpstreamPlan,
                          target: str, headers: CIMultiDict[str],
                          response_headers: dict[str, str]) -> web.StreamResponse:
    """Open the upstream WebSocket first, then accept the client's and relay frames both ways."""
    base = plan.pick()
    if base is None:
        raise ProxyFailure(503, "no_backend", "no backend available")
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    try:
        upstream = await session.ws_connect(
            URL(base + target, encoded=True), headers=headers, protocols=offered, autoclose=False,
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
