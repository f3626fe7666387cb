"""Admission as a whole: check order, combined methods, rate-limit dimensions through a real
redis-server shared by two gateways, failure modes, metrics, and no credential in any log."""

from __future__ import annotations

import io
import logging
import sys
import time
from pathlib import Path

import jwt
import kubegate.dataplane.admission as admission_module
import pytest
from kubegate.dataplane.admission import Admission, RequestFacts
from kubegate.dataplane.audit import AuditLog
from kubegate.dataplane.jwks import JwksCache
from kubegate.dataplane.metrics import Metrics
from kubegate.dataplane.ratelimit import MemoryRateLimiter
from kubegate.dataplane.redis_limits import CircuitBreaker, RedisRateLimiter
from multidict import CIMultiDict, CIMultiDictProxy
from redis.crc import key_slot

from kubegate.apikeys import generate_api_key, key_hash, key_id
from kubegate.config import (
    CompiledApiKey,
    CompiledAuth,
    CompiledBackend,
    CompiledConfig,
    CompiledJwt,
    CompiledLimit,
    CompiledRateLimit,
    CompiledRoute,
    SecretBundle,
)

sys.path.insert(0, str(Path(__file__).parent))
from redis_fixture import running_redis

SECRET = "hmac-secret-for-tests-0123456789abcdef"
KEY = generate_api_key()
JWT_CFG = CompiledJwt(issuer="iss", algorithms=("HS256",), hmac_secret="jwt.secret")


def limit(key: str, dimension: str, n: int, header: str | None = None) -> CompiledLimit:
    return CompiledLimit(key=key, dimension=dimension, header=header, requests=n, period_seconds=60, burst=n)


def route(name: str, *, methods=("jwt", "apiKey"), required=True, limits=(), failure_mode="open", allow=(),
          deny=()) -> CompiledRoute:
    return CompiledRoute(
        id=f"shop/{name}", namespace="shop", name=name, path=f"/{name}", backends=(CompiledBackend(url="http://b"),),
        auth=CompiledAuth(required=required, methods=methods, jwt=JWT_CFG if "jwt" in methods else None)
        if methods else None,
        rate_limit=CompiledRateLimit(policy="shop/p", scope="route", limits=limits, failure_mode=failure_mode)
        if limits else None,
        ip_allow=allow, ip_deny=deny,
    )


R = {
    "bare": route("bare", methods=()),
    "guarded": route("guarded", deny=("192.0.2.0/24",), limits=(limit("shop/p#ip", "ip", 2),)),
    "users": route("users", required=False, limits=(limit("shop/p#user", "user", 1),)),
    "tenants": route("tenants", methods=(), limits=(limit("shop/p#hdr", "header", 1, "X-Tenant"),)),
    "global": route("global", methods=(), limits=(limit("shop/p#g", "global", 3), limit("shop/p#i", "ip", 10))),
    "closed": route("closed", methods=(), limits=(limit("shop/p#c", "ip", 100),), failure_mode="closed"),
    "open": route("open", methods=(), limits=(limit("shop/p#o", "ip", 100),)),
    "keyed": route("keyed", methods=("apiKey",), limits=(limit("shop/p#k", "ip", 100),)),
}
CONFIG = CompiledConfig(
    routes=tuple(R.values()),
    api_keys=(CompiledApiKey(id=key_id(key_hash(KEY)), namespace="shop", name="acme", hash_ref="ak.acme",
                             rate_limit=limit("apikey:shop/acme", "apiKey", 5)),),
)
SECRETS = SecretBundle(values={"jwt.secret": SECRET, "ak.acme": key_hash(KEY)})


def token(sub: str = "alice", **extra) -> str:
    return jwt.encode({"iss": "iss", "sub": sub, "exp": int(time.time()) + 600, **extra}, SECRET, algorithm="HS256")


def facts(headers: dict[str, str] | None = None, ip: str = "10.0.0.1") -> RequestFacts:
    return RequestFacts(method="POST", path="/", host="h", client_ip=ip,
                        headers=CIMultiDictProxy(CIMultiDict(headers or {})), peer_cert=None, tls=False)


