"""OpenTelemetry spans from the real `kubegate run` into a real Jaeger, queried through its HTTP API."""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from jaeger_fixture import jaeger_build, jaeger_process  # noqa: F401 - the jaeger fixtures

HMAC = "tracing-test-hmac-secret-0123456789abcdef012345"


def _manifests(url: str) -> str:
    return yaml.safe_dump_all([
        {"apiVersion": "kubegate.dev/v1alpha1", "kind": "GatewayRoute", "metadata": {"name": "traced", "namespace": "shop"},
         "spec": {"path": "/api/*rest", "backends": [{"url": url}],
                  "auth": {"methods": ["jwt"], "jwt": {"issuer": "https://issuer.test", "audiences": ["api"],
                                                       "algorithms": ["HS256"],
                                                       "secretRef": {"name": "hmac", "key": "secret"}}}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hmac", "namespace": "shop"},
         "stringData": {"secret": HMAC}},
        {"apiVersion": "kubegate.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": "rl", "namespace": "shop"},
         "spec": {"limits": [{"dimension": "ip", "requests": 1000, "period": "1m"}]}},
    ])


async def _start(backend, kubegate_run, tmp_path, jaeger, ratio: str):
    echo = await backend("echo")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "all.yaml").write_text(_manifests(echo.url))
    gateway = await kubegate_run(folder, args=("--otlp-endpoint", jaeger.otlp, "--trace-sample-ratio", ratio),
                                 env={"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "kubegate-test"})
    return echo, gateway


def _token() -> str:
    return jwt.encode({"iss": "https://issuer.test", "aud": "api", "sub": "alice", "exp": int(time.time()) + 300},
                      HMAC, algorithm="HS256")


async def test_caller_trace_is_continued_into_jaeger_and_forwarded_upstream(backend, kubegate_run, tmp_path, jaeger):
    # ratio 0: only the caller's sampled flag (parent-based sampling) makes this request recorded
    echo, gateway = await _start(backend, kubegate_run, tmp_path, jaeger, "0")
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    token = _token()
    headers = {"traceparent": f"00-{trace_id}-{parent}-01", "tracestate": "vendor=1",
               "Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{gateway.ports['http']}/api/orders?x=1", headers=headers) as resp:
        assert resp.status == 200
        rid = resp.headers["X-Request-Id"]
    trace = await jaeger.trace(trace_id)
    assert trace is not None, gateway.logs
    (span,) = trace["spans"]
    assert span["traceID"] == trace_id
    assert span["references"] == [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent}]
    tags = {t["key"]: t["value"] for t in span["tags"]}
    assert tags["http.route"] == "shop/traced" and tags["http.response.status_code"] == 200
    assert tags["kubegate.auth.outcome"] == "authenticated" and tags["kubegate.ratelimit.outcome"] == "allowed"
    assert tags["kubegate.request_id"] == rid and tags["span.kind"] == "server"
    assert tags["url.path"] == "/api/orders"
    assert trace["processes"][span["processID"]]["serviceName"] == "kubegate-test"
    assert span["operationName"] == "GET shop/traced"
    dumped = str(trace)
    assert token not in dumped and token.split(".")[2] not in dumped and "Bearer" not in dumped
    # the backend got our span as its parent, on the caller's trace
    (seen,) = echo.received
    version, upstream_trace, upstream_parent, flags = seen["headers"]["traceparent"].split("-")
    assert (version, upstream_trace, upstream_parent, flags) == ("00", trace_id, span["spanID"], "01")
    assert seen["headers"]["tracestate"] == "vendor=1"


async def test_unsampled_requests_send_context_but_no_span(backend, kubegate_run, tmp_path, jaeger):
    echo, gateway = await _start(backend, kubegate_run, tmp_path, jaeger, "0")
    token = _token()
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # a new trace at ratio 0, and a caller's unsampled trace
            async with session.get(f"http://127.0.0.1:{gateway.ports['http']}/api/x",
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200
        unsampled = secrets.token_hex(16)
        async with session.get(f"http://127.0.0.1:{gateway.ports['http']}/api/y",
                               headers={"Authorization": f"Bearer {token}",
                                        "traceparent": f"00-{unsampled}-{secrets.token_hex(8)}-00"}) as resp:
            assert resp.status == 200
        # a refused request on a sampled trace is recorded with its outcome
        refused = secrets.token_hex(16)
        async with session.get(f"http://127.0.0.1:{gateway.ports['http']}/api/z",
                               headers={"traceparent": f"00-{refused}-{secrets.token_hex(8)}-01"}) as resp:
            assert resp.status == 401
    new_traces = [r["headers"]["traceparent"].split("-") for r in echo.received[:3]]
    assert all(int(flags, 16) & 1 == 0 and len(tid) == 32 for _, tid, _, flags in new_traces)  # not sampled
    assert len({tid for _, tid, _, _ in new_traces}) == 3
    assert echo.received[3]["headers"]["traceparent"].split("-")[1] == unsampled
    trace = await jaeger.trace(refused)
    assert trace is not None
    tags = {t["key"]: t["value"] for t in trace["spans"][0]["tags"]}
    assert tags["http.response.status_code"] == 401 and tags["kubegate.auth.outcome"] == "refused"
    for tid in [unsampled] + [tid for _, tid, _, _ in new_traces]:
        assert await jaeger.trace(tid, timeout=0.5) is None


async def test_a_malformed_traceparent_is_never_continued(backend, kubegate_run, tmp_path, jaeger):
    # ratio 0: a header wrongly taken as a sampled parent would show up in Jaeger and upstream
    echo, gateway = await _start(backend, kubegate_run, tmp_path, jaeger, "0")
    token = _token()
    tid, pid = secrets.token_hex(16), secrets.token_hex(8)
    malformed = [
        f"00-{tid.upper()}-{pid}-01",  # upper-case hex
        f"00-{'0' * 32}-{pid}-01",  # all-zero trace id
        f"00-{tid}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{tid}-{pid}-01",  # version ff
        f"00-{tid}-{pid}-01-extra",  # version 00 has exactly four fields
        f"00-{tid[:-1]}-{pid}-01",  # short trace id
        f"00-{tid}-{pid}-1",  # one-digit flags
        f"00_{tid}_{pid}_01",
        "",
    ]
    url = f"http://127.0.0.1:{gateway.ports['http']}/api/m"
    async with aiohttp.ClientSession() as session:
        for value in malformed:
            async with session.get(url, headers={"Authorization": f"Bearer {token}", "traceparent": value,
                                                 "tracestate": "vendor=1"}) as resp:
                assert resp.status == 200
        # a later version may add fields: its first four are continued (as version 00)
        future_tid = secrets.token_hex(16)
        async with session.get(url, headers={"Authorization": f"Bearer {token}",
                                             "traceparent": f"01-{future_tid}-{pid}-01-what-ever"}) as resp:
            assert resp.status == 200
    for seen in echo.received[:len(malformed)]:
        version, upstream_tid, span_id, flags = seen["headers"]["traceparent"].split("-")
        assert version == "00" and upstream_tid not in (tid, "0" * 32) and len(upstream_tid) == 32
        assert flags == "00" and span_id != "0" * 16 and len(span_id) == 16
        assert "tracestate" not in seen["headers"]  # a tracestate without a valid traceparent is dropped
    assert len({r["headers"]["traceparent"].split("-")[1] for r in echo.received[:len(malformed)]}) == len(malformed)
    version, upstream_tid, span_id, flags = echo.received[-1]["headers"]["traceparent"].split("-")
    assert (version, upstream_tid, flags) == ("00", future_tid, "01")
    trace = await jaeger.trace(future_tid)
    assert trace is not None
    (span,) = trace["spans"]
    assert span["spanID"] == span_id
    assert span["references"] == [{"refType": "CHILD_OF", "traceID": future_tid, "spanID": pid}]
    assert await jaeger.trace(tid, timeout=0.5) is None


async def test_tracing_off_leaves_the_callers_context_and_the_handler_alone(backend, kubegate_run, tmp_path):
    from kubegate.dataplane.observe import build_observer
    from kubegate.dataplane.ratelimit import build_rate_limiter
    from kubegate.dataplane.server import Gateway

    for environ in ({"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}):
        assert build_observer(access_log=False, otlp_endpoint="http://127.0.0.1:4318", sample_ratio=0.1,
                              environ=environ) is None
    assert build_observer(access_log=False, otlp_endpoint=None, sample_ratio=None, environ={}) is None
    limiter = build_rate_limiter(None)
    gateway = Gateway(host="127.0.0.1", http_port=0, https_port=0, admin_port=0, limiter=limiter, observer=None)
    assert gateway._serve == gateway._pipeline.serve  # the pipeline itself: no wrapper, no Note
    await limiter.close()
    # the real command, tracing configured but disabled: the caller's context reaches the backend untouched
    echo = await backend("echo")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "all.yaml").write_text(_manifests(echo.url))
    gateway = await kubegate_run(folder, args=("--otlp-endpoint", "http://127.0.0.1:9", "--trace-sample-ratio", "1"),
                                 env={"OTEL_SDK_DISABLED": "true"})
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{gateway.ports['http']}/api/off",
                        headers={"Authorization": f"Bearer {_token()}", "traceparent": traceparent,
                                 "tracestate": "vendor=1"}) as resp:
        assert resp.status == 200
    (seen,) = echo.received
    assert seen["headers"]["traceparent"] == traceparent and seen["headers"]["tracestate"] == "vendor=1"


class _Request:
    method = "GET"

    def __init__(self, headers: dict[str, str] | list[tuple[str, str]], path: str = "/x") -> None:
        from multidict import CIMultiDict, CIMultiDictProxy

        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        self.path = path  # messages.Request.path: the raw path, without the query


class _Spans:
    def __init__(self) -> None:
        self.spans: list = []

    def add(self, span) -> None:
        self.spans.append(span)

    def close(self) -> None:
        pass


def test_new_traces_are_sampled_by_the_sdk_trace_id_ratio_rule(monkeypatch):
    import os

    from kubegate.dataplane import tracing
    from kubegate.dataplane.observe import Note
    from kubegate.dataplane.tracing import Tracer, TracingSettings
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

    for ratio in (0.0, 0.1, 0.5, 1.0):
        tracer = Tracer(TracingSettings("http://127.0.0.1:9/v1/traces", ratio), export=_Spans())
        reference = TraceIdRatioBased(ratio)
        decisions = []
        for _ in range(3000):
            note = Note()
            tracer.begin(_Request({}), note)
            _, trace_id, span_id, flags = note.traceparent.split("-")
            assert len(trace_id) == 32 and len(span_id) == 16
            sampled = reference.should_sample(None, int(trace_id, 16), "GET").decision is Decision.RECORD_AND_SAMPLE
            assert (flags == "01") == sampled == (note.span is not None), (ratio, trace_id)
            decisions.append(sampled)
        assert abs(sum(decisions) / len(decisions) - ratio) < 0.05
    # the batch draw, byte for byte: ids from the random bytes, flags by the SDK's rule, at the bound too
    for ratio in (1e-12, 0.1, 0.5, 0.999999):
        reference = TraceIdRatioBased(ratio)
        bound = reference.bound
        for ties in (False, True):
            raw = bytearray(os.urandom(24 * tracing._DRAW))
            if ties:  # every trace's lower half starts with the bound's top byte: all 64 bits decide
                raw[8::24] = bytes([min(bound >> 56, 255)]) * tracing._DRAW
                for i, low in enumerate((bound - 1, bound, bound + 1)):
                    raw[24 * i + 8:24 * i + 16] = low.to_bytes(8, "big")
            monkeypatch.setattr(os, "urandom", lambda n, raw=raw: bytes(raw))
            values = _drawn(tracing._draw(bound, tracing.flag_table(bound)))
            monkeypatch.undo()
            digits = raw.hex()
            expected = []
            for i in range(tracing._DRAW):
                trace_id, span_id = digits[48 * i:48 * i + 32], digits[48 * i + 32:48 * i + 48]
                sampled = reference.should_sample(None, int(trace_id, 16), "GET").decision is Decision.RECORD_AND_SAMPLE
                expected.append(f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}")
            assert values == expected, (ratio, ties)
    # an all-zero span id drawn is never handed out
    raw = b"".join(os.urandom(16) + (b"\0" * 8 if i % 5 == 3 else os.urandom(8)) for i in range(tracing._DRAW))
    monkeypatch.setattr(os, "urandom", lambda n: raw)
    values = _drawn(tracing._draw(0, tracing.flag_table(0)))
    monkeypatch.undo()
    assert len(values) == tracing._DRAW - len(range(3, tracing._DRAW, 5))
    assert all(v[36:52] != "0" * 16 for v in values)


def _drawn(drawn: tuple[list[str], bytes]) -> list[str]:
    """tracing._draw's values, checked against its flags."""
    from kubegate.dataplane import tracing

    values, flags = drawn
    assert flags == bytes(ord(v[tracing._SAMPLED_FLAG]) for v in values)
    return values


async def test_the_tracing_only_handler_samples_by_the_sdk_rule_with_one_shared_unsampled_note():
    for ratio in (0.0, 0.1, 1.0):
        await _tracing_only_handler(ratio)


async def _tracing_only_handler(ratio: float) -> None:
    import asyncio

    from kubegate.dataplane.tracing import Tracer, TracingSettings
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

    class Sent:
        status = 200

    spans = _Spans()
    tracer = Tracer(TracingSettings("http://127.0.0.1:9/v1/traces", ratio), export=spans)
    sent_upstream: list[list[tuple[str, str]]] = []
    notes = []
    gate = asyncio.Event()

    async def serve(request, front, note):
        notes.append(note)
        await gate.wait()  # every request is begun before any is proxied (the pool's order is not theirs)
        headers = [("Host", "a.test")]
        note.upstream(headers)
        sent_upstream.append(headers)
        return Sent()

    traced = tracer.wrap(serve)
    requests = [_Request({"Host": "a.test"}) for _ in range(700)]  # more than one draw
    refused = [_Request({}) for _ in range(300)]  # never proxied: no value is taken for them
    tasks = [asyncio.ensure_future(traced(r, None)) for r in requests + refused]
    await asyncio.sleep(0)
    for task in tasks[len(requests):]:
        task.cancel()
    gate.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    reference = TraceIdRatioBased(ratio)
    unsampled = [n for n in notes if n.span is None]
    assert all(n is tracer.unsampled for n in unsampled)  # one shared note: no object per request
    seen = set()
    for headers in sent_upstream:
        (value,) = [v for n, v in headers if n == "traceparent"]
        _, trace_id, _, flags = value.split("-")
        sampled = reference.should_sample(None, int(trace_id, 16), "GET").decision is Decision.RECORD_AND_SAMPLE
        assert (flags == "01") == sampled, (ratio, value)
        seen.add(trace_id)
    assert len(seen) == len(requests)  # a trace of its own each
    recorded = [record[0].traceparent for record in spans.spans]
    assert len(recorded) == len(notes) - len(unsampled)
    assert all(v.endswith("-01") for v in recorded)
    if ratio in (0.0, 1.0):
        assert len(recorded) == ratio * len(notes)
    else:
        assert 0.05 < len(recorded) / len(notes) < 0.15


def test_a_span_is_a_valid_otlp_message():
    from kubegate.dataplane import otlp, tracing
    from kubegate.dataplane.observe import Note
    from kubegate.dataplane.tracing import Tracer, TracingSettings, encode_request_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    spans = _Spans()
    tracer = Tracer(TracingSettings("http://127.0.0.1:9/v1/traces", 0), export=spans)
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    for status, path in ((502, "/caf\u00e9/\udcff" + "x" * 300), (200, "/ok")):
        note = Note()
        request = _Request([("traceparent", f"00-{trace_id}-{parent}-01"), ("tracestate", "a=1"),
                            ("tracestate", "b=2")], path)
        tracer.begin(request, note)
        assert note.tracestate == "a=1,b=2"  # two tracestate headers are one list
        note.route, note.rid = "shop/traced", "rid-1"
        tracer.end(request, note, status)
    root = Note()  # a new trace, sampled: no parent, no trace state
    Tracer(TracingSettings("http://127.0.0.1:9/v1/traces", 1), export=spans).begin(_Request({}, "/new"), root)
    root.route, root.rid = "shop/traced", "r" * 128
    tracer.end(_Request({}, "/new"), root, 200)
    # the batch loop writes the reference layout (otlp.encode_span) byte for byte, long and short values
    reference = b"".join(otlp.encode_span(note.traceparent[3:52], note.parent, note.tracestate, note.span, end,
                                          tracing._shared(method, note.route, status, "none", "none"),
                                          ("url.path", path), ("kubegate.request_id", note.rid))
                         for note, method, path, status, end in spans.spans)
    encoded = encode_request_spans(spans.spans)
    assert encoded == reference
    body = otlp.encode_request({"service.name": "kubegate", "n": 3, "on": True, "x": 0.5, "list": ["a", "b"]},
                               "kubegate.dataplane", [encoded])
    (resource_spans,) = ExportTraceServiceRequest.FromString(body).resource_spans
    resource = {kv.key: kv.value for kv in resource_spans.resource.attributes}
    assert resource["service.name"].string_value == "kubegate" and resource["n"].int_value == 3
    assert resource["on"].bool_value is True and resource["x"].double_value == 0.5
    assert [v.string_value for v in resource["list"].array_value.values] == ["a", "b"]
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "kubegate.dataplane"
    failed, ok, new = scope_spans.spans
    for span in (failed, ok):
        assert span.trace_id.hex() == trace_id and span.parent_span_id.hex() == parent
        assert span.trace_state == "a=1,b=2" and span.kind == Span.SPAN_KIND_SERVER and span.name == "GET shop/traced"
        assert 0 < span.start_time_unix_nano <= span.end_time_unix_nano
        assert span.flags == 0x300  # the parent is remote
    assert new.parent_span_id == b"" and new.trace_state == "" and new.flags == 0x100
    assert new.trace_id.hex() == root.traceparent[3:35] and new.span_id.hex() == root.traceparent[36:52]
    assert {kv.key: kv.value.string_value for kv in new.attributes}["kubegate.request_id"] == "r" * 128
    attributes = {kv.key: kv.value for kv in failed.attributes}
    assert attributes["http.response.status_code"].int_value == 502
    assert attributes["url.path"].string_value == "/caf\u00e9/?" + "x" * 300  # valid UTF-8, whole
    assert attributes["kubegate.request_id"].string_value == "rid-1"
    assert failed.status.code == Status.STATUS_CODE_ERROR and ok.status.code == Status.STATUS_CODE_UNSET
    assert failed.span_id != ok.span_id


async def test_the_exporter_sends_otel_headers_gzip_and_bounds_its_queue(caplog):
    import asyncio
    import gzip

    from aiohttp import web
    from kubegate.dataplane.otlp import SpanExport
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[Any, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.headers.copy(), await request.read()))  # case-insensitive
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Basic%20c2VjcmV0,x-tenant=t1",
           "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip", "OTEL_BSP_SCHEDULE_DELAY": "60000",
           "OTEL_BSP_MAX_QUEUE_SIZE": "3"}
    export = SpanExport(f"http://127.0.0.1:{port}/v1/traces", env, resource={"service.name": "t"})
    for _ in range(5):
        export.add(b"\x12\x00")  # empty Span messages (as encode_span frames them)
    assert export.dropped == 2
    await asyncio.get_running_loop().run_in_executor(None, export.close)  # close() exports what is queued
    ((headers, body),) = received
    assert headers["Authorization"] == "Basic c2VjcmV0" and headers["x-tenant"] == "t1"
    assert headers["Content-Encoding"] == "gzip" and headers["Content-Type"] == "application/x-protobuf"
    # aiohttp inflated the body; what travelled (Content-Length) was the gzip stream of it
    assert int(headers["Content-Length"]) == len(gzip.compress(body))
    (resource_spans,) = ExportTraceServiceRequest.FromString(body).resource_spans
    assert len(resource_spans.scope_spans[0].spans) == 3
    await runner.cleanup()
    # a receiver that is gone: the spans are dropped with one warning naming the host, never a header value
    export = SpanExport(f"http://user:pw@127.0.0.1:{port}/v1/traces", {**env, "OTEL_BSP_MAX_QUEUE_SIZE": "10"},
                        resource={})
    export.add(b"\x12\x00")
    await asyncio.get_running_loop().run_in_executor(None, export.close)
    assert export.failed == 1
    logged = caplog.text
    assert f"127.0.0.1:{port}" in logged and "c2VjcmV0" not in logged and "pw" not in logged


