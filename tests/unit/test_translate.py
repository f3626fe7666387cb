"""The pure translator's properties: secrecy, determinism, conflict and precedence indexes that agree
with their definitions, and the memo that makes repeated translations incremental (same bytes with
or without it).

"This input gives this output" lives in the golden files: tests/translate/testdata/ (see its README).
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import random

import pytest

from kubegate.apikeys import generate_api_key, key_hash, key_id
from kubegate.config import (
    canonical_json,
    config_hash,
    decode_config,
    encode_config,
    encode_secrets,
)
from kubegate.resources import ObjectRef, ServiceInfo, ServicePort, SourceObject, TranslationInput
from kubegate.translate import (
    Translator,
    certificate_name,
    pattern_key,
    translate,
)

HMAC = b"super-secret-hmac-value"


def ref(kind, name, ns="shop"):
    return ObjectRef(kind, ns, name)


def only_route(result):
    (compiled,) = result.config.routes
    return compiled


# --- kinds ------------------------------------------------------------------------------


def test_unknown_kind_is_invalid(build):
    result = translate(build.make_input(build.obj("Widget", "w", {})))
    assert result.results[ref("Widget", "w")].accepted.reason == "InvalidSpec"


# --- conflicts -----------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "conflict"), [
    ({"path": "/a/:id"}, {"path": "/a/{x}"}, True),
    ({"path": "/a/*rest"}, {"path": "/a/*tail"}, True),
    ({"path": "/a"}, {"path": "/b"}, False),
    ({"path": "/a", "hosts": ["x.example.com"]}, {"path": "/a", "hosts": ["y.example.com"]}, False),
    ({"path": "/a", "hosts": ["x.example.com"]}, {"path": "/a"}, False),  # no hosts: the fallback, see below
    ({"path": "/a", "methods": ["GET"]}, {"path": "/a", "methods": ["POST"]}, False),
    ({"path": "/a", "methods": ["GET"]}, {"path": "/a"}, True),  # empty methods = every method
    ({"path": "/a", "methods": ["GET", "PUT"], "hosts": ["x.example.com"]},
     {"path": "/a", "methods": ["PUT"], "hosts": ["x.example.com", "z.example.com"]}, True),
])
def test_conflicts(build, a, b, conflict):
    older = build.route("older", created="2024-01-01T00:00:00Z", **a)
    newer = build.route("newer", created="2025-01-01T00:00:00Z", **b)
    result = translate(build.make_input(newer, older))
    assert result.results[ref("GatewayRoute", "older")].accepted.status == "True"
    loser = result.results[ref("GatewayRoute", "newer")]
    if conflict:
        assert loser.accepted.reason == "Conflicted" and loser.accepted.status == "False"
        assert "shop/older" in loser.accepted.message
        assert [r.name for r in result.config.routes] == ["older"]
    else:
        assert loser.accepted.status == "True"
        assert len(result.config.routes) == 2


# Every pair of host kinds (exact, *. wildcard, no hosts): a route claims its own host strings only,
# so different kinds always coexist and the data plane picks exact > longest *. suffix > no hosts
# (tests/dataplane/test_host_precedence.py sends the requests). Same host + path + method conflicts.
HOST_PAIRS = [
    ("exact/exact same", ["api.example.com"], ["api.example.com"], "api.example.com"),
    ("exact/exact other", ["api.example.com"], ["web.example.com"], None),
    ("exact/wildcard", ["api.example.com"], ["*.example.com"], None),
    ("exact/none", ["api.example.com"], [], None),
    ("wildcard/wildcard same", ["*.example.com"], ["*.example.com"], "*.example.com"),
    ("wildcard/wildcard nested", ["*.example.com"], ["*.eu.example.com"], None),
    ("wildcard/none", ["*.example.com"], [], None),
    ("none/none", [], [], "none"),
    ("lists sharing one host", ["api.example.com", "*.example.com"], ["*.example.com", "web.example.com"],
     "*.example.com"),
]


@pytest.mark.parametrize("newer_first", [False, True], ids=["older-listed-first", "newer-listed-first"])
@pytest.mark.parametrize(("hosts_a", "hosts_b", "shared"), [p[1:] for p in HOST_PAIRS],
                         ids=[p[0] for p in HOST_PAIRS])
def test_host_pairs_conflict_only_on_a_shared_host(build, hosts_a, hosts_b, shared, newer_first):
    older = build.route("older", "/r/:id", created="2024-01-01T00:00:00Z", hosts=hosts_a)
    newer = build.route("newer", "/r/{x}", created="2025-01-01T00:00:00Z", hosts=hosts_b)
    result = translate(build.make_input(*((newer, older) if newer_first else (older, newer))))
    assert result.results[ref("GatewayRoute", "older")].accepted.status == "True"
    verdict = result.results[ref("GatewayRoute", "newer")].accepted
    if shared is None:
        assert verdict.status == "True", verdict.message
        assert sorted(r.name for r in result.config.routes) == ["newer", "older"]
    else:
        assert (verdict.status, verdict.reason) == ("False", "Conflicted")
        assert verdict.message == (f"path /r/{{x}} (hosts {shared}; methods *) is already claimed by the older "
                                   "GatewayRoute shop/older")
        assert [r.name for r in result.config.routes] == ["older"]


@pytest.mark.parametrize(("hosts_a", "hosts_b"), [(["api.example.com"], []), (["*.example.com"], []), ([], [])],
                         ids=["exact/none", "wildcard/none", "none/none"])
def test_host_pairs_with_disjoint_methods_coexist_and_overlapping_ones_conflict(build, hosts_a, hosts_b):
    older = build.route("older", created="2024-01-01T00:00:00Z", hosts=hosts_a, methods=["GET"])
    disjoint = build.route("disjoint", created="2025-01-01T00:00:00Z", hosts=hosts_a, methods=["POST"])
    fallback = build.route("fallback", created="2025-01-02T00:00:00Z", hosts=hosts_b)
    result = translate(build.make_input(older, disjoint, fallback))
    assert result.results[ref("GatewayRoute", "disjoint")].accepted.status == "True"
    verdict = result.results[ref("GatewayRoute", "fallback")].accepted
    if hosts_a == hosts_b:  # every method overlaps GET: the oldest claimant is named
        assert verdict.reason == "Conflicted" and verdict.message.endswith("older GatewayRoute shop/older")
    else:
        assert verdict.status == "True"


def test_pattern_key():
    assert pattern_key("/a/:id/b/{x}/*rest") == pattern_key("/a/{y}/b/:z/*all") == "/a/{}/b/{}/*"


# --- backends ---------------------------------------------------------------------------


def test_cluster_domain(build):
    """The cluster domain comes from the operator's flags, not from manifests: not a golden case."""
    ext = ServiceInfo(namespace="shop", name="web", type="ExternalName", external_name="127.0.0.1",
                      ports=(ServicePort(port=80),))
    inp = build.make_input(build.route("r"), services=[ext]).model_copy(update={"cluster_domain": "corp.local"})
    assert only_route(translate(inp)).backends[0].url == "http://127.0.0.1:80"
    inp = build.make_input(build.route("r")).model_copy(update={"cluster_domain": "corp.local"})
    assert only_route(translate(inp)).backends[0].url == "http://web.shop.svc.corp.local:80"


