"""The Kubernetes objects the operator writes, as pure functions returning plain dicts.

``generate_objects`` is what ``kubegate render`` prints and what the operator
server-side-applies: the ConfigMap ``kubegate-config`` (compiled config), the
Secret ``kubegate-secrets`` (secret material), each continued in shards
``<name>-1..N`` when its payload is larger than one object may be, one cert-manager Certificate
per TLSPolicy with an ``issuerRef``, and NetworkPolicies that let backends
accept traffic only from data-plane pods and let the data plane reach only
declared backends, DNS, Redis and the API server.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel

from kubegate.config import (
    CONFIG_KEY,
    HASH_ANNOTATION,
    HASH_KEY,
    SECRETS_KEY,
    SHARD_BYTES,
    SHARDS_KEY,
    canonical_json,
    compress,
    piece_digest,
    split_payload,
)
from kubegate.names import (
    BACKEND_POLICY_PREFIX,
    CONFIG_MAP_NAME,
    DATAPLANE_LABELS,
    EGRESS_POLICY_NAME,
    MANAGED_LABELS,
    MAX_SHARDS,
    SECRET_NAME,
    SHARD_LABEL,
    shard_name,
)
from kubegate.resources import (
    BackendService,
    ServiceInfo,
    ServicePort,
    TranslationInput,
    TranslationResult,
)

DNS_PORT, REDIS_PORT, API_SERVER_PORTS = 53, 6379, (443, 6443)
DNS_PEERS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
              "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]


@dataclass(frozen=True)
class EgressTargets:
    """What the data plane reaches besides backends, as the operator's shell found it.

    ``api_server``: the (address, port) endpoints of ``default/kubernetes``. ``redis_url``: the data
    plane's ``--redis-url`` ("" = in-memory limits, no Redis at all). ``None`` for either means
    unknown (``kubegate render``/``run`` without a cluster): that rule then names only its ports.
    """

    api_server: tuple[tuple[str, int], ...] | None = None
    redis_url: str | None = None


def _metadata(name: str, namespace: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(MANAGED_LABELS)}
    if annotations:
        meta["annotations"] = annotations
    return meta


def _payload(model: BaseModel, canonical: bytes) -> bytes:
    """gzip(canonical JSON), as ``encode_config``/``encode_secrets``, reusing the translator's JSON."""
    return compress(canonical or canonical_json(model))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class ConfigTooLarge(ValueError):
    """The compiled config needs more objects than the data plane may read (names.MAX_SHARDS)."""


def _pieces(payload: bytes, primary: str) -> list[bytes]:
    pieces = split_payload(payload)
    if len(pieces) > MAX_SHARDS + 1:
        raise ConfigTooLarge(f"{primary} would need {len(pieces)} objects of {SHARD_BYTES // 1024} KiB "
                             f"({len(payload)} bytes gzipped); the data plane reads at most {MAX_SHARDS + 1}")
    return pieces


def _shard_metadata(primary: str, index: int, namespace: str, digest: str) -> dict[str, Any]:
    meta = _metadata(shard_name(primary, index), namespace, {HASH_ANNOTATION: digest})
    meta["labels"][SHARD_LABEL] = primary
    return meta


def _shard_list(primary: str, pieces: list[bytes]) -> str:
    """The primary's SHARDS_KEY: JSON [[name, sha256 of its bytes], ...] of pieces[1:]."""
    return json.dumps([[shard_name(primary, i), piece_digest(p)] for i, p in enumerate(pieces[1:], 1)],
                      separators=(",", ":"))


def config_map_objects(result: TranslationResult, namespace: str) -> list[dict[str, Any]]:
    """The ConfigMap with the gzip compiled config (binaryData) and its hash; a config above
    SHARD_BYTES continues in shards ``kubegate-config-1..N``, listed (with their digests) by the
    primary, which comes last: the operator writes it after them (operator/apply.py)."""
    pieces = _pieces(_payload(result.config, result.config_json), CONFIG_MAP_NAME)
    shards = [{
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _shard_metadata(CONFIG_MAP_NAME, index, namespace, result.hash),
        "binaryData": {CONFIG_KEY: _b64(piece)},
        "data": {HASH_KEY: result.hash},
    } for index, piece in enumerate(pieces[1:], 1)]
    data = {HASH_KEY: result.hash}
    if shards:
        data[SHARDS_KEY] = _shard_list(CONFIG_MAP_NAME, pieces)
    return [*shards, {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(CONFIG_MAP_NAME, namespace, {HASH_ANNOTATION: result.hash}),
        "binaryData": {CONFIG_KEY: _b64(pieces[0])},
        "data": data,
    }]


