"""Generated objects: ConfigMap, Secret, Certificates, NetworkPolicies; and the 1 MiB limit at scale."""

from __future__ import annotations

import base64
import gzip
import json
import time

from kubegate.apikeys import generate_api_key
from kubegate.config import HASH_ANNOTATION, canonical_json, decode_config, decode_secrets
from kubegate.generate import generate_objects
from kubegate.resources import ServiceInfo, ServicePort, SourceObject, TranslationInput
from kubegate.translate import Translator, translate

MANAGED = {"app.kubernetes.io/managed-by": "kubegate", "app.kubernetes.io/part-of": "kubegate"}
DATAPLANE = {"app.kubernetes.io/name": "kubegate", "app.kubernetes.io/component": "dataplane"}


def by_kind_name(objects):
    return {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}


def test_config_map_and_secret_round_trip(build):
    route = build.route("admin", auth={"methods": ["jwt"], "jwt": {
        "algorithms": ["HS256"], "secretRef": {"name": "hmac", "key": "s"}}})
    inp = build.make_input(route, secrets={("shop", "hmac"): {"s": b"hmac-value"}})
    result = translate(inp)
    objects = generate_objects(result, inp)
    cm, secret = objects[0], objects[1]
    assert (cm["kind"], cm["metadata"]["name"], cm["metadata"]["namespace"]) == (
        "ConfigMap", "kubegate-config", "kubegate-system")
    assert cm["data"] == {"hash": result.hash}
    assert cm["metadata"]["annotations"] == {HASH_ANNOTATION: result.hash}
    assert decode_config(cm["binaryData"]["config.json.gz"]) == result.config
    assert "hmac-value" not in json.dumps(cm)
    assert (secret["kind"], secret["type"], secret["metadata"]["name"]) == ("Secret", "Opaque", "kubegate-secrets")
    assert secret["metadata"]["annotations"] == {HASH_ANNOTATION: result.hash}
    assert base64.b64decode(secret["data"]["hash"]).decode() == result.hash
    assert decode_secrets(secret["data"]["secrets.json.gz"]).values == {"jwt.shop.admin": "hmac-value"}
    assert decode_secrets(base64.b64decode(secret["data"]["secrets.json.gz"])) == result.secrets
    for o in objects:
        assert MANAGED.items() <= o["metadata"]["labels"].items()


def test_certificate_for_issuer_ref(build):
    tls = build.obj("TLSPolicy", "public", {
        "hostnames": ["www.example.com", "api.example.com"],
        "certificate": {"issuerRef": {"name": "le", "kind": "ClusterIssuer"}, "duration": "2160h",
                        "renewBefore": "720h"}}, "shop")
    byo = build.obj("TLSPolicy", "byo", {"hostnames": ["b.example.com"],
                                         "certificate": {"secretRef": {"name": "x"}}}, "shop")
    inp = build.make_input(tls, byo)
    objects = by_kind_name(generate_objects(translate(inp), inp))
    (cert,) = [o for k, o in objects.items() if k[0] == "Certificate"]
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["metadata"]["name"] == "kubegate-shop-public" and cert["metadata"]["namespace"] == "kubegate-system"
    assert cert["spec"] == {
        "secretName": "kubegate-shop-public", "dnsNames": ["api.example.com", "www.example.com"],
        "issuerRef": {"name": "le", "kind": "ClusterIssuer", "group": "cert-manager.io"},
        "duration": "2160h", "renewBefore": "720h"}


def test_network_policies(build):
    objs = [
        build.route("a", "/a", backends=[{"service": "web", "port": 80}, {"url": "https://ext.example.com:8443/x"}]),
        build.route("b", "/b", backends=[{"service": "nosel", "port": 90}]),
        build.route("c", "/c", namespace="other", backends=[{"service": "api", "port": 7000}]),
        build.route("d", "/d", backends=[{"url": "http://ext"}], auth={"methods": ["jwt"], "jwt": {
            "jwksUri": "http://idp.example.com:8081/jwks"}}),
    ]
    services = [build.service(), build.service("nosel", ports=(90,), selector={}),
                ServiceInfo(namespace="other", name="api", selector={"app": "api", "tier": "be"},
                            ports=(ServicePort(port=7000, target_port="http"),))]
    inp = build.make_input(*objs, services=services)
    objects = by_kind_name(generate_objects(translate(inp), inp))
    web = objects[("NetworkPolicy", "shop", "kubegate-backend-web")]["spec"]
    assert web["podSelector"] == {"matchLabels": {"app": "web"}} and web["policyTypes"] == ["Ingress"]
    assert web["ingress"] == [{"from": [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubegate-system"}},
        "podSelector": {"matchLabels": DATAPLANE}}], "ports": [{"protocol": "TCP", "port": 8080}]}]
    api = objects[("NetworkPolicy", "other", "kubegate-backend-api")]["spec"]
    assert api["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "http"}]
    assert ("NetworkPolicy", "shop", "kubegate-backend-nosel") not in objects  # no selector, no pods to name
    egress = objects[("NetworkPolicy", "kubegate-system", "kubegate-dataplane-egress")]["spec"]
    assert egress["podSelector"] == {"matchLabels": DATAPLANE} and egress["policyTypes"] == ["Egress"]
    rules = egress["egress"]
    assert {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
                    "podSelector": {"matchLabels": {"app": "web"}}}],
            "ports": [{"protocol": "TCP", "port": 8080}]} in rules
    assert {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]} in rules
    # Without a cluster (render), API server and Redis are unknown: their rules name ports only;
    # external DNS names (ext.example.com, ext, idp.example.com) cannot be named by a NetworkPolicy.
    ports = [p for rule in rules if "to" not in rule for p in rule["ports"]]
    assert sorted(p["port"] for p in ports) == [80, 443, 6379, 6443, 8081, 8443]
    assert all(p["protocol"] == "TCP" for p in ports)