# --- JWT key material ---------------------------------------------------------------------


def jwt_route(build, **jwt):
    return build.route("admin", auth={"methods": ["jwt"], "jwt": jwt})


def test_hmac_secret_goes_to_the_bundle_never_the_config(build):
    route = jwt_route(build, algorithms=["HS256"], secretRef={"name": "hmac", "key": "secret"})
    result = translate(build.make_input(route, secrets={("shop", "hmac"): {"secret": HMAC}}))
    jwt = only_route(result).auth.jwt
    assert jwt.hmac_secret == "jwt.shop.admin"
    assert result.secrets.values["jwt.shop.admin"] == HMAC.decode()
    plain = gzip.decompress(base64.b64decode(encode_config(result.config)))
    assert HMAC not in plain and HMAC.decode() not in json.dumps(result.config.model_dump())
    assert HMAC in gzip.decompress(base64.b64decode(encode_secrets(result.secrets)))


# --- rate limits ------------------------------------------------------------------------------


def policy(build, name, ns="shop", targets=(), created="", **limit):
    limit = {"dimension": "ip", "requests": 10, "period": "1m", **limit}
    spec = {"limits": [limit], "targetRefs": [{"kind": "GatewayRoute", "name": t} for t in targets]}
    return build.obj("RateLimitPolicy", name, spec, ns, created)


