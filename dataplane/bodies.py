"""Request bodies: size limits and per-route JSON Schema validation.

Schemas are compiled once per config snapshot (``compile_schema``); a request
pays only for parsing and validating its own body.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

MAX_REASON = 200


class BodyTooLarge(Exception):
    """The request body exceeded the route's maxBodyBytes."""


class SchemaCheck:
    """A compiled JSON Schema validator for one route."""

    __slots__ = ("_validator",)

    def __init__(self, schema: dict[str, Any]) -> None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)  # SchemaError: the config is refused, not the request
        self._validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    def problem(self, body: bytes) -> str | None:
        """None when the body is valid; otherwise a short, safe reason for a 400."""
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return "request body is not valid JSON"
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(document))
        if error is None:
            return None
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        reason = f"{where}: {error.message}"
        return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


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
