"""JWT matrix through Admission, with real keys and a real local JWKS server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kubegate.dataplane.admission import Admission, RequestFacts
from kubegate.dataplane.audit import AuditLog
from kubegate.dataplane.jwks import JwksCache, parse_jwks
from kubegate.dataplane.jwt_auth import (
    MAX_TOKEN_BYTES,
    RAW_KEY_MAX,
    JwtRejected,
    JwtVerifier,
    TokenCache,
    claim_text,
)
from kubegate.dataplane.metrics import Metrics
from kubegate.dataplane.ratelimit import MemoryRateLimiter
from multidict import CIMultiDict, CIMultiDictProxy

from kubegate.config import (
    CompiledAuth,
    CompiledBackend,
    CompiledConfig,
    CompiledJwt,
    CompiledRoute,
    SecretBundle,
)

ISS, AUD = "https://auth.example.com", "https://api.example.com"
HMAC_SECRET = "s3cr3t-hmac-key-0123456789abcdef0123456789"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 600, "scope": "admin"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_config(**kw) -> CompiledJwt:
    base = {"issuer": ISS, "audiences": (AUD,), "algorithms": ("RS256",), "public_key_pem": pem(RSA_KEY),
                "required_claims": {"scope": "admin"}, "forward_claims": {"sub": "X-User-Id", "roles": "X-Roles"},
                "leeway_seconds": 5}
    base.update(kw)
    return CompiledJwt(**base)


def route(name: str, jwt_cfg: CompiledJwt, required: bool = True) -> CompiledRoute:
    return CompiledRoute(
        id=f"shop/{name}", namespace="shop", name=name, path=f"/{name}", backends=(CompiledBackend(url="http://b"),),
        auth=CompiledAuth(required=required, methods=("jwt",), jwt=jwt_cfg),
    )


ROUTES = {
    "rs": route("rs", jwt_config()),
    "es": route("es", jwt_config(algorithms=("ES256",), public_key_pem=pem(EC_KEY))),
    "hs": route("hs", jwt_config(algorithms=("HS256",), public_key_pem=None, hmac_secret="jwt-hmac")),
    "open": route("open", jwt_config(required_claims={}), required=False),
}
SECRETS = SecretBundle(values={"jwt-hmac": HMAC_SECRET})


def facts(headers: dict[str, str] | None = None, ip: str = "10.0.0.1") -> RequestFacts:
    return RequestFacts(method="GET", path="/", host="api.example.com", client_ip=ip,
                        headers=CIMultiDictProxy(CIMultiDict(headers or {})), peer_cert=None, tls=False)


def bearer(token: str) -> RequestFacts:
    return facts({"Authorization": f"Bearer {token}"})


@pytest.fixture
def audit_stream():
    return io.StringIO()


@pytest.fixture
async def admission(audit_stream):
    jwks = JwksCache()
    yield Admission(CompiledConfig(routes=tuple(ROUTES.values())), SECRETS, limiter=MemoryRateLimiter(),
                    jwks=jwks, metrics=Metrics(), audit=AuditLog(audit_stream))
    await jwks.close()


def rs256(**kw) -> str:
    return jwt.encode(claims(**kw), RSA_KEY, algorithm="RS256")


def hs256_with_public_pem() -> str:
    """The classic key-confusion attack: HMAC keyed with the RSA public key PEM."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    signature = hmac.new(pem(RSA_KEY).encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def alg_none() -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims()).encode())}."


MATRIX = [
    ("valid RS256", "rs", lambda: rs256(), None, ""),
    ("valid ES256", "es", lambda: jwt.encode(claims(), EC_KEY, algorithm="ES256"), None, ""),
    ("valid HS256", "hs", lambda: jwt.encode(claims(), HMAC_SECRET, algorithm="HS256"), None, ""),
    ("expired", "rs", lambda: rs256(exp=int(time.time()) - 60), 401, "token_expired"),
    ("not yet valid", "rs", lambda: rs256(nbf=int(time.time()) + 600), 401, "token_not_yet_valid"),
    ("wrong issuer", "rs", lambda: rs256(iss="https://evil.example.com"), 401, "invalid_issuer"),
    ("wrong audience", "rs", lambda: rs256(aud="https://other.example.com"), 401, "invalid_audience"),
    ("alg none", "rs", alg_none, 401, "invalid_token"),
    ("HS256 keyed with the RSA public PEM", "rs", hs256_with_public_pem, 401, "invalid_token"),
    ("bad signature", "rs", lambda: jwt.encode(claims(), OTHER_RSA_KEY, algorithm="RS256"), 401, "invalid_token"),
    ("RS256 on an HS256 route", "hs", lambda: rs256(), 401, "invalid_token"),
    ("garbage", "rs", lambda: "not-a-jwt", 401, "invalid_token"),
    ("three garbage parts", "rs", lambda: "a.b.c", 401, "invalid_token"),
    ("missing required claim", "rs", lambda: rs256(scope=None), 403, "forbidden_claims"),
    ("wrong required claim", "rs", lambda: rs256(scope="read"), 403, "forbidden_claims"),
]


