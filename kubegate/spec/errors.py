"""pydantic's validation errors phrased as the API server phrases the same CRD rejection."""

from __future__ import annotations

import json
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
