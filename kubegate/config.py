"""The compiled data-plane config: the one contract between operator and data plane.

The translator (``kubegate.translate``) produces a :class:`CompiledConfig`
(non-secret, goes to ConfigMap ``kubegate-config``) and a :class:`SecretBundle`
(secret material, goes to Secret ``kubegate-secrets``). The data plane reads
exactly these models, whether they come from files (``kubegate run``) or from
the API (``kubegate dataplane``). Both halves carry the same
:func:`config_hash`, so a data plane never serves a config with the secrets of
another.

Everything here is already resolved and normalised: durations are seconds,
references are concrete URLs or bundle keys, precedence is decided. The data
plane does no Kubernetes reasoning.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.dataclasses import dataclass

SCHEMA_VERSION = 1

# Where the halves live inside the generated ConfigMap / Secret.
CONFIG_KEY = "config.json.gz"
SECRETS_KEY = "secrets.json.gz"
HASH_KEY = "hash"
HASH_ANNOTATION = "kubegate.dev/config-hash"
# On a primary whose payload continues in shards: JSON [[shard name, sha256 hex of its bytes], ...].
SHARDS_KEY = "shards"
# On a data-plane Lease: JSON {"Kind/ns/name": reason} of the objects of that config the replica could not load.
DROPPED_ANNOTATION = "kubegate.dev/dropped"


class Compiled(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CompiledBackend(Compiled):
    url: str = Field(description="Absolute http(s) base URL, e.g. http://svc.ns.svc.cluster.local:3000")
    weight: int = 1


class CompiledJwt(Compiled):
    issuer: str | None = None
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...]
    jwks_uri: str | None = None
    public_key_pem: str | None = None  # public keys are not secret
    hmac_secret: str | None = Field(None, description="SecretBundle key holding the HMAC secret")
    required_claims: dict[str, str] = Field(default_factory=dict)
    forward_claims: dict[str, str] = Field(default_factory=dict)
    leeway_seconds: float = 30.0


class CompiledAuth(Compiled):
    required: bool = True
    methods: tuple[Literal["jwt", "apiKey", "mtls"], ...]
    jwt: CompiledJwt | None = None
    mtls_subjects: tuple[str, ...] = ()


class CompiledLimit(Compiled):
    key: str = Field(description="Stable id of this limit, e.g. 'shop/expensive#0'; part of the counter key")
    dimension: Literal["ip", "user", "apiKey", "global", "header"]
    header: str | None = None
    requests: int
    period_seconds: float
    burst: int


class CompiledRateLimit(Compiled):
    policy: str = Field(description="namespace/name of the RateLimitPolicy that won precedence")
    scope: Literal["route", "namespace", "gateway"]
    limits: tuple[CompiledLimit, ...]
    failure_mode: Literal["open", "closed", "local"] = "open"


class CompiledCircuitBreaker(Compiled):
    max_requests: int = 1024
    max_pending_requests: int = 256
    consecutive_errors: int = 5
    ejection_time: float = 30.0


class CompiledRoute(Compiled):
    id: str = Field(description="namespace/name of the GatewayRoute")
    namespace: str
    name: str
    hosts: tuple[str, ...] = ()
    path: str
    methods: tuple[str, ...] = ()
    backends: tuple[CompiledBackend, ...]
    strip_prefix: str | None = None
    request_timeout: float = 15.0
    connect_timeout: float = 2.0
    retries: int = 0
    max_body_bytes: int = 1_048_576
    request_schema: dict[str, Any] | None = None
    auth: CompiledAuth | None = None
    ip_allow: tuple[str, ...] = ()
    ip_deny: tuple[str, ...] = ()
    rate_limit: CompiledRateLimit | None = None
    circuit_breaker: CompiledCircuitBreaker | None = None


@dataclass(frozen=True, slots=True, kw_only=True, config=ConfigDict(extra="forbid"))
class CompiledApiKey:
    """One ApiKey. Validated and dumped by pydantic like the models here, but a slots dataclass: a
    data plane holds 100,000 of them, and a BaseModel instance (its __dict__ and fields-set) costs
    about 2.5 times the memory. :func:`plain` dumps any compiled element."""

    id: str = Field(description="Short non-secret key id (shown in status and audit logs)")
    namespace: str
    name: str
    hash_ref: str = Field(description="SecretBundle key holding sha256(key) as hex")
    routes: tuple[str, ...] = Field((), description="Route ids it may call; empty = every route in its namespace")
    allowed_cidrs: tuple[str, ...] = ()
    rate_limit: CompiledLimit | None = None
    expires_at: float | None = Field(None, description="Unix time; None = never")
    disabled: bool = False


class CompiledClientAuth(Compiled):
    mode: Literal["require", "optional", "none"]
    ca_bundle: str | None = Field(None, description="SecretBundle key holding the CA PEM")
    allowed_subjects: tuple[str, ...] = ()


class CompiledHsts(Compiled):
    max_age: int
    include_subdomains: bool = False
    preload: bool = False

    def header_value(self) -> str:
        parts = [f"max-age={self.max_age}"]
        if self.include_subdomains:
            parts.append("includeSubDomains")
        if self.preload:
            parts.append("preload")
        return "; ".join(parts)


class CompiledTls(Compiled):
    id: str = Field(description="namespace/name of the TLSPolicy")
    hostnames: tuple[str, ...]
    cert_chain: str = Field(description="SecretBundle key holding the PEM certificate chain")
    private_key: str = Field(description="SecretBundle key holding the PEM private key")
    min_version: Literal["1.2", "1.3"] = "1.2"
    hsts: CompiledHsts | None = None
    client_auth: CompiledClientAuth | None = None


class CompiledConfig(Compiled):
    """Everything the data plane serves, minus secret material."""

    schema_version: int = SCHEMA_VERSION
    gateway_namespace: str = "kubegate-system"
    routes: tuple[CompiledRoute, ...] = ()
    api_keys: tuple[CompiledApiKey, ...] = ()
    tls: tuple[CompiledTls, ...] = ()
    generations: dict[str, int] = Field(
        default_factory=dict,
        description="'Kind/namespace/name' -> metadata.generation of every object this config includes",
    )


class SecretBundle(Compiled):
    """Secret material the data plane needs, by key: HMAC secrets, API-key hashes, TLS keys."""

    values: dict[str, str] = Field(default_factory=dict)


# --- canonical encoding ---------------------------------------------------------

_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def adapter(kind: type) -> TypeAdapter[Any]:
    """pydantic's validator and serializer of a compiled element type (a model or CompiledApiKey)."""
    found = _ADAPTERS.get(kind)
    if found is None:
        found = _ADAPTERS[kind] = TypeAdapter(kind)
    return found