@pytest.mark.parametrize("case,route_name,make,status,reason", MATRIX, ids=[m[0] for m in MATRIX])
async def test_jwt_matrix(admission, audit_stream, case, route_name, make, status, reason):
    token = make()
    decision = await admission.admit(ROUTES[route_name], bearer(token))
    assert (decision.status, decision.reason) == (status, reason), case
    if status is None:
        assert decision.principal == "jwt:alice"
        assert decision.upstream_headers == {"X-User-Id": "alice"}
    if status == 401:
        assert decision.response_headers["WWW-Authenticate"] == 'Bearer realm="kubegate", error="invalid_token"'
    if status is not None:
        line = json.loads(audit_stream.getvalue().splitlines()[-1])
        assert line["reason"] == reason and line["route"] == f"shop/{route_name}"
    assert token not in audit_stream.getvalue()


async def test_missing_token_is_401_with_a_challenge(admission):
    decision = await admission.admit(ROUTES["rs"], facts())
    assert (decision.status, decision.reason) == (401, "missing_credentials")
    assert decision.response_headers == {"WWW-Authenticate": 'Bearer realm="kubegate"'}


async def test_optional_auth_admits_anonymous_but_still_checks_sent_tokens(admission):
    anonymous = await admission.admit(ROUTES["open"], facts())
    assert anonymous.status is None and anonymous.principal is None
    bad = await admission.admit(ROUTES["open"], bearer(rs256(exp=int(time.time()) - 60)))
    assert (bad.status, bad.reason) == (401, "token_expired")


async def test_forward_claims_are_stringified_and_cannot_split_headers(admission):
    token = rs256(sub="bob\r\nX-Injected: 1", roles=["a", "b"])
    decision = await admission.admit(ROUTES["rs"], bearer(token))
    assert decision.status is None
    assert decision.upstream_headers == {"X-User-Id": "bobX-Injected: 1", "X-Roles": '["a","b"]'}
    assert claim_text(True) == "true" and claim_text(3) == "3"


async def test_required_claim_may_be_one_of_a_list(admission):
    decision = await admission.admit(ROUTES["rs"], bearer(rs256(scope=["read", "admin"])))
    assert decision.status is None


async def test_verified_tokens_are_cached_but_exp_is_rechecked():
    verifier = JwtVerifier(jwt_config(), SECRETS, JwksCache(), TokenCache(), 0)
    now = time.time()
    token = rs256(exp=int(now) + 60)
    first = await verifier.verify(token, now)
    assert len(verifier._cache) == 1
    calls = []
    real_decode = jwt.decode
    jwt.decode = lambda *a, **k: calls.append(1) or real_decode(*a, **k)
    try:
        assert await verifier.verify(token, now + 1) is first  # a dict lookup, no signature check
        assert calls == []
        with pytest.raises(JwtRejected) as refused:
            await verifier.verify(token, now + 60 + 6)  # past exp + leeway
        assert refused.value.reason == "token_expired"
    finally:
        jwt.decode = real_decode


async def test_cache_hits_are_synchronous_and_long_tokens_are_keyed_by_digest():
    verifier = JwtVerifier(jwt_config(), SECRETS, JwksCache(), TokenCache(), 0)
    now = time.time()
    short, long = rs256(exp=int(now) + 60), rs256(exp=int(now) + 60, padding="x" * RAW_KEY_MAX)
    assert verifier.lookup(short, now) is None  # never seen: the caller awaits verify()
    for token in (short, long):
        first = await verifier.verify(token, now)
        assert verifier.lookup(token, now + 1) is first
        assert verifier.lookup(token + "x", now + 1) is None  # a different string is a different token
    keys = [key for _, key in verifier._cache._entries]
    assert keys == [short, hashlib.sha256(long.encode()).digest()]  # memory stays bounded for long tokens
    later = now + 60 + 5.5  # exp + leeway passed: never answered from the cache
    assert verifier.lookup(short, later) is None and len(verifier._cache) == 1
    with pytest.raises(JwtRejected, match="expired"):
        await verifier.verify(short, later)
    lacking = rs256(scope="read")
    with pytest.raises(JwtRejected) as refused:
        await verifier.verify(lacking, now)
    assert refused.value.status == 403
    with pytest.raises(JwtRejected) as again:  # the cached 403 is a 403 from lookup() too
        verifier.lookup(lacking, now)
    assert again.value.status == 403
    with pytest.raises(JwtRejected, match="too large"):
        verifier.lookup("x" * (MAX_TOKEN_BYTES + 1), now)


def test_token_cache_is_bounded():
    cache = TokenCache(size=3)
    verifier = JwtVerifier(jwt_config(), SECRETS, JwksCache(), cache, 0)
    for i in range(5):
        cache.put((0, bytes([i])), verifier._identity({"sub": str(i)}, time.time()))
    assert len(cache) == 3 and cache.get((0, b"\x00"), time.time()) is None


