"""API-key matrix through Admission: headers, checksum, hash lookup, scope, CIDRs, expiry, per-key limit."""

from __future__ import annotations

import io
import time

import pytest
from kubegate.dataplane import api_key_auth
from kubegate.dataplane.admission import Admission, RequestFacts
from kubegate.dataplane.api_key_auth import extract_api_key
from kubegate.dataplane.audit import AuditLog
from kubegate.dataplane.jwks import JwksCache
from kubegate.dataplane.metrics import Metrics
from kubegate.dataplane.ratelimit import MemoryRateLimiter
from multidict import CIMultiDict, CIMultiDictProxy

from kubegate.apikeys import generate_api_key, key_hash, key_id
from kubegate.config import (
    CompiledApiKey,
    CompiledAuth,
    CompiledBackend,
    CompiledConfig,
    CompiledLimit,
    CompiledRoute,
    SecretBundle,
)

KEYS = {name: generate_api_key() for name in ("acme", "scoped", "partner", "off", "old", "limited")}


def api_key(name: str, **kw) -> CompiledApiKey:
    return CompiledApiKey(id=key_id(key_hash(KEYS[name])), namespace="shop", name=name,
                          hash_ref=f"apikey.shop.{name}", **kw)


def route(namespace: str, name: str) -> CompiledRoute:
    return CompiledRoute(id=f"{namespace}/{name}", namespace=namespace, name=name, path=f"/{name}",
                         backends=(CompiledBackend(url="http://b"),),
                         auth=CompiledAuth(required=True, methods=("apiKey",)))


ORDERS, CATALOG, FOREIGN = route("shop", "orders"), route("shop", "catalog"), route("other", "orders")
CONFIG = CompiledConfig(
    routes=(ORDERS, CATALOG, FOREIGN),
    api_keys=(
        api_key("acme"),
        api_key("scoped", routes=("shop/catalog",)),
        api_key("partner", allowed_cidrs=("203.0.113.0/24", "2001:db8::/32")),
        api_key("off", disabled=True),
        api_key("old", expires_at=time.time() - 1),
        api_key("limited", rate_limit=CompiledLimit(key="apikey:shop/limited", dimension="apiKey", requests=2,
                                                    period_seconds=60, burst=2)),
    ),
)
SECRETS = SecretBundle(values={f"apikey.shop.{n}": key_hash(k) for n, k in KEYS.items()})


def facts(headers: dict[str, str] | None = None, ip: str = "10.0.0.1") -> RequestFacts:
    return RequestFacts(method="GET", path="/", host="api.example.com", client_ip=ip,
                        headers=CIMultiDictProxy(CIMultiDict(headers or {})), peer_cert=None, tls=False)


def with_key(key: str, ip: str = "10.0.0.1") -> RequestFacts:
    return facts({"X-API-Key": key}, ip)


@pytest.fixture
def audit_stream():
    return io.StringIO()


@pytest.fixture
def admission(audit_stream):
    return Admission(CONFIG, SECRETS, limiter=MemoryRateLimiter(), jwks=JwksCache(), metrics=Metrics(),
                     audit=AuditLog(audit_stream))


