"""The user-facing spec of the four kubegate.dev/v1alpha1 kinds (see shared/spec/API.md).

These pydantic models are the single source of truth for the CRD schemas:
``kubegate.crdgen`` turns them into OpenAPI v3 + CEL, so what ``kubectl apply``
rejects and what ``kubegate validate`` rejects can never drift apart. Each
``x-kubernetes-validations`` rule is mirrored by a pydantic validator here, and
tests prove both reject the same inputs.

Field names are the wire names (camelCase) on purpose: the models read and
write Kubernetes objects verbatim, without alias tables.
"""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kubegate.durations import PositiveDuration

GROUP = "kubegate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# A path is "/" or "/"-separated segments: literals, ":id" / "{id}" params,
# and an optional trailing "*name" catch-all.
_LITERAL = r"[A-Za-z0-9._~!$&'()+,;=@%-]+"
_PARAM = r"(:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})"
_CATCH_ALL = r"\*[A-Za-z_][A-Za-z0-9_]*"
PATH_PATTERN = rf"^/$|^(/({_LITERAL}|{_PARAM}))*(/{_CATCH_ALL})?/?$"
HOST_PATTERN = (
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
# RFC 1123 DNS label, as Kubernetes object names are (Services, Secrets, routes).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
HEADER_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"

HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
AuthMethod = Literal["jwt", "apiKey", "mtls"]
JwtAlgorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
]
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
Dimension = Literal["ip", "user", "apiKey", "global", "header"]

Name = Annotated[str, Field(min_length=1, max_length=253, pattern=NAME_PATTERN)]
Hostname = Annotated[str, Field(min_length=1, max_length=253, pattern=HOST_PATTERN)]
HeaderName = Annotated[str, Field(min_length=1, max_length=256, pattern=HEADER_PATTERN)]


CIDR_MESSAGE = "must be a CIDR such as 10.0.0.0/8 or an IP address"


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{CIDR_MESSAGE}, not {value!r}") from None
    return value


CIDR = Annotated[
    str,
    AfterValidator(_cidr),
    Field(
        min_length=1,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "isCIDR(self) || isIP(self)", "message": CIDR_MESSAGE}
            ]
        },
    ),
]


class SpecModel(BaseModel):
    """Base for every spec node: unknown fields are errors, as in a structural CRD.

    Strict types, as the API server's: ``port: "80"`` is rejected, not coerced.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """Attach CEL rules (rule, message) to a model's generated CRD schema."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


# --- shared references -------------------------------------------------------


class SecretKeyRef(SpecModel):
    """A key inside a Secret in the referencing object's namespace."""

    name: Name = Field(description="Name of the Secret, in the same namespace as this object.")
    key: str = Field(
        min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN, description="Key within the Secret's data."
    )


class LocalObjectRef(SpecModel):
    """An object in the referencing object's namespace."""

    name: Name = Field(description="Name of the object, in the same namespace as this object.")


# --- GatewayRoute -------------------------------------------------------------


class Backend(SpecModel):
    """One upstream: a Service in the route's namespace (service + port) or an absolute URL."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("has(self.service) != has(self.url)", "exactly one of service or url must be set"),
            ("!has(self.service) || has(self.port)", "port is required with service"),
            ("!has(self.url) || !has(self.port)", "port is not allowed with url (put it in the URL)"),
        )
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


class JwtAuth(SpecModel):
    """JWT verification: issuer, audiences, allowed algorithms and exactly one key source."""

    model_config = ConfigDict(
        json_schema_extra=cel(
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

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("!self.methods.exists(m, m == 'jwt') || has(self.jwt)", "methods contains jwt but jwt is not configured"),
            ("!has(self.jwt) || self.methods.exists(m, m == 'jwt')", "jwt is configured but not listed in methods"),
            ("!has(self.mtls) || self.methods.exists(m, m == 'mtls')", "mtls is configured but not listed in methods"),
        )
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

    model_config = ConfigDict(
        json_schema_extra=cel(
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


# --- RateLimitPolicy ----------------------------------------------------------


class TargetRef(SpecModel):
    """A GatewayRoute in the policy's namespace."""

    kind: Literal["GatewayRoute"] = Field("GatewayRoute", description="Kind of the target (GatewayRoute).")
    name: Name = Field(description="Name of a GatewayRoute in this namespace.")


