"""Inputs and outputs of the pure translator, independent of where objects come from.

The operator fills a :class:`TranslationInput` from its watch caches, the CLI
from YAML files; the translator never does I/O. Specs stay raw dicts here so
that one invalid object is reported (``Accepted=False``) instead of stopping
the others from being served.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from kubegate.config import CompiledConfig, SecretBundle

DEFAULT_GATEWAY_NAMESPACE = "kubegate-system"


class ObjectRef(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


class SourceObject(BaseModel):
    """One kubegate custom resource as read from the API or a file."""

    model_config = ConfigDict(frozen=True)

    kind: str
    namespace: str
    name: str
    generation: int = 1
    creation_timestamp: str = ""  # RFC 3339; "" sorts first (files have none)
    uid: str = ""
    spec: dict[str, Any] = Field(default_factory=dict)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.kind, self.namespace, self.name)

    @classmethod
    def from_manifest(cls, obj: dict[str, Any], default_namespace: str = "default") -> SourceObject:
        meta = obj.get("metadata") or {}
        return cls(
            kind=obj.get("kind", ""),
            namespace=meta.get("namespace") or default_namespace,
            name=meta.get("name", ""),
            generation=meta.get("generation") or 1,
            creation_timestamp=meta.get("creationTimestamp") or "",
            uid=meta.get("uid") or "",
            spec=obj.get("spec") or {},
        )


class ServicePort(BaseModel):
    model_config = ConfigDict(frozen=True)

    port: int
    target_port: int | str | None = None
    protocol: str = "TCP"
    name: str | None = None


class ServiceInfo(BaseModel):
    """What the translator needs of a Service: ports, pod selector, ExternalName."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    name: str
    ports: tuple[ServicePort, ...] = ()
    selector: dict[str, str] = Field(default_factory=dict)
    type: str = "ClusterIP"
    external_name: str | None = None

    @classmethod
    def from_manifest(cls, obj: dict[str, Any], default_namespace: str = "default") -> ServiceInfo:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        return cls(
            namespace=meta.get("namespace") or default_namespace,
            name=meta.get("name", ""),
            ports=tuple(
                ServicePort(
                    port=p.get("port"),
                    target_port=p.get("targetPort"),
                    protocol=p.get("protocol", "TCP"),
                    name=p.get("name"),
                )
                for p in spec.get("ports") or []
            ),
            selector=spec.get("selector") or {},
            type=spec.get("type", "ClusterIP"),
            external_name=spec.get("externalName"),
        )


def secret_data(obj: Mapping[str, Any], *, strict: bool = True) -> dict[str, bytes]:
    """A Secret's ``data`` (base64) and ``stringData`` (text, wins on clashes) as bytes.

    ``strict``: a value that is not base64 raises ``ValueError("data.KEY: not valid base64")``
    (a user's file); otherwise that key is left out (an object the API server already checked).
    """
    out: dict[str, bytes] = {}
    for key, value in (obj.get("data") or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value or ""), validate=True)
        except (binascii.Error, ValueError):
            if strict:
                raise ValueError(f"data.{key}: not valid base64") from None
    for key, value in (obj.get("stringData") or {}).items():
        out[str(key)] = str(value if value is not None else "").encode()
    return out


class TranslationInput(BaseModel):
    """Everything the translator reads: CRs plus the Secrets and Services they reference."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    gateway_namespace: str = DEFAULT_GATEWAY_NAMESPACE
    cluster_domain: str = "cluster.local"
    objects: tuple[SourceObject, ...] = ()
    # (namespace, name) -> decoded Secret data (bytes values)
    secrets: dict[tuple[str, str], dict[str, bytes]] = Field(default_factory=dict)
    services: dict[tuple[str, str], ServiceInfo] = Field(default_factory=dict)


ConditionStatus = Literal["True", "False", "Unknown"]

# The condition types of kubegate objects' status (API.md), defined here once.
ACCEPTED, RESOLVED_REFS, PROGRAMMED, READY = "Accepted", "ResolvedRefs", "Programmed", "Ready"
CERTIFICATE_READY = "CertificateReady"  # TLSPolicy with an issuerRef
RECONCILING, STALLED = "Reconciling", "Stalled"  # the kstatus pair
CORE_CONDITIONS = (ACCEPTED, RESOLVED_REFS, PROGRAMMED, READY)  # on every kind


class Condition(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


class ObjectResult(BaseModel):
    """The translator's verdict on one object: Accepted and ResolvedRefs, plus facts for status."""

    model_config = ConfigDict(frozen=True)

    ref: ObjectRef
    generation: int
    accepted: Condition
    resolved_refs: Condition
    key_id: str | None = None  # ApiKey: short non-secret id
    certificate: str | None = None  # TLSPolicy with issuerRef: generated Certificate name
    programmable: bool = False  # included in the compiled config (may be acknowledged)


class CertificateRequest(BaseModel):
    """A cert-manager Certificate to issue for an accepted TLSPolicy with an ``issuerRef``."""

    model_config = ConfigDict(frozen=True)

    name: str  # the Certificate and its Secret, in the gateway namespace
    policy: ObjectRef  # the TLSPolicy asking for it
    dns_names: tuple[str, ...]  # sorted, lower-case
    issuer_name: str
    issuer_kind: str
    issuer_group: str
    duration: str | None = None
    renew_before: str | None = None


class BackendService(BaseModel):
    """A selector-backed Service that programmed routes send traffic to, and the ports they use."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    name: str
    selector: dict[str, str]
    ports: tuple[ServicePort, ...]  # the declared ports routes name, in first-use order


class TranslationResult(BaseModel):
    """What the translator produced: the config, its secrets and hash, one verdict per object,
    and the facts the generated objects need (Certificates to issue, backends to open)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    config: CompiledConfig
    secrets: SecretBundle
    hash: str
    results: dict[ObjectRef, ObjectResult]
    warnings: tuple[str, ...] = ()
    certificates: tuple[CertificateRequest, ...] = ()  # sorted by name
    backend_services: tuple[BackendService, ...] = ()  # sorted by (namespace, name)
    backend_urls: tuple[str, ...] = ()  # url: backends and JWKS URIs of programmed routes, sorted
    # canonical_json(config) / canonical_json(secrets), as the translator assembled them (b"": not known)
    config_json: bytes = Field(default=b"", repr=False)
    secrets_json: bytes = Field(default=b"", repr=False)
