"""The GatewayRoute spec: hosts and paths, backends, auth, rate limits, timeouts, retries, circuit
breaking and request validation."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from kubegate.durations import PositiveDuration
from kubegate.spec.common import (
    CIDR,
    HMAC_ALGORITHMS,
    PATH_PATTERN,
    AuthMethod,
    HeaderName,
    Hostname,
    HttpMethod,
    JwtAlgorithm,
    Name,
    SecretKeyRef,
    SpecModel,
    cel,
)


class Backend(SpecModel):
    """One upstream: a Service in the route's namespace (service + port) or an absolute URL."""

    model_config = cel(
        ("has(self.service) != has(self.url)", "exactly one of service or url must be set"),
        ("!has(self.service) || has(self.port)", "port is required with service"),
        ("!has(self.url) || !has(self.port)", "port is not allowed with url (put it in the URL)"),
    )

    service: Name | None = Field(None, description="A Service in the route's own namespace.")
    port: int | None = Field(None, ge=1, le=65535, description="Service port (required with service).")
    url: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^https?://[^\s/?#]+(/[^\s]*)?$",
        description="An absolute http(s) URL, as an alternative to service/port.",
    )
    weight: int = Field(1, ge=0, le=1_000_000, description="Relative weight for the weighted random choice.")

    @field_validator("url")
    @classmethod
    def _url_is_usable(cls, value: str | None) -> str | None:
        """What the data plane's URL parser (yarl) would refuse, refused here: a port outside 1-65535,
        a port that is not a number, a missing or malformed host."""
        if value is None:
            return value
        from yarl import URL

        try:
            parsed = URL(value)
            port = parsed.explicit_port
            host = parsed.raw_host
        except (ValueError, TypeError) as exc:
            raise ValueError(f"url {value!r} is not usable: {exc}") from None
        if not host:
            raise ValueError(f"url {value!r} has no host")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"url {value!r}: port must be between 1 and 65535")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Backend:
        if (self.service is None) == (self.url is None):
            raise ValueError("exactly one of service or url must be set")
        if self.service is not None and self.port is None:
            raise ValueError("port is required with service")
        if self.url is not None and self.port is not None:
            raise ValueError("port is not allowed with url (put it in the URL)")
        return self


class Rewrite(SpecModel):
    """Request rewriting applied before proxying."""

    stripPrefix: str | None = Field(
        None, max_length=1024, pattern=r"^/", description="Prefix removed from the path before proxying."
    )


class Timeouts(SpecModel):
    """Upstream timeouts (Go-style durations)."""

    request: PositiveDuration = Field("15s", description="Whole upstream request timeout (504 when exceeded).")
    connect: PositiveDuration = Field("2s", description="Upstream connect timeout.")


class Retries(SpecModel):
    """Retries for idempotent methods only."""

    attempts: int = Field(
        0, ge=0, le=5,
        description="Extra attempts for idempotent methods on connect failure, 502, 503 or 504.",
    )


class CircuitBreaker(SpecModel):
    """Per backend endpoint, per data-plane replica: concurrency caps and passive outlier detection."""

    maxRequests: int = Field(1024, ge=1, le=1_000_000, description="Concurrent upstream requests; beyond it 503.")
    maxPendingRequests: int = Field(
        256, ge=0, le=1_000_000, description="Requests waiting for a request slot; beyond it 503 (reason overflow)."
    )
    consecutiveErrors: int = Field(
        5, ge=0, le=1000, description="5xx / connect failures in a row eject the endpoint (0 = never)."
    )
    ejectionTime: PositiveDuration = Field(
        "30s", description="First ejection; doubles on repeats up to 5m; the last endpoint is never ejected."
    )


class JwtAuth(SpecModel):
    """JWT verification: issuer, audiences, allowed algorithms and exactly one key source."""

    model_config = cel(
        (
            "[has(self.jwksUri), has(self.publicKeySecretRef), has(self.secretRef)].filter(x, x).size() == 1",
            "exactly one key source: jwksUri, publicKeySecretRef or secretRef",
        ),
        (
            "!has(self.secretRef) || (has(self.algorithms) && self.algorithms.all(a, a.startsWith('HS')))",
            "secretRef (HMAC) allows only HS256/HS384/HS512",
        ),
        (
            "has(self.secretRef) || !has(self.algorithms) || self.algorithms.all(a, !a.startsWith('HS'))",
            "HS* algorithms need secretRef; public keys never verify HMAC tokens",
        ),
    )

    issuer: str | None = Field(None, min_length=1, max_length=2048, description="Required `iss` claim.")
    audiences: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(
        default_factory=list, max_length=32, description="Accepted `aud` values; empty = not checked."
    )
    algorithms: list[JwtAlgorithm] = Field(
        default_factory=lambda: ["RS256"],
        min_length=1,
        max_length=13,
        description="Allowed signing algorithms; `none` is never accepted.",
    )
    jwksUri: str | None = Field(
        None, max_length=2048, pattern=r"^https?://", description="JWKS endpoint (fetched and cached)."
    )
    publicKeySecretRef: SecretKeyRef | None = Field(
        None, description="PEM public key (RS*/PS*/ES*/EdDSA) in a Secret."
    )
    secretRef: SecretKeyRef | None = Field(None, description="HMAC secret (HS*) in a Secret.")
    requiredClaims: dict[str, Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=64, description="Claims that must equal these values exactly."
    )
    forwardClaims: dict[str, HeaderName] = Field(
        default_factory=dict, max_length=64, description="Claim name -> upstream request header."
    )

    @model_validator(mode="after")
    def _key_source(self) -> JwtAuth:
        sources = [self.jwksUri is not None, self.publicKeySecretRef is not None, self.secretRef is not None]
        if sum(sources) != 1:
            raise ValueError("exactly one key source: jwksUri, publicKeySecretRef or secretRef")
        hmac = [a for a in self.algorithms if a in HMAC_ALGORITHMS]
        if self.secretRef is not None and len(hmac) != len(self.algorithms):
            raise ValueError("secretRef (HMAC) allows only HS256/HS384/HS512")
        if self.secretRef is None and hmac:
            raise ValueError("HS* algorithms need secretRef; public keys never verify HMAC tokens")
        return self

    @field_validator("algorithms", mode="before")
    @classmethod
    def _no_none(cls, value: Any) -> Any:
        if isinstance(value, list) and any(str(a).lower() == "none" for a in value):
            raise ValueError('Unsupported value: "none": algorithm none is never accepted')
        return value


