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

import collections
import gzip
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
from collections.abc import Callable
from functools import lru_cache
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


common_span_attribute = lru_cache(maxsize=4096)(span_attribute)  # for the values requests repeat (method, outcomes)

_SPAN_FIXED = b"\x30\x02"  # kind = SERVER
_ERROR = b"\x7a\x02\x18\x02"  # status {code: ERROR}
_ROOT_FLAGS = b"\x85\x01" + struct.pack("<I", FLAGS_HAS_IS_REMOTE)  # flags (field 16, fixed32)
_CHILD_FLAGS = b"\x85\x01" + struct.pack("<I", FLAGS_HAS_IS_REMOTE | FLAGS_IS_REMOTE)
_pack_u64 = struct.Struct("<Q").pack


def encode_span(trace_id: str, span_id: str, parent_id: str | None, trace_state: str | None, name: str,
                start_ns: int, end_ns: int, attributes: list[bytes], error: bool) -> bytes:
    """One SERVER Span message: ids in hex as in ``traceparent``, ``attributes`` from :func:`span_attribute`."""
    parts = [b"\x0a\x10", bytes.fromhex(trace_id), b"\x12\x08", bytes.fromhex(span_id)]
    if trace_state:
        parts.append(_len_field(F3, _text(trace_state)))
    if parent_id is not None:
        parts += (b"\x22\x08", bytes.fromhex(parent_id))
    parts += (_len_field(F5, _text(name)), _SPAN_FIXED, b"\x39", _pack_u64(start_ns), b"\x41", _pack_u64(end_ns))
    parts += attributes
    if error:
        parts.append(_ERROR)
    parts.append(_ROOT_FLAGS if parent_id is None else _CHILD_FLAGS)
    return b"".join(parts)


def encode_request(resource: dict[str, Any], scope: str, spans: list[bytes]) -> bytes:
    """An ExportTraceServiceRequest holding one ResourceSpans with one ScopeSpans of these spans."""
    resource_message = b"".join(_len_field(F1, key_value(k, v)) for k, v in resource.items())
    scope_spans = _len_field(F1, _len_field(F1, _text(scope))) + b"".join(_len_field(F2, span) for span in spans)
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
        """``encode``: turns a queued record into its Span message on the export thread (None: records are bytes)."""
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
        request = urllib.request.Request(self.endpoint, data=body, headers=self._headers, method="POST")
        for attempt in range(3):
            try:
                with urllib.request.urlopen(request, timeout=self._timeout, context=self._tls) as response:
                    response.read()
                return
            except urllib.error.HTTPError as error:
                reason: Any = f"HTTP {error.code}"
                if error.code not in (408, 429, 502, 503, 504):
                    break
            except (OSError, ValueError) as error:  # URLError, timeouts, refused connections
                reason = getattr(error, "reason", None) or type(error).__name__
            if self._closing or attempt == 2:
                break
            time.sleep(1 << attempt)
        self.failed += count
        log.warning("kubegate: %d span(s) not exported to %s: %s", count,
                    urllib.parse.urlsplit(self.endpoint).netloc.rpartition("@")[2], reason)


def _resource(env: Any) -> dict[str, Any]:
    from opentelemetry.sdk.resources import Resource

    return dict(Resource.create({} if env.get("OTEL_SERVICE_NAME") else {"service.name": "kubegate"}).attributes)


def _tls_context(env: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=_env(env, "CERTIFICATE") or None)
    certificate, key = _env(env, "CLIENT_CERTIFICATE"), _env(env, "CLIENT_KEY")
    if certificate:
        context.load_cert_chain(certificate, key or None)
    return context
