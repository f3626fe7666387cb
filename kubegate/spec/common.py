"""What every kind's spec is made of: the wire patterns, the strict base model, CEL rules and
references to objects in the same namespace."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
)

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


def cel(*rules: tuple[str, str]) -> ConfigDict:
    """A model's config that attaches CEL rules (rule, message) to its generated CRD schema."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]})


# --- shared references ---


class SecretKeyRef(SpecModel):
    """A key inside a Secret in the referencing object's namespace."""

    name: Name = Field(description="Name of the Secret, in the same namespace as this object.")
    key: str = Field(
        min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN, description="Key within the Secret's data."
    )


class LocalObjectRef(SpecModel):
    """An object in the referencing object's namespace."""

    name: Name = Field(description="Name of the object, in the same namespace as this object.")