class MtlsAuth(SpecModel):
    """Client-certificate authorization for this route."""

    allowedSubjects: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=list,
        max_length=256,
        description="Allowed client certificate subjects: `CN=name` or a SAN DNS name; empty = any verified client.",
    )


class RouteAuth(SpecModel):
    """Which credentials a route accepts; any one valid credential admits a request."""

    model_config = cel(
        ("!self.methods.exists(m, m == 'jwt') || has(self.jwt)", "methods contains jwt but jwt is not configured"),
        ("!has(self.jwt) || self.methods.exists(m, m == 'jwt')", "jwt is configured but not listed in methods"),
        ("!has(self.mtls) || self.methods.exists(m, m == 'mtls')", "mtls is configured but not listed in methods"),
    )

    required: bool = Field(True, description="false = anonymous allowed (credentials are still checked if sent).")
    methods: list[AuthMethod] = Field(
        min_length=1, max_length=3, description="Accepted credential types; any one valid credential admits."
    )
    jwt: JwtAuth | None = Field(None, description="JWT verification settings (required with method jwt).")
    mtls: MtlsAuth | None = Field(None, description="Client-certificate authorization (with method mtls).")

    @model_validator(mode="after")
    def _jwt_configured(self) -> RouteAuth:
        if "jwt" in self.methods and self.jwt is None:
            raise ValueError("methods contains jwt but jwt is not configured")
        if self.jwt is not None and "jwt" not in self.methods:
            raise ValueError("jwt is configured but not listed in methods")
        if self.mtls is not None and "mtls" not in self.methods:
            raise ValueError("mtls is configured but not listed in methods")
        return self


class IpFilter(SpecModel):
    """Client IP allow and deny lists (CIDRs or single IPs)."""

    allow: list[CIDR] = Field(
        default_factory=list, max_length=1024, description="When set, only these CIDRs are allowed."
    )
    deny: list[CIDR] = Field(default_factory=list, max_length=1024, description="Denied CIDRs; deny wins over allow.")


class GatewayRouteSpec(SpecModel):
    """Routes requests for hosts + path + methods to one or more backends."""

    model_config = cel(
        (
            (
                "!has(self.rewrite) || !has(self.rewrite.stripPrefix)"
                " || self.path.startsWith(self.rewrite.stripPrefix)"
                " || (self.rewrite.stripPrefix.endsWith('/') && self.path.startsWith("
                "self.rewrite.stripPrefix.substring(0, self.rewrite.stripPrefix.size() - 1)))"
            ),
            "rewrite.stripPrefix must be a prefix of path",
        ),
    )

    hosts: list[Hostname] = Field(
        default_factory=list, max_length=64, description="Hostnames; empty = every host. `*.example.com` allowed."
    )
    path: str = Field(
        min_length=1,
        max_length=1024,
        pattern=PATH_PATTERN,
        description="Literal segments, `:id` or `{id}` params, and a trailing `*name` catch-all.",
    )
    methods: list[HttpMethod] = Field(default_factory=list, max_length=9, description="HTTP methods; empty = all.")
    backends: list[Backend] = Field(min_length=1, max_length=64, description="Upstreams, chosen by weight.")
    rewrite: Rewrite | None = Field(None, description="Request rewriting before proxying.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Upstream timeouts.")
    retries: Retries = Field(default_factory=Retries, description="Retries for idempotent methods.")
    maxBodyBytes: int = Field(
        1_048_576, ge=0, le=1 << 30, description="Largest request body accepted (413 above); default 1 MiB."
    )
    requestSchema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema for JSON request bodies; bodies that fail it get 400.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    circuitBreaker: CircuitBreaker | None = Field(None, description="Circuit breaking per backend endpoint.")
    auth: RouteAuth | None = Field(None, description="Authentication; absent = anonymous.")
    ipFilter: IpFilter | None = Field(None, description="Client IP allow/deny lists.")

    @field_validator("path")
    @classmethod
    def _path_names_unique(cls, value: str) -> str:
        names = re.findall(r"(?::|\{|\*)([A-Za-z_][A-Za-z0-9_]*)", value)
        if len(names) != len(set(names)):
            raise ValueError(f"path {value!r} repeats a parameter name")
        return value

    @model_validator(mode="after")
    def _strip_prefix(self) -> GatewayRouteSpec:
        prefix = self.rewrite.stripPrefix if self.rewrite else None
        if prefix and not (
            self.path.startswith(prefix) or (prefix.endswith("/") and self.path.startswith(prefix[:-1]))
        ):
            raise ValueError("rewrite.stripPrefix must be a prefix of path")
        return self

    @field_validator("requestSchema")
    @classmethod
    def _schema_is_usable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from kubegate.request_schema import compile_request_schema

            compile_request_schema(value)  # SchemaProblem (a ValueError): the reason, one line
        return value
