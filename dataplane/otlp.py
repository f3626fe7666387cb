"""OTLP/HTTP span export: the protobuf wire format written directly, batched by one background thread.

Why not the SDK's span objects and OTLPSpanExporter: creating, ending and
encoding an SDK span cost more per sampled request than the whole proxied
request's budget allows at 10% sampling (bench/tracing.py; figures in the git log).
Here a finished span is queued as a tuple; the thread encodes up to
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` of them (:func:`encode_span`'s layout), joins them into one
``ExportTraceServiceRequest`` and POSTs it over one kept-alive socket, the collector's response parsed
by llhttp (httptools; http.client's POST and its email-parsed response cost ~7x more per batch).

Settings, as the SDK reads them: ``OTEL_EXPORTER_OTLP[_TRACES]_HEADERS``
(``k=v,k2=v2``, URL-encoded), ``..._TIMEOUT`` (seconds, default 10),
``..._COMPRESSION`` (``gzip`` / ``deflate`` / ``none``), ``..._CERTIFICATE``
(CA bundle), ``..._CLIENT_CERTIFICATE`` + ``..._CLIENT_KEY`` (mTLS);
``OTEL_BSP_SCHEDULE_DELAY`` (ms, default 5000), ``OTEL_BSP_MAX_QUEUE_SIZE``
(2048; spans beyond it are dropped and counted), ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``
(512). The resource is the SDK's ``Resource.create`` (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``telemetry.sdk.*``). A failed export is retried
twice (1 s, 2 s) and then dropped with one warning on stderr that names the
endpoint's host and the error, never a header value.

Field numbers: opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto.
"""

from __future__ import annotations

import binascii
import collections
import email.message
import gzip
import http.client
import itertools
import logging
import os
import re
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import httptools

from kubegate.errors import UserError

log = logging.getLogger(__name__)

SPAN_KIND_SERVER = 2
STATUS_CODE_ERROR = 2
FLAGS_HAS_IS_REMOTE, FLAGS_IS_REMOTE = 0x100, 0x200