class Limit(SpecModel):
    """One token bucket: requests per period, counted per dimension."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.dimension == 'header' ? has(self.header) : !has(self.header)",
             "header is required with dimension: header and allowed only there"),
            ("!has(self.burst) || self.burst >= 1", "burst must be at least 1"),
        )
    )

    dimension: Dimension = Field(description="What is counted: ip, user (JWT sub), apiKey, global or header.")
    header: HeaderName | None = Field(None, description="Header whose value is counted (dimension: header only).")
    requests: int = Field(ge=1, le=1_000_000_000, description="Requests allowed per period.")
    period: PositiveDuration = Field(description="Refill period, e.g. 1s, 1m, 1h.")
    burst: int | None = Field(None, ge=1, le=1_000_000_000, description="Bucket size; default = requests.")

    @model_validator(mode="after")
    def _header(self) -> Limit:
        if (self.dimension == "header") != (self.header is not None):
            raise ValueError("header is required with dimension: header and allowed only there")
        return self


class RateLimitPolicySpec(SpecModel):
    """Token-bucket limits for routes: targeted, namespace-wide, or gateway-wide."""

    targetRefs: list[TargetRef] = Field(
        default_factory=list, max_length=256, description="Targeted routes; empty = every route in this namespace."
    )
    limits: list[Limit] = Field(min_length=1, max_length=16, description="Every limit must pass.")
    failureMode: Literal["open", "closed", "local"] = Field(
        "open", description="When the shared store is unreachable: open (allow), closed (503), or local (each "
        "data-plane replica enforces requests / live replicas in memory until the store is back)."
    )


# --- ApiKey ---------------------------------------------------------------------


class KeyRateLimit(SpecModel):
    """A per-key token bucket, independent of the route's policies."""

    requests: int = Field(ge=1, le=1_000_000_000, description="Requests allowed per period for this key.")
    period: PositiveDuration = Field(description="Refill period.")


class ApiKeySpec(SpecModel):
    """An API key whose value lives only in its Secret; the gateway sees a hash."""

    secretRef: SecretKeyRef = Field(description="Where the key lives; generated by the operator if absent.")
    description: str = Field("", max_length=1024, description="Free text for humans.")
    routes: list[Name] = Field(
        default_factory=list, max_length=1024, description="GatewayRoutes in this namespace it may call; empty = all."
    )
    allowedCIDRs: list[CIDR] = Field(default_factory=list, max_length=256, description="Client CIDRs allowed.")
    rateLimit: KeyRateLimit | None = Field(None, description="Per-key rate limit.")
    expiresAt: datetime | None = Field(
        None, strict=False, description="RFC 3339 time after which the key is refused."
    )
    disabled: bool = Field(False, description="true = the key is refused.")


# --- TLSPolicy -----------------------------------------------------------------


class IssuerRef(SpecModel):
    """A cert-manager Issuer or ClusterIssuer."""

    name: Name = Field(description="Name of the cert-manager issuer.")
    kind: Literal["Issuer", "ClusterIssuer"] = Field("Issuer", description="Issuer or ClusterIssuer.")
    group: str = Field("cert-manager.io", max_length=253, description="API group of the issuer.")


class CertificateSource(SpecModel):
    """Where the server certificate comes from: a cert-manager issuer or an existing Secret."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("has(self.issuerRef) != has(self.secretRef)", "exactly one of issuerRef or secretRef must be set"),
            ("has(self.issuerRef) || (!has(self.duration) && !has(self.renewBefore))",
             "duration and renewBefore apply only with issuerRef"),
        )
    )

    issuerRef: IssuerRef | None = Field(None, description="cert-manager issuer; a Certificate is generated.")
    duration: PositiveDuration | None = Field(None, description="Certificate lifetime (cert-manager).")
    renewBefore: PositiveDuration | None = Field(None, description="Renew this long before expiry (cert-manager).")
    secretRef: LocalObjectRef | None = Field(None, description="An existing kubernetes.io/tls Secret.")

    @model_validator(mode="after")
    def _one_source(self) -> CertificateSource:
        if (self.issuerRef is None) == (self.secretRef is None):
            raise ValueError("exactly one of issuerRef or secretRef must be set")
        if self.issuerRef is None and (self.duration or self.renewBefore):
            raise ValueError("duration and renewBefore apply only with issuerRef")
        return self


class Hsts(SpecModel):
    """Strict-Transport-Security header settings."""

    maxAge: int = Field(31_536_000, ge=0, le=63_072_000, description="Strict-Transport-Security max-age (seconds).")
    includeSubDomains: bool = Field(False, description="Add includeSubDomains.")
    preload: bool = Field(False, description="Add preload.")


class ClientAuth(SpecModel):
    """Mutual TLS: client certificate mode, CA and allowed subjects."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.mode == 'none' || has(self.caSecretRef)", "caSecretRef is required unless mode is none"),
        )
    )

    mode: Literal["require", "optional", "none"] = Field("require", description="Client certificate mode.")
    caSecretRef: SecretKeyRef | None = Field(None, description="CA bundle that signs client certificates.")
    allowedSubjects: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=list, max_length=256, description="Allowed subjects (`CN=...` or SAN DNS); empty = any."
    )

    @model_validator(mode="after")
    def _ca(self) -> ClientAuth:
        if self.mode != "none" and self.caSecretRef is None:
            raise ValueError("caSecretRef is required unless mode is none")
        return self


