"""The operator scopes the data plane's egress policy to the real API server and the configured Redis.

A real operator (its own ServiceAccount, the RBAC of manifests/base) on the dev
cluster. The dev API server advertises 127.0.0.1, which it cannot publish as
an endpoint (Endpoints and EndpointSlice validation refuse loopback: its log
says so every 10 s), so the operator falls back to the address it dials; the
EndpointSlice a real cluster's API server writes is then written here, as it
would be, to prove a change is watched and rewrites the policy.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import apply_yaml, get, start_operator, wait_until

PASSWORD = "s3cret-redis-pw"
REDIS_URL = f"redis://:{PASSWORD}@127.0.0.1:6390/0"
EGRESS = "kubegate-dataplane-egress"


def egress_rules(cluster) -> list[dict]:
    policy = get(cluster, "networkpolicy", EGRESS)
    return [] if policy is None else policy["spec"]["egress"]


def ip_rule(cidrs: list[str], port: int) -> dict:
    return {"to": [{"ipBlock": {"cidr": c}} for c in cidrs], "ports": [{"protocol": "TCP", "port": port}]}


def external_ports(cluster) -> set[int]:
    """Ports of every URL backend / JWKS URI in the cluster at a DNS name (the documented port-only case)."""
    routes = json.loads(cluster.kubectl("get", "gatewayroutes", "-A", "-o", "json").stdout)["items"]
    ports = set()
    for route in routes:
        spec = route.get("spec") or {}
        urls = [b["url"] for b in spec.get("backends") or [] if b.get("url")]
        urls += [((spec.get("auth") or {}).get("jwt") or {}).get("jwksUri") or ""]
        for url in filter(None, urls):
            parts = urlsplit(url)
            try:
                ipaddress.ip_address(parts.hostname or "")
            except ValueError:
                ports.add(parts.port or (443 if parts.scheme == "https" else 80))
    return ports


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("egress")
    proc = start_operator(cluster, tmp, "operator-egress", KUBEGATE_REDIS_URL=REDIS_URL)
    yield proc
    proc.stop()
    cluster.kubectl("delete", "endpointslice", "kubernetes", "-n", "default", "--ignore-not-found", check=False)


def test_egress_names_the_api_server_and_redis_addresses(cluster, operator, namespace):
    apply_yaml(cluster, f"""
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: ip-backend, namespace: {namespace}}}
spec: {{path: /egress-ip, backends: [{{url: 'http://127.0.0.1:18080'}}]}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: external-backend, namespace: {namespace}}}
spec: {{path: /egress-ext, backends: [{{url: 'https://ext.example.com'}}]}}
""")
    api_port = urlsplit(cluster.server).port
    api = ip_rule(["127.0.0.1/32"], api_port)
    redis = ip_rule(["127.0.0.1/32"], 6390)
    backend = ip_rule(["127.0.0.1/32"], 18080)
    rules = wait_until(lambda: (r := egress_rules(cluster)) and all(x in r for x in (api, redis, backend)) and r,
                       30, f"{EGRESS} naming the API server, Redis and the backend")
    unscoped = [rule for rule in rules if "to" not in rule]
    # Only external DNS names (a NetworkPolicy cannot name them): here ext.example.com's 443.
    assert {p["port"] for rule in unscoped for p in rule["ports"]} <= external_ports(cluster)
    assert {"ports": [{"protocol": "TCP", "port": 443}]} in unscoped
    assert not any(p["port"] in (6379, 6390, 6443, api_port) for rule in unscoped for p in rule["ports"])

    # The Redis password is nowhere: not in the policy, the operator's log, an Event or a status.
    events = cluster.kubectl("get", "events", "-A", "-o", "json").stdout
    statuses = cluster.kubectl("get", "gatewayroutes,apikeys,tlspolicies,ratelimitpolicies", "-A", "-o",
                               "json").stdout
    policy = json.dumps(get(cluster, "networkpolicy", EGRESS))
    for where, text in (("policy", policy), ("log", operator.log()), ("events", events), ("statuses", statuses)):
        assert PASSWORD not in text, where


def test_a_change_of_the_api_servers_endpoint_slice_rewrites_the_policy(cluster, operator):
    api_port = urlsplit(cluster.server).port
    wait_until(lambda: ip_rule(["127.0.0.1/32"], api_port) in egress_rules(cluster), 30, "the dialled address")

    def publish(addresses: list[str]) -> None:
        endpoints = ", ".join(f"{{addresses: ['{a}'], conditions: {{ready: true}}}}" for a in addresses)
        apply_yaml(cluster, f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: kubernetes, namespace: default, labels: {{kubernetes.io/service-name: kubernetes}}}}
addressType: IPv4
endpoints: [{endpoints}]
ports: [{{name: https, port: 6443, protocol: TCP}}]
""")

    publish(["192.0.2.10"])
    wait_until(lambda: ip_rule(["192.0.2.10/32"], 6443) in egress_rules(cluster), 30, "the published endpoint")
    publish(["192.0.2.10", "192.0.2.11"])
    wait_until(lambda: ip_rule(["192.0.2.10/32", "192.0.2.11/32"], 6443) in egress_rules(cluster), 30,
               "both published endpoints")
    rules = egress_rules(cluster)
    assert ip_rule(["127.0.0.1/32"], api_port) not in rules
    assert not any(p["port"] in (6443, api_port) for rule in rules if "to" not in rule for p in rule["ports"])
    cluster.kubectl("delete", "endpointslice", "kubernetes", "-n", "default")
    wait_until(lambda: ip_rule(["127.0.0.1/32"], api_port) in egress_rules(cluster), 30,
               "the dialled address again once nothing is published")