def secret_objects(result: TranslationResult, namespace: str) -> list[dict[str, Any]]:
    """The Secret with the gzip secret bundle, carrying the same hash as the ConfigMap; sharded
    like it (``kubegate-secrets-1..N``, primary last). Secret data is base64 of the stored bytes,
    like ConfigMap binaryData."""
    pieces = _pieces(_payload(result.secrets, result.secrets_json), SECRET_NAME)
    hashed = _b64(result.hash.encode())
    shards = [{
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _shard_metadata(SECRET_NAME, index, namespace, result.hash),
        "data": {SECRETS_KEY: _b64(piece), HASH_KEY: hashed},
    } for index, piece in enumerate(pieces[1:], 1)]
    data = {SECRETS_KEY: _b64(pieces[0]), HASH_KEY: hashed}
    if shards:
        data[SHARDS_KEY] = _b64(_shard_list(SECRET_NAME, pieces).encode())
    return [*shards, {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(SECRET_NAME, namespace, {HASH_ANNOTATION: result.hash}),
        "data": data,
    }]


def certificates(result: TranslationResult, inp: TranslationInput) -> list[dict[str, Any]]:
    """One cert-manager Certificate per accepted TLSPolicy with an issuerRef (issued before it is served)."""
    out = []
    for request in result.certificates:  # sorted by name
        cert_spec: dict[str, Any] = {
            "secretName": request.name,
            "dnsNames": list(request.dns_names),
            "issuerRef": {"name": request.issuer_name, "kind": request.issuer_kind, "group": request.issuer_group},
        }
        if request.duration:
            cert_spec["duration"] = request.duration
        if request.renew_before:
            cert_spec["renewBefore"] = request.renew_before
        meta = _metadata(request.name, inp.gateway_namespace)
        policy = request.policy
        meta["labels"]["kubegate.dev/tlspolicy"] = f"{policy.namespace}.{policy.name}"[:63].strip(".-")
        out.append({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": meta, "spec": cert_spec})
    return out


def _port_rule(declared: ServicePort) -> dict[str, Any]:
    return {"protocol": declared.protocol or "TCP", "port": declared.target_port or declared.port}


def _target_port(service: ServiceInfo, port: int) -> dict[str, Any]:
    for declared in service.ports:
        if declared.port == port:
            return _port_rule(declared)
    return {"protocol": "TCP", "port": port}


def _backend_ports(backend: BackendService) -> list[dict[str, Any]]:
    """The target ports a backend Service's pods accept from the data plane, each once."""
    ports: list[dict[str, Any]] = []
    for declared in backend.ports:
        port = _port_rule(declared)
        if port not in ports:
            ports.append(port)
    return ports


def _backend_peer(backend: BackendService) -> dict[str, Any]:
    return {"namespaceSelector": _namespace_selector(backend.namespace),
            "podSelector": {"matchLabels": dict(sorted(backend.selector.items()))}}


def _namespace_selector(namespace: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": namespace}}


def _sorted_ports(ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(ports, key=lambda p: (str(p["port"]), p["protocol"]))


def _ip_block(host: str) -> dict[str, Any] | None:
    """``{"ipBlock": {"cidr": "a.b.c.d/32"}}`` for an IP literal host, else None."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return {"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}}


def _service_peer(host: str, port: int, inp: TranslationInput,
                  default_namespace: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(peer, port) for an in-cluster Service name (``svc``, ``svc.ns``, ``svc.ns.svc[.<domain>]``)
    whose Service is known and selects pods; None otherwise."""
    parts = host.lower().rstrip(".").split(".")
    suffix = ["svc", *inp.cluster_domain.split(".")]
    if len(parts) > 2 and parts[2:] not in (suffix, suffix[:1]):
        return None
    name, namespace = parts[0], parts[1] if len(parts) > 1 else default_namespace
    service = inp.services.get((namespace, name))
    if service is None or not service.selector:
        return None
    peer = {"namespaceSelector": _namespace_selector(namespace),
            "podSelector": {"matchLabels": dict(sorted(service.selector.items()))}}
    return peer, _target_port(service, port)


def _scoped(urls: set[str], inp: TranslationInput, default_namespace: str, default_port: int | None = None
            ) -> tuple[list[dict[str, Any]], set[int]]:
    """Egress rules for URLs whose destination a NetworkPolicy can name (IP literals, in-cluster
    Services), and the ports of the rest (external DNS names: a NetworkPolicy cannot name them)."""
    rules: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    unscoped: set[int] = set()
    for url in sorted(urls):
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or default_port or (443 if parts.scheme in ("https", "rediss") else 80)
        block = _ip_block(host)
        found = (block, {"protocol": "TCP", "port": port}) if block else _service_peer(host, port, inp,
                                                                                        default_namespace)
        if found is None:
            unscoped.add(port)
            continue
        peer, peer_port = found
        key = repr(sorted(peer.items()))
        entry = rules.setdefault(key, (peer, []))
        if peer_port not in entry[1]:
            entry[1].append(peer_port)
    return [{"to": [peer], "ports": _sorted_ports(ports)} for _, (peer, ports) in sorted(rules.items())], unscoped


def _redis_cluster_ports(url: str) -> set[int]:
    """The seed ports of a Redis Cluster URL (a node list or ``?cluster=true``, see dataplane/redis_nodes.py),
    else the empty set. A cluster's nodes come from CLUSTER SLOTS at run time, so no policy can name them."""
    parts = urlsplit(url)
    nodes = parts.netloc.rpartition("@")[2].split(",")
    clustered = any(k == "cluster" and v.lower() in ("1", "true", "yes", "on")
                    for k, v in parse_qsl(parts.query, keep_blank_values=True))
    if len(nodes) < 2 and not clustered:
        return set()
    return {urlsplit(f"//{node}").port or REDIS_PORT for node in nodes}


def network_policies(result: TranslationResult, inp: TranslationInput,
                     egress_targets: EgressTargets | None = None) -> list[dict[str, Any]]:
    """Backends accept only data-plane pods; the data plane reaches only what it needs."""
    targets = egress_targets or EgressTargets()
    gateway_ns = inp.gateway_namespace
    out = []
    # One rule list per backend, shared (as dicts) by its ingress and the data plane's egress.
    backends = [(backend, _backend_ports(backend)) for backend in result.backend_services]
    for backend, ports in backends:  # sorted by (namespace, name)
        out.append({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(f"{BACKEND_POLICY_PREFIX}{backend.name}"[:253], backend.namespace),
            "spec": {
                "podSelector": _backend_peer(backend)["podSelector"],
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{
                        "namespaceSelector": _namespace_selector(gateway_ns),
                        "podSelector": {"matchLabels": dict(DATAPLANE_LABELS)},
                    }],
                    "ports": _sorted_ports(ports),
                }],
            },
        })
    egress: list[dict[str, Any]] = [
        {"to": [_backend_peer(backend)], "ports": _sorted_ports(ports)} for backend, ports in backends
    ]
    egress.append({"to": DNS_PEERS, "ports": [{"protocol": "UDP", "port": DNS_PORT},
                                              {"protocol": "TCP", "port": DNS_PORT}]})
    if targets.api_server is None:  # unknown without a cluster: the ports only (see EgressTargets)
        egress.append({"ports": [{"protocol": "TCP", "port": p} for p in API_SERVER_PORTS]})
    elif targets.api_server:
        egress.append({
            "to": [_ip_block(ip) for ip in sorted({ip for ip, _ in targets.api_server})],
            "ports": [{"protocol": "TCP", "port": p} for p in sorted({p for _, p in targets.api_server})],
        })
    if targets.redis_url is None:
        egress.append({"ports": [{"protocol": "TCP", "port": REDIS_PORT}]})
    elif targets.redis_url:
        cluster_ports = _redis_cluster_ports(targets.redis_url)
        scoped, unscoped = ([], cluster_ports) if cluster_ports else _scoped({targets.redis_url}, inp, gateway_ns,
                                                                            REDIS_PORT)
        egress.extend(scoped)
        if unscoped:
            egress.append({"ports": [{"protocol": "TCP", "port": p} for p in sorted(unscoped)]})
    scoped, unscoped = _scoped(set(result.backend_urls), inp, gateway_ns)
    egress.extend(scoped)
    if unscoped:
        egress.append({"ports": [{"protocol": "TCP", "port": p} for p in sorted(unscoped)]})
    out.append({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(EGRESS_POLICY_NAME, gateway_ns),
        "spec": {
            "podSelector": {"matchLabels": dict(DATAPLANE_LABELS)},
            "policyTypes": ["Egress"],
            "egress": egress,
        },
    })
    return out


def generate_objects(result: TranslationResult, inp: TranslationInput,
                     egress_targets: EgressTargets | None = None) -> list[dict[str, Any]]:
    """Everything the operator writes, in a fixed order: ConfigMap (its shards first, if any), Secret
    (likewise), Certificates, NetworkPolicies. ConfigTooLarge when the config needs too many shards."""
    return [
        *config_map_objects(result, inp.gateway_namespace),
        *secret_objects(result, inp.gateway_namespace),
        *certificates(result, inp),
        *network_policies(result, inp, egress_targets),
    ]
