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

import binascii
import itertools
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from kubegate.errors import UserError

from . import otlp
from .observe import Note
from .otlp import span_attribute, span_shared


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


def ratio_bound(ratio: float) -> int:
    """New traces whose trace id's lower 64 bits are below this are sampled (the SDK's TraceIdRatioBased rule)."""
    return round(ratio * (1 << 64))


_DRAW = 256  # new traces drawn at a time
_RECORD = 56  # one traceparent value and the space after it, in _draw's buffer
_TEMPLATE = b" ".join([b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-00"] * _DRAW)
_SAMPLED_FLAG = 54  # the offset of the flag's last digit in a traceparent
_SAMPLED, _UNSAMPLED = 0x31, 0x30  # that digit: "1", "0"
_IS_SAMPLED = bytes(int(byte == _SAMPLED) for byte in range(256))  # flag digits -> itertools.compress selectors
_IS_UNSAMPLED = bytes(int(byte == _UNSAMPLED) for byte in range(256))


def flag_table(bound: int) -> bytes:
    """For :func:`_draw`: the flag digit ("1" sampled, "0" not) of a trace whose lower 64 bits' top byte is the index.
    Where the top byte equals the bound's, the flag is "0" and _draw compares all 64 bits."""
    return bytes(0x31 if byte < bound >> 56 else 0x30 for byte in range(256))


def _draw(bound: int, flags: bytes) -> tuple[list[str], bytes]:
    """:data:`_DRAW` new traces' ``traceparent`` values, each one's flag its sampling decision, and those
    flag digits in order.

    A few C calls per batch, nothing per trace in Python but the sampled ones:
    24 random bytes per trace (trace id, span id); their hex digits copied, 8
    at a time, into a buffer of ``traceparent`` templates through strided
    memoryviews; the sampling rule (the trace id's lower 64 bits below
    ``bound``, the SDK's TraceIdRatioBased) read off their top byte into the
    flags (``flags``: :func:`flag_table`), and off all 8 bytes only where
    the top byte equals the bound's.
    """
    raw = os.urandom(24 * _DRAW)
    digits = memoryview(binascii.hexlify(raw)).cast("Q")  # 6 words of 8 digits per trace
    out = bytearray(_TEMPLATE)
    view = memoryview(out)
    last = _RECORD * (_DRAW - 1)
    with view[3:last + 35].cast("Q") as trace, view[36:last + 52].cast("Q") as span:  # 7 words per record
        for k in range(4):
            trace[k::7] = digits[k::6]
        for k in range(2):
            span[k::7] = digits[4 + k::6]
    view.release()
    tops = raw[8::24]  # the top byte of each trace id's lower 64 bits
    out[_SAMPLED_FLAG::_RECORD] = tops.translate(flags)
    top = bound >> 56  # 256 when every trace is sampled
    if top < 256:
        i = tops.find(top)
        while i >= 0:  # the top byte decides nothing: compare all 64 bits
            if int.from_bytes(raw[24 * i + 8:24 * i + 16], "big") < bound:
                out[_RECORD * i + _SAMPLED_FLAG] = _SAMPLED
            i = tops.find(top, i + 1)
    values = out.decode("ascii").split(" ")
    if b"\0" * 8 in raw:  # maybe an all-zero id (about 2^-52 per batch): leave those out
        values = [v for v in values if v[3:35] != _NO_TRACE and v[36:52] != _NO_SPAN]
        return values, bytes(ord(v[_SAMPLED_FLAG]) for v in values)
    return values, bytes(out[_SAMPLED_FLAG::_RECORD])


def _span_ids() -> list[str]:
    """:data:`_DRAW` random span ids (for continued traces: their trace id is the caller's)."""
    digits = binascii.hexlify(os.urandom(8 * _DRAW)).decode("ascii")
    ids = [digits[i:i + 16] for i in range(0, 16 * _DRAW, 16)]
    return [i for i in ids if i != _NO_SPAN]


class _TracedNote(Note):
    """A Note for tracing only: spans do not carry the upstream time, so the route's histogram is fed directly.

    Made with its fields unset (no ``__init__``: one allocation); Tracer clears it."""

    __slots__ = ()
    __init__ = object.__init__
    timed = None  # the pipeline hands the proxy the route's histogram itself: no call per request


class _Unsampled(_TracedNote):
    """The one Note every unsampled new trace shares (tracing alone): nothing of it is read but its upstream().

    The pipeline's writes to it (route, request id, decision) are never read; upstream() appends the
    next unsampled ``traceparent`` (its flag ``00``) drawn, so no per-request object is made for it."""

    __slots__ = ("refill", "values")

    def upstream(self, headers: list[tuple[str, str]]) -> None:
        values = self.values
        headers.append(("traceparent", values.pop() if values else self.refill()))


class Tracer:
    """Decides sampling and builds the upstream ``traceparent``; records sampled requests as OTLP spans.

    New traces, the common case, are drawn :data:`_DRAW` at a time (:func:`_draw`),
    each flagged sampled or not by its trace id; their flags in order are the
    decisions (:attr:`decisions`), the sampled values a list, the unsampled ones
    a list the shared unsampled note takes from. With tracing alone
    (:meth:`wrap`) an unsampled new trace costs two header lookups, one
    ``next()`` and, when it is proxied, the shared note's upstream(): no object,
    no clock, no record. A caller's ``traceparent`` is parsed (one regex) and
    continued with a new span id. A sampled request keeps its start time;
    :meth:`end` queues ``(note, method, path, status, end)`` and the export
    thread encodes it (:func:`encode_request_spans`), so the outcomes and
    attributes are worked out there, off the request path. The draw is made
    on first use, in the serving process (a Tracer built before a fork would
    otherwise hand both processes the same ids).

    The decisions and the values come from the same draws, so each new trace's
    flag is the TraceIdRatioBased decision on its own trace id; which unsampled
    value an unsampled request gets is only settled when it is proxied.
    """

    def __init__(self, settings: TracingSettings, export: Any = None) -> None:
        from .otlp import SpanExport

        self.settings = settings
        self._bound = ratio_bound(settings.ratio)
        self._flags = flag_table(self._bound)
        self.decisions: Any = iter(b"")  # the flag digits of the values drawn, one per new trace
        self._sampled: list[str] = []
        self._span_ids: list[str] = []
        self.unsampled = _Unsampled()
        self.unsampled.clear()
        self.unsampled.values = []
        self.unsampled.refill = self._unsampled_value
        self._export = export if export is not None else SpanExport(settings.endpoint, encode=encode_request_spans)

    def _refill(self) -> None:
        values, decided = _draw(self._bound, self._flags)
        sampled = self._sampled
        if len(sampled) > _DRAW:  # more left over than one draw's decisions can take: start over
            sampled.clear()
        sampled.extend(itertools.compress(values, decided.translate(_IS_SAMPLED)))
        self.unsampled.values = list(itertools.compress(values, decided.translate(_IS_UNSAMPLED)))
        self.decisions = iter(decided)

    def _unsampled_value(self) -> str:
        """The next unsampled new trace's ``traceparent`` (drawing more when none is left)."""
        while not self.unsampled.values:
            self._refill()
        return self.unsampled.values.pop()

    def _decide(self) -> int:
        """The next new trace's flag digit (_SAMPLED or _UNSAMPLED)."""
        flag = next(self.decisions, 0)
        while not flag:
            self._refill()
            flag = next(self.decisions, 0)
        return flag

    def _sampled_value(self) -> str:
        while not self._sampled:
            self._refill()
        return self._sampled.pop()

    def wrap(self, serve: Any) -> Any:
        """``serve(request, front, note)`` -> ``traced(request, front)``, for tracing without the access log.

        An unsampled new trace gets the shared note and the pipeline's own coroutine, with no frame
        of ours around it; a recorded request a note of its own and a coroutine that ends its span."""
        tracer, unsampled, sampled, add, now = self, self.unsampled, self._sampled, self._export.add, time.time_ns

        def traced(request: Any, front: Any) -> Any:
            headers = request.headers
            if "traceparent" in headers or "tracestate" in headers:
                note = tracer._continued(request)
            else:
                flag = next(tracer.decisions, 0)
                if flag == _UNSAMPLED:
                    return serve(request, front, unsampled)
                if flag and sampled:  # _SAMPLED, a value at hand (_new_trace, inline)
                    note = _TracedNote()
                    note.clear()
                    note.traceparent = sampled.pop()
                    note.span = now()
                    return recorded(request, front, note)
                note = tracer._new_trace(flag)
            if note.span is None:
                return serve(request, front, note)
            return recorded(request, front, note)

        async def recorded(request: Any, front: Any, note: Any) -> Any:
            sent = None
            try:
                sent = await serve(request, front, note)
                return sent
            finally:  # end(), inline: note.span is set
                add((note, request.method, request.path, sent.status if sent is not None else 0, now()))

        return traced

    def _new_trace(self, flag: int) -> Any:
        """The note of a new trace whose decision ``flag`` is _SAMPLED, or 0: the decisions ran out."""
        if not flag and self._decide() == _UNSAMPLED:
            return self.unsampled
        note = _TracedNote()
        note.clear()
        sampled = self._sampled
        note.traceparent = sampled.pop() if sampled else self._sampled_value()
        note.span = time.time_ns()
        return note

    def _continued(self, request: Any) -> Any:
        note = _TracedNote()
        note.clear()
        self._continue(request, note)
        return note

    def begin(self, request: Any, note: Any) -> None:
        """Set the upstream context (``traceparent``, ``strip``, ``tracestate``, ``parent``) and ``span``
        (a start time, or None: not recorded) of a new, cleared note (observe.py, with the access log)."""
        headers = request.headers
        if "traceparent" in headers or "tracestate" in headers:
            self._continue(request, note)
        elif self._decide() == _SAMPLED:
            note.traceparent = self._sampled_value()
            note.span = time.time_ns()
        else:
            note.traceparent = self._unsampled_value()

    def _continue(self, request: Any, note: Any) -> None:
        """The caller sent trace context: continue a valid ``traceparent`` (a new span id, its trace id,
        flag and ``tracestate``); anything else is dropped and the request starts a new trace."""
        headers = request.headers
        incoming = headers.get("traceparent")
        parsed = parse_traceparent(incoming) if incoming is not None else None
        note.strip = True
        if parsed is None:
            if self._decide() == _SAMPLED:
                note.traceparent = self._sampled_value()
                note.span = time.time_ns()
            else:
                note.traceparent = self._unsampled_value()
            return
        ids = self._span_ids
        span_id = ids.pop() if ids else self._more_span_ids()
        trace_id, parent_id, sampled = parsed
        note.traceparent = f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"
        note.tracestate = ",".join(headers.getall("tracestate", ())) or None  # several headers: one list
        note.parent = parent_id
        note.span = time.time_ns() if sampled else None

    def _more_span_ids(self) -> str:
        self._span_ids = ids = _span_ids()
        return ids.pop()

    def end(self, request: Any, note: Any, status: int) -> None:
        """Queue a sampled request for the export thread (which encodes it: encode_request_spans)."""
        if note.span is not None:
            self._export.add((note, request.method, request.path, status, time.time_ns()))

    def close(self) -> None:
        self._export.close()  # exports what is queued


_SHARED: dict[tuple[str, str, int, str, str], bytes] = {}  # the export thread's: span_shared by request kind
_SHARED_MAX = 4096  # methods are the client's words: start over beyond this many kinds
_PATH, _REQUEST_ID = otlp.string_prefixes("url.path"), otlp.string_prefixes("kubegate.request_id")
_LONG_PATH = otlp.string_key("url.path")
_FRAME_MAX = 0x4000  # spans below this size have their frame (and the trace id's tag) from a table
_FRAMES: list[bytes | None] = [None] * _FRAME_MAX  # the export thread's, filled on first use
_TRACE_ID_TAG = bytes.fromhex(otlp.SPAN_IDS_HEX[0])


def encode_request_spans(records: list[tuple]) -> bytes:
    """The OTLP spans, framed and joined, of sampled requests as Tracer.end queued them (on the export thread).

    The name, the attributes that few values repeat (method, route, status,
    outcomes) and the status are one cached piece per kind of request (the
    last one at hand, for a run of the same kind); the ids, times, path and
    request id are written per span, in one loop for the batch:
    otlp.encode_span's bytes (the reference layout, tested) without a call
    per field.
    """
    parts: list[bytes] = []
    extend, shared_of, frames = parts.extend, _SHARED, _FRAMES
    unhexlify, times, tail_of, root = binascii.unhexlify, otlp.span_times, otlp.span_tail, otlp.ROOT_FLAGS
    span_hex = otlp.SPAN_IDS_HEX[1]
    path_prefix, rid_prefix, short = _PATH, _REQUEST_ID, otlp.SHORT
    fixed = otlp.SPAN_IDS_TIMES - len(_TRACE_ID_TAG)
    last_method = last_route = last_status = shared = None  # the last span's kind, when no admission ran
    shared_size = 0
    for note, method, path, status, end_ns in records:
        route = note.route
        if note.decision is not None or status != last_status or method != last_method or route != last_route:
            if note.decision is None:  # no admission ran: both outcomes are "none"
                kind = (method, route, status, "none", "none")
                last_method, last_route, last_status = method, route, status
            else:
                compiled = note.compiled
                kind = (method, route, status, note.auth_outcome(compiled), note.rate_limit_outcome(compiled))
                last_status = None
            shared = shared_of.get(kind)
            if shared is None:
                if len(shared_of) >= _SHARED_MAX:
                    shared_of.clear()
                shared = shared_of[kind] = _shared(*kind)
            shared_size = fixed + len(shared)
        try:
            text = path.encode()
        except UnicodeEncodeError:  # a lone surrogate: '?' (protobuf strings are UTF-8)
            text = path.encode("utf-8", "replace")
        if len(text) < short:
            path_head = path_prefix[len(text)]
        else:
            path_head, text = otlp.string_attribute(_LONG_PATH, path), b""
        rid = note.rid.encode()  # proxy.request_id's: ASCII, at most 128 characters
        rid_head = rid_prefix[len(rid)]
        tail = root if note.parent is None and not note.tracestate else tail_of(note.parent, note.tracestate)
        size = shared_size + len(path_head) + len(text) + len(rid_head) + len(rid) + len(tail)
        frame = frames[size] if size < _FRAME_MAX else None
        if frame is None:
            frame = otlp.span_frame(size + len(_TRACE_ID_TAG)) + _TRACE_ID_TAG
            if size < _FRAME_MAX:
                frames[size] = frame
        extend((frame, unhexlify(note.traceparent[3:52].replace("-", span_hex)), times(0x39, note.span, 0x41, end_ns),
                shared, path_head, text, rid_head, rid, tail))
    return b"".join(parts)


def _shared(method: str, route: str, status: int, auth: str, limit: str) -> bytes:
    attributes = [span_attribute("http.request.method", method)]
    if route:
        attributes.append(span_attribute("http.route", route))
    attributes += (span_attribute("http.response.status_code", status),
                   span_attribute("kubegate.auth.outcome", auth),
                   span_attribute("kubegate.ratelimit.outcome", limit))
    return span_shared(f"{method} {route}" if route else method, attributes, status >= 500 or status == 0)
