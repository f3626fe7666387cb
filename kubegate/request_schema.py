"""A route's ``requestSchema``: compiled once, with references inside the schema only.

One rule set for the translator (``kubegate validate``, the operator) and the
data plane, so what the data plane would refuse is refused before it gets
there:

- it must be a valid JSON Schema of its dialect (``$schema``, default 2020-12);
- it nests at most :data:`MAX_SCHEMA_DEPTH` levels (deeper structures would
  exhaust the validator's recursion);
- every ``$ref`` / ``$dynamicRef`` / ``$recursiveRef`` must resolve inside the
  schema itself (a JSON pointer, an anchor, or an embedded ``$id``). Nothing is
  ever fetched: the registry's retrieval refuses every URI, so a remote
  reference is an error here and can never make the gateway send a request
  (jsonschema's default registry would fetch it with ``urlopen``: SSRF).
"""

from __future__ import annotations

from typing import Any

import jsonschema
import referencing
import referencing.jsonschema
from referencing.exceptions import InvalidAnchor, NoSuchAnchor, PointerToNowhere, Unresolvable

MAX_SCHEMA_DEPTH = 128
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})  # values are instances, not schemas


class SchemaProblem(ValueError):
    """Why a requestSchema cannot be used (one line, safe to show)."""


def _refuse_retrieval(uri: str) -> referencing.Resource:
    raise LookupError(f"{uri} is outside the schema; nothing is fetched")


# The data plane's registry: resolution never leaves the schema (jsonschema adds its bundled meta-schemas).
NO_RETRIEVAL = referencing.Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


def nesting_depth(value: Any, limit: int) -> int:
    """Depth of nested lists/dicts (a scalar is 0), counted without recursion; stops past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def _specification(cls: type[jsonschema.protocols.Validator]) -> referencing.Specification:
    meta = cls.META_SCHEMA
    dialect = meta.get("$id") or meta.get("id") or ""
    return referencing.jsonschema.specification_with(dialect, default=referencing.jsonschema.DRAFT202012)


def _check_references(schema: dict[str, Any], spec: referencing.Specification) -> None:
    """Every reference resolves inside ``schema``; SchemaProblem naming the first one that does not."""
    root = spec.create_resource(schema)
    resolver = NO_RETRIEVAL.resolver_with_root(root)  # no meta-schemas either: only this schema
    stack: list[tuple[Any, Any, str]] = [(schema, resolver, "")]
    while stack:
        node, here, where = stack.pop()
        if isinstance(node, list):
            stack.extend((item, here, f"{where}/{i}") for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        if node is not schema and spec.id_of(node) is not None:
            here = here.in_subresource(spec.create_resource(node))
        for keyword in _REF_KEYWORDS:
            ref = node.get(keyword)
            if not isinstance(ref, str):
                continue
            try:
                here.lookup(ref)
            except (PointerToNowhere, NoSuchAnchor, InvalidAnchor):
                raise SchemaProblem(f"{keyword} {ref!r} at {where or '/'} does not resolve inside the schema") \
                    from None
            except Unresolvable:
                raise SchemaProblem(f"{keyword} {ref!r} at {where or '/'} points outside the schema "
                                    "(only references inside it are allowed; nothing is fetched)") from None
        stack.extend((value, here, f"{where}/{key}") for key, value in node.items() if key not in _DATA_KEYWORDS)


def compile_request_schema(schema: Any) -> jsonschema.protocols.Validator:
    """A validator for ``schema`` that never fetches anything; SchemaProblem when it cannot be used."""
    if not isinstance(schema, (dict, bool)):
        raise SchemaProblem("requestSchema must be an object")
    if nesting_depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise SchemaProblem(f"requestSchema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaProblem(f"requestSchema is not a valid JSON Schema: {exc.message}") from None
    if isinstance(schema, dict):
        _check_references(schema, _specification(cls))
    return cls(schema, registry=NO_RETRIEVAL, format_checker=cls.FORMAT_CHECKER)