@pytest.mark.parametrize("cfg,message", [
    ({"algorithms": ("RS256", "HS256")}, "does not fit algorithm HS256"),
    ({"algorithms": ("ES256",)}, "does not fit algorithm ES256"),  # an RSA key for ES256
    ({"algorithms": ("HS256",), "public_key_pem": None, "hmac_secret": "absent"}, "missing from the secret bundle"),
    ({"public_key_pem": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"}, "not a PEM"),
    ({"algorithms": ("none",)}, "not supported"),
    ({"public_key_pem": None, "jwks_uri": "http://x/jwks", "algorithms": ("HS256",)}, "never a JWKS"),
])
def test_unusable_jwt_config_leaves_its_route_out_at_load(cfg, message):
    try:
        bad = route("bad", jwt_config(**cfg))
    except ValueError as exc:  # the compiled-config model itself refuses some
        assert message in str(exc) or "algorithms" in str(exc)
        return
    config = CompiledConfig(routes=(bad,))
    admission = Admission(config, SECRETS, limiter=MemoryRateLimiter(), jwks=JwksCache(), metrics=Metrics(),
                          audit=AuditLog(io.StringIO()))
    assert message in admission.dropped[f"GatewayRoute/{bad.id}"]
    assert not admission.has_work(bad)  # never served: the Gateway leaves dropped routes out of its table


# --- JWKS ------------------------------------------------------------------------------


def jwk(private_key, kid: str, alg: str) -> dict:
    algo = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
    data = algo.to_jwk(private_key.public_key(), as_dict=True)
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture
async def jwks_server():
    state = {"keys": [jwk(RSA_KEY, "k1", "RS256")], "hits": 0, "status": 200}

    async def handler(request):
        state["hits"] += 1
        if state["status"] != 200:
            return web.Response(status=state["status"])
        return web.json_response({"keys": state["keys"]})

    app = web.Application()
    app.router.add_get("/jwks.json", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    state["uri"] = f"http://127.0.0.1:{port}/jwks.json"
    yield state
    await runner.cleanup()


async def jwks_admission(state, cache: JwksCache) -> tuple[Admission, CompiledRoute]:
    r = route("jwks", jwt_config(public_key_pem=None, jwks_uri=state["uri"], algorithms=("RS256", "ES256")))
    adm = Admission(CompiledConfig(routes=(r,)), SECRETS, limiter=MemoryRateLimiter(), jwks=cache,
                    metrics=Metrics(), audit=AuditLog(io.StringIO()))
    return adm, r


async def test_jwks_kid_rotation_and_bounded_refetch(jwks_server):
    cache = JwksCache(min_refetch_interval=0.2)
    adm, r = await jwks_admission(jwks_server, cache)
    try:
        k1 = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "k1"})
        assert (await adm.admit(r, bearer(k1))).status is None
        assert jwks_server["hits"] == 1

        # forged kids: refused, and at most one refetch per interval
        for i in range(5):
            forged = jwt.encode(claims(sub=f"x{i}"), RSA_KEY, algorithm="RS256", headers={"kid": f"zz{i}"})
            assert (await adm.admit(r, bearer(forged))).reason == "invalid_token"
        assert jwks_server["hits"] == 1

        # the issuer rotates to an EC key k2 and drops k1
        jwks_server["keys"] = [jwk(EC_KEY, "k2", "ES256")]
        import asyncio
        await asyncio.sleep(0.25)
        k2 = jwt.encode(claims(sub="carol"), EC_KEY, algorithm="ES256", headers={"kid": "k2"})
        decision = await adm.admit(r, bearer(k2))
        assert decision.status is None and decision.principal == "jwt:carol"
        assert jwks_server["hits"] == 2

        # a JWK pinned to ES256 never verifies an RS256 token claiming its kid
        confused = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "k2"})
        assert (await adm.admit(r, bearer(confused))).reason == "invalid_token"
    finally:
        await cache.close()


async def test_jwks_unreachable_is_503_not_a_crash(jwks_server):
    jwks_server["status"] = 500
    cache = JwksCache(min_refetch_interval=60)
    adm, r = await jwks_admission(jwks_server, cache)
    try:
        token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "k1"})
        for _ in range(3):
            decision = await adm.admit(r, bearer(token))
            assert (decision.status, decision.reason) == (503, "jwks_unavailable")
        assert jwks_server["hits"] == 1  # bounded: no refetch storm
    finally:
        await cache.close()


def test_parse_jwks_skips_symmetric_and_broken_keys():
    keys = parse_jwks({"keys": [
        {"kty": "oct", "k": b64(b"secret"), "kid": "sym"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        jwk(RSA_KEY, "good", "RS256"),
        {**jwk(RSA_KEY, "enc", "RS256"), "use": "enc"},
    ]})
    assert list(keys) == ["good"]