class Gateway:
    """What the core builds per config load: one Admission over a long-lived limiter."""

    def __init__(self, limiter) -> None:
        self.audit_stream = io.StringIO()
        self.metrics = Metrics()
        self.limiter = limiter
        self.admission = Admission(CONFIG, SECRETS, limiter=limiter, jwks=JwksCache(), metrics=self.metrics,
                                   audit=AuditLog(self.audit_stream))

    async def admit(self, name: str, request: RequestFacts):
        return await self.admission.admit(R[name], request)


@pytest.fixture
def redis_server():
    yield from running_redis()


@pytest.fixture
async def gateway():
    limiter = MemoryRateLimiter()
    yield Gateway(limiter)
    await limiter.close()


def test_has_work_only_where_something_is_configured(gateway):
    assert not gateway.admission.has_work(R["bare"])
    assert all(gateway.admission.has_work(r) for name, r in R.items() if name != "bare")


async def test_ip_filter_runs_before_auth_and_auth_before_rate_limit(gateway):
    denied = await gateway.admit("guarded", facts(ip="192.0.2.10"))
    assert (denied.status, denied.reason) == (403, "ip_denied")
    for _ in range(5):  # refused credentials consume no rate-limit tokens
        assert (await gateway.admit("guarded", facts({"Authorization": "Bearer junk"}))).status == 401
    ok = [await gateway.admit("guarded", facts({"Authorization": f"Bearer {token()}"})) for _ in range(3)]
    assert [v.status for v in ok] == [None, None, 429]
    m = gateway.metrics.registry.get_sample_value
    assert m("kubegate_ip_denied_total", {"route": "shop/guarded"}) == 1
    assert m("auth_failures_total", {"route": "shop/guarded", "method": "POST", "reason": "invalid_token"}) == 5
    assert m("rate_limit_exceeded_total", {"route": "shop/guarded", "dimension": "ip"}) == 1


async def test_any_one_valid_credential_admits(gateway):
    both = await gateway.admit("guarded", facts({"Authorization": "Bearer junk", "X-API-Key": KEY}))
    assert both.status is None and both.principal.startswith("apikey:ak_")
    neither = await gateway.admit("guarded", facts({"Authorization": "Bearer junk", "X-API-Key": "kg_nope_x"}))
    assert neither.status == 401
    assert neither.response_headers["WWW-Authenticate"] == (
        'Bearer realm="kubegate", error="invalid_token", ApiKey realm="kubegate"')


async def test_user_dimension_counts_subjects_and_falls_back_to_ip(gateway):
    alice, bob = facts({"Authorization": f"Bearer {token('alice')}"}), facts({"Authorization": f"Bearer {token('bob')}"})
    assert [(await gateway.admit("users", f)).status for f in (alice, bob, alice)] == [None, None, 429]
    anon_a, anon_b = facts(ip="10.0.0.7"), facts(ip="10.0.0.8")
    assert [(await gateway.admit("users", f)).status for f in (anon_a, anon_b, anon_a)] == [None, None, 429]


async def test_header_dimension_shares_one_bucket_without_the_header(gateway):
    a, b = facts({"X-Tenant": "a"}), facts({"X-Tenant": "b"})
    assert [(await gateway.admit("tenants", f)).status for f in (a, b, a)] == [None, None, 429]
    assert [(await gateway.admit("tenants", facts(ip=ip))).status for ip in ("1.1.1.1", "2.2.2.2")] == [None, 429]


async def test_all_keys_of_a_request_share_one_cluster_slot():
    seen = []

    class Recording(MemoryRateLimiter):
        async def hit(self, charges, failure_mode):
            seen.append([c.bucket for c in charges])
            return await super().hit(charges, failure_mode)

    gw = Gateway(Recording())
    await gw.admit("global", facts(ip="10.1.1.1"))
    await gw.admit("keyed", facts({"X-API-Key": KEY}, ip="10.2.2.2"))
    await gw.admit("users", facts({"Authorization": f"Bearer {token('x' * 500)}"}))
    assert [len(keys) for keys in seen] == [2, 2, 1]
    for keys in seen:
        assert len({key_slot(k.encode()) for k in keys}) == 1
        assert all(k.startswith("kg:{shop}:rl:") and len(k) < 200 for k in keys)


