"""The aiohttp half of the client front: the HTTPS listener, and plain-HTTP requests http1.py hands over.

aiohttp's server as it comes has three habits a gateway cannot keep:

* it waits for a request head forever once a byte of it arrived (a client
  sending its headers at 1 byte/s holds a connection indefinitely);
* when its parser refuses a request it quotes the offending bytes (a header
  line, an API key on it) in the log and in the 400 body;
* it answers with ``Server: Python/3.x aiohttp/3.x``.

:class:`FrontServer` is ``aiohttp.web.Server`` with those fixed: a head must
be complete within ``header_timeout`` of its first byte, a connection without
a request is closed after ``idle_timeout`` (aiohttp's keep-alive timer), a
refused request gets the gateway's JSON error body and one INFO log line with
the parser's phrase only, and every response says ``Server: kubegate``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from .problems import SERVER, error_body, refusal_phrase

log = logging.getLogger("kubegate.dataplane")


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    """Slow-client limits of both listeners (``--header-timeout``, ``--idle-timeout``), in seconds."""

    header: float = 10.0  # from a request head's first byte to its blank line
    idle: float = 60.0  # a connection with no request in progress (keep-alive, or never a byte)

    def __post_init__(self) -> None:
        if not 0 < self.header <= 30:
            raise ValueError("the header timeout must be more than 0 and at most 30 seconds")
        if self.idle <= 0:
            raise ValueError("the idle timeout must be more than 0 seconds")


class _Request(web.BaseRequest):
    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        response.headers["Server"] = SERVER


class _Handler(RequestHandler):
    """aiohttp's connection protocol with a header deadline and refusals that quote nothing."""

    def __init__(self, manager: FrontServer, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        awaiting_head = (self._head_timer is None and not self._request_in_progress and not self._messages
                         and self._payload_parser is None and not self._upgraded)
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif awaiting_head and not self._force_close:
            self._head_timer = self._loop.call_later(self._header_timeout, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self._request_in_progress and not self._messages:
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            log.error("request failed", exc_info=exc)
            reason, text = "internal_error", "internal error"
        else:
            phrase = refusal_phrase(getattr(exc, "message", None) or message)
            log.info("refused a malformed request from %s: %s", request.remote, phrase)
            if isinstance(exc, LineTooLong):
                status, reason, text = 431, "bad_request", "request head too large"
            else:
                reason, text = "bad_request", phrase
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started: the connection is cut instead")
        response = web.Response(status=status, body=error_body(status, reason, text),
                                content_type="application/json")
        response.force_close()
        return response


class FrontServer(web.Server):
    """``aiohttp.web.Server`` whose connections use :class:`_Handler` and :class:`ClientTimeouts`."""

    def __init__(self, handler: Any, timeouts: ClientTimeouts, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=timeouts.idle, **kwargs)
        self.timeouts = timeouts

    def _make_request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        return _Request(message, payload, protocol, writer, task, self._loop)

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, header_timeout=self.timeouts.header, **self._kwargs)

    def drain(self) -> bool:
        """Shutting down: idle connections close at once, busy ones after their response, which says
        ``Connection: close``. aiohttp's own shutdown() instead holds an idle keep-alive connection for
        the whole timeout and then drops it. True while any is busy."""
        busy = False
        for conn in self.connections:
            request = conn._current_request
            if request is None and not conn._request_in_progress:
                conn.force_close()
                continue
            busy = True
            if request is not None and not request._message.should_close:
                request._message = request._message._replace(should_close=True)
            conn.close()
        return busy