_BYTE = [bytes((i,)) for i in range(256)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _len_field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2: a string, bytes or an embedded message) after its tag."""
    size = len(payload)
    return tag + (_BYTE[size] if size < 0x80 else _varint(size)) + payload


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")  # protobuf strings are UTF-8; a lone surrogate becomes '?'


F1, F2, F3, F5, F9 = (_tag(n, 2) for n in (1, 2, 3, 5, 9))


def any_value(value: Any) -> bytes:
    """An AnyValue message: string 1, bool 2, int 3, double 4, array 5."""
    if isinstance(value, str):
        return _len_field(F1, _text(value))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, (list, tuple)):
        return _len_field(F5, b"".join(_len_field(F1, any_value(item)) for item in value))
    return _len_field(F1, _text(str(value)))


def key_value(key: str, value: Any) -> bytes:
    """A KeyValue message (key 1, value 2)."""
    return _len_field(F1, _text(key)) + _len_field(F2, any_value(value))


def span_attribute(key: str, value: Any) -> bytes:
    """One element of a Span's ``attributes`` (field 9), ready to join into :func:`encode_span`'s input."""
    return _len_field(F9, key_value(key, value))


def string_key(key: str) -> bytes:
    """The start of a KeyValue with this key and a string value, for :func:`string_attribute`."""
    return _len_field(F1, _text(key)) + F2


def string_attribute(key: bytes, value: str) -> bytes:
    """``span_attribute(key, value)`` for a string value, the key from :func:`string_key`: the same bytes, faster."""
    text = value.encode("utf-8", "replace")
    size = len(text)
    if size < 126:  # every length below fits one byte
        pair = key + _BYTE[size + 2] + b"\x0a" + _BYTE[size] + text
    else:
        text = b"\x0a" + _varint(size) + text
        pair = key + _varint(len(text)) + text
    size = len(pair)
    return b"\x4a" + (_BYTE[size] if size < 0x80 else _varint(size)) + pair

SPAN_FIXED = b"\x30\x02"  # kind = SERVER
_ERROR = b"\x7a\x02\x18\x02"  # status {code: ERROR}
ROOT_FLAGS = b"\x85\x01" + struct.pack("<I", FLAGS_HAS_IS_REMOTE)  # flags (field 16, fixed32)
CHILD_FLAGS = b"\x85\x01" + struct.pack("<I", FLAGS_HAS_IS_REMOTE | FLAGS_IS_REMOTE)
PARENT = b"\x22\x08"  # parent_span_id's tag and length
span_times = struct.Struct("<BQBQ").pack  # start (field 7) and end (field 8), fixed64 each: (0x39, start, 0x41, end)
SPAN_IDS_HEX = "0a10", "1208"  # trace_id (1) and span_id (2): tags and lengths, in hex, before each id
SPAN_IDS_TIMES = 2 + 16 + 2 + 8 + 18  # the bytes of the ids (tags and lengths with them) and of span_times
SHORT = 256  # string_prefixes covers values of fewer UTF-8 bytes


def span_shared(name: str, attributes: Iterable[bytes], error: bool) -> bytes:
    """The fields many spans share: name, kind SERVER, these attributes (:func:`span_attribute`) and,
    when ``error``, status ERROR."""
    return _len_field(F5, _text(name)) + SPAN_FIXED + b"".join(attributes) + (_ERROR if error else b"")


def string_prefixes(key: str) -> list[bytes]:
    """A string attribute's bytes before its value, by the value's size: ``prefixes[len(text)] + text`` is
    ``string_attribute(string_key(key), value)`` for a value of :data:`SHORT` UTF-8 bytes ``text`` or fewer."""
    start = string_key(key)
    return [string_attribute(start, "x" * size)[:-size or None] for size in range(SHORT)]


def span_frame(size: int) -> bytes:
    """The tag and length of a Span message of ``size`` bytes in ScopeSpans.spans (field 2)."""
    return F2 + _varint(size)


def encode_span(ids: str, parent_id: str | None, trace_state: str | None, start_ns: int, end_ns: int,
                shared: bytes, *strings: tuple[str, str]) -> bytes:
    """One element of ScopeSpans.spans, framed (for :func:`encode_request`): a SERVER Span.

    ``ids``: ``<trace id>-<span id>`` in hex, as in a ``traceparent``; ``shared``
    from :func:`span_shared`; ``strings``: this span's own string attributes as
    ``(key, value)``. The reference layout: tracing.encode_request_spans writes the
    same bytes for a batch in one loop.
    """
    body = [binascii.unhexlify(SPAN_IDS_HEX[0] + ids.replace("-", SPAN_IDS_HEX[1])),
            span_times(0x39, start_ns, 0x41, end_ns), shared]
    body += (string_attribute(string_key(key), value) for key, value in strings)
    body.append(span_tail(parent_id, trace_state))
    return _len_field(F2, b"".join(body))


def span_tail(parent_id: str | None, trace_state: str | None) -> bytes:
    """A span's last fields: its trace state (when any), parent span id (when any) and flags (remote parent or not)."""
    state = _len_field(F3, _text(trace_state)) if trace_state else b""
    return state + (ROOT_FLAGS if parent_id is None else PARENT + bytes.fromhex(parent_id) + CHILD_FLAGS)


def encode_request(resource: dict[str, Any], scope: str, spans: list[bytes]) -> bytes:
    """An ExportTraceServiceRequest holding one ResourceSpans with one ScopeSpans of these spans
    (framed Span messages: :func:`encode_span`, several joined in one piece or not)."""
    return _request(_resource_field(resource), _scope_field(scope), b"".join(spans))


def _resource_field(resource: dict[str, Any]) -> bytes:
    """ResourceSpans.resource (field 1) holding these attributes."""
    return _len_field(F1, b"".join(_len_field(F1, key_value(k, v)) for k, v in resource.items()))


def _scope_field(scope: str) -> bytes:
    """ScopeSpans.scope (field 1) named ``scope``."""
    return _len_field(F1, _len_field(F1, _text(scope)))


def _request(resource_field: bytes, scope_field: bytes, spans: bytes) -> bytes:
    return _len_field(F1, resource_field + _len_field(F2, scope_field + spans))


def _env(environ: dict[str, str], name: str) -> str:
    """OTEL_EXPORTER_OTLP_TRACES_<name>, else OTEL_EXPORTER_OTLP_<name>, else ''."""
    return (environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or environ.get(f"OTEL_EXPORTER_OTLP_{name}") or "").strip()