# --- ApiKey ---------------------------------------------------------------------------------------


def api_key(build, name="acme", **spec):
    spec.setdefault("secretRef", {"name": f"{name}-key", "key": "api-key"})
    return build.obj("ApiKey", name, spec)


def test_api_key_reduced_to_a_hash(build):
    """A freshly generated key: only its hash and id exist past the translator, in no blob."""
    key = generate_api_key()
    spec = {"routes": ["a", "ghost"], "allowedCIDRs": ["203.0.113.0/24"], "rateLimit": {"requests": 100, "period": "1m"},
            "expiresAt": "2030-01-01T00:00:00Z", "disabled": True, "description": "partner"}
    result = translate(build.make_input(build.route("a"), api_key(build, **spec),
                                        secrets={("shop", "acme-key"): {"api-key": key.encode() + b"\n"}}))
    (compiled,) = result.config.api_keys
    hashed = key_hash(key)
    assert result.secrets.values["apikey.shop.acme"] == hashed
    assert compiled.id == key_id(hashed) == result.results[ref("ApiKey", "acme")].key_id
    everything = encode_config(result.config) + encode_secrets(result.secrets) + result.model_dump_json()
    for blob in (everything, gzip.decompress(base64.b64decode(encode_config(result.config))).decode(),
                 gzip.decompress(base64.b64decode(encode_secrets(result.secrets))).decode()):
        assert key not in blob


# --- TLSPolicy -----------------------------------------------------------------------------------------


def tls_policy(build, name="public", ns="kubegate-system", created="", **spec):
    spec.setdefault("hostnames", ["api.example.com"])
    spec.setdefault("certificate", {"issuerRef": {"name": "le", "kind": "ClusterIssuer"}})
    return build.obj("TLSPolicy", name, spec, ns, created)


def test_tls_with_issued_certificate(build, pki):
    spec = {"minVersion": "1.3", "hsts": {"maxAge": 600, "includeSubDomains": True, "preload": True},
            "clientAuth": {"mode": "require", "caSecretRef": {"name": "client-ca", "key": "ca.crt"},
                           "allowedSubjects": ["CN=smo"]}}
    secrets = {("kubegate-system", "kubegate-kubegate-system-public"): {"tls.crt": pki["tls.crt"],
                                                                      "tls.key": pki["tls.key"]},
               ("kubegate-system", "client-ca"): {"ca.crt": pki["ca.crt"]}}
    result = translate(build.make_input(tls_policy(build, **spec), secrets=secrets))
    (tls,) = result.config.tls
    assert (tls.id, tls.hostnames, tls.min_version) == ("kubegate-system/public", ("api.example.com",), "1.3")
    assert tls.hsts.header_value() == "max-age=600; includeSubDomains; preload"
    assert (tls.cert_chain, tls.private_key) == ("tls.kubegate-system.public.crt", "tls.kubegate-system.public.key")
    assert tls.client_auth.mode == "require" and tls.client_auth.ca_bundle == "tls.kubegate-system.public.ca"
    assert tls.client_auth.allowed_subjects == ("CN=smo",)
    values = result.secrets.values
    assert values[tls.private_key] == pki["tls.key"].decode() and values[tls.cert_chain] == pki["tls.crt"].decode()
    assert values["tls.kubegate-system.public.ca"] == pki["ca.crt"].decode()
    assert "PRIVATE KEY" not in json.dumps(result.config.model_dump())
    assert result.results[ref("TLSPolicy", "public", "kubegate-system")].programmable


def test_certificate_name_fits_63_characters():
    assert certificate_name("ns", "public") == "kubegate-ns-public"
    long = certificate_name("a-very-long-namespace-name-for-testing", "an-even-longer-policy-name-here")
    assert len(long) <= 63 and long.startswith("kubegate-a-very-long")
    assert long != certificate_name("a-very-long-namespace-name-for-testing", "an-even-longer-policy-name-herf")


