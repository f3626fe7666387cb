"""End to end through a real Gateway and real aiohttp backends: routing, headers, errors, retries."""

from __future__ import annotations

import asyncio
import collections

import aiohttp
from multidict import CIMultiDict

from kubegate.config import CompiledBackend, CompiledConfig


async def _get(url: str, method: str = "GET", **kwargs) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


async def test_proxies_with_forwarding_headers_and_strips_hop_by_hop(backend, start_gateway, make_route):
    b = await backend("a")
    route = make_route("/api/*rest", b.url, strip_prefix="/api")
    gw = await start_gateway(CompiledConfig(routes=(route,)))
    status, headers, _ = await _get(
        f"http://127.0.0.1:{gw.ports['http']}/api/items/7?q=1",
        headers={"X-Forwarded-For": "198.51.100.9", "Connection": "keep-alive, X-Secret-Hop",
                 "X-Secret-Hop": "drop me", "X-Request-Id": "trace-123", "Host": "shop.test"},
    )
    assert status == 200
    seen = b.received[-1]
    assert seen["path"] == "/items/7" and seen["query"] == "q=1"
    assert seen["headers"]["x-forwarded-for"] == "198.51.100.9, 127.0.0.1"
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert seen["headers"]["x-forwarded-host"] == "shop.test"
    assert seen["headers"]["x-request-id"] == "trace-123"
    assert "x-secret-hop" not in seen["headers"]
    assert headers["X-Request-Id"] == "trace-123"
    assert "X-Hop" not in headers  # listed in the upstream's Connection header
    assert headers["X-Backend"] == "a"


async def test_generates_request_id_for_invalid_one(backend, start_gateway, make_route):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    _, headers, _ = await _get(f"http://127.0.0.1:{gw.ports['http']}/x", headers={"X-Request-Id": "bad id\t!"})
    assert len(headers["X-Request-Id"]) == 32 and b.received[-1]["headers"]["x-request-id"] == headers["X-Request-Id"]


async def test_404_405_and_dot_segments(backend, start_gateway, make_route):
    b = await backend()
    routes = (make_route("/users/:id", b.url, name="users", methods=("GET",)),)
    gw = await start_gateway(CompiledConfig(routes=routes))
    base = f"http://127.0.0.1:{gw.ports['http']}"
    status, _, body = await _get(f"{base}/nothing")
    assert status == 404 and b'"status":404' in body and b"request_id" in body
    status, headers, _ = await _get(f"{base}/users/1", method="POST")
    assert status == 405 and headers["Allow"] == "GET"
    status, _, _ = await _get(f"{base}/users/x/../1")
    assert status == 200 and b.received[-1]["path"] == "/users/1"


async def test_upstream_failures_map_to_502_503_504(backend, start_gateway, make_route, free_port):
    b = await backend()
    dead = f"http://127.0.0.1:{free_port()}"
    routes = (
        make_route("/dead/*rest", dead, name="dead"),
        make_route("/none/*rest", CompiledBackend(url=b.url, weight=0), name="none"),
        make_route("/slow/*rest", b.url, name="slow", strip_prefix=None, request_timeout=0.3),
    )
    gw = await start_gateway(CompiledConfig(routes=routes))
    base = f"http://127.0.0.1:{gw.ports['http']}"
    assert (await _get(f"{base}/dead/x"))[0] == 502
    assert (await _get(f"{base}/none/x"))[0] == 503
    status, _, body = await _get(f"{base}/slow/slow?s=2")
    assert status == 504 and b"timed out" in body


async def test_retries_only_idempotent_methods(backend, start_gateway, make_route):
    b = await backend()
    route = make_route("/*rest", b.url, retries=2)
    gw = await start_gateway(CompiledConfig(routes=(route,)))
    base = f"http://127.0.0.1:{gw.ports['http']}"
    assert (await _get(f"{base}/status/503"))[0] == 503
    assert b.hits["/status/503"] == 3  # 1 + 2 retries
    assert (await _get(f"{base}/status/503", method="POST", data=b"x"))[0] == 503
    assert b.hits["/status/503"] == 4  # POST: never retried
    assert (await _get(f"{base}/status/500"))[0] == 500
    assert b.hits["/status/500"] == 1  # 500 is not retryable


async def test_weighted_backends(backend, start_gateway, make_route):
    a, c = await backend("a"), await backend("c")
    route = make_route("/*rest", CompiledBackend(url=a.url, weight=3), CompiledBackend(url=c.url, weight=1))
    gw = await start_gateway(CompiledConfig(routes=(route,)))
    counts: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.get(f"http://127.0.0.1:{gw.ports['http']}/w") as response:
                counts[response.headers["X-Backend"]] += 1
    assert 120 <= counts["a"] <= 180 and counts["a"] + counts["c"] == 200


