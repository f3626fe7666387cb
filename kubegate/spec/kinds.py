"""The four kinds of the kubegate.dev API group: their spec models, plurals and short names, and
parsing one object's spec with readable errors."""

from __future__ import annotations

from typing import Any

from pydantic import (
    ValidationError,
)

from kubegate.spec.common import SpecModel
from kubegate.spec.errors import SpecError, spec_errors
from kubegate.spec.policies import ApiKeySpec, RateLimitPolicySpec, TLSPolicySpec
from kubegate.spec.route import GatewayRouteSpec

GROUP = "kubegate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

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
