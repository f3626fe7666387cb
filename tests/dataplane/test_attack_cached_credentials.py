"""Attacks on the request path's synchronous fast path (Admission.decide): a bearer token verified
once is a dict hit afterwards, and an admitted API key's caller and buckets are remembered, so every
way of riding on a remembered credential must still be refused.

Forged signatures and tampered payloads next to a cached genuine token, a cached token used past
its exp (and before its nbf), alg confusion (none, HS256 signed with the RS256 public key), a token
cached for one route presented to a route with another key, and a cached requiredClaims refusal.
API keys: a key admitted once, then expired, presented on a route outside its scope, from an address
outside its CIDRs, or with one character changed; and its own limit stays exact across addresses.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import io
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubegate.dataplane.admission import Admission, Decision, RequestFacts
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
    CompiledJwt,
    CompiledLimit,
    CompiledRateLimit,
    CompiledRoute,
    SecretBundle,
)

SECRET, OTHER_SECRET = "hmac-secret-for-cache-attacks-0123456789", "another-hmac-secret-for-route-b-98765"
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PRIVATE = _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
RSA_PUBLIC = _KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _route(name: str, jwt_cfg: CompiledJwt | None) -> CompiledRoute:
    """A JWT route, or with ``jwt_cfg`` None an API-key route; IP filter and a generous ip limit either way."""
    limits = (CompiledLimit(key=f"t/{name}#0", dimension="ip", requests=1000, period_seconds=60, burst=1000),)
    auth = CompiledAuth(methods=("jwt",), jwt=jwt_cfg) if jwt_cfg else CompiledAuth(methods=("apiKey",))
    return CompiledRoute(
        id=f"t/{name}", namespace="t", name=name, path=f"/{name}", backends=(CompiledBackend(url="http://b"),),
        auth=auth, ip_allow=("10.0.0.0/8",),
        rate_limit=CompiledRateLimit(policy="t/p", scope="route", limits=limits),
    )


HS = _route("hs", CompiledJwt(issuer="iss", algorithms=("HS256",), hmac_secret="s.a"))
OTHER = _route("other", CompiledJwt(issuer="iss", algorithms=("HS256",), hmac_secret="s.b"))
RS = _route("rs", CompiledJwt(issuer="iss", algorithms=("RS256",), public_key_pem=RSA_PUBLIC))
ADMINS = _route("admins", CompiledJwt(issuer="iss", algorithms=("HS256",), hmac_secret="s.a",
                                      required_claims={"role": "admin"}))


KEYED = _route("keyed", None)
ELSEWHERE = _route("elsewhere", None)
KEY, EXPIRING, NARROW = generate_api_key(), generate_api_key(), generate_api_key()
SOON = time.time() + 86400  # fixed at collection: a suite can take many minutes to get here
KEYS = (
    CompiledApiKey(id=key_id(key_hash(KEY)), namespace="t", name="k", hash_ref="k.k", routes=("t/keyed",),
                   rate_limit=CompiledLimit(key="apikey:t/k", dimension="apiKey", requests=3, period_seconds=60,
                                            burst=3)),
    CompiledApiKey(id=key_id(key_hash(EXPIRING)), namespace="t", name="e", hash_ref="k.e", expires_at=SOON),
    CompiledApiKey(id=key_id(key_hash(NARROW)), namespace="t", name="n", hash_ref="k.n",
                   allowed_cidrs=("10.0.0.1/32",)),
)


@pytest.fixture
async def admission():
    limiter = MemoryRateLimiter()
    config = CompiledConfig(routes=(HS, OTHER, RS, ADMINS, KEYED, ELSEWHERE), api_keys=KEYS)
    secrets = {"s.a": SECRET, "s.b": OTHER_SECRET, "k.k": key_hash(KEY), "k.e": key_hash(EXPIRING),
               "k.n": key_hash(NARROW)}
    yield Admission(config, SecretBundle(values=secrets), limiter=limiter,
                    jwks=JwksCache(), metrics=Metrics(), audit=AuditLog(io.StringIO()))
    await limiter.close()


def hs_token(secret: str = SECRET, **claims) -> str:
    return jwt.encode({"iss": "iss", "sub": "alice", "exp": int(time.time()) + 600, **claims}, secret,
                      algorithm="HS256")


def bearer(token: str) -> RequestFacts:
    return RequestFacts(method="GET", path="/", host="h", client_ip="10.0.0.1",
                        headers=CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {token}"})), peer_cert=None,
                        tls=False)


def with_key(key: str, ip: str = "10.0.0.1") -> RequestFacts:
    return RequestFacts(method="GET", path="/", host="h", client_ip=ip,
                        headers=CIMultiDictProxy(CIMultiDict({"X-API-Key": key})), peer_cert=None, tls=False)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def decided(admission: Admission, route: CompiledRoute, token: str) -> Decision:
    outcome = admission.decide(route, bearer(token))
    return outcome if type(outcome) is Decision else await outcome


async def test_a_cached_token_is_a_synchronous_decision(admission):
    token = hs_token()
    first = admission.decide(HS, bearer(token))
    assert type(first) is not Decision  # verified once (a coroutine)...
    assert (await first).status is None
    again = admission.decide(HS, bearer(token))
    assert type(again) is Decision and again.status is None  # ...then the fast path attacked below
    assert again.headers()["X-RateLimit-Limit"] == "1000"


async def test_forged_signatures_and_tampered_payloads_are_refused_next_to_a_cached_token(admission):
    genuine = hs_token()
    assert (await decided(admission, HS, genuine)).status is None
    head, payload, signature = genuine.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    tampered = b64(json.dumps({"iss": "iss", "sub": "root", "exp": int(time.time()) + 600}).encode())
    forgeries = [
        f"{head}.{payload}.{flipped}",  # one signature character changed
        f"{head}.{tampered}.{signature}",  # another subject under the genuine signature
        hs_token("wrong-secret-of-the-right-length-000000"),  # the same claims signed with another key
        f"{head}.{payload}.",  # no signature at all
        f"{head}.{payload}",  # two parts
        genuine + "x",  # the genuine token with a byte added
    ]
    cached = len(admission.token_cache)
    for forged in forgeries:
        for _ in range(2):  # and the second time too: a refusal is never cached as valid
            decision = await decided(admission, HS, forged)
            assert decision.status == 401, forged
            assert decision.reason == "invalid_token"
    assert len(admission.token_cache) == cached
    assert (await decided(admission, HS, genuine)).status is None  # the genuine one still works


async def test_a_cached_token_is_refused_once_it_expires(admission, monkeypatch):
    now = time.time()
    token = hs_token(exp=int(now) + 5)
    assert (await decided(admission, HS, token)).status is None
    assert type(admission.decide(HS, bearer(token))) is Decision  # served from the cache
    monkeypatch.setattr(time, "time", lambda: now + 5 + 31)  # past exp + the 30 s leeway
    for _ in range(2):
        decision = await decided(admission, HS, token)
        assert (decision.status, decision.reason) == (401, "token_expired")


async def test_a_token_not_yet_valid_is_refused_until_its_nbf_even_when_cached(admission, monkeypatch):
    now = time.time()
    token = hs_token(nbf=int(now) + 100)
    for _ in range(2):
        decision = await decided(admission, HS, token)
        assert (decision.status, decision.reason) == (401, "token_not_yet_valid")
    monkeypatch.setattr(time, "time", lambda: now + 100)
    assert (await decided(admission, HS, token)).status is None


async def test_alg_confusion_never_admits_and_is_never_cached(admission):
    claims = {"iss": "iss", "sub": "alice", "exp": int(time.time()) + 600}
    genuine = jwt.encode(claims, RSA_PRIVATE, algorithm="RS256")
    assert (await decided(admission, RS, genuine)).status is None
    body = b64(json.dumps(claims).encode())
    unsigned = f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{body}."
    # HS256 keyed with the RS256 public key: the classic confusion (pyjwt refuses to make it; do it by hand)
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    mac = hmac.new(RSA_PUBLIC.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    confused = f"{head}.{body}.{b64(mac)}"
    for forged in (unsigned, confused):
        for _ in range(2):
            decision = await decided(admission, RS, forged)
            assert decision.status == 401 and decision.reason == "invalid_token", forged


async def test_a_token_cached_for_one_route_is_refused_where_another_key_signs(admission):
    token = hs_token()
    assert (await decided(admission, HS, token)).status is None
    assert type(admission.decide(HS, bearer(token))) is Decision  # cached for HS's verifier
    for _ in range(2):
        assert (await decided(admission, OTHER, token)).status == 401
    other = hs_token(OTHER_SECRET)
    assert (await decided(admission, OTHER, other)).status is None
    assert (await decided(admission, HS, other)).status == 401


async def test_a_cached_required_claims_refusal_stays_a_403(admission):
    token = hs_token(role="user")
    for _ in range(3):
        decision = await decided(admission, ADMINS, token)
        assert (decision.status, decision.reason) == (403, "forbidden_claims")
    assert (await decided(admission, HS, token)).status is None  # the same token where no claim is required
    assert (await decided(admission, ADMINS, hs_token(role="admin"))).status is None


async def keyed(admission: Admission, route: CompiledRoute, request: RequestFacts) -> Decision:
    outcome = admission.decide(route, request)
    return outcome if type(outcome) is Decision else await outcome


async def test_an_admitted_key_is_decided_synchronously_and_its_own_limit_stays_exact(admission):
    first = admission.decide(KEYED, with_key(KEY))
    assert type(first) is Decision and first.status is None and first.principal.startswith("apikey:")
    # the key's own limit (3) counts every address: the remembered buckets are per address AND key
    rest = [await keyed(admission, KEYED, with_key(KEY, ip)) for ip in ("10.0.0.2", "10.0.0.3", "10.0.0.1")]
    assert [d.status for d in rest] == [None, None, 429]


async def test_a_remembered_key_is_refused_once_it_expires(admission, monkeypatch):
    assert (await keyed(admission, ELSEWHERE, with_key(EXPIRING))).status is None
    monkeypatch.setattr(time, "time", lambda: SOON + 1)
    for _ in range(2):
        decision = await keyed(admission, ELSEWHERE, with_key(EXPIRING))
        assert (decision.status, decision.reason) == (401, "api_key_expired")


async def test_a_remembered_key_is_refused_outside_its_scope_and_its_cidrs(admission):
    assert (await keyed(admission, KEYED, with_key(KEY))).status is None
    for _ in range(2):
        decision = await keyed(admission, ELSEWHERE, with_key(KEY))  # scoped to t/keyed only
        assert (decision.status, decision.reason) == (403, "forbidden_scope")
    assert (await keyed(admission, ELSEWHERE, with_key(NARROW, "10.0.0.1"))).status is None
    for _ in range(2):
        decision = await keyed(admission, ELSEWHERE, with_key(NARROW, "10.0.0.2"))
        assert (decision.status, decision.reason) == (403, "forbidden_cidr")


async def test_a_key_one_character_off_is_refused_after_the_real_one_was_admitted(admission):
    assert (await keyed(admission, KEYED, with_key(KEY))).status is None
    changed = KEY[:-1] + ("0" if KEY[-1] != "0" else "1")
    for forged in (changed, KEY + "x", KEY[:-1], KEY.upper() if KEY.upper() != KEY else KEY.lower()):
        decision = await keyed(admission, KEYED, with_key(forged))
        assert (decision.status, decision.reason) == (401, "invalid_api_key"), forged


def _admission_with(keys: tuple[CompiledApiKey, ...], hashes: dict[str, str]) -> Admission:
    return Admission(CompiledConfig(routes=(KEYED, ELSEWHERE), api_keys=keys), SecretBundle(values=hashes),
                     limiter=MemoryRateLimiter(), jwks=JwksCache(), metrics=Metrics(), audit=AuditLog(io.StringIO()))


async def test_a_remembered_key_is_refused_by_the_snapshot_that_revokes_it(admission):
    """The memory of presented keys belongs to one snapshot: a reload that deletes, disables or re-keys
    an ApiKey refuses the key on the very next request, however often it was admitted before."""
    narrow = KEYS[2]
    for _ in range(3):
        assert (await keyed(admission, ELSEWHERE, with_key(NARROW))).status is None
    deleted = _admission_with(KEYS[:2], {"k.k": key_hash(KEY), "k.e": key_hash(EXPIRING)})
    disabled = _admission_with((*KEYS[:2], dataclasses.replace(narrow, disabled=True)),
                               {"k.k": key_hash(KEY), "k.e": key_hash(EXPIRING), "k.n": key_hash(NARROW)})
    rotated = _admission_with(KEYS, {"k.k": key_hash(KEY), "k.e": key_hash(EXPIRING),
                                     "k.n": key_hash(generate_api_key())})
    for reloaded, reason in ((deleted, "invalid_api_key"), (disabled, "api_key_disabled"),
                             (rotated, "invalid_api_key")):
        for _ in range(2):
            decision = await keyed(reloaded, ELSEWHERE, with_key(NARROW))
            assert (decision.status, decision.reason) == (401, reason)
    assert (await keyed(admission, ELSEWHERE, with_key(NARROW))).status is None  # the old snapshot, as it was


async def test_a_flood_of_made_up_keys_keeps_the_memory_bounded_and_decisions_right(admission):
    from kubegate.dataplane.api_key_auth import ApiKeyTable

    assert (await keyed(admission, KEYED, with_key(KEY))).status is None
    for i in range(ApiKeyTable.SEEN_KEPT * 2 + 7):
        forged = KEY[:-6] + f"{i:06d}" if i % 2 else f"user-brought-key-guess-{i:08d}-padding"
        decision = await keyed(admission, KEYED, with_key(forged))
        assert (decision.status, decision.reason) == (401, "invalid_api_key")
        assert len(admission._keys._seen) <= ApiKeyTable.SEEN_KEPT
    assert (await keyed(admission, KEYED, with_key(KEY))).status is None


async def test_a_key_that_is_not_utf8_is_a_401_not_a_crash(admission):
    """Header values keep undecodable bytes as surrogates; such a key is simply not a key."""
    for raw in (b"kg_\xff\xfe" + b"0" * 40, b"\xc3\x28" * 20, KEY.encode()[:-1] + b"\x80"):
        presented = raw.decode("utf-8", "surrogateescape")
        for _ in range(2):  # looked up, then remembered
            decision = await keyed(admission, KEYED, with_key(presented))
            assert (decision.status, decision.reason) == (401, "invalid_api_key")
    assert (await keyed(admission, KEYED, with_key(KEY))).status is None