# --- determinism -----------------------------------------------------------------------------------


def test_same_input_in_any_order_gives_byte_identical_output(build, pki):
    objs = [build.route("a", "/a"), build.route("b", "/b", hosts=["x.example.com"]),
            policy(build, "p"), api_key(build), tls_policy(build, "t", ns="shop",
                                                           certificate={"secretRef": {"name": "mine"}})]
    secrets = {("shop", "acme-key"): {"api-key": b"a-user-brought-key-0002"},
               ("shop", "mine"): {"tls.crt": pki["tls.crt"], "tls.key": pki["tls.key"]}}
    first = translate(build.make_input(*objs, secrets=secrets))
    second = translate(build.make_input(*reversed(objs), secrets=dict(reversed(list(secrets.items())))))
    assert encode_config(first.config) == encode_config(second.config)
    assert encode_secrets(first.secrets) == encode_secrets(second.secrets)
    assert first.hash == second.hash == config_hash(first.config, first.secrets)
    assert decode_config(encode_config(first.config)) == first.config
    changed = translate(build.make_input(*objs[:-1], secrets=secrets))
    assert changed.hash != first.hash


# --- linear indexes: the same verdicts as pairwise comparison ----------------------------------------

HOSTS = ["x.example.com", "y.example.com", "*.example.com"]
METHODS = ["GET", "POST", "PUT"]


def overlap(a, b):
    """Methods: an empty list is every method."""
    return not a or not b or bool(set(a) & set(b))


def same_host(a, b):
    """Hosts: a route claims its own host strings; no hosts is one more claim of its own."""
    return (not a and not b) or bool(set(a) & set(b))


def pairwise_winners(routes):
    """The definition: oldest first, a route loses to the oldest accepted route it overlaps."""
    winners, verdict = [], {}
    for obj in sorted(routes, key=lambda o: (o.creation_timestamp, o.namespace, o.name)):
        spec = obj.spec
        loser_of = next((w for w in winners if pattern_key(w.spec["path"]) == pattern_key(spec["path"])
                         and same_host(w.spec.get("hosts", []), spec.get("hosts", []))
                         and overlap(w.spec.get("methods", []), spec.get("methods", []))), None)
        verdict[obj.name] = None if loser_of is None else loser_of.name
        if loser_of is None:
            winners.append(obj)
    return verdict


@pytest.mark.parametrize("seed", range(6))
def test_conflict_index_agrees_with_pairwise_comparison(build, seed):
    rnd = random.Random(seed)
    routes = []
    for i in range(120):
        spec = {"path": rnd.choice(["/a", "/a/:id", "/a/{x}", "/b/*rest", "/b/*tail"])}
        if rnd.random() < 0.6:
            spec["hosts"] = rnd.sample(HOSTS, rnd.randint(1, 2))
        if rnd.random() < 0.6:
            spec["methods"] = rnd.sample(METHODS, rnd.randint(1, 2))
        routes.append(build.route(f"r{i}", created=f"2025-01-{rnd.randint(1, 9):02d}T00:00:00Z", **spec))
    result = Translator().translate(build.make_input(*routes))
    for name, winner in pairwise_winners(routes).items():
        verdict = result.results[ref("GatewayRoute", name)]
        if winner is None:
            assert verdict.accepted.status == "True", name
        else:
            assert verdict.accepted.reason == "Conflicted", name
            assert verdict.accepted.message.endswith(f"older GatewayRoute shop/{winner}"), (name, winner)


def test_precedence_index_with_many_policies(build):
    routes = [build.route(f"r{i}", f"/r{i}") for i in range(30)]
    policies = [policy(build, f"p{i}", targets=[f"r{i}"], created=f"2025-01-{1 + i % 2:02d}T00:00:00Z")
                for i in range(0, 30, 3)]
    policies += [policy(build, "late", targets=["r0", "r1"], created="2025-02-01T00:00:00Z"),
                 policy(build, "ns-wide", created="2025-01-05T00:00:00Z")]
    result = translate(build.make_input(*routes, *policies))
    chosen = {r.name: (r.rate_limit.policy, r.rate_limit.scope) for r in result.config.routes}
    assert chosen["r0"] == ("shop/p0", "route")  # older than "late"
    assert chosen["r1"] == ("shop/late", "route")
    assert chosen["r3"] == ("shop/p3", "route")
    assert chosen["r2"] == ("shop/ns-wide", "namespace")


