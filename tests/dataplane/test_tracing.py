"""OpenTelemetry spans from the real `kubegate run` into a real Jaeger, queried through its HTTP API."""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

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
