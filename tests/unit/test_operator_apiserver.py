"""Where the API server is, from the objects the operator reads (the pure part of the egress wiring)."""

from __future__ import annotations

import asyncio
from typing import Any

from kubegate.operator.apiserver import api_server_endpoints, dialled_endpoint, endpoint_addresses
from kubegate.operator.reconcile import Reconciler, compute
from kubegate.operator.state import ClusterState

from kubegate.generate import EGRESS_POLICY_NAME, EgressTargets


def endpoint_slice(addresses: list[str], *, port: int = 6443, address_type: str = "IPv4",
                   ready: bool | None = True, name: str = "kubernetes") -> dict[str, Any]:
    """As kube-apiserver writes it for Service default/kubernetes."""
    conditions = {} if ready is None else {"ready": ready}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": address_type,
            "endpoints": [{"addresses": [a], "conditions": conditions} for a in addresses],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}


def test_endpoint_addresses_are_every_ready_address_with_its_port_sorted_once():
    slices = [endpoint_slice(["172.18.0.3", "172.18.0.2"]),
              endpoint_slice(["fd00::2"], address_type="IPv6", name="kubernetes-v6"),
              endpoint_slice(["172.18.0.2"], name="dup")]
    assert endpoint_addresses(slices) == (("172.18.0.2", 6443), ("172.18.0.3", 6443), ("fd00::2", 6443))


def test_unready_fqdn_and_malformed_endpoints_are_not_addresses():
    slices = [endpoint_slice(["172.18.0.9"], ready=False),
              endpoint_slice(["10.0.0.1"], ready=None),  # no condition: ready (the API's default)
              endpoint_slice(["api.example.com"], address_type="FQDN"),
              endpoint_slice(["not-an-ip", "999.1.1.1"]),
              {"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.2"]}],
               "ports": [{"port": 443, "protocol": "UDP"}, {"port": "x"}, {"port": 0}]},
              {}]
    assert endpoint_addresses(slices) == (("10.0.0.1", 6443),)


def test_without_published_endpoints_the_dialled_ip_literal_is_the_api_server():
    assert api_server_endpoints([], "https://127.0.0.1:34567") == (("127.0.0.1", 34567),)
    assert api_server_endpoints([], "https://[::1]:6443") == (("::1", 6443),)
    assert api_server_endpoints(None, "https://127.0.0.1:6443") is None  # not listable (yet): unknown
    assert api_server_endpoints([endpoint_slice(["172.18.0.2"])], "https://127.0.0.1:1") == (("172.18.0.2", 6443),)
    # a DNS name, or the in-cluster Service's ClusterIP (matches nothing after kube-proxy): unknown
    assert api_server_endpoints([], "https://api.example.com:6443") is None
    assert api_server_endpoints([], "https://10.96.0.1:443", "10.96.0.1") is None
    assert dialled_endpoint("https://10.0.0.7") == (("10.0.0.7", 443),)
    assert dialled_endpoint("https://10.0.0.7:bad") == ()


def _egress(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == EGRESS_POLICY_NAME)
    return policy["spec"]["egress"]


class _Api:  # the Informers are built, never run, in this test
    pass


def test_the_reconciler_passes_what_it_read_to_the_generator_and_a_change_is_a_new_input():
    async def main() -> None:
        reconciler = Reconciler(_Api(), ClusterState("kubegate-system"), identity="op",  # type: ignore[arg-type]
                                redis_url="redis://:hunter2@10.5.5.5:6390/0", api_host="https://127.0.0.1:9")
        assert reconciler.egress_targets() == EgressTargets(redis_url="redis://:hunter2@10.5.5.5:6390/0")
        reconciler.api_endpoints.synced.set()  # listed, nothing published (the dev cluster)
        first = reconciler.egress_targets()
        assert first == EgressTargets(api_server=(("127.0.0.1", 9),), redis_url="redis://:hunter2@10.5.5.5:6390/0")
        reconciler.api_endpoints.objects[("default", "kubernetes")] = endpoint_slice(["172.18.0.2"])
        second = reconciler.egress_targets()
        assert second.api_server == (("172.18.0.2", 6443),) and second != first
        _, objects = compute(reconciler.translator, reconciler.state.translation_input(), second)
        rules = _egress(objects)
        assert {"to": [{"ipBlock": {"cidr": "172.18.0.2/32"}}], "ports": [{"protocol": "TCP", "port": 6443}]} in rules
        assert {"to": [{"ipBlock": {"cidr": "10.5.5.5/32"}}], "ports": [{"protocol": "TCP", "port": 6390}]} in rules
        assert [rule for rule in rules if "to" not in rule] == []
        assert "hunter2" not in repr(objects)

    asyncio.run(main())