def test_egress_is_scoped_to_the_api_server_redis_and_in_cluster_or_ip_backends(build):
    from kubegate.generate import EgressTargets

    objs = [build.route("a", "/a", backends=[{"url": "http://10.1.2.3:8080/x"}, {"url": "http://[fd00::7]"}]),
            build.route("b", "/b", backends=[{"url": "http://api.other.svc.cluster.local:7000"}]),
            build.route("c", "/c", backends=[{"url": "https://ext.example.com"}])]
    services = [build.service(), ServiceInfo(namespace="other", name="api", selector={"app": "api"},
                                             ports=(ServicePort(port=7000, target_port=7443),)),
                ServiceInfo(namespace="kubegate-system", name="kubegate-redis", selector={"app": "redis"},
                            ports=(ServicePort(port=6379, target_port=6379),))]
    inp = build.make_input(*objs, services=services)
    targets = EgressTargets(api_server=(("172.18.0.2", 6443), ("172.18.0.3", 6443)),
                            redis_url="redis://:pw@kubegate-redis.kubegate-system.svc:6379/0")
    rules = by_kind_name(generate_objects(translate(inp), inp, targets))[
        ("NetworkPolicy", "kubegate-system", "kubegate-dataplane-egress")]["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "172.18.0.2/32"}}, {"ipBlock": {"cidr": "172.18.0.3/32"}}],
            "ports": [{"protocol": "TCP", "port": 6443}]} in rules
    assert {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubegate-system"}},
                    "podSelector": {"matchLabels": {"app": "redis"}}}],
            "ports": [{"protocol": "TCP", "port": 6379}]} in rules
    assert {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"protocol": "TCP", "port": 8080}]} in rules
    assert {"to": [{"ipBlock": {"cidr": "fd00::7/128"}}], "ports": [{"protocol": "TCP", "port": 80}]} in rules
    assert {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}},
                    "podSelector": {"matchLabels": {"app": "api"}}}],
            "ports": [{"protocol": "TCP", "port": 7443}]} in rules
    unscoped = [rule for rule in rules if "to" not in rule]
    assert unscoped == [{"ports": [{"protocol": "TCP", "port": 443}]}]  # only the external ext.example.com
    # in-memory limits: no Redis rule at all; a Redis at an IP literal: that address only
    for url, expected in (("", None), ("rediss://10.9.9.9:6380", {"to": [{"ipBlock": {"cidr": "10.9.9.9/32"}}],
                                                                   "ports": [{"protocol": "TCP", "port": 6380}]})):
        rules = by_kind_name(generate_objects(translate(inp), inp, EgressTargets(api_server=(), redis_url=url)))[
            ("NetworkPolicy", "kubegate-system", "kubegate-dataplane-egress")]["spec"]["egress"]
        assert not any(p["port"] in (6379, 6443) for rule in rules for p in rule["ports"])
        if expected:
            assert expected in rules
    # a Redis Cluster: its nodes come from CLUSTER SLOTS at run time, so only the seeds' ports can be named
    for url in ("redis://:pw@10.0.0.1:7000,10.0.0.2:7001", "rediss://10.0.0.1:7000/0?cluster=true"):
        rules = by_kind_name(generate_objects(translate(inp), inp, EgressTargets(api_server=(), redis_url=url)))[
            ("NetworkPolicy", "kubegate-system", "kubegate-dataplane-egress")]["spec"]["egress"]
        redis = [rule for rule in rules if any(p["port"] in (7000, 7001) for p in rule["ports"])]
        assert redis == [{"ports": [{"protocol": "TCP", "port": p} for p in
                                    ((7000, 7001) if "," in url else (7000,))]}], url
        assert "pw" not in repr(rules)


