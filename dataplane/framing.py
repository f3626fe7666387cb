"""HTTP/1.1 framing, decided in one place: answers written to clients, request heads to upstreams.

An answer (messages.py) goes out through a :class:`Front`: :class:`TransportFront`
writes the bytes itself on the lean front's connections (http1.py: one write
for a small answer), :class:`AiohttpFront` hands the same decisions (status,
filtered headers, body or stream, length) to aiohttp's writer on its
connections (bodies, HTTP/1.0, upgrades, TLS). Either way: the upstream's
hop-by-hop headers (and those its ``Connection`` names) and its ``Server`` are
dropped, the gateway's headers replace the upstream's of the same name, a
HEAD / 1xx / 204 / 304 answer has no body, and a response whose head is out
but whose body breaks is cut (the only honest signal left).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from functools import lru_cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol

from aiohttp import ClientConnectionResetError, web
from aiohttp.helpers import rfc822_formatted_time

from .exchange import UpstreamError
from .messages import Answer, Refusal, Relay, Request, Sent, Upgrade
from .ratelimit import LIMIT_HEADER_NAMES, limit_headers

if TYPE_CHECKING:
    from .exchange import UpstreamResponse
    from .upstream import Origin

log = logging.getLogger("kubegate.dataplane")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# The gateway says `Server: kubegate` itself (like Envoy); a backend's would advertise its versions.
_RESPONSE_SKIP = frozenset(name.encode() for name in HOP_BY_HOP | {"content-length", "server"})
_REQUEST_ID_ONLY = frozenset({b"x-request-id"})
_SKIP_WITH_REQUEST_ID = _RESPONSE_SKIP | _REQUEST_ID_ONLY  # when Connection names nothing else
_REQUEST_ID_AND_LIMITS = _REQUEST_ID_ONLY | frozenset(name.lower().encode() for name in LIMIT_HEADER_NAMES)
_SKIP_WITH_LIMITS = _RESPONSE_SKIP | _REQUEST_ID_AND_LIMITS  # a rate-limited route's usual answer
EMPTY_STATUSES = frozenset({204, 304})
_JSON = ("Content-Type", "application/json")
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_date: tuple[int, bytes] = (0, b"")


def _date_line() -> bytes:
    """``Date: ...`` for this second (formatted once a second, not per response)."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, f"Date: {rfc822_formatted_time()}\r\n".encode())
    return _date[1]


_STATUS_LINES: dict[tuple[int, str], bytes] = {}
_LENGTH_LINES: dict[int, bytes] = {}
_new_tuple = tuple.__new__  # a Sent without NamedTuple's Python-level __new__ (once per answer)


def _length_line(length: int) -> bytes:
    """``Content-Length: N`` and the blank line; those of small bodies are kept in _LENGTH_LINES."""
    line = b"Content-Length: %d\r\n\r\n" % length
    if length < 4096:
        _LENGTH_LINES[length] = line
    return line


def _status_line(status: int, reason: str) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``; those with the standard phrase (or none) are kept in _STATUS_LINES."""
    line = f"HTTP/1.1 {status} {reason or _PHRASES.get(status, '')}\r\n".encode("utf-8", "surrogateescape")
    if reason in ("", _PHRASES.get(status)) and len(_STATUS_LINES) < 1024:  # never an upstream's own words
        _STATUS_LINES[(status, reason)] = line
    return line


@lru_cache(maxsize=256)
def _names(names: tuple[str, ...]) -> frozenset[bytes]:
    """The gateway's header names, lower-case bytes: a route's few name sets (X-RateLimit-*, ...) are made once."""
    return frozenset(name.lower().encode("latin-1") for name in names)


def _kept(upstream: UpstreamResponse, extra: dict[str, str],
          limited: bytes = b"") -> tuple[list[bytes], frozenset[bytes]]:
    """The upstream's header lines a client gets, and the gateway's own header names (lower-case):
    hop-by-hop ones (and those its Connection names) go, the gateway's values replace the upstream's.
    ``limited``: X-RateLimit-* lines the gateway adds too (Relay.lines), when not empty."""
    named = upstream.connection
    if len(extra) == 1 and "X-Request-Id" in extra and named <= _RESPONSE_SKIP:  # the usual answers: one check
        if limited:
            return [line for lower, line in upstream.raw if lower not in _SKIP_WITH_LIMITS], _REQUEST_ID_AND_LIMITS
        return [line for lower, line in upstream.raw if lower not in _SKIP_WITH_REQUEST_ID], _REQUEST_ID_ONLY
    ours = _names(tuple(extra) + LIMIT_HEADER_NAMES if limited else tuple(extra))
    return [line for lower, line in upstream.raw
            if lower not in _RESPONSE_SKIP and lower not in named and lower not in ours], ours


def response_headers(upstream: UpstreamResponse, extra: dict[str, str], limit_lines: bytes = b"") -> list[tuple[str, str]]:
    """:func:`_kept` as (name, value) pairs, plus ours: for aiohttp's writer."""
    lines, _ = _kept(upstream, extra, limit_lines)
    out = []
    for line in lines:
        name, _, value = line[:-2].partition(b": ")
        out.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))
    out.extend(extra.items())
    if limit_lines:
        out.extend(limit_headers(limit_lines).items())
    return out