# --- the memo: an optimisation only ----------------------------------------------------------------


def mixed_input(build, pki, seed, n=40):
    """Routes, policies, keys and TLS policies that resolve, conflict, miss and fail in every way."""
    rnd = random.Random(seed)
    services = [build.service("web", ns, ports=(80, 81)) for ns in ("shop", "other")]
    services.append(build.service("ext", "shop", type="ExternalName", external_name="ext.example.com", ports=()))
    secrets = {("shop", "hmac"): {"s": HMAC, "empty": b""}, ("shop", "pub"): {"k": pki["public.pem"], "bad": b"x"},
               ("shop", "tls"): {"tls.crt": pki["tls.crt"], "tls.key": pki["tls.key"]},
               ("shop", "ca"): {"ca.crt": pki["ca.crt"]}}
    objs = []
    for i in range(n):
        ns = rnd.choice(["shop", "other"])
        spec = {"path": rnd.choice(["/a", "/a/:id", "/b", f"/p{i}"]),
                "backends": [{"service": rnd.choice(["web", "ext", "gone"]), "port": rnd.choice([80, 81, 9])}]}
        if rnd.random() < 0.5:
            spec["hosts"] = rnd.sample(HOSTS, 1)
        auth = rnd.random()
        if auth < 0.2:
            spec["auth"] = {"methods": ["jwt"], "jwt": {"algorithms": ["HS256"], "secretRef": {
                "name": rnd.choice(["hmac", "gone"]), "key": rnd.choice(["s", "empty"])}}}
        elif auth < 0.3:
            spec["auth"] = {"methods": ["jwt"], "jwt": {"algorithms": ["RS256"], "publicKeySecretRef": {
                "name": "pub", "key": rnd.choice(["k", "bad"])}}}
        if rnd.random() < 0.1:
            spec["requestSchema"] = {"type": "object", "required": ["q"]}
        objs.append(build.route(f"r{i}", namespace=ns, created=f"2025-01-{rnd.randint(1, 9):02d}T00:00:00Z", **spec))
    for i in range(n // 5):
        objs.append(policy(build, f"p{i}", ns=rnd.choice(["shop", "other", "kubegate-system"]),
                           targets=rnd.choice([(), (f"r{rnd.randrange(n)}",)])))
    for i in range(n // 4):
        secrets[("shop", f"k{i}-key")] = {"api-key": f"kg_{seed}_{i}".encode()} if rnd.random() < 0.7 else {}
        objs.append(api_key(build, f"k{i}", routes=[f"r{rnd.randrange(n)}"], rateLimit={"requests": 5, "period": "1m"}))
    objs.append(tls_policy(build, "byo", ns="shop", hostnames=["x.example.com"], certificate={"secretRef": {"name": "tls"}},
                           clientAuth={"mode": "require", "caSecretRef": {"name": "ca", "key": "ca.crt"}}))
    objs.append(tls_policy(build, "issued", hostnames=["y.example.com"]))
    return build.make_input(*objs, services=services, secrets=secrets)


def same_output(a, b):
    assert canonical_json(a.config) == canonical_json(b.config)
    assert canonical_json(a.secrets) == canonical_json(b.secrets)
    assert a.hash == b.hash == config_hash(b.config, b.secrets)
    assert a.results == b.results and list(a.results) == list(b.results)
    assert a.warnings == b.warnings


@pytest.mark.parametrize("seed", range(4))
def test_cached_and_uncached_results_are_byte_identical(build, pki, seed):
    inputs = [mixed_input(build, pki, s) for s in (seed, seed + 10, seed)]
    warm = Translator()
    for inp in inputs:  # the same refs with other specs in between: every entry is checked, none trusted
        cached = warm.translate(inp)
        uncached = Translator().translate(inp)
        same_output(cached, uncached)
        assert cached.config_json == canonical_json(cached.config)  # the spliced bytes generate writes
        assert cached.secrets_json == canonical_json(cached.secrets)
    again = warm.translate(inputs[-1])
    assert again.config.routes == cached.config.routes
    assert all(a is b for a, b in zip(again.config.routes, cached.config.routes, strict=True))  # reused


def hmac_route(build):
    return build.route("admin", auth={"methods": ["jwt"], "jwt": {"algorithms": ["HS256"],
                                                                   "secretRef": {"name": "hmac", "key": "s"}}})


def test_a_changed_referenced_secret_invalidates(build):
    translator = Translator()
    first = translator.translate(build.make_input(hmac_route(build), secrets={("shop", "hmac"): {"s": b"one"}}))
    changed = build.make_input(hmac_route(build), secrets={("shop", "hmac"): {"s": b"two"}})
    second = translator.translate(changed)
    assert first.secrets.values == {"jwt.shop.admin": "one"}
    assert second.secrets.values == {"jwt.shop.admin": "two"}
    same_output(second, Translator().translate(changed))
    gone = translator.translate(build.make_input(hmac_route(build)))
    assert gone.config.routes == () and gone.results[ref("GatewayRoute", "admin")].resolved_refs.reason == "SecretNotFound"


def test_a_changed_service_and_a_new_route_invalidate(build):
    translator = Translator()
    route, key = build.route("a", backends=[{"service": "web", "port": 81}]), api_key(build, routes=["b"])
    secrets = {("shop", "acme-key"): {"api-key": b"a-user-brought-key-0002"}}
    first = translator.translate(build.make_input(route, key, secrets=secrets))
    assert first.results[ref("GatewayRoute", "a")].resolved_refs.reason == "BackendNotFound"
    assert first.results[ref("ApiKey", "acme")].resolved_refs.reason == "RouteNotFound"
    inp = build.make_input(route, key, build.route("b", "/b"), secrets=secrets,
                           services=[build.service(ports=(80, 81))])
    second = translator.translate(inp)
    assert second.results[ref("GatewayRoute", "a")].resolved_refs.status == "True"
    assert second.results[ref("ApiKey", "acme")].resolved_refs.status == "True"
    same_output(second, Translator().translate(inp))


def test_policy_generation_and_cluster_domain_changes_are_seen(build):
    translator = Translator()
    route = build.route("a")
    translator.translate(build.make_input(route, policy(build, "p", requests=10)))
    result = translator.translate(build.make_input(route, policy(build, "p", requests=20)))
    assert result.config.routes[0].rate_limit.limits[0].requests == 20
    bumped = route.model_copy(update={"generation": 5})
    result = translator.translate(build.make_input(bumped))
    assert result.results[ref("GatewayRoute", "a")].generation == 5 and result.config.routes[0].rate_limit is None
    other_domain = TranslationInput(**{**build.make_input(bumped).__dict__, "cluster_domain": "corp.local"})
    assert translator.translate(other_domain).config.routes[0].backends[0].url == "http://web.shop.svc.corp.local:80"


@pytest.mark.parametrize(("before", "after"), [(1, True), (1, 1.0), ({"a": 1, "b": 2}, {"b": 2, "a": 1})])
def test_specs_equal_in_python_but_not_in_json_are_not_confused(build, before, after):
    """``1 == True == 1.0`` in Python, but the strict spec treats them differently: never reuse across them."""
    translator = Translator()
    spec = {"path": "/a", "backends": [{"service": "web", "port": 80}]}
    if isinstance(before, dict):
        make = lambda value: {**spec, "requestSchema": value}
    else:
        make = lambda value: {**spec, "retries": {"attempts": value}}
    for value in (before, after):
        obj = SourceObject(kind="GatewayRoute", namespace="shop", name="a", spec=make(value))
        inp = build.make_input(obj)
        same_output(translator.translate(inp), Translator().translate(inp))


def test_concurrent_translations_share_the_memo_safely(build, pki):
    from concurrent.futures import ThreadPoolExecutor

    translator = Translator()
    inputs = [mixed_input(build, pki, s, n=30) for s in range(3)]
    expected = [Translator().translate(inp).hash for inp in inputs]
    with ThreadPoolExecutor(3) as pool:
        hashes = list(pool.map(lambda i: translator.translate(inputs[i]).hash, itertools.chain(*[range(3)] * 4)))
    assert hashes == expected * 4
