"""The user-facing spec of the four kubegate.dev/v1alpha1 kinds (see shared/spec/API.md).

These pydantic models are the single source of truth for the CRD schemas:
``kubegate.crdgen`` turns them into OpenAPI v3 + CEL, so what ``kubectl apply``
rejects and what ``kubegate validate`` rejects can never drift apart. Each
``x-kubernetes-validations`` rule is mirrored by a pydantic validator here, and
tests prove both reject the same inputs.

Field names are the wire names (camelCase) on purpose: the models read and
write Kubernetes objects verbatim, without alias tables.

One module per concern: ``common`` (patterns, the strict base model, CEL rules,
references), ``route`` (GatewayRoute), ``policies`` (RateLimitPolicy, ApiKey,
TLSPolicy), ``errors`` (readable validation errors), ``kinds`` (the API group,
its kinds and ``parse_spec``). This package re-exports their public names.
"""

from kubegate.spec.common import (
    CIDR,
    CIDR_MESSAGE,
    HEADER_PATTERN,
    HMAC_ALGORITHMS,
    HOST_PATTERN,
    NAME_PATTERN,
    PATH_PATTERN,
    SECRET_KEY_PATTERN,
    AuthMethod,
    Dimension,
    HeaderName,
    Hostname,
    HttpMethod,
    JwtAlgorithm,
    LocalObjectRef,
    Name,
    SecretKeyRef,
    SpecModel,
    cel,
)
from kubegate.spec.errors import (
    SpecError,
    field_path,
    spec_errors,
)
from kubegate.spec.kinds import (
    API_VERSION,
    GROUP,
    KINDS,
    PLURALS,
    SHORT_NAMES,
    VERSION,
    parse_spec,
)
from kubegate.spec.policies import (
    ApiKeySpec,
    CertificateSource,
    ClientAuth,
    Hsts,
    IssuerRef,
    KeyRateLimit,
    Limit,
    RateLimitPolicySpec,
    TargetRef,
    TLSPolicySpec,
)
from kubegate.spec.route import (
    Backend,
    CircuitBreaker,
    GatewayRouteSpec,
    IpFilter,
    JwtAuth,
    MtlsAuth,
    Retries,
    Rewrite,
    RouteAuth,
    Timeouts,
)

__all__ = [
    "API_VERSION",
    "CIDR",
    "CIDR_MESSAGE",
    "GROUP",
    "HEADER_PATTERN",
    "HMAC_ALGORITHMS",
    "HOST_PATTERN",
    "KINDS",
    "NAME_PATTERN",
    "PATH_PATTERN",
    "PLURALS",
    "SECRET_KEY_PATTERN",
    "SHORT_NAMES",
    "VERSION",
    "ApiKeySpec",
    "AuthMethod",
    "Backend",
    "CertificateSource",
    "CircuitBreaker",
    "ClientAuth",
    "Dimension",
    "GatewayRouteSpec",
    "HeaderName",
    "Hostname",
    "Hsts",
    "HttpMethod",
    "IpFilter",
    "IssuerRef",
    "JwtAlgorithm",
    "JwtAuth",
    "KeyRateLimit",
    "Limit",
    "LocalObjectRef",
    "MtlsAuth",
    "Name",
    "RateLimitPolicySpec",
    "Retries",
    "Rewrite",
    "RouteAuth",
    "SecretKeyRef",
    "SpecError",
    "SpecModel",
    "TLSPolicySpec",
    "TargetRef",
    "Timeouts",
    "cel",
    "field_path",
    "parse_spec",
    "spec_errors",
]
