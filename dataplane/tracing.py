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
from dataclasses import dataclass
from typing import Any

from kubegate.errors import UserError


@dataclass(frozen=True)
class TracingSettings:
    endpoint: str | None  # full traces URL; None = let the exporter read OTEL_* itself
    ratio: float


def tracing_settings(endpoint: str | None, ratio: float | None,
                     environ: dict[str, str] | None = None) -> TracingSettings | None:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    from_env = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint and not from_env:
        return None
    if ratio is None:
        arg = env.get("OTEL_TRACES_SAMPLER_ARG")
        try:
            ratio = float(arg) if arg else 1.0
        except ValueError:
            raise UserError(f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a number between 0 and 1") from None
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"trace sample ratio {ratio} is not between 0 and 1")
    url = None
    if endpoint:
        if not endpoint.startswith(("http://", "https://")):
            raise UserError(f"--otlp-endpoint {endpoint!r} is not an http(s) URL")
        url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"
    return TracingSettings(url, ratio)


class Tracer:
    """Starts and ends the request spans; owns the SDK provider and its batch exporter."""

    def __init__(self, settings: TracingSettings) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.settings = settings
        resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "kubegate"})
        self._provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(settings.ratio)), resource=resource)
        exporter = OTLPSpanExporter(endpoint=settings.endpoint) if settings.endpoint else OTLPSpanExporter()
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("kubegate.dataplane")
        self._propagator = TraceContextTextMapPropagator()
        self._kind = SpanKind.SERVER
        self._set_in_context = set_span_in_context
        self._error = Status(StatusCode.ERROR)

    def begin(self, request: Any, note: Any) -> None:
        headers = request.headers
        parent = self._propagator.extract(headers) if "traceparent" in headers else None
        span = self._tracer.start_span(
            f"{request.method}", context=parent, kind=self._kind,
            attributes={"http.request.method": request.method, "url.path": request.path},
        )
        note.span = span
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._set_in_context(span))
        note.traceparent = list(carrier.items())

    def end(self, note: Any, status: int, route: Any) -> None:
        span = note.span
        if span.is_recording():
            if note.route:
                span.update_name(f"{span.name} {note.route}")
                span.set_attribute("http.route", note.route)
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("kubegate.request_id", note.rid)
            span.set_attribute("kubegate.auth.outcome", note.auth_outcome(route))
            span.set_attribute("kubegate.ratelimit.outcome", note.rate_limit_outcome(route))
            if status >= 500 or status == 0:
                span.set_status(self._error)
        span.end()

    def close(self) -> None:
        self._provider.shutdown()  # flushes the batch
