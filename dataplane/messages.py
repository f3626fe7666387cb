"""What travels along the request path: a front's :class:`Request`, and the pipeline's answer.

A front (http1.py's lean one, or aiohttp's for bodies, HTTP/1.0, upgrades and
TLS) parses a request into a :class:`Request`; the pipeline (pipeline.py)
returns one answer for it:

* :class:`Refusal`: the gateway's own JSON error (404, 429, 502, ...);
* :class:`Relay`: an upstream response whose head has arrived, to relay;
* :class:`Upgrade`: a WebSocket to open upstream and then accept (aiohttp front only).

framing.py writes any answer to either front and reports what it wrote as :class:`Sent`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from multidict import CIMultiDictProxy

from .problems import error_body

if TYPE_CHECKING:
    from aiohttp import StreamReader, web
    from aiohttp.abc import AbstractStreamWriter

    from .exchange import UpstreamResponse


class Request:
    """One client request as the pipeline reads it, from either front."""

    __slots__ = ("close", "content", "content_length", "headers", "method", "path", "query", "remote",
                 "target", "tls", "transport", "vetted", "writer")

    def __init__(self, method: str, target: str, path: str, query: str, headers: CIMultiDictProxy[str],
                 remote: str, transport: asyncio.BaseTransport | None, *, tls: bool = False,
                 content_length: int | None = None, content: StreamReader | None = None,
                 writer: AbstractStreamWriter | None = None, vetted: bool = False, close: bool = False) -> None:
        self.method = method
        self.target = target  # the request-target as sent (origin-, absolute- or authority-form)
        self.path = path  # its raw path, without the query
        self.query = query
        self.headers = headers
        self.remote = remote  # the peer's address ("" when unknown)
        self.transport = transport
        self.tls = tls
        self.content_length = content_length
        self.content = content  # the body, when there is one (aiohttp front)
        self.writer = writer  # the aiohttp front's writer (100 Continue)
        self.vetted = vetted  # the front checked: exactly one Host, origin-form target
        self.close = close  # the answer is the connection's last (set while draining, too)

    @classmethod
    def of_aiohttp(cls, request: web.BaseRequest, tls: bool) -> Request:
        rel = request.rel_url
        return cls(request.method, request.raw_path, rel.raw_path, rel.raw_query_string, request.headers,
                   request.remote or "", request.transport, tls=tls, content_length=request.content_length,
                   content=request.content if request.body_exists else None, writer=request.writer)


class Refusal:
    """The gateway's own answer: ``{"error", "reason", "status", "request_id"}`` (problems.py)."""

    __slots__ = ("headers", "message", "reason", "route", "status")

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str], route: Any = None) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers  # X-Request-Id, and Allow / Location / Retry-After ... where they apply
        self.route = route  # the matched route's RouteRuntime (metrics), None before a match

    def body(self) -> bytes:
        return error_body(self.status, self.reason, self.message, self.headers.get("X-Request-Id", ""))

    def release(self) -> None:
        pass


class Relay:
    """An upstream response to relay: its head is in; ``release()`` once written (the connection
    goes back to the pool, a circuit-breaker slot is freed)."""

    __slots__ = ("extra", "lines", "release", "route", "upstream")

    def __init__(self, upstream: UpstreamResponse, extra: dict[str, str], release: Callable[[], None],
                 route: Any = None) -> None:
        self.upstream = upstream
        self.extra = extra  # the gateway's response headers (they replace the upstream's of that name)
        self.lines = b""  # and its X-RateLimit-* lines, encoded (admission.Decision.limit_lines)
        self.release = release
        self.route = route

    @property
    def status(self) -> int:
        return self.upstream.status


class Upgrade:
    """A WebSocket: ``open(request)`` connects upstream, then accepts the client's (or refuses)."""

    __slots__ = ("open", "route")

    def __init__(self, open: Callable[[web.BaseRequest], Awaitable[web.StreamResponse | Refusal]],
                 route: Any = None) -> None:
        self.open = open
        self.route = route

    def release(self) -> None:
        pass


Answer = Refusal | Relay | Upgrade


class Sent(NamedTuple):
    """What a front wrote: the status, and the body bytes (None when not known up front)."""

    status: int
    bytes: int | None