async def test_charge_sets_are_remembered_per_client_and_bounded(gateway, monkeypatch):
    monkeypatch.setattr(admission_module, "MAX_CHARGE_SETS", 3)
    seen = []
    real_decide = gateway.limiter.lines_now  # an in-memory store is asked synchronously

    def recording(charges):
        seen.append(charges)
        return real_decide(charges)

    monkeypatch.setattr(gateway.limiter, "lines_now", recording)
    a, b = facts({"X-Tenant": "a"}), facts({"X-Tenant": "b"})
    assert [(await gateway.admit("tenants", f)).status for f in (a, a)] == [None, 429]
    assert seen[0] is seen[1]  # the same client's requests reuse one ChargeSet (and its encoding)
    for ip in ("10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4"):  # past the bound: the memory starts afresh
        assert (await gateway.admit("open", facts(ip=ip))).status is None
    assert gateway.admission._charge_sets <= 3
    # counting is unaffected by forgetting: the bucket is the same, only its ChargeSet is new
    assert [(await gateway.admit("tenants", f)).status for f in (a, b, b)] == [429, None, 429]
    assert seen[-3] is not seen[0] and [c.bucket for c in seen[-3]] == [c.bucket for c in seen[0]]


async def test_two_gateways_share_limits_through_redis(redis_server):
    first, second = Gateway(RedisRateLimiter(redis_server.url)), Gateway(RedisRateLimiter(redis_server.url))
    try:
        decisions = [await (first if i % 2 else second).admit("global", facts(ip=f"10.0.0.{i}")) for i in range(4)]
        assert [v.status for v in decisions] == [None, None, None, 429]
        assert decisions[0].headers() == {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "2",
                                                "X-RateLimit-Reset": "20"}
        refused = decisions[3].response_headers
        assert refused["X-RateLimit-Remaining"] == "0" and 1 <= int(refused["Retry-After"]) <= 20
        # per-key limit (5) and route ip limit (100) are charged together in one script
        keyed = [await (first if i % 2 else second).admit("keyed", facts({"X-API-Key": KEY})) for i in range(6)]
        assert [v.status for v in keyed] == [None] * 5 + [429]
        assert keyed[4].headers()["X-RateLimit-Limit"] == "5"
    finally:
        await first.limiter.close()
        await second.limiter.close()


async def test_dead_redis_fails_open_or_closed_per_policy(redis_server):
    limiter = RedisRateLimiter(redis_server.url, timeout=0.05, breaker=CircuitBreaker(threshold=2, cooldown=5))
    gw = Gateway(limiter)
    try:
        assert (await gw.admit("closed", facts())).status is None
        redis_server.stop()
        for name, status in (("closed", 503), ("open", None), ("closed", 503), ("open", None)):
            started = time.perf_counter()
            decision = await gw.admit(name, facts())
            assert time.perf_counter() - started < 0.2
            assert decision.status == status and "X-RateLimit-Limit" not in decision.headers()
        assert limiter.breaker.is_open
    finally:
        await limiter.close()


async def test_no_credential_reaches_any_log_line(gateway, caplog):
    caplog.set_level(logging.DEBUG)
    forged = jwt.encode({"iss": "iss", "sub": "eve"}, "wrong-secret-value-123456789012345", algorithm="HS256")
    expired = token(exp=int(time.time()) - 100)
    requests = [
        facts({"Authorization": f"Bearer {forged}"}),
        facts({"Authorization": f"Bearer {expired}"}),
        facts({"X-API-Key": KEY[:-1] + "Z"}),
        facts({"Authorization": f"ApiKey {generate_api_key()}"}),
        facts({"X-API-Key": KEY}, ip="192.0.2.1"),
    ]
    for request in requests:
        assert (await gateway.admit("guarded", request)).status in (401, 403)
    for _ in range(7):
        await gateway.admit("keyed", facts({"X-API-Key": KEY}))
    log = gateway.audit_stream.getvalue() + caplog.text
    assert log.count("\n") >= 7
    for secret in (SECRET, KEY, key_hash(KEY), forged, expired, KEY[:-1] + "Z"):
        assert secret not in log
    for part in (forged.split(".")[2], expired.split(".")[2]):
        assert part not in log
