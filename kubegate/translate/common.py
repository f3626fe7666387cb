"""The translator's vocabulary shared by every kind: condition names, conditions, small pure helpers."""

from __future__ import annotations

import functools
import hashlib

from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from kubegate.durations import parse_duration
from kubegate.resources import ACCEPTED, RESOLVED_REFS, Condition, ServiceInfo, SourceObject

# Condition reasons (Gateway API vocabulary where it has one); the types are resources.py's.
INVALID_SPEC = "InvalidSpec"
CONFLICTED = "Conflicted"
BACKEND_NOT_FOUND = "BackendNotFound"
SECRET_NOT_FOUND = "SecretNotFound"
ROUTE_NOT_FOUND = "RouteNotFound"
INVALID_KEY = "InvalidKey"
INVALID_CERTIFICATE = "InvalidCertificate"
CERTIFICATE_NOT_READY = "CertificateNotReady"

MAX_NAME = 63


def age_key(obj: SourceObject) -> tuple[str, str, str]:
    """Older first: creationTimestamp, then namespace/name (files have no timestamp)."""
    return (obj.creation_timestamp, obj.namespace, obj.name)


def certificate_name(namespace: str, name: str) -> str:
    """``kubegate-<ns>-<name>``, shortened with a hash suffix to fit 63 characters."""
    full = f"kubegate-{namespace}-{name}"
    if len(full) <= MAX_NAME:
        return full
    suffix = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: MAX_NAME - 9].rstrip('-.')}-{suffix}"


def backend_url(service: ServiceInfo, port: int, cluster_domain: str) -> str:
    if service.type == "ExternalName" and service.external_name:
        return f"http://{service.external_name}:{port}"
    return f"http://{service.name}.{service.namespace}.svc.{cluster_domain}:{port}"


# Durations repeat across thousands of objects ("30s", "1m"); parsing is pure.
seconds = functools.lru_cache(maxsize=4096)(parse_duration)


def ok(type_: str) -> Condition:
    return Condition(type=type_, status="True", reason=type_, message="")


def false(type_: str, reason: str, message: str) -> Condition:
    return Condition(type=type_, status="False", reason=reason, message=message)


ACCEPTED_OK, RESOLVED_OK = ok(ACCEPTED), ok(RESOLVED_REFS)


def text(value: bytes) -> str | None:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def ascii_text(value: bytes) -> str | None:
    """PEM text: ASCII only (OpenSSL's in-memory loaders take nothing else)."""
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def key_kind(public_key: object) -> str:
    """A key's type and size in words, for reasons ("an RSA-1024 key", "an EC secp256r1 key")."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"an RSA-{public_key.key_size} key"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"a DSA-{public_key.key_size} key"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"an EC {public_key.curve.name} key"
    return f"an {type(public_key).__name__.removeprefix('_').removesuffix('PublicKey')} key"
