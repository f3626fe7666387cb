"""Request bodies: size limits and per-route JSON Schema validation.

Schemas are compiled once per config snapshot (``compile_schema``); a request
pays only for parsing and validating its own body.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import jsonschema

from kubegate.request_schema import compile_request_schema, nesting_depth

MAX_REASON = 200
MAX_JSON_DEPTH = 64  # nesting of arrays/objects in a request body (System.Text.Json's default)


class BodyTooLarge(Exception):
    """The request body exceeded the route's maxBodyBytes."""


class BodyProblem(NamedTuple):
    """Why a body is refused with a 400: a reason word and a short, safe message."""

    reason: str
    message: str


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> tuple[Any, BodyProblem | None]:
    """Strict JSON (RFC 8259: no NaN/Infinity, one document) nested at most MAX_JSON_DEPTH deep."""
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        return None, BodyProblem("body_too_deep", f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    except (ValueError, UnicodeDecodeError):
        return None, BodyProblem("invalid_json", "request body is not valid JSON")
    if nesting_depth(document, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        return None, BodyProblem("body_too_deep", f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    return document, None


class SchemaCheck:
    """A compiled JSON Schema validator for one route (references inside the schema only, never fetched)."""

    __slots__ = ("_validator",)

    def __init__(self, schema: dict[str, Any]) -> None:
        self._validator = compile_request_schema(schema)  # SchemaProblem: the route is refused, not the request

    def problem(self, body: bytes) -> BodyProblem | None:
        """None when the body is valid JSON that satisfies the schema; otherwise why not."""
        document, problem = parse_json(body)
        if problem is not None:
            return problem
        try:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(document))
        except RecursionError:  # a recursive schema on a document within the depth limit: still bounded
            return BodyProblem("body_too_deep", "request body nests too deeply for the schema")
        if error is None:
            return None
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        reason = f"{where}: {error.message}"
        return BodyProblem("schema_violation",
                           reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "...")


def is_json(content_type: str) -> bool:
    """application/json and any +json type, parameters ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def content_length(value: str | None) -> int | None:
    """Parsed Content-Length, or None when absent; ValueError when malformed."""
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError("invalid Content-Length")
    return int(value)