def flip_last(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


MATRIX = [
    ("valid X-API-Key", ORDERS, lambda: with_key(KEYS["acme"]), None, ""),
    ("valid Authorization: ApiKey", ORDERS, lambda: facts({"Authorization": f"ApiKey {KEYS['acme']}"}), None, ""),
    ("bad checksum", ORDERS, lambda: with_key(flip_last(KEYS["acme"])), 401, "invalid_api_key"),
    ("garbage", ORDERS, lambda: with_key("hello"), 401, "invalid_api_key"),
    ("unknown key", ORDERS, lambda: with_key(generate_api_key()), 401, "invalid_api_key"),
    ("disabled", ORDERS, lambda: with_key(KEYS["off"]), 401, "api_key_disabled"),
    ("expired", ORDERS, lambda: with_key(KEYS["old"]), 401, "api_key_expired"),
    ("scoped key on its route", CATALOG, lambda: with_key(KEYS["scoped"]), None, ""),
    ("scoped key on another route", ORDERS, lambda: with_key(KEYS["scoped"]), 403, "forbidden_scope"),
    ("key of another namespace", FOREIGN, lambda: with_key(KEYS["acme"]), 403, "forbidden_scope"),
    ("allowed CIDR", ORDERS, lambda: with_key(KEYS["partner"], "203.0.113.9"), None, ""),
    ("allowed CIDR, IPv4-mapped", ORDERS, lambda: with_key(KEYS["partner"], "::ffff:203.0.113.9"), None, ""),
    ("allowed CIDR, IPv6", ORDERS, lambda: with_key(KEYS["partner"], "2001:db8::1"), None, ""),
    ("wrong CIDR", ORDERS, lambda: with_key(KEYS["partner"], "198.51.100.1"), 403, "forbidden_cidr"),
    ("no key", ORDERS, lambda: facts(), 401, "missing_credentials"),
    ("bearer token on an apiKey-only route", ORDERS, lambda: facts({"Authorization": "Bearer x.y.z"}), 401,
     "missing_credentials"),
]


@pytest.mark.parametrize("case,r,make,status,reason", MATRIX, ids=[m[0] for m in MATRIX])
async def test_api_key_matrix(admission, audit_stream, case, r, make, status, reason):
    request = make()
    decision = await admission.admit(r, request)
    assert (decision.status, decision.reason) == (status, reason), case
    if status is None:
        assert decision.principal.startswith("apikey:ak_")
    if status == 401:
        assert decision.response_headers["WWW-Authenticate"] == 'ApiKey realm="kubegate"'
    log = audit_stream.getvalue()
    for key in KEYS.values():
        assert key not in log and key_hash(key) not in log
    if status == 403:
        assert '"key_id":"ak_' in log and '"event":"forbidden"' in log


async def test_per_key_limit_is_shared_across_routes(admission):
    key = KEYS["limited"]
    first = await admission.admit(ORDERS, with_key(key))
    second = await admission.admit(CATALOG, with_key(key, "10.9.9.9"))
    third = await admission.admit(ORDERS, with_key(key))
    assert [first.status, second.status, third.status] == [None, None, 429]
    assert first.headers()["X-RateLimit-Limit"] == "2"
    assert second.headers()["X-RateLimit-Remaining"] == "0"
    assert third.reason == "rate_limited" and int(third.response_headers["Retry-After"]) >= 1
    assert (await admission.admit(ORDERS, with_key(KEYS["acme"]))).status is None  # other keys unaffected


def test_garbage_is_refused_and_repeated_keys_skip_the_checksum(monkeypatch):
    """Bad-checksum and short keys are refused; a repeated key skips the checksum, and every
    per-request rule still applies to it. Each presented key is hashed (the memory is keyed by
    digest): sha256 costs less than the checksum's regex and CRC."""
    table = api_key_auth.ApiKeyTable(CONFIG.api_keys, SECRETS)
    checked = []
    real = api_key_auth.worth_a_lookup
    monkeypatch.setattr(api_key_auth, "worth_a_lookup", lambda k: checked.append(k) or real(k))
    assert table.check(flip_last(KEYS["acme"]), ORDERS, "10.0.0.1").reason == "invalid_api_key"
    assert table.check("kg_" + "x" * 43 + "_AAAAAA", ORDERS, "10.0.0.1").reason == "invalid_api_key"
    assert table.check("too-short", ORDERS, "10.0.0.1").reason == "invalid_api_key"  # < 16 bytes: no key
    assert table.check(KEYS["acme"], ORDERS, "10.0.0.1").ok and len(checked) == 4
    # a repeated key is remembered: no second checksum, and every per-request rule still applies
    assert table.check(KEYS["acme"], ORDERS, "10.0.0.1").ok and len(checked) == 4
    assert table.check(KEYS["acme"], FOREIGN, "10.0.0.1").reason == "forbidden_scope" and len(checked) == 4
    unknown = generate_api_key()
    assert [table.check(unknown, ORDERS, "10.0.0.1").reason for _ in range(2)] == ["invalid_api_key"] * 2
    assert len(checked) == 5
    # a key a user brought (any other format, >= 16 bytes) is looked up by its hash
    assert table.check("kg_" + "x" * 300, ORDERS, "10.0.0.1").reason == "invalid_api_key"


def test_remembered_lookups_are_the_presented_keys_of_one_snapshot_only():
    """The memory holds what clients presented (never a key nobody sent) and dies with its table: a
    reload builds a new table that has seen nothing (test_attack_cached_credentials attacks revocation)."""
    table = api_key_auth.ApiKeyTable(CONFIG.api_keys, SECRETS)
    presented = [KEYS["acme"], flip_last(KEYS["acme"]), generate_api_key(), "kg_" + "x" * 300]
    for key in presented:
        table.check(key, ORDERS, "10.0.0.1")
    assert sorted(table._seen) == sorted(presented)
    assert [record is not None for record in table._seen.values()] == [True, False, False, False]
    assert not api_key_auth.ApiKeyTable(CONFIG.api_keys, SECRETS)._seen


def test_remembered_keys_are_bounded(monkeypatch):
    monkeypatch.setattr(api_key_auth.ApiKeyTable, "SEEN_KEPT", 4)
    table = api_key_auth.ApiKeyTable(CONFIG.api_keys, SECRETS)
    for _ in range(2):
        for name, key in KEYS.items():
            outcome = table.check(key, CATALOG, "203.0.113.1")
            assert outcome.ok == (name in ("acme", "scoped", "partner", "limited")), name
        assert len(table._seen) <= 4


def test_extract_api_key_forms():
    assert extract_api_key("kg_a_b", None) == "kg_a_b"
    assert extract_api_key(None, "apikey kg_a_b ") == "kg_a_b"
    assert extract_api_key(None, "Bearer kg_a_b") is None
    assert extract_api_key(None, None) is None


def test_missing_or_malformed_hash_leaves_the_key_out():
    admission = Admission(CONFIG, SecretBundle(values={}), limiter=MemoryRateLimiter(), jwks=JwksCache(),
                          metrics=Metrics(), audit=AuditLog(io.StringIO()))
    assert {ref for ref in admission.dropped if ref.startswith("ApiKey/")} == {
        f"ApiKey/{k.namespace}/{k.name}" for k in CONFIG.api_keys}
    assert "shop/acme" in admission.dropped["ApiKey/shop/acme"]
