"""pydantic's validation errors phrased as the API server phrases the same CRD rejection."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

from pydantic import (
    ValidationError,
)

# --- parsing with readable errors ---


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


# pydantic error type -> the API server's phrase for the same rejection, from (input, ctx).
_PHRASES: dict[str, Callable[[Any, dict[str, Any]], str]] = {
    "extra_forbidden": lambda value, ctx: "unknown field",
    "missing": lambda value, ctx: "Required value",
    "literal_error": lambda value, ctx: f'Unsupported value: {_show(value)}: supported values: {ctx.get("expected", "")}',
    "enum": lambda value, ctx: f'Unsupported value: {_show(value)}: supported values: {ctx.get("expected", "")}',
    "string_pattern_mismatch": lambda value, ctx: f"Invalid value: {_show(value)}: should match '{ctx.get('pattern', '')}'",
    "greater_than_equal": lambda value, ctx: f"Invalid value: {value}: should be greater than or equal to {ctx['ge']}",
    "less_than_equal": lambda value, ctx: f"Invalid value: {value}: should be less than or equal to {ctx['le']}",
    "too_short": lambda value, ctx: (f"Invalid value: {ctx.get('actual_length')}: "
                                     f"should have at least {ctx.get('min_length')} items"),
    "too_long": lambda value, ctx: f"Too many: {ctx.get('actual_length')}: must have at most {ctx.get('max_length')} items",
    "string_too_long": lambda value, ctx: f"Too long: may not be more than {ctx.get('max_length')} bytes",
    "string_too_short": lambda value, ctx: (f"Invalid value: {_show(value)}: "
                                            f"should be at least {ctx.get('min_length')} chars long"),
}
# pydantic type-error types -> the OpenAPI type the API server names.
_TYPE_ERRORS = {"int_type": "integer", "int_parsing": "integer", "int_from_float": "integer", "string_type": "string",
                "bool_type": "boolean", "bool_parsing": "boolean", "list_type": "array", "dict_type": "object",
                "model_type": "object"}


def _reason(error: dict[str, Any]) -> str:
    """Phrase pydantic's errors the way the API server phrases the same CRD rejection.

    The same wording from ``kubegate validate`` and ``kubectl apply`` lets one
    expectation (``tests/cases``) hold for both.
    """
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if phrase := _PHRASES.get(kind):
        return phrase(value, ctx)
    if kind.startswith(("datetime", "date_")):
        return f"Invalid value: {_show(value)}: must be of type date-time"
    if expected := _TYPE_ERRORS.get(kind):
        return f"Invalid value: {_show(value)}: must be of type {expected}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"]


def spec_errors(exc: ValidationError, root: str = "spec") -> list[SpecError]:
    return [SpecError(field_path(e["loc"], root), _reason(e)) for e in exc.errors()]
