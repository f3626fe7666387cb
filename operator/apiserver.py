"""Where the API server is, for the data plane's egress policy (pure functions of API objects).

The API server publishes its own endpoints as the EndpointSlices of Service
``default/kubernetes`` (label ``kubernetes.io/service-name=kubernetes``): the
addresses a pod's connection to the ClusterIP is translated to, which is what
a NetworkPolicy is checked against. An API server that advertises a loopback
address (a local dev control plane) cannot publish any (EndpointSlice
validation refuses loopback); then the address the operator itself dials is
the API server, when it is an IP literal and not the ``kubernetes`` Service's
ClusterIP (a policy naming a ClusterIP matches nothing once kube-proxy has
translated the connection).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

NAMESPACE = "default"
SERVICE_LABEL = "kubernetes.io/service-name=kubernetes"

Endpoints = tuple[tuple[str, int], ...]


def _ip(text: Any) -> str | None:
    try:
        return str(ipaddress.ip_address(str(text)))
    except ValueError:
        return None


def endpoint_addresses(slices: Iterable[Mapping[str, Any]]) -> Endpoints:
    """(address, port) of every endpoint not marked unready, over every port of the slices; sorted, unique."""
    found: set[tuple[str, int]] = set()
    for piece in slices:
        if piece.get("addressType") not in ("IPv4", "IPv6"):
            continue  # FQDN slices name no address a NetworkPolicy can hold
        ports = [p.get("port") for p in piece.get("ports") or [] if (p.get("protocol") or "TCP") == "TCP"]
        ports = [p for p in ports if isinstance(p, int) and 0 < p < 65536]
        for endpoint in piece.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                ip = _ip(address)
                if ip is not None:
                    found.update((ip, port) for port in ports)
    return tuple(sorted(found))


def dialled_endpoint(host_url: str, service_ip: str | None = None) -> Endpoints:
    """The API server the operator connects to, when its URL names an IP literal other than
    ``service_ip`` (the in-cluster ``KUBERNETES_SERVICE_HOST``); else ()."""
    parts = urlsplit(host_url)
    ip = _ip(parts.hostname or "")
    if ip is None or ip == _ip(service_ip or ""):
        return ()
    try:
        port = parts.port or 443
    except ValueError:
        return ()
    return ((ip, port),)


def api_server_endpoints(slices: Iterable[Mapping[str, Any]] | None, host_url: str,
                         service_ip: str | None = None) -> Endpoints | None:
    """The published endpoints, else (listed, none published) the dialled IP literal; None (unknown: a
    port-only rule) otherwise.

    ``slices`` None: the EndpointSlices could not be listed (yet, or no RBAC): unknown, never the dialled
    address, which outside a cluster may be a load balancer the data plane's traffic never goes to.
    """
    if slices is None:
        return None
    return endpoint_addresses(slices) or dialled_endpoint(host_url, service_ip) or None
