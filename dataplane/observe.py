"""Per-request observation: the access log and OpenTelemetry spans, wrapped around the pipeline.

Both are opt-in. With neither configured the Gateway never builds an
:class:`Observer` and its request handler is the plain pipeline: no span, no
record, no clock read beyond what metrics already do (the choice is made once,
when the Gateway is built). With one or both, :meth:`Observer.wrap` puts a
wrapper around the handler that hands the pipeline a :class:`Note`; the
pipeline fills in what only it knows (route, request id, admission decision,
upstream time) and the wrapper writes the log line and ends the span. With
tracing alone the wrapper is leaner: no clock, no byte count, and for an
unsampled request it returns the pipeline's own coroutine (nothing runs after)
with one Note shared by all unsampled requests (tracing.Tracer.wrap).

Never a credential: the path is logged without its query string (API keys and
tokens are sometimes sent as query parameters), no header value is recorded,
and the auth subject is the decision's principal (``jwt:<sub>``,
``apikey:<key id>``, ``mtls:<subject>``), never the token or key itself.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Note:
    """What the pipeline learned about one request (filled in by pipeline.Pipeline.answer)."""

    __slots__ = (
        "bytes",
        "compiled",
        "decision",
        "parent",
        "rid",
        "route",
        "span",
        "strip",
        "traceparent",
        "tracestate",
        "upstream_seconds",
    )

    def clear(self) -> None:
        self.route = ""
        self.rid = ""
        self.decision: Any = None
        self.compiled: Any = None  # the CompiledRoute
        self.upstream_seconds: float | None = None
        self.bytes: int | None = None
        self.span: int | None = None  # a sampled request's start (ns since the epoch); None: not recorded
        self.traceparent: str | None = None  # the traceparent sent upstream
        self.tracestate: str | None = None  # the caller's, continued with its traceparent
        self.parent: str | None = None  # the caller's span id
        self.strip = False  # the client sent trace context of its own

    __init__ = clear

    def timed(self, observe: Any) -> Any:
        """The proxy's on_headers callback: keep the upstream time, then feed the route's histogram."""
        def on_headers(seconds: float) -> None:
            self.upstream_seconds = seconds
            observe(seconds)
        return on_headers

    def upstream(self, headers: list[tuple[str, str]]) -> None:
        """Replace the client's trace context with this request's span (when tracing)."""
        traceparent = self.traceparent
        if traceparent is not None:
            if self.strip:
                headers[:] = [(n, v) for n, v in headers if n.lower() not in ("traceparent", "tracestate")]
                if self.tracestate:
                    headers.append(("tracestate", self.tracestate))
            headers.append(("traceparent", traceparent))

    def auth_outcome(self, route: Any) -> str:
        """none (route has no auth) | authenticated | anonymous | refused."""
        decision = self.decision
        if route is None or route.auth is None:
            return "none"
        if decision is None:
            return "none"
        if decision.status in (401, 403) and decision.reason != "ip_denied":
            return "refused"
        return "authenticated" if decision.principal else "anonymous"

    def rate_limit_outcome(self, route: Any) -> str:
        """none (no limit applies) | allowed | limited."""
        decision = self.decision
        if decision is not None and decision.status == 429:
            return "limited"
        if route is None or route.rate_limit is None or decision is None or decision.status is not None:
            return "none"
        return "allowed"


class Observer:
    """The access log and/or tracer, applied around the Gateway's request handler."""

    def __init__(self, *, access_log: Any = None, tracer: Any = None) -> None:
        self.access_log = access_log
        self.tracer = tracer

    def wrap(self, serve: Any) -> Any:
        """``serve(request, front, note)`` (pipeline.Pipeline.serve) -> ``observed(request, front)``."""
        access_log, tracer = self.access_log, self.tracer
        if access_log is None and tracer is not None:
            return tracer.wrap(serve)  # the lean wrapper: no clock, no byte count (tracing.Tracer.wrap)

        async def observed(request: Any, front: Any) -> Any:
            loop = asyncio.get_running_loop()
            started = loop.time()
            note = Note()
            if tracer is not None:
                tracer.begin(request, note)
            sent = None
            try:
                sent = await serve(request, front, note)
                return sent
            finally:
                elapsed = loop.time() - started
                status = sent.status if sent is not None else 0
                if sent is not None:
                    note.bytes = sent.bytes
                if tracer is not None:
                    tracer.end(request, note, status)
                if access_log is not None:
                    access_log.write(request, note, status, elapsed, note.compiled)

        return observed

    def close(self) -> None:
        if self.tracer is not None:
            self.tracer.close()


def build_observer(*, access_log: bool, otlp_endpoint: str | None, sample_ratio: float | None,
                   environ: dict[str, str] | None = None) -> Observer | None:
    """None when neither the access log nor tracing is on (the request path then does no work for them)."""
    from .tracing import tracing_settings

    settings = tracing_settings(otlp_endpoint, sample_ratio, environ)
    tracer = None
    if settings is not None:
        from .tracing import Tracer

        tracer = Tracer(settings)
    log = None
    if access_log:
        from .access_log import AccessLog

        log = AccessLog()
    if tracer is None and log is None:
        return None
    return Observer(access_log=log, tracer=tracer)
