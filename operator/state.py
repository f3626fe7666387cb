"""The operator's in-memory picture of the cluster, fed by watch events.

Holds the four kubegate kinds (spec + live status), the Services they may
point at, and the data of only those Secrets that kubegate objects reference:
Secret events for everything else are dropped, so no cluster-wide copy of
secret material ever sits in this process. Every update answers "did this
change anything the translator reads?", which is what marks the reconciler
dirty; a status-only change (usually our own write) does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubegate.resources import ObjectRef, ServiceInfo, SourceObject, TranslationInput, secret_data
from kubegate.spec import API_VERSION, KINDS
from kubegate.translate import certificate_name

SecretKey = tuple[str, str]  # (namespace, name)


def _at(node: Any, *path: str) -> Any:
    """node[path...] through mappings only; None when any step is missing or not a mapping."""
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _named(ns: str, ref: Any) -> set[SecretKey]:
    name = _at(ref, "name")
    return {(ns, name)} if isinstance(name, str) and name else set()


def referenced_secrets(obj: SourceObject, gateway_namespace: str) -> set[SecretKey]:
    """Every Secret the translator may read for this object (pure; tolerant of invalid specs)."""
    spec, ns = obj.spec or {}, obj.namespace
    if obj.kind == "ApiKey":
        return _named(ns, _at(spec, "secretRef"))
    if obj.kind == "GatewayRoute":
        jwt = _at(spec, "auth", "jwt")
        return _named(ns, _at(jwt, "publicKeySecretRef")) | _named(ns, _at(jwt, "secretRef"))
    if obj.kind == "TLSPolicy":
        out = _named(ns, _at(spec, "certificate", "secretRef")) | _named(ns, _at(spec, "clientAuth", "caSecretRef"))
        if _at(spec, "certificate", "issuerRef"):
            out.add((gateway_namespace, certificate_name(ns, obj.name)))
        return out
    return set()


@dataclass
class LiveObject:
    source: SourceObject
    resource_version: str
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def involved(self) -> dict[str, str]:
        """The object as an Event's involvedObject / an ownerReference target."""
        return {"apiVersion": API_VERSION, "kind": self.source.kind, "name": self.source.name,
                "namespace": self.source.namespace, "uid": self.source.uid}


class ClusterState:
    def __init__(self, gateway_namespace: str) -> None:
        self.gateway_namespace = gateway_namespace
        self.objects: dict[ObjectRef, LiveObject] = {}
        self.services: dict[SecretKey, ServiceInfo] = {}
        self.secrets: dict[SecretKey, dict[str, bytes]] = {}
        self.absent_secrets: set[SecretKey] = set()  # referenced, and known not to exist
        self._refs_by_object: dict[ObjectRef, frozenset[SecretKey]] = {}
        self._referenced: set[SecretKey] | None = None

    # --- kubegate objects ---------------------------------------------------------

    def upsert_object(self, body: Mapping[str, Any]) -> bool:
        """Record a CR; True when the translator's input changed (not for status-only updates)."""
        kind = body.get("kind", "")
        if kind not in KINDS:
            return False
        meta = body.get("metadata") or {}
        known = self.objects.get(ObjectRef(kind, meta.get("namespace") or "default", meta.get("name", "")))
        if known is not None and known.resource_version and known.resource_version == meta.get("resourceVersion") \
                and known.source.generation == (meta.get("generation") or 1):
            return False  # this very version is known: usually the echo of our own status write
        # (a status write's answer may carry a newer generation than the spec seen so far: then parse it)
        source = SourceObject.from_manifest(dict(body))
        old = self.objects.get(source.ref)
        if old is not None and _newer(old.resource_version, meta.get("resourceVersion", "")):
            return False  # a stale replay
        self.objects[source.ref] = LiveObject(source, meta.get("resourceVersion", ""), dict(body.get("status") or {}))
        changed = old is None or old.source != source
        if changed:
            refs = frozenset(referenced_secrets(source, self.gateway_namespace))
            if self._refs_by_object.get(source.ref, frozenset()) != refs:
                self._referenced = None  # only a change of references re-derives the referenced set
            if refs:
                self._refs_by_object[source.ref] = refs
            else:
                self._refs_by_object.pop(source.ref, None)
        return changed

    def delete_object(self, body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        ref = ObjectRef(body.get("kind", ""), meta.get("namespace") or "", meta.get("name") or "")
        if self.objects.pop(ref, None) is None:
            return False
        if self._refs_by_object.pop(ref, None):
            self._referenced = None
        return True

    def set_status(self, ref: ObjectRef, status: Mapping[str, Any], resource_version: str | None = None) -> None:
        live = self.objects.get(ref)
        if live is not None:
            live.status = dict(status)
            if resource_version:
                live.resource_version = resource_version

    # --- Services -------------------------------------------------------------------

    def upsert_service(self, body: Mapping[str, Any]) -> bool:
        info = ServiceInfo.from_manifest(dict(body))
        key = (info.namespace, info.name)
        if self.services.get(key) == info:
            return False
        self.services[key] = info
        return True

    def delete_service(self, body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        return self.services.pop((meta.get("namespace") or "", meta.get("name") or ""), None) is not None

    # --- Secrets ----------------------------------------------------------------------

    @property
    def referenced(self) -> set[SecretKey]:
        if self._referenced is None:
            refs: set[SecretKey] = set().union(*self._refs_by_object.values())
            self._referenced = refs
            # Forget what is no longer referenced: no secret data kept without a reason.
            for key in [k for k in self.secrets if k not in refs]:
                del self.secrets[key]
            self.absent_secrets &= refs
        return self._referenced

    def secret_event(self, event_type: str, body: Mapping[str, Any]) -> bool:
        """Keep a Secret's data only if a kubegate object references it; True when that data changed."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if key not in self.referenced:
            return False
        if event_type == "DELETED":
            self.absent_secrets.add(key)
            return self.secrets.pop(key, None) is not None
        data = secret_data(body, strict=False)
        self.absent_secrets.discard(key)
        if self.secrets.get(key) == data:
            return False
        self.secrets[key] = data
        return True

    def unknown_secrets(self) -> set[SecretKey]:
        """Referenced Secrets neither cached nor known to be absent: fetch them before translating."""
        return {k for k in self.referenced if k not in self.secrets and k not in self.absent_secrets}

    def record_fetched_secret(self, key: SecretKey, body: Mapping[str, Any] | None) -> None:
        if body is None:
            self.absent_secrets.add(key)
        else:
            self.secrets[key] = secret_data(body, strict=False)
            self.absent_secrets.discard(key)

    # --- translator input ---------------------------------------------------------------

    def translation_input(self) -> TranslationInput:
        refs = self.referenced
        return TranslationInput(
            gateway_namespace=self.gateway_namespace,
            objects=tuple(live.source for live in self.objects.values()),
            secrets={k: v for k, v in self.secrets.items() if k in refs},
            services=dict(self.services),
        )


def _newer(current: str, incoming: str) -> bool:
    """True when ``current`` is strictly newer than ``incoming`` (etcd revisions are integers)."""
    try:
        return int(current) > int(incoming)
    except ValueError:
        return False
