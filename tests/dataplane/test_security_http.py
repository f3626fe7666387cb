"""The security layer through real HTTP: two Gateways (conftest) sharing one real redis-server,
a real backend, JWT + IP filter + rate limit on one route, and a broken key refusing a config."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web
from kubegate.dataplane.audit import AuditLog
from kubegate.dataplane.redis_limits import RedisRateLimiter

from kubegate.apikeys import generate_api_key, key_hash, key_id
from kubegate.config import (
    CompiledApiKey,
    CompiledAuth,
    CompiledConfig,
    CompiledJwt,
    CompiledLimit,
    CompiledRateLimit,
    SecretBundle,
)

sys.path.insert(0, str(Path(__file__).parent))
from redis_fixture import running_redis

SECRET = "http-test-hmac-secret-0123456789abcdef"
KEY = generate_api_key()


@pytest.fixture
def redis_server():
    yield from running_redis()


def config(make_route, backend_url: str) -> tuple[CompiledConfig, SecretBundle]:
    route = make_route(
        "/api/*rest", backend_url, name="api",
        auth=CompiledAuth(methods=("jwt", "apiKey"), jwt=CompiledJwt(
            issuer="iss", algorithms=("HS256",), hmac_secret="jwt.secret", forward_claims={"sub": "X-User-Id"})),
        ip_allow=("127.0.0.0/8",),
        rate_limit=CompiledRateLimit(policy="shop/p", scope="route", limits=(
            CompiledLimit(key="shop/p#0", dimension="user", requests=3, period_seconds=60, burst=3),)),
    )
    denied = make_route("/private/*rest", backend_url, name="private", ip_deny=("127.0.0.1/32",))
    keys = (CompiledApiKey(id=key_id(key_hash(KEY)), namespace="shop", name="acme", hash_ref="ak"),)
    return (CompiledConfig(routes=(route, denied), api_keys=keys),
            SecretBundle(values={"jwt.secret": SECRET, "ak": key_hash(KEY)}))


def token(sub: str) -> str:
    return jwt.encode({"iss": "iss", "sub": sub, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")


async def call(port: int, path: str, headers: dict[str, str] | None = None):
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}{path}", headers=headers or {}) as response:
        return response.status, response.headers.copy(), await response.json(content_type=None)


async def test_two_gateways_enforce_one_limit_over_http(redis_server, backend, start_gateway, make_route):
    b = await backend("api")
    cfg, secrets = config(make_route, b.url)
    audit = io.StringIO()
    first = await start_gateway(cfg, secrets, limiter=RedisRateLimiter(redis_server.url), audit=AuditLog(audit))
    second = await start_gateway(cfg, secrets, limiter=RedisRateLimiter(redis_server.url), audit=AuditLog(audit))
    ports = [first.ports["http"], second.ports["http"]]

    status, headers, body = await call(ports[0], "/api/x")
    assert status == 401 and body["reason"] == "missing_credentials"
    assert headers["WWW-Authenticate"] == 'Bearer realm="kubegate", ApiKey realm="kubegate"'

    alice = {"Authorization": f"Bearer {token('alice')}", "X-User-Id": "spoofed"}
    results = [await call(ports[i % 2], "/api/x", alice) for i in range(4)]
    assert [r[0] for r in results] == [200, 200, 200, 429]
    assert [r[1]["X-RateLimit-Remaining"] for r in results] == ["2", "1", "0", "0"]
    assert results[0][1]["X-RateLimit-Limit"] == "3" and int(results[3][1]["Retry-After"]) >= 1
    assert results[3][2]["reason"] == "rate_limited"
    assert b.received[-1]["headers"]["x-user-id"] == "alice"  # the claim, never the client's header

    bob = await call(ports[1], "/api/x", {"Authorization": f"Bearer {token('bob')}"})
    assert bob[0] == 200  # user dimension: bob has his own bucket
    keyed = await call(ports[0], "/api/x", {"X-API-Key": KEY})
    assert keyed[0] == 200
    assert (await call(ports[0], "/private/x"))[0] == 403

    m = first.metrics.registry.get_sample_value
    assert m("auth_failures_total", {"route": "shop/api", "method": "GET", "reason": "missing_credentials"}) == 1
    rate_limited = sum(g.metrics.registry.get_sample_value(
        "rate_limit_exceeded_total", {"route": "shop/api", "dimension": "user"}) or 0 for g in (first, second))
    assert rate_limited == 1
    for secret in (SECRET, KEY, token("alice").split(".")[2]):
        assert secret not in audit.getvalue()


async def test_unusable_key_leaves_only_its_route_out(backend, start_gateway, make_route):
    b = await backend()
    good, secrets = config(make_route, b.url)
    gw = await start_gateway(good, secrets)
    broken = good.model_copy(update={"routes": (make_route(
        "/api/*rest", b.url, name="api",
        auth=CompiledAuth(methods=("jwt",), jwt=CompiledJwt(algorithms=("RS256",), public_key_pem="not a pem"))),
        make_route("/open/*rest", b.url, name="open"))})
    gw.apply(broken, secrets)
    assert "not a PEM" in gw.dropped["GatewayRoute/shop/api"] and list(gw.dropped) == ["GatewayRoute/shop/api"]
    status, _, _ = await call(gw.ports["http"], "/api/x", {"Authorization": f"Bearer {token('alice')}"})
    assert status == 404  # never served without its authentication
    status, _, _ = await call(gw.ports["http"], "/open/x")
    assert status == 200  # the rest of the config is served


async def test_the_gateways_rate_limit_headers_replace_a_backends_on_every_answer(start_gateway, make_route,
                                                                                  free_port, backend):
    """A backend saying X-RateLimit-* itself must not reach the client next to the gateway's (one of each,
    the gateway's values), whichever front writes the answer; a request admitted and then refused
    (dead backend: 502) carries them too."""
    async def spoofing(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok", headers={"X-RateLimit-Limit": "999", "X-RateLimit-Remaining": "999",
                                                "x-ratelimit-reset": "999", "X-Backend": "b"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", spoofing)
    backend_url = (await backend("b", app)).url
    limit = CompiledRateLimit(policy="shop/p", scope="route", limits=(
        CompiledLimit(key="shop/p#0", dimension="ip", requests=10, period_seconds=60, burst=10),))
    gw = await start_gateway(CompiledConfig(routes=(
        make_route("/api/*rest", backend_url, name="api", rate_limit=limit),
        make_route("/dead/*rest", f"http://127.0.0.1:{free_port()}", name="dead", retries=0,
                   rate_limit=CompiledRateLimit(policy="shop/q", scope="route", limits=(
                       CompiledLimit(key="shop/q#0", dimension="ip", requests=10, period_seconds=60, burst=10),))),
    )))
    url = f"http://127.0.0.1:{gw.ports['http']}"
    async with aiohttp.ClientSession() as session:
        seen = []
        for method, body in (("GET", None), ("POST", b"x" * 100)):  # the lean front, then aiohttp's
            async with session.request(method, f"{url}/api/x", data=body) as response:
                assert response.status == 200 and await response.text() == "ok"
                headers = response.headers
                assert headers["X-Backend"] == "b"
                for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
                    assert len(headers.getall(name)) == 1, (method, name, headers)
                assert headers["X-RateLimit-Limit"] == "10"
                seen.append(headers["X-RateLimit-Remaining"])
        assert seen == ["9", "8"]
        async with session.get(f"{url}/dead/x") as response:
            assert response.status == 502
            assert response.headers["X-RateLimit-Limit"] == "10"
            assert response.headers["X-RateLimit-Remaining"] == "9"  # its own policy's bucket