def test_bad_exporter_settings_are_one_clear_error():
    import pytest
    from kubegate.dataplane.otlp import SpanExport

    from kubegate.errors import UserError

    for env, words in (({"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"}, "gzip, deflate or none"),
                       ({"OTEL_BSP_SCHEDULE_DELAY": "soon"}, "is not a number"),
                       ({"OTEL_EXPORTER_OTLP_TIMEOUT": "-1"}, "must be above 0"),
                       # a header smuggled into the export requests (URL-decoded CR LF), a name that is no token
                       ({"OTEL_EXPORTER_OTLP_HEADERS": "x-a=s3cret%0D%0AX-Injected:%201"}, "'x-a' is not a valid"),
                       ({"OTEL_EXPORTER_OTLP_HEADERS": "x%20b=1"}, "'x b' is not a valid"),
                       ({"OTEL_EXPORTER_OTLP_HEADERS": "x-c=%E2%82%AC"}, "not Latin-1")):
        with pytest.raises(UserError, match=words) as raised:
            SpanExport("http://127.0.0.1:9/v1/traces", env, resource={})
        assert "s3cret" not in str(raised.value) and "\u20ac" not in str(raised.value)  # never the value


def test_the_exporter_keeps_its_connection_alive_and_reconnects_when_the_collector_closed_it():
    import http.server
    import threading

    from kubegate.dataplane.otlp import SpanExport

    for drop in (False, True):  # drop: the collector closes each connection after answering, saying nothing
        peers: list[int] = []

        class Collector(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            seen, closes = peers, drop

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.seen.append(self.client_address[1])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.close_connection = self.closes

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        export = SpanExport(f"http://127.0.0.1:{server.server_address[1]}/v1/traces",
                            {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1", "OTEL_BSP_SCHEDULE_DELAY": "60000"}, resource={})
        for _ in range(3):
            export.add(b"\x12\x00")
        started = time.monotonic()
        export.close()  # three batches of one span
        server.shutdown()
        server.server_close()
        assert export.failed == 0 and len(peers) == 3
        assert len(set(peers)) == (3 if drop else 1)  # one connection for all, or a new one at once per batch
        assert time.monotonic() - started < 1  # no retry pause on the closed connection


def test_the_exporter_posts_over_tls_to_a_collector_it_trusts_and_never_to_one_it_does_not(pki, tmp_path, caplog):
    import http.server
    import ssl
    import threading

    from kubegate.dataplane.otlp import SpanExport

    received: list[tuple[str, str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            received.append((self.headers["Host"], self.headers["x-tenant"],
                             self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "2")  # a body the exporter reads and drops
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    (tmp_path / "server.crt").write_text(pki.server.cert_pem)
    (tmp_path / "server.key").write_text(pki.server.key_pem)
    (tmp_path / "ca.crt").write_text(pki.ca.cert_pem)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://localhost:{server.server_address[1]}/v1/traces"
    env = {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "ca.crt"), "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=t1",
           "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1", "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    export = SpanExport(url, env, resource={})
    for _ in range(2):
        export.add(b"\x12\x00")
    export.close()
    assert export.failed == 0
    assert [(host, tenant) for host, tenant, _ in received] == [(f"localhost:{server.server_address[1]}", "t1")] * 2
    # without the CA the handshake fails: nothing is sent, the spans are counted as lost (after the retries)
    export = SpanExport(url, {"OTEL_EXPORTER_OTLP_TIMEOUT": "2"}, resource={})
    export.add(b"\x12\x00")
    export.close()
    server.shutdown()
    server.server_close()
    assert export.failed == 1 and len(received) == 2
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_a_collector_answering_nonsense_loses_the_batch_with_a_warning_and_the_exporter_goes_on(caplog):
    import socket
    import threading

    from kubegate.dataplane.otlp import SpanExport

    answers = iter([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",  # an upgrade
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n123456",  # two lengths
                    b"NOT HTTP AT ALL\r\n\r\n"] * 3)
    listener = socket.create_server(("127.0.0.1", 0))
    requests = []

    def collector() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += connection.recv(65536)
                requests.append(data)
                connection.sendall(next(answers))

    threading.Thread(target=collector, daemon=True).start()
    export = SpanExport(f"http://127.0.0.1:{listener.getsockname()[1]}/v1/traces",
                        {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1", "OTEL_BSP_SCHEDULE_DELAY": "60000"}, resource={})
    for _ in range(3):
        export.add(b"\x12\x00")
    export.close()  # closing: no retry pause, each batch tried on a fresh connection and then dropped
    listener.close()
    assert export.failed == 3 and len(requests) >= 3
    assert caplog.text.count("span(s) not exported") == 3