def relay_head(upstream: UpstreamResponse, extra: dict[str, str], framing: bytes, close: bool,
               limit_lines: bytes = b"") -> bytes:
    """The head of a relayed response, from the upstream's header lines as received; ``limit_lines``:
    the X-RateLimit-* lines, encoded already (Relay.lines)."""
    parts, ours = _kept(upstream, extra, limit_lines)
    status, reason = upstream.status, upstream.reason
    parts.insert(0, _STATUS_LINES.get((status, reason)) or _status_line(status, reason))
    for name, value in extra.items():
        parts.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
    if limit_lines:
        parts.append(limit_lines)
    if b"date" not in ours and (not upstream.dated or b"date" in upstream.connection):
        parts.append(_date_line())
    if b"server" not in ours:
        parts.append(b"Server: kubegate\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(framing)
    return b"".join(parts)


def request_head(method: str, origin: Origin, target: str, headers: list[tuple[str, str]], framing: str) -> bytes:
    """An upstream request's head; ``framing`` is its Content-Length / Transfer-Encoding line and blank line."""
    fields = "\r\n".join(map(": ".join, headers)) + "\r\n" if headers else ""  # no Python frame per header
    return f"{method} {origin.base_path}{target} HTTP/1.1\r\nHost: {origin.authority}\r\n{fields}{framing}".encode(
        "utf-8", "surrogateescape")


def response_head(status: int, reason: str, headers: list[tuple[str, str]], framing: str, close: bool) -> bytes:
    """Status line and headers (name, value pairs); Date and Server added when missing."""
    lines = [f"HTTP/1.1 {status} {reason or _PHRASES.get(status, '')}\r\n"]
    has_date = has_server = False
    for name, value in headers:
        lower = name.lower()
        has_date = has_date or lower == "date"
        has_server = has_server or lower == "server"
        lines.append(f"{name}: {value}\r\n")
    if not has_date:
        lines.append(f"Date: {rfc822_formatted_time()}\r\n")
    if not has_server:
        lines.append("Server: kubegate\r\n")
    if close:
        lines.append("Connection: close\r\n")
    lines.append(framing)
    return "".join(lines).encode("utf-8", "surrogateescape")


def refusal_bytes(status: int, message: str) -> bytes:
    """A whole 4xx answer to a request no parser accepted (the connection closes after it)."""
    refusal = Refusal(status, "bad_request", message, {})
    body = refusal.body()
    return response_head(status, "", [_JSON], f"Content-Length: {len(body)}\r\n\r\n", True) + body


class Front(Protocol):
    """Where a request's answer is written: ``write`` gives what it wrote, or, when it has to wait
    (a streamed body, aiohttp's writer), an awaitable of it (``await`` only then: a coroutine per
    answer is a cost the whole answers written at once do not pay)."""

    def write(self, request: Request, answer: Answer) -> Sent | Awaitable[Sent]: ...


class Connection(Protocol):
    """What :class:`TransportFront` needs of a client connection (http1.FastHttpProtocol)."""

    transport: asyncio.Transport | None

    async def wait_writable(self) -> None: ...

    def cut(self) -> None:
        """The head is out and the body broke: abort, and take no further request."""


class TransportFront:
    """Answers written straight to a connection's transport (the lean front)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def write(self, request: Request, answer: Answer) -> Sent | Awaitable[Sent]:
        if type(answer) is not Relay:
            return self._refusal(request, answer)
        transport = self._conn.transport
        if transport is None:
            raise ConnectionResetError("client closed the connection")
        upstream = answer.upstream
        status, body = upstream.status, upstream.body
        head_only = request.method == "HEAD"
        no_body = head_only or status in EMPTY_STATUSES or status < 200
        length = upstream.content_length
        if status in EMPTY_STATUSES:
            framing = b"\r\n"
        elif body is not None and not no_body:
            length = len(body)
            framing = _LENGTH_LINES.get(length) or _length_line(length)
        elif length is not None:
            framing = b"Content-Length: %d\r\n\r\n" % length
        elif no_body:
            framing = b"\r\n"
        else:
            framing = b"Transfer-Encoding: chunked\r\n\r\n"
        head = relay_head(upstream, answer.extra, framing, request.close, answer.lines)
        sent = _new_tuple(Sent, (status, 0 if head_only else len(body) if body is not None else upstream.content_length))
        if body is not None or no_body:
            transport.write(head if no_body else head + body)
            return sent
        transport.write(head)
        return self._stream(upstream.stream, length is None, sent)

    async def _stream(self, stream: AsyncIterator[bytes] | None, chunked: bool, sent: Sent) -> Sent:
        try:
            await self._copy(stream, chunked=chunked)
        except Exception:  # noqa: BLE001 - headers are out: a cut connection is the only honest signal
            self._conn.cut()
        return sent

    def _refusal(self, request: Request, answer: Refusal | Upgrade) -> Sent:
        if isinstance(answer, Upgrade):  # llhttp hands every upgrade to aiohttp before the pipeline
            raise TypeError("a WebSocket answer on the lean front")
        body = answer.body()
        headers = list(answer.headers.items())
        headers.append(_JSON)
        head = response_head(answer.status, "", headers, f"Content-Length: {len(body)}\r\n\r\n", request.close)
        transport = self._conn.transport
        if transport is not None:
            transport.write(head if request.method == "HEAD" else head + body)
        return Sent(answer.status, 0 if request.method == "HEAD" else len(body))

    async def _copy(self, stream: AsyncIterator[bytes] | None, *, chunked: bool) -> None:
        conn = self._conn
        if stream is not None:
            async for chunk in stream:
                if conn.transport is None:
                    raise ConnectionResetError("client closed the connection")
                conn.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.wait_writable()
        if chunked and conn.transport is not None:
            conn.transport.write(b"0\r\n\r\n")


class AiohttpFront:
    """Answers handed to aiohttp's response writer; ``response`` is what its handler returns."""

    __slots__ = ("_request", "response")

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self.response: web.StreamResponse | None = None

    async def write(self, request: Request, answer: Answer) -> Sent:
        if isinstance(answer, Relay):
            response = await self._relay(answer.upstream,
                                         response_headers(answer.upstream, answer.extra, answer.lines))
        elif isinstance(answer, Upgrade):
            opened = await answer.open(self._request)
            response = self._refusal(opened) if isinstance(opened, Refusal) else opened
        else:
            response = self._refusal(answer)
        self.response = response
        return Sent(response.status, _sent_bytes(request.method, response))

    @staticmethod
    def _refusal(refusal: Refusal) -> web.Response:
        return web.Response(status=refusal.status, body=refusal.body(), content_type="application/json",
                            headers=refusal.headers)

    async def _relay(self, upstream: UpstreamResponse, headers: list[tuple[str, str]]) -> web.StreamResponse:
        request = self._request
        status = upstream.status
        if upstream.body is not None and request.method != "HEAD" and status not in EMPTY_STATUSES:
            return web.Response(status=status, reason=upstream.reason or None, body=upstream.body, headers=headers)
        response = web.StreamResponse(status=status, reason=upstream.reason or None, headers=headers)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        try:
            await response.prepare(request)
            if upstream.stream is not None:
                async for chunk in upstream.stream:
                    await response.write(chunk)
            await response.write_eof()
        except (UpstreamError, ConnectionResetError, ClientConnectionResetError):
            # Headers are already sent: the only honest signal left is a cut connection.
            if request.transport is not None:
                request.transport.abort()
        return response


def _sent_bytes(method: str, response: web.StreamResponse) -> int | None:
    if method == "HEAD":
        return 0
    body = getattr(response, "body", None)
    if isinstance(body, (bytes, bytearray)):
        return len(body)
    length = getattr(response, "body_length", None)
    return length if length else response.content_length