def _number(environ: dict[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise UserError(f"{name}={raw!r} must be above 0")
    return value


class SpanExport:
    """Queues encoded spans and POSTs them in batches from one daemon thread."""

    def __init__(self, endpoint: str, environ: dict[str, str] | None = None, *, scope: str = "kubegate.dataplane",
                 resource: dict[str, Any] | None = None, encode: Callable[[list[Any]], bytes] | None = None) -> None:
        """``encode``: turns a batch of queued records into their spans, framed and joined (:func:`encode_span`),
        on the export thread (None: the records are such spans already)."""
        from opentelemetry.util.re import parse_env_headers

        env = os.environ if environ is None else environ
        self.endpoint = endpoint
        self._host = urllib.parse.urlsplit(endpoint).netloc.rpartition("@")[2]  # for messages: no credentials
        self._resource = resource if resource is not None else _resource(env)
        self._scope = scope
        self._fields = _resource_field(self._resource), _scope_field(scope)  # encoded once: every batch's
        self._encode = encode
        self._headers = {"Content-Type": "application/x-protobuf", "User-Agent": "kubegate",
                         **parse_env_headers(_env(env, "HEADERS"), liberal=True)}
        self._timeout = _number(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 0) or \
            _number(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10.0)
        compression = _env(env, "COMPRESSION").lower() or "none"
        if compression not in ("none", "gzip", "deflate"):
            raise UserError(f"OTEL_EXPORTER_OTLP_COMPRESSION={compression!r}: expected gzip, deflate or none")
        self._compression = compression
        if compression != "none":
            self._headers["Content-Encoding"] = compression
        self._tls = _tls_context(env) if endpoint.startswith("https://") else None
        self._connection: socket.socket | None = None  # kept alive between batches
        self._direct = _direct(endpoint)  # (host, port, path); None: a proxy applies, urllib posts
        self._head = _request_head(self._direct, self._tls is not None, self._headers) if self._direct else b""
        self._delay = _number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._max_queue = int(_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048))
        self._max_batch = min(int(_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)), self._max_queue)
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self.dropped = 0  # spans refused because the queue was full
        self.failed = 0  # spans lost to failed exports
        self._thread = threading.Thread(target=self._run, name="kubegate-otlp-export", daemon=True)
        self._thread.start()

    def add(self, span: Any) -> None:
        """Called on the event loop: never blocks, never raises."""
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) >= self._max_batch and not self._wake.is_set():
            self._wake.set()

    def close(self, timeout: float = 30) -> None:
        """Export what is queued, then stop the thread."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._drain()
        self._drain()
        if self._connection is not None:
            self._connection.close()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch = list(itertools.starmap(queue.popleft, itertools.repeat((), min(len(queue), self._max_batch))))
            if self._encode is None:
                spans = b"".join(batch)
            else:
                try:
                    spans = self._encode(batch)
                except Exception:  # a bug here must not stop the thread: say it once per batch
                    log.exception("kubegate: %d span(s) could not be encoded", len(batch))
                    self.failed += len(batch)
                    continue
            try:
                self._post(_request(*self._fields, spans), len(batch))
            except Exception:  # not a failure _post knows (those it counts and says): the thread goes on
                log.exception("kubegate: %d span(s) not exported to %s", len(batch), self._host)
                self.failed += len(batch)

    def _post(self, body: bytes, count: int) -> None:
        if self._compression == "gzip":
            body = gzip.compress(body)
        elif self._compression == "deflate":
            body = zlib.compress(body)
        for attempt in range(3):
            try:
                self._send(body)
                return
            except urllib.error.HTTPError as error:
                reason: Any = f"HTTP {error.code}"
                if error.code not in (408, 429, 502, 503, 504):
                    break
            except (OSError, ValueError, http.client.HTTPException, httptools.HttpParserError) as error:
                # refused, timeouts, bad replies
                reason = getattr(error, "reason", None) or type(error).__name__
            if self._closing or attempt == 2:
                break
            time.sleep(1 << attempt)
        self.failed += count
        log.warning("kubegate: %d span(s) not exported to %s: %s", count, self._host, reason)


    def _send(self, body: bytes) -> None:
        """POST one body; a status other than 2xx raises HTTPError. On a kept-alive connection (one per
        thread, reopened after any failure); through urllib when a proxy variable applies to the endpoint."""
        if self._direct is None:
            request = urllib.request.Request(self.endpoint, data=body, headers=self._headers, method="POST")
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._tls) as response:
                response.read()
            return
        message = b"%b%d\r\n\r\n%b" % (self._head, len(body), body)
        for fresh in (False, True):
            connection = self._connection
            reused = connection is not None and not fresh
            if not reused:
                if connection is not None:
                    connection.close()
                connection = self._connection = self._connect()
            try:
                status, reason, keep_alive = _exchange(connection, message)
            except (OSError, httptools.HttpParserError):
                connection.close()
                self._connection = None
                if reused:  # the peer closed the idle connection: once more on a new one, at once
                    continue
                raise
            if not keep_alive:
                connection.close()
                self._connection = None
            if not 200 <= status < 300:
                raise urllib.error.HTTPError(self.endpoint, status, reason, email.message.Message(), None)
            return

    def _connect(self) -> socket.socket:
        host, port, _ = self._direct
        connection = socket.create_connection((host, port), timeout=self._timeout)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                connection = self._tls.wrap_socket(connection, server_hostname=host)
            except BaseException:
                connection.close()
                raise
        return connection


_MAX_ANSWER = 1 << 20  # bytes of a collector's response read before the connection is given up


class _Answer:
    """llhttp's callbacks for one collector response (its body is not needed: read and dropped)."""

    __slots__ = ("complete", "keep_alive", "parser", "reason", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.complete = self.keep_alive = False
        self.status = 0  # the final response's, once its head is in
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # interim (100 Continue): the final response follows; 101 fails the feed
            self.reason = b""
            return
        self.status, self.keep_alive = status, self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = self.status != 0


def _exchange(connection: socket.socket, message: bytes) -> tuple[int, str, bool]:
    """Send one request, read its response: (status, reason, keep-alive). The response is parsed by
    llhttp (httptools), as the data plane parses its upstreams' (exchange.py): framing is not hand-written."""
    connection.sendall(message)
    answer = _Answer()
    read = 0
    while not answer.complete:
        data = connection.recv(65536)
        if not data:
            if answer.status and not answer.keep_alive:  # a body delimited by the close
                break
            raise ConnectionError("the collector closed the connection")
        read += len(data)
        if read > _MAX_ANSWER:
            raise ConnectionError("the collector's response is too large")
        try:
            answer.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # 101 (or CONNECT's 2xx): no answer to a POST
            raise httptools.HttpParserError("the collector switched protocols") from None
    return answer.status, answer.reason.decode("latin-1"), answer.keep_alive


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _request_head(direct: tuple[str, int, str], tls: bool, headers: dict[str, str]) -> bytes:
    """The collector POSTs' head up to the Content-Length value. A header name that is not a token,
    a value with a line break or NUL, or one not in Latin-1 is one clear error (named, never its value)."""
    host, port, path = direct
    authority = f"[{host}]" if ":" in host else host
    if port != (443 if tls else 80):
        authority += f":{port}"
    lines = [f"POST {path} HTTP/1.1", f"Host: {authority}"]
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise UserError(f"OTEL_EXPORTER_OTLP_HEADERS: header {name!r} is not a valid HTTP header")
        lines.append(f"{name}: {value}")
    lines.append("Content-Length: ")
    try:
        return "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise UserError("OTEL_EXPORTER_OTLP_HEADERS: a header value is not Latin-1 text") from None


def _direct(endpoint: str) -> tuple[str, int, str] | None:
    """(host, port, path and query) to POST to, or None when a proxy variable (http_proxy ...) covers it."""
    split = urllib.parse.urlsplit(endpoint)
    host = split.hostname or ""
    if urllib.request.getproxies().get(split.scheme) and not urllib.request.proxy_bypass(host):
        return None
    port = split.port or (443 if split.scheme == "https" else 80)
    return host, port, (split.path or "/") + (f"?{split.query}" if split.query else "")


def _resource(env: Any) -> dict[str, Any]:
    from opentelemetry.sdk.resources import Resource

    return dict(Resource.create({} if env.get("OTEL_SERVICE_NAME") else {"service.name": "kubegate"}).attributes)


def _tls_context(env: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=_env(env, "CERTIFICATE") or None)
    certificate, key = _env(env, "CLIENT_CERTIFICATE"), _env(env, "CLIENT_KEY")
    if certificate:
        context.load_cert_chain(certificate, key or None)
    return context