async def test_body_limits_413_content_length_and_chunked(backend, start_gateway, make_route):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url, max_body_bytes=1000),)))
    url = f"http://127.0.0.1:{gw.ports['http']}/upload"
    status, _, _ = await _get(url, method="POST", data=b"x" * 1001)
    assert status == 413 and "/upload" not in b.hits

    async def chunks():
        for _ in range(40):
            yield b"y" * 100

    status, _, _ = await _get(url, method="POST", data=chunks())
    assert status == 413
    status, _, body = await _get(url, method="POST", data=b"z" * 1000)
    assert status == 200 and b'"body_len": 1000' in body


async def test_request_schema_400(backend, start_gateway, make_route):
    b = await backend()
    schema = {"type": "object", "required": ["qty"], "properties": {"qty": {"type": "integer", "minimum": 1}}}
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url, request_schema=schema),)))
    url = f"http://127.0.0.1:{gw.ports['http']}/orders"
    status, _, body = await _get(url, method="POST", json={"qty": 0})
    assert status == 400 and b"/qty" in body
    status, _, body = await _get(url, method="POST", data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and b"not valid JSON" in body
    status, _, body = await _get(url, method="POST", json={"qty": 2})
    assert status == 200 and b'"body_len": 10' in body


async def test_websocket_relay(backend, start_gateway, make_route):
    b = await backend("ws")
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    url = f"http://127.0.0.1:{gw.ports['http']}/ws"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=("chat",)) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "ws:hello"
        await ws.send_bytes(b"abc")
        assert (await ws.receive(timeout=5)).data == b"cba"


async def test_not_ready_without_config_and_admin_endpoints(start_gateway, make_route, backend):
    gw = await start_gateway()
    async with aiohttp.ClientSession() as session:
        admin = f"http://127.0.0.1:{gw.ports['admin']}"
        async with session.get(f"{admin}/readyz") as r:
            assert r.status == 503
        async with session.get(f"{admin}/healthz") as r:
            assert r.status == 200
        async with session.get(f"http://127.0.0.1:{gw.ports['http']}/x") as r:
            assert r.status == 503
        b = await backend()
        digest = gw.apply(CompiledConfig(routes=(make_route("/*rest", b.url),)), __import__(
            "kubegate.config", fromlist=["SecretBundle"]).SecretBundle())
        async with session.get(f"{admin}/readyz") as r:
            assert r.status == 200
        async with session.get(f"{admin}/config") as r:
            cfg = await r.json()
            assert cfg["hash"] == digest and cfg["routes"] == 1
        await _get(f"http://127.0.0.1:{gw.ports['http']}/x")
        async with session.get(f"{admin}/metrics") as r:
            text = await r.text()
    for name in ("auth_failures_total", "rate_limit_exceeded_total", "tls_errors_total",
                 "kubegate_requests_total", "kubegate_request_duration_seconds_bucket",
                 "kubegate_upstream_duration_seconds_bucket", "kubegate_config_reloads_total",
                 "kubegate_config_info"):
        assert name in text, name
    assert 'kubegate_requests_total{code="2xx",method="GET",route="shop/r"} 1.0' in text
    await asyncio.sleep(0)


async def test_api_keys_authenticate_to_the_gateway_and_never_reach_backends(backend, start_gateway, make_route):
    from kubegate.apikeys import generate_api_key, key_hash, key_id
    from kubegate.config import CompiledApiKey, CompiledAuth, SecretBundle

    b = await backend("keyed")
    key = generate_api_key()
    route = make_route("/api/*rest", b.url, auth=CompiledAuth(methods=("apiKey",)))
    keys = (CompiledApiKey(id=key_id(key_hash(key)), namespace=route.namespace, name="k", hash_ref="k"),)
    gw = await start_gateway(CompiledConfig(routes=(route,), api_keys=keys), SecretBundle(values={"k": key_hash(key)}))
    url = f"http://127.0.0.1:{gw.ports['http']}/api/x"
    for sent in ({"X-API-Key": key}, {"Authorization": f"ApiKey {key}"}):
        status, _, _ = await _get(url, headers={**sent, "X-Other": "kept"})
        assert status == 200
        seen = b.received[-1]["headers"]
        assert seen["x-other"] == "kept"
        assert "x-api-key" not in seen and "authorization" not in seen
        assert key not in repr(b.received[-1])