def plain(item: Any) -> Any:
    """The JSON-mode dump of one compiled element, model or dataclass."""
    if isinstance(item, BaseModel):
        return item.model_dump(mode="json")
    return adapter(type(item)).dump_python(item, mode="json")



def canonical_json(model: BaseModel) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace; same model -> same bytes."""
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


def config_hash(config: CompiledConfig, secrets: SecretBundle) -> str:
    """Content hash of both halves; what a data-plane replica acknowledges."""
    digest = hashlib.sha256()
    digest.update(canonical_json(config))
    digest.update(b"\0")
    digest.update(canonical_json(secrets))
    return digest.hexdigest()


# gzip level 1: the cheapest level that keeps 10,000 routes + 10,000 keys well under the 1 MiB
# object limit; higher levels cost several times the CPU for a few percent of size, and the Secret
# (hashes) barely compresses at any level. bench/render.py prints time and size per level.
COMPRESS_LEVEL = 1


def compress(payload: bytes) -> bytes:
    # mtime=0 keeps the gzip header deterministic (byte-identical output).
    return gzip.compress(payload, compresslevel=COMPRESS_LEVEL, mtime=0)


def encode_config(config: CompiledConfig) -> str:
    """base64(gzip(canonical JSON)), the form stored in ConfigMap binaryData."""
    return base64.b64encode(compress(canonical_json(config))).decode()


def encode_secrets(secrets: SecretBundle) -> str:
    return base64.b64encode(compress(canonical_json(secrets))).decode()


# --- payloads larger than one object ----------------------------------------------------

# The bytes of one payload piece per object: 700 KiB (933 KiB as base64) leaves room under the API
# server's 1 MiB limit for the other keys, the metadata and the content-hash annotation.
SHARD_BYTES = 700 * 1024


def split_payload(payload: bytes, size: int = SHARD_BYTES) -> list[bytes]:
    """The gzip payload in pieces of at most ``size`` bytes, in order (one piece for a small one)."""
    return [payload[at:at + size] for at in range(0, len(payload), size)] or [b""]


def piece_digest(piece: bytes) -> str:
    """What a primary lists for each of its shards: sha256 of the shard's bytes, hex."""
    return hashlib.sha256(piece).hexdigest()


class ConfigDecodeError(ValueError):
    """The stored config is unreadable; the data plane keeps its last good one."""


class ShardsIncomplete(ConfigDecodeError):
    """A primary lists shards that are missing or belong to another config: not served (yet)."""


def _decode(data: str | bytes, what: str) -> dict[str, Any]:
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else data
        return json.loads(gzip.decompress(raw))
    except (ValueError, OSError, EOFError) as exc:
        raise ConfigDecodeError(f"{what} is not valid base64 gzip JSON: {exc}") from None


def decode_config(data: str | bytes) -> CompiledConfig:
    """Inverse of :func:`encode_config`; raises ConfigDecodeError with a short reason."""
    from pydantic import ValidationError

    try:
        return CompiledConfig.model_validate(_decode(data, "config"))
    except ValidationError as exc:
        raise ConfigDecodeError(f"config does not match the schema: {exc.errors()[0]['msg']}") from None


def decode_secrets(data: str | bytes) -> SecretBundle:
    from pydantic import ValidationError

    try:
        return SecretBundle.model_validate(_decode(data, "secrets"))
    except ValidationError as exc:
        raise ConfigDecodeError(f"secrets do not match the schema: {exc.errors()[0]['msg']}") from None