def test_the_result_carries_what_generate_needs(build):
    """Certificates, backend Services and URLs come from the translator, not from re-reading specs;
    a memoised translation after a change carries the same facts as a fresh one."""
    tls = build.obj("TLSPolicy", "public", {"hostnames": ["www.example.com"],
                                            "certificate": {"issuerRef": {"name": "le"}}}, "shop")
    objs = [tls, build.route("a", "/a", backends=[{"service": "web", "port": 80}, {"url": "http://ext:81"}]),
            build.route("gone", "/g", backends=[{"service": "missing", "port": 80}])]
    inp = build.make_input(*objs, services=[build.service()])
    result = translate(inp)
    (cert,) = result.certificates
    assert (cert.name, cert.dns_names, cert.issuer_name, cert.issuer_kind) == (
        "kubegate-shop-public", ("www.example.com",), "le", "Issuer")
    (web,) = result.backend_services  # "missing" resolves nowhere: nothing to open
    assert (web.namespace, web.name, web.selector, [p.port for p in web.ports]) == ("shop", "web", {"app": "web"}, [80])
    assert result.backend_urls == ("http://ext:81",)
    translator = Translator()
    translator.translate(inp)
    changed = build.make_input(*objs[:2], services=[build.service(ports=(80, 81))])
    again = translator.translate(changed)
    fresh = translate(changed)
    assert (again.certificates, again.backend_services, again.backend_urls) == (
        fresh.certificates, fresh.backend_services, fresh.backend_urls)
    assert generate_objects(again, changed) == generate_objects(fresh, changed)


def test_shared_services_are_listed_once_per_port(build):
    objs = [build.route(f"r{i}", f"/r{i}", backends=[{"service": "web", "port": 80 + i % 2}]) for i in range(6)]
    inp = build.make_input(*objs, services=[build.service(ports=(80, 81))])
    objects = by_kind_name(generate_objects(translate(inp), inp))
    ingress = objects[("NetworkPolicy", "shop", "kubegate-backend-web")]["spec"]["ingress"]
    assert ingress[0]["ports"] == [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8081}]


def test_payloads_are_the_canonical_json_with_or_without_the_memo(build):
    """generate reuses the bytes translate() assembled; they must be canonical_json() exactly."""
    objs = [build.route("a", "/a", requestSchema={"type": "object", "required": ["z", "a"]}),
            build.route("b", "/b", hosts=["x.example.com"]),
            build.route("admin", "/admin", auth={"methods": ["jwt"], "jwt": {
                "algorithms": ["HS256"], "secretRef": {"name": "hmac", "key": "s"}}})]
    inp = build.make_input(*objs, secrets={("shop", "hmac"): {"s": b"hmac-value"}})
    translator = Translator()
    translator.translate(inp)
    memoised = translator.translate(inp)  # second call: every route's JSON comes from the memo
    fresh = translate(inp)  # a fresh translator: every item serialised anew
    unknown = fresh.model_copy(update={"config_json": b"", "secrets_json": b""})  # generate serialises
    for result in (memoised, fresh, unknown):
        cm, secret = generate_objects(result, inp)[:2]
        config_bytes = gzip.decompress(base64.b64decode(cm["binaryData"]["config.json.gz"]))
        secrets_bytes = gzip.decompress(base64.b64decode(secret["data"]["secrets.json.gz"]))
        assert config_bytes == canonical_json(result.config)
        assert secrets_bytes == canonical_json(result.secrets)
    assert generate_objects(memoised, inp) == generate_objects(fresh, inp) == generate_objects(unknown, inp)


def test_object_order_is_deterministic(build):
    objs = [build.route("a", "/a"), build.route("b", "/b", namespace="other")]
    services = [build.service(), build.service(namespace="other")]
    inp1 = build.make_input(*objs, services=services)
    inp2 = build.make_input(*reversed(objs), services=list(reversed(services)))
    assert generate_objects(translate(inp1), inp1) == generate_objects(translate(inp2), inp2)


def test_10k_routes_and_10k_keys_fit_in_1_mib():
    objects, secrets, services = [], {}, {}
    for i in range(10_000):
        ns = f"team-{i % 50}"
        objects.append(SourceObject(kind="GatewayRoute", namespace=ns, name=f"route-{i}", spec={
            "hosts": ["api.example.com"], "path": f"/api/v1/service-{i}/:id", "methods": ["GET", "POST"],
            "backends": [{"service": f"svc-{i % 100}", "port": 8080}], "auth": {"methods": ["apiKey"]}}))
        objects.append(SourceObject(kind="ApiKey", namespace=ns, name=f"key-{i}", spec={
            "secretRef": {"name": f"key-{i}", "key": "api-key"}, "routes": [f"route-{i}"],
            "rateLimit": {"requests": 100, "period": "1m"}}))
        secrets[(ns, f"key-{i}")] = {"api-key": generate_api_key().encode()}
    for k in range(50):
        for j in range(100):
            services[(f"team-{k}", f"svc-{j}")] = ServiceInfo(
                namespace=f"team-{k}", name=f"svc-{j}", ports=(ServicePort(port=8080),), selector={"app": f"s{j}"})
    inp = TranslationInput(objects=tuple(objects), secrets=secrets, services=services)
    start = time.perf_counter()
    result = translate(inp)
    cm, secret = generate_objects(result, inp)[:2]
    elapsed = time.perf_counter() - start
    assert len(result.config.routes) == 10_000 and len(result.config.api_keys) == 10_000
    cm_size, secret_size = len(json.dumps(cm)), len(json.dumps(secret))
    print(f"10k routes + 10k keys: ConfigMap {cm_size} B, Secret {secret_size} B, {elapsed:.1f}s")
    assert cm_size < 1024 * 1024 and secret_size < 1024 * 1024
