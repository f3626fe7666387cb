"""OpenTelemetry tracing of the data plane: one SERVER span per request, exported over OTLP/HTTP.

Configured by ``--otlp-endpoint URL`` / ``--trace-sample-ratio R`` or the
standard variables (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_SAMPLER_ARG``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SDK_DISABLED``,
``OTEL_EXPORTER_OTLP_HEADERS`` ...); flags win over variables. No endpoint, or
``OTEL_SDK_DISABLED=true`` / ``OTEL_TRACES_EXPORTER=none``: tracing is off and
nothing of it runs per request (observe.build_observer returns None).

Sampling is parent-based with a trace-id ratio for new traces: a caller's
sampled ``traceparent`` is honoured, so one trace is never half-recorded. The
incoming W3C ``traceparent`` / ``tracestate`` are continued and the span's
own context is sent upstream in their place, sampled or not.

Span attributes: ``http.request.method``, ``url.path``, ``http.route`` (the
GatewayRoute id), ``http.response.status_code``, ``kubegate.request_id``,
``kubegate.auth.outcome``, ``kubegate.ratelimit.outcome``. Never a header
value, query string or credential.
"""

from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from kubegate.errors import UserError

from .otlp import common_span_attribute, encode_span, span_attribute


@dataclass(frozen=True)
class TracingSettings:
    endpoint: str  # the full traces URL (.../v1/traces)
    ratio: float


def tracing_settings(endpoint: str | None, ratio: float | None,
                     environ: dict[str, str] | None = None) -> TracingSettings | None:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    traces_url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()  # a full URL
    base_url = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()  # /v1/traces is appended
    if not endpoint and not traces_url and not base_url:
        return None
    if ratio is None:
        arg = env.get("OTEL_TRACES_SAMPLER_ARG")
        try:
            ratio = float(arg) if arg else 1.0
        except ValueError:
            raise UserError(f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a number between 0 and 1") from None
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"trace sample ratio {ratio} is not between 0 and 1")
    if endpoint:
        where, url = "--otlp-endpoint", endpoint if endpoint.rstrip("/").endswith("/v1/traces") \
            else endpoint.rstrip("/") + "/v1/traces"
    elif traces_url:
        where, url = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url
    else:
        where, endpoint, url = "OTEL_EXPORTER_OTLP_ENDPOINT", base_url, base_url.rstrip("/") + "/v1/traces"
    if not url.startswith(("http://", "https://")):
        raise UserError(f"{where} {endpoint or url!r} is not an http(s) URL")
    return TracingSettings(url, ratio)


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")  # then "-..." or the end
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16
_LOW64 = (1 << 64) - 1


def parse_traceparent(value: str) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) of a valid W3C ``traceparent``, else None.

    Version ``00`` is exactly ``00-<32 hex>-<16 hex>-<2 hex>`` (lower case); a
    later version may carry more ``-`` fields after those, ``ff`` is invalid;
    an all-zero trace id or parent id is invalid (W3C Trace Context, level 1).
    """
    if _TRACEPARENT.match(value) is None:
        return None
    version = value[:2]
    if len(value) != 55 and (version == "00" or value[55] != "-"):
        return None
    trace_id, parent_id = value[3:35], value[36:52]
    if version == "ff" or trace_id == _NO_TRACE or parent_id == _NO_SPAN:
        return None
    return trace_id, parent_id, value[54] in "13579bdf"  # flags bit 0: sampled


def _random_hex(bits: int) -> str:
    """A random id of ``bits`` bits in lower-case hex, never all zero."""
    while True:
        value = random.getrandbits(bits)
        if value:
            return value.to_bytes(bits // 8, "big").hex()


def ratio_bound(ratio: float) -> int:
    """New traces whose trace id's lower 64 bits are below this are sampled (the SDK's TraceIdRatioBased rule)."""
    return round(ratio * (1 << 64))


class Tracer:
    """Decides sampling and builds the upstream ``traceparent``; records sampled requests as OTLP spans.

    Per request: parse the caller's ``traceparent`` (one regex), or draw a new
    trace id; decide (the caller's sampled flag, else the trace-id ratio); and
    format the ``traceparent`` sent upstream with this request's span id. An
    unsampled request costs only that. A sampled one also keeps its start time,
    and at the end a tuple of its facts is queued; the export thread encodes
    the batch (a tight loop there costs less than a rare cold call per request).
    """

    def __init__(self, settings: TracingSettings, export: Any = None) -> None:
        from .otlp import SpanExport

        self.settings = settings
        self._bound = ratio_bound(settings.ratio)
        self._export = export if export is not None else SpanExport(settings.endpoint, encode=encode_request_span)

    def begin(self, request: Any, note: Any) -> None:
        headers = request.headers
        incoming = headers.get("traceparent")
        parsed = parse_traceparent(incoming) if incoming is not None else None
        if parsed is not None:
            trace_id, parent_id, sampled = parsed
            tracestate = ",".join(headers.getall("tracestate", ())) or None  # several headers are one list
            span_id = _random_hex(64)
        else:  # a new trace: its id and this span's from one draw
            number = random.getrandbits(192)
            ids = number.to_bytes(24, "big").hex()
            trace_id, span_id, parent_id, tracestate = ids[:32], ids[32:], None, None
            if trace_id == _NO_TRACE or span_id == _NO_SPAN:  # 2^-64: draw again
                self.begin(request, note)
                return
            sampled = number >> 64 & _LOW64 < self._bound
        note.strip = incoming is not None or "tracestate" in headers
        if sampled:
            note.span = (trace_id, span_id, parent_id, tracestate, request.method, request.path,
                         time.time_ns())
            upstream = [("traceparent", "00-" + trace_id + "-" + span_id + "-01")]
        else:
            upstream = [("traceparent", "00-" + trace_id + "-" + span_id + "-00")]
        if tracestate:
            upstream.append(("tracestate", tracestate))
        note.traceparent = upstream

    def end(self, note: Any, status: int, route: Any) -> None:
        """A sampled request's span, as a tuple: the export thread encodes it (encode_request_span)."""
        span = note.span
        if span is not None:
            self._export.add((span, time.time_ns(), note.route, status, note.rid, note.auth_outcome(route),
                              note.rate_limit_outcome(route)))

    def close(self) -> None:
        self._export.close()  # exports what is queued


def encode_request_span(record: tuple) -> bytes:
    """The OTLP Span of one sampled request, from what Tracer.end queued (run on the export thread)."""
    (trace_id, span_id, parent_id, tracestate, method, path, start_ns), end_ns, route, status, rid, auth, limit = record
    attributes = [common_span_attribute("http.request.method", method), span_attribute("url.path", path)]
    name = method
    if route:
        name = f"{method} {route}"
        attributes.append(common_span_attribute("http.route", route))
    attributes += (common_span_attribute("http.response.status_code", status),
                   span_attribute("kubegate.request_id", rid),
                   common_span_attribute("kubegate.auth.outcome", auth),
                   common_span_attribute("kubegate.ratelimit.outcome", limit))
    return encode_span(trace_id, span_id, parent_id, tracestate, name, start_ns, end_ns, attributes,
                       status >= 500 or status == 0)