class TLSPolicySpec(SpecModel):
    """Certificates, protocol floor, HSTS and mTLS for a set of hostnames."""

    hostnames: list[Hostname] = Field(min_length=1, max_length=64, description="SNI hostnames this policy serves.")
    certificate: CertificateSource = Field(description="Where the server certificate comes from.")
    minVersion: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version; nothing below 1.2 exists.")
    hsts: Hsts | None = Field(None, description="HTTP Strict-Transport-Security on HTTPS responses.")
    clientAuth: ClientAuth | None = Field(None, description="Mutual TLS.")


# --- kinds ------------------------------------------------------------------------

KINDS: dict[str, type[SpecModel]] = {
    "GatewayRoute": GatewayRouteSpec,
    "RateLimitPolicy": RateLimitPolicySpec,
    "ApiKey": ApiKeySpec,
    "TLSPolicy": TLSPolicySpec,
}
PLURALS = {
    "GatewayRoute": "gatewayroutes",
    "RateLimitPolicy": "ratelimitpolicies",
    "ApiKey": "apikeys",
    "TLSPolicy": "tlspolicies",
}
SHORT_NAMES = {"GatewayRoute": "gwr", "RateLimitPolicy": "rlp", "ApiKey": "ak", "TLSPolicy": "tlsp"}


# --- parsing with readable errors ---------------------------------------------------


class SpecError(NamedTuple):
    """One reason a spec is invalid: a dotted field path (``spec.backends[0].port``) and why."""

    field: str
    reason: str


def field_path(loc: tuple[Any, ...], root: str = "spec") -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _show(value: Any) -> str:
    """A user's value as the API server would quote it; never raises (YAML aliases can make cycles)."""
    try:
        text = json.dumps(value, default=str)
    except (ValueError, TypeError, RecursionError):
        text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _reason(error: dict[str, Any]) -> str:
    """Phrase pydantic's errors the way the API server phrases the same CRD rejection.

    The same wording from ``kubegate validate`` and ``kubectl apply`` lets one
    expectation (``tests/cases``) hold for both.
    """
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "Required value"
    if kind in ("literal_error", "enum"):
        return f'Unsupported value: {_show(value)}: supported values: {ctx.get("expected", "")}'
    if kind == "string_pattern_mismatch":
        return f"Invalid value: {_show(value)}: should match '{ctx.get('pattern', '')}'"
    if kind == "greater_than_equal":
        return f"Invalid value: {value}: should be greater than or equal to {ctx['ge']}"
    if kind == "less_than_equal":
        return f"Invalid value: {value}: should be less than or equal to {ctx['le']}"
    if kind.startswith(("datetime", "date_")):
        return f"Invalid value: {_show(value)}: must be of type date-time"
    if kind == "too_short":
        return f"Invalid value: {ctx.get('actual_length')}: should have at least {ctx.get('min_length')} items"
    if kind == "too_long":
        return f"Too many: {ctx.get('actual_length')}: must have at most {ctx.get('max_length')} items"
    if kind == "string_too_long":
        return f"Too long: may not be more than {ctx.get('max_length')} bytes"
    if kind == "string_too_short":
        return f"Invalid value: {_show(value)}: should be at least {ctx.get('min_length')} chars long"
    if kind in ("int_type", "int_parsing", "string_type", "bool_type", "bool_parsing", "list_type", "dict_type",
                "model_type", "int_from_float"):
        expected = {"int": "integer", "string": "string", "bool": "boolean", "list": "array",
                    "dict": "object", "model": "object"}[kind.split("_")[0]]
        return f"Invalid value: {_show(value)}: must be of type {expected}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"]


def spec_errors(exc: ValidationError, root: str = "spec") -> list[SpecError]:
    return [SpecError(field_path(e["loc"], root), _reason(e)) for e in exc.errors()]


def parse_spec(kind: str, raw: Any) -> tuple[SpecModel | None, list[SpecError]]:
    """Validate one object's spec; (model, []) or (None, errors). Never raises for bad input."""
    model = KINDS.get(kind)
    if model is None:
        return None, [SpecError("kind", f"unknown kind {kind!r}")]
    if not isinstance(raw, dict):
        return None, [SpecError("spec", "Required value: spec must be an object")]
    try:
        return model.model_validate(raw), []
    except ValidationError as exc:
        return None, spec_errors(exc)
