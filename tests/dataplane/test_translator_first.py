"""Everything the data plane can refuse, the translator refuses first (issue 8, item 11).

The data plane refuses config in these places (its loading code, grepped): UpstreamPlan.for_route
(backend URLs), SchemaCheck (requestSchema), Admission/JwtVerifier (key material that does not fit
an algorithm, unparsable PEM, empty HMAC secret), IpFilter/CidrSet (CIDRs), _limit_plan (rate
limits), ApiKeyTable (key hashes), build_context (TLS certificate/key, client CA). For each class,
one parametrised case proves both halves against the real parts: the data plane, handed the object
without the translator, leaves it out (and names it); the translator, given the same object as a
user writes it, refuses it with Accepted=False or ResolvedRefs=False and ``kubegate validate``-grade
reason, so the data plane never sees it. Plus, end to end: a key a user brings (Kong style) admits.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import NameOID
from kubegate.dataplane.ratelimit import build_rate_limiter
from kubegate.dataplane.server import Gateway

from kubegate.apikeys import key_hash, key_id
from kubegate.commands.validate import ERROR_REASONS
from kubegate.config import (
    CompiledApiKey,
    CompiledAuth,
    CompiledBackend,
    CompiledConfig,
    CompiledJwt,
    CompiledLimit,
    CompiledRateLimit,
    CompiledRoute,
    CompiledTls,
    SecretBundle,
)
from kubegate.resources import ObjectRef, SourceObject, TranslationInput
from kubegate.translate import INVALID_SPEC, translate

NS, GW = "shop", "kubegate-system"


def _cert_and_key(key) -> tuple[bytes, bytes]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class Case:
    ref: ObjectRef
    source: list[SourceObject]  # as a user writes it
    secrets: dict[tuple[str, str], dict[str, bytes]]
    compiled: CompiledConfig  # as the data plane would get it without the translator
    bundle: SecretBundle


def _obj(kind: str, name: str, spec: dict, namespace: str = NS) -> SourceObject:
    return SourceObject(kind=kind, namespace=namespace, name=name, spec=spec)


def _route_case(spec: dict, compiled: dict, secrets=None, bundle=None) -> Case:
    spec = {"path": "/x/*rest", "backends": [{"url": "http://127.0.0.1:9"}], **spec}
    route = CompiledRoute(id=f"{NS}/r", namespace=NS, name="r", path="/x/*rest",
                          backends=(CompiledBackend(url=compiled.pop("url", "http://127.0.0.1:9")),), **compiled)
    return Case(ObjectRef("GatewayRoute", NS, "r"), [_obj("GatewayRoute", "r", spec)], secrets or {},
                CompiledConfig(routes=(route,)), SecretBundle(values=bundle or {}))


def _jwt_case(algorithms: list[str], pem: bytes) -> Case:
    return _route_case(
        {"auth": {"methods": ["jwt"], "jwt": {"algorithms": algorithms,
                                              "publicKeySecretRef": {"name": "pub", "key": "k"}}}},
        {"auth": CompiledAuth(methods=("jwt",), jwt=CompiledJwt(algorithms=tuple(algorithms),
                                                                public_key_pem=pem.decode()))},
        secrets={(NS, "pub"): {"k": pem}})


def _tls_case(cert: bytes, key: bytes) -> Case:
    policy = _obj("TLSPolicy", "t", {"hostnames": ["a.test"], "certificate": {"secretRef": {"name": "tls"}}}, GW)
    compiled = CompiledTls(id=f"{GW}/t", hostnames=("a.test",), cert_chain="c", private_key="k")
    return Case(ObjectRef("TLSPolicy", GW, "t"), [policy], {(GW, "tls"): {"tls.crt": cert, "tls.key": key}},
                CompiledConfig(tls=(compiled,)),
                SecretBundle(values={"c": cert.decode("latin-1"), "k": key.decode("latin-1")}))


def _client_ca_case(ca: bytes) -> Case:
    cert, key = _cert_and_key(ec.generate_private_key(ec.SECP256R1()))
    case = _tls_case(cert, key)
    case.source = [_obj("TLSPolicy", "t", {"hostnames": ["a.test"], "certificate": {"secretRef": {"name": "tls"}},
                                           "clientAuth": {"caSecretRef": {"name": "ca", "key": "ca.crt"}}}, GW)]
    case.secrets[(GW, "ca")] = {"ca.crt": ca}
    from kubegate.config import CompiledClientAuth
    case.compiled = CompiledConfig(tls=(case.compiled.tls[0].model_copy(
        update={"client_auth": CompiledClientAuth(mode="require", ca_bundle="ca")}),))
    case.bundle = SecretBundle(values={**case.bundle.values, "ca": ca.decode("latin-1")})
    return case


def _key_case(value: bytes, hash_value: str | None = None) -> Case:
    key = _obj("ApiKey", "k", {"secretRef": {"name": "key", "key": "api-key"}})
    compiled = CompiledApiKey(id="ak_x", namespace=NS, name="k", hash_ref="h")
    return Case(ObjectRef("ApiKey", NS, "k"), [key], {(NS, "key"): {"api-key": value}},
                CompiledConfig(api_keys=(compiled,)), SecretBundle(values={"h": hash_value or "not-a-hash"}))


CASES: dict[str, Callable[[], Case]] = {
    # UpstreamPlan.for_route / Origin.parse
    "backend-port-99999": lambda: _route_case({"backends": [{"url": "http://x:99999"}]}, {"url": "http://x:99999"}),
    "backend-port-not-a-number": lambda: _route_case({"backends": [{"url": "http://x:abc"}]}, {"url": "http://x:abc"}),
    "backend-broken-ipv6": lambda: _route_case({"backends": [{"url": "http://[::1"}]}, {"url": "http://[::1"}),
    # SchemaCheck
    "schema-invalid": lambda: _route_case({"requestSchema": {"type": "nonsense"}},
                                          {"request_schema": {"type": "nonsense"}}),
    "schema-remote-ref": lambda: _route_case({"requestSchema": {"$ref": "http://127.0.0.1:9/s.json"}},
                                             {"request_schema": {"$ref": "http://127.0.0.1:9/s.json"}}),
    "schema-unresolvable-ref": lambda: _route_case({"requestSchema": {"$ref": "#/$defs/none"}},
                                                   {"request_schema": {"$ref": "#/$defs/none"}}),
    # JwtVerifier
    "jwt-ec-key-for-rs256": lambda: _jwt_case(["RS256"], _public_pem(ec.generate_private_key(ec.SECP256R1()))),
    "jwt-rsa-key-for-es256": lambda: _jwt_case(["ES256"], _public_pem(rsa.generate_private_key(65537, 2048))),
    "jwt-p384-key-for-es256": lambda: _jwt_case(["ES256"], _public_pem(ec.generate_private_key(ec.SECP384R1()))),
    "jwt-not-a-pem": lambda: _jwt_case(["RS256"], b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"),
    "jwt-empty-hmac-secret": lambda: _route_case(
        {"auth": {"methods": ["jwt"], "jwt": {"algorithms": ["HS256"], "secretRef": {"name": "h", "key": "k"}}}},
        {"auth": CompiledAuth(methods=("jwt",), jwt=CompiledJwt(algorithms=("HS256",), hmac_secret="h"))},
        secrets={(NS, "h"): {"k": b""}}, bundle={"h": ""}),
    # IpFilter / CidrSet
    "ipfilter-bad-cidr": lambda: _route_case({"ipFilter": {"allow": ["10.0.0.0/33"]}}, {"ip_allow": ("10.0.0.0/33",)}),
    # _limit_plan (a rate limit with nothing to count)
    "ratelimit-zero": lambda: _route_case({}, {"rate_limit": CompiledRateLimit(policy="shop/p", scope="route", limits=(
        CompiledLimit(key="shop/p#0", dimension="ip", requests=0, period_seconds=60, burst=0),))}),
    # ApiKeyTable (an unusable hash; the translator sends only the sha256 of a key it accepted)
    "apikey-too-short": lambda: _key_case(b"short-key"),
    # build_context: certificate and key
    "tls-rsa-1024": lambda: _tls_case(*_cert_and_key(rsa.generate_private_key(65537, 1024))),
    "tls-ec-p192": lambda: _tls_case(*_cert_and_key(ec.generate_private_key(ec.SECP192R1()))),
    "tls-dsa-1024": lambda: _tls_case(*_cert_and_key(dsa.generate_private_key(1024))),
    "tls-key-mismatch": lambda: _tls_case(_cert_and_key(ec.generate_private_key(ec.SECP256R1()))[0],
                                          _cert_and_key(ec.generate_private_key(ec.SECP256R1()))[1]),
    "tls-not-pem": lambda: _tls_case(b"not a certificate", b"not a key"),
    # build_context: client CA
    "tls-client-ca-not-pem": lambda: _client_ca_case(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
}

# The rate-limit case: the spec itself refuses requests < 1 (a RateLimitPolicy), so its user-written form is one.
RATE_LIMIT_SOURCE = _obj("RateLimitPolicy", "p", {"limits": [{"dimension": "ip", "requests": 0, "period": "1m"}]})


@pytest.mark.parametrize("name", CASES)
def test_the_translator_refuses_first_what_the_data_plane_would_refuse(name):
    case = CASES[name]()
    gateway = Gateway(host="127.0.0.1", limiter=build_rate_limiter(None))
    gateway.apply(case.compiled, case.bundle)
    assert str(case.ref) in gateway.dropped, f"the data plane accepts {name}; drop the case"
    assert list(gateway.dropped) == [str(case.ref)]  # only that object

    source = [RATE_LIMIT_SOURCE] if name == "ratelimit-zero" else case.source
    ref = ObjectRef("RateLimitPolicy", NS, "p") if name == "ratelimit-zero" else case.ref
    result = translate(TranslationInput(gateway_namespace=GW, objects=tuple(source), secrets=case.secrets))
    verdict = result.results[ref]
    refused = [c for c in (verdict.accepted, verdict.resolved_refs) if c.status == "False"]
    assert refused, f"the translator accepts {name}"
    condition = refused[0]
    assert condition.reason == INVALID_SPEC or condition.reason in ERROR_REASONS  # validate exits 1 on these
    assert condition.message
    assert not result.config.routes and not result.config.tls and not result.config.api_keys


def test_a_bad_object_never_stops_the_others_in_the_translator():
    good = _obj("GatewayRoute", "good", {"path": "/good", "backends": [{"url": "http://127.0.0.1:9"}]})
    bad = [CASES[name]() for name in ("backend-port-99999", "tls-rsa-1024", "jwt-ec-key-for-rs256")]
    objects = [good] + [obj for case in bad for obj in case.source]
    secrets = {k: v for case in bad for k, v in case.secrets.items()}
    result = translate(TranslationInput(gateway_namespace=GW, objects=tuple(objects), secrets=secrets))
    assert [r.id for r in result.config.routes] == ["shop/good"]
    assert result.results[ObjectRef("GatewayRoute", NS, "good")].programmable


async def test_a_key_a_user_brings_admits_through_the_real_data_plane(backend, start_gateway):
    """A Kong-style key (32 hex characters, no kg_ prefix, no checksum) in a Secret admits requests."""
    b = await backend()
    kong_key = "5f4dcc3b5aa765d61d8327deb882cf99"
    route = _obj("GatewayRoute", "orders", {"path": "/orders", "backends": [{"url": b.url}],
                                             "auth": {"methods": ["apiKey"]}})
    key = _obj("ApiKey", "partner", {"secretRef": {"name": "partner-key", "key": "api-key"}})
    result = translate(TranslationInput(gateway_namespace=GW, objects=(route, key),
                                        secrets={(NS, "partner-key"): {"api-key": kong_key.encode() + b"\n"}}))
    verdict = result.results[ObjectRef("ApiKey", NS, "partner")]
    assert verdict.resolved_refs.status == "True" and verdict.key_id == key_id(key_hash(kong_key))
    gw = await start_gateway(result.config, result.secrets)
    url = f"http://127.0.0.1:{gw.ports['http']}/orders"
    async with aiohttp.ClientSession() as session:
        for headers, expected in (({"X-API-Key": kong_key}, 200), ({"Authorization": f"ApiKey {kong_key}"}, 200),
                                  ({"X-API-Key": kong_key[:-1] + "0"}, 401), ({}, 401)):
            async with session.get(url, headers=headers) as r:
                assert r.status == expected, headers
    assert b.received[0]["headers"].get("x-api-key") is None  # not forwarded


def test_a_short_key_is_refused_with_a_reason_by_the_translator_and_validate(tmp_path, capsys):
    from kubegate.cli import main

    (tmp_path / "key.yaml").write_text("""
apiVersion: v1
kind: Secret
metadata: {name: partner-key, namespace: shop}
stringData: {api-key: "short-key"}
---
apiVersion: kubegate.dev/v1alpha1
kind: ApiKey
metadata: {name: partner, namespace: shop}
spec: {secretRef: {name: partner-key, key: api-key}}
""")
    assert main(["validate", "-f", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "ApiKey/shop/partner" in err and "InvalidKey" in err and "at least 16 bytes" in err
    assert "short-key" not in err  # the key itself is never quoted
