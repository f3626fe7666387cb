"""OTLP/HTTP span export: the protobuf wire format written directly, batched by one background thread.

Why not the SDK's span objects and OTLPSpanExporter: creating, ending and
encoding an SDK span cost more per sampled request than the whole proxied
request's budget allows at 10% sampling (bench/tracing.py; figures in the git log).
Here a finished span is queued as a tuple; the thread encodes up to
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` of them (:func:`encode_span`), joins them into one ``ExportTraceServiceRequest`` and POSTs it.

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
import gzip
import http.client
import logging
import os
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

_SPAN_FIXED = b"\x30\x02"  # kind = SERVER
_ERROR = b"\x7a\x02\x18\x02"  # status {code: ERROR}
_ROOT_FLAGS = b"\x85\x01" + struct.pack("<I", FLAGS_HAS_IS_REMOTE)  # flags (field 16, fixed32)
_CHILD_FLAGS = b"\x85\x01" + struct.pack("<I", FLAGS_HAS_IS_REMOTE | FLAGS_IS_REMOTE)
_ATTRIBUTE = [b"\x4a" + _BYTE[size] for size in range(128)]  # attributes (field 9): tag and a short length
_STRING = [bytes((size + 2, 0x0a, size)) for size in range(126)]  # AnyValue's length, string_value's tag, length
_times = struct.Struct("<BQBQ").pack  # start (field 7) and end (field 8), fixed64 each


def span_shared(name: str, attributes: Iterable[bytes], error: bool) -> bytes:
    """The fields many spans share, for :func:`encode_span`: name, kind SERVER, these attributes
    (:func:`span_attribute`) and, when ``error``, status ERROR."""
    return _len_field(F5, _text(name)) + _SPAN_FIXED + b"".join(attributes) + (_ERROR if error else b"")


def encode_span(ids: str, parent_id: str | None, trace_state: str | None, start_ns: int, end_ns: int,
                shared: bytes, *strings: tuple[bytes, str]) -> bytes:
    """One element of ScopeSpans.spans: a SERVER Span message, with its tag and length, for :func:`encode_request`.

    ``ids``: ``<trace id>-<span id>`` in hex, as in a ``traceparent``; ``shared``
    from :func:`span_shared`; ``strings``: this span's own string attributes as
    ``(string_key(key), value)``. Protobuf fields may come in any order, so the
    shared ones are one piece and the span is one join.
    """
    # trace_id (1) and span_id (2): their tags and lengths in hex around the ids, one unhexlify
    parts = [binascii.unhexlify("0a10" + ids.replace("-", "1208")), _times(0x39, start_ns, 0x41, end_ns), shared]
    for key, value in strings:
        try:
            text = value.encode()
        except UnicodeEncodeError:  # a lone surrogate: '?' (protobuf strings are UTF-8)
            text = value.encode("utf-8", "replace")
        size = len(text)
        if len(key) + size < 125:  # every length fits one byte (see string_attribute)
            parts += (_ATTRIBUTE[len(key) + size + 3], key, _STRING[size], text)
        else:
            parts.append(string_attribute(key, value))
    if trace_state:
        parts.append(_len_field(F3, _text(trace_state)))
    if parent_id is None:
        parts.append(_ROOT_FLAGS)
    else:
        parts += (b"\x22\x08", bytes.fromhex(parent_id), _CHILD_FLAGS)
    span = b"".join(parts)
    size = len(span)
    if 0x80 <= size < 0x4000:  # the usual size: a two-byte length
        return b"\x12" + bytes((size & 0x7F | 0x80, size >> 7)) + span
    return _len_field(F2, span)


def encode_request(resource: dict[str, Any], scope: str, spans: list[bytes]) -> bytes:
    """An ExportTraceServiceRequest holding one ResourceSpans with one ScopeSpans of these spans
    (each from :func:`encode_span`)."""
    resource_message = b"".join(_len_field(F1, key_value(k, v)) for k, v in resource.items())
    scope_spans = _len_field(F1, _len_field(F1, _text(scope))) + b"".join(spans)
    return _len_field(F1, _len_field(F1, resource_message) + _len_field(F2, scope_spans))


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
                 resource: dict[str, Any] | None = None, encode: Callable[[Any], bytes] | None = None) -> None:
        """``encode``: turns a queued record into its span (:func:`encode_span`) on the export thread
        (None: the records are such spans already)."""
        from opentelemetry.util.re import parse_env_headers

        env = os.environ if environ is None else environ
        self.endpoint = endpoint
        self._resource = resource if resource is not None else _resource(env)
        self._scope = scope
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
        self._connection: http.client.HTTPConnection | None = None  # kept alive between batches
        self._direct = _direct(endpoint)  # (host, port, path); None: a proxy applies, urllib posts
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
            batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            if self._encode is not None:
                try:
                    batch = [self._encode(record) for record in batch]
                except Exception:  # a bug here must not stop the thread: say it once per batch
                    log.exception("kubegate: %d span(s) could not be encoded", len(batch))
                    self.failed += len(batch)
                    continue
            self._post(encode_request(self._resource, self._scope, batch), len(batch))

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
            except (OSError, ValueError, http.client.HTTPException) as error:  # refused, timeouts, bad replies
                reason = getattr(error, "reason", None) or type(error).__name__
            if self._closing or attempt == 2:
                break
            time.sleep(1 << attempt)
        self.failed += count
        log.warning("kubegate: %d span(s) not exported to %s: %s", count,
                    urllib.parse.urlsplit(self.endpoint).netloc.rpartition("@")[2], reason)


    def _send(self, body: bytes) -> None:
        """POST one body; a status other than 2xx raises HTTPError. On a kept-alive connection (one per
        thread, reopened after any failure); through urllib when a proxy variable applies to the endpoint."""
        if self._direct is None:
            request = urllib.request.Request(self.endpoint, data=body, headers=self._headers, method="POST")
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._tls) as response:
                response.read()
            return
        host, port, path = self._direct
        for fresh in (False, True):
            connection = self._connection
            reused = connection is not None and not fresh
            if not reused:
                if connection is not None:
                    connection.close()
                connection = self._connection = http.client.HTTPSConnection(
                    host, port, timeout=self._timeout, context=self._tls) if self._tls is not None \
                    else http.client.HTTPConnection(host, port, timeout=self._timeout)
            try:
                connection.request("POST", path, body, self._headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                self._connection = None
                if reused:  # the peer closed the idle connection: once more on a new one, at once
                    continue
                raise
            if response.will_close:
                connection.close()
                self._connection = None
            if not 200 <= response.status < 300:
                raise urllib.error.HTTPError(self.endpoint, response.status, response.reason, response.msg, None)
            return


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
