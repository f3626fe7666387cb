"""The memo: what one object compiled to, and the proof that it may be reused.

A :class:`Translator <kubegate.translate.translator.Translator>` keeps one
:class:`Entry` per object of its previous input. An entry is reused only while
the object's raw spec is unchanged (:meth:`Entry.reuse_for`), and its
:class:`Fragment` only while everything the compilation read — recorded by the
:class:`Scope` it compiled in — is unchanged (:func:`still_valid`). The memo is
an optimisation only: results are byte-identical with or without it.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kubegate.config import CompiledRateLimit
from kubegate.resources import (
    Condition,
    ObjectRef,
    ObjectResult,
    ServiceInfo,
    SourceObject,
    TranslationInput,
)
from kubegate.spec import SecretKeyRef, SpecModel, parse_spec

from .canonical import item_json
from .common import ACCEPTED, ACCEPTED_OK, RESOLVED_OK, RESOLVED_REFS, SECRET_NOT_FOUND, false


def _tagged(value: Any) -> str:
    return f"\0{type(value).__name__}:{value!r}"  # YAML dates and the like: never equal to a string


_FINGERPRINT = json.JSONEncoder(separators=(",", ":"), default=_tagged)


def fingerprint(spec: Any) -> str | None:
    """The exact raw spec (types and key order included: ``1``, ``1.0`` and ``true`` differ);
    None for a structure JSON cannot hold (a recursive YAML alias), which is never reused."""
    try:
        return _FINGERPRINT.encode(spec)
    except (ValueError, TypeError, RecursionError):
        return None


_SECRET, _SERVICE, _ROUTE = "secret", "service", "route"


@dataclass(frozen=True, slots=True)
class Fragment:
    """One object's compiled part plus every side effect, so a cache hit can replay it."""

    compiled: Any  # CompiledRoute / CompiledApiKey / CompiledTls, or None
    missing: tuple[tuple[str, str], ...]  # (reason, message) for ResolvedRefs
    warnings: tuple[str, ...]
    bundle: tuple[tuple[str, str], ...]  # SecretBundle entries
    key_id: str | None
    certificate: str | None
    reads: tuple[tuple[str, Any, Any], ...]  # (table, key, value seen): what it depends on


class Scope:
    """Compiling one object: reads the inputs (recording what it saw) and collects side effects."""

    __slots__ = ("bundle", "certificate", "inp", "key_id", "missing", "obj", "reads", "route_names", "warnings")

    def __init__(self, inp: TranslationInput, route_names: set[tuple[str, str]], obj: SourceObject) -> None:
        self.inp, self.route_names, self.obj = inp, route_names, obj
        self.reads: list[tuple[str, Any, Any]] = []
        self.missing: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.bundle: list[tuple[str, str]] = []
        self.key_id: str | None = None
        self.certificate: str | None = None

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        value = self.inp.secrets.get((namespace, name))
        self.reads.append((_SECRET, (namespace, name), value))
        return value

    def service(self, namespace: str, name: str) -> ServiceInfo | None:
        value = self.inp.services.get((namespace, name))
        self.reads.append((_SERVICE, (namespace, name), value))
        return value

    def route_exists(self, namespace: str, name: str) -> bool:
        value = (namespace, name) in self.route_names
        self.reads.append((_ROUTE, (namespace, name), value))
        return value

    def unresolved(self, reason: str, message: str) -> None:
        self.missing.append((reason, message))

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def put(self, key: str, value: str) -> None:
        self.bundle.append((key, value))

    def secret_value(self, namespace: str, ref: SecretKeyRef, what: str) -> bytes | None:
        """The bytes at ref in namespace, or None with SecretNotFound recorded (and a warning)."""
        data = self.secret(namespace, ref.name)
        if data is None:
            self.unresolved(SECRET_NOT_FOUND, f"{what}: Secret {namespace}/{ref.name} not found")
            self.warn(
                f"{self.obj.ref}: Secret {namespace}/{ref.name} is not among the inputs "
                f"(kept elsewhere?); {what} is not served without it"
            )
            return None
        if ref.key not in data:
            self.unresolved(SECRET_NOT_FOUND, f"{what}: Secret {namespace}/{ref.name} has no key {ref.key!r}")
            return None
        return data[ref.key]

    def fragment(self, compiled: Any) -> Fragment:
        return Fragment(compiled, tuple(self.missing), tuple(self.warnings), tuple(self.bundle),
                        self.key_id, self.certificate, tuple(self.reads))


def still_valid(fragment: Fragment, inp: TranslationInput, route_names: set[tuple[str, str]]) -> bool:
    """Whether everything the fragment read is unchanged (identity first, then equality)."""
    for table, key, seen in fragment.reads:
        if table == _SECRET:
            now = inp.secrets.get(key)
        elif table == _SERVICE:
            now = inp.services.get(key)
        else:
            now = key in route_names
        if now is not seen and now != seen:
            return False
    return True


@dataclass(slots=True)
class Entry:
    """Everything derived from one object's spec; reused while the raw spec is unchanged."""

    source: SourceObject  # the last object seen with this spec (identity fast path)
    fingerprint: str | None
    model: SpecModel | None
    invalid: str | None  # InvalidSpec message
    fragment: Fragment | None = None
    policies: dict[str, CompiledRateLimit] = field(default_factory=dict)  # RateLimitPolicy: scope -> compiled
    served: tuple[Any, ...] | None = None  # (fragment, rate limit, final compiled object, its JSON)
    result: tuple[tuple[Any, ...], ObjectResult] | None = None  # (verdict facts, ObjectResult)
    route_claims: tuple[str, tuple[str, ...], tuple[str, ...]] | None = None  # see routes.claims_of
    reach: tuple[Any, ...] | None = None  # a route's (fragment, urls, backend Services): see routes._reach

    @classmethod
    def parse(cls, obj: SourceObject) -> Entry:
        model, errors = parse_spec(obj.kind, obj.spec)
        invalid = None if model is not None else "; ".join(f"{e.field}: {e.reason}" for e in errors)
        return cls(obj, fingerprint(obj.spec), model, invalid)

    def reuse_for(self, obj: SourceObject) -> Entry | None:
        """This entry if ``obj`` has exactly the same spec (same object, or same fingerprint)."""
        if obj is self.source or obj.spec is self.source.spec:
            return self
        if self.fingerprint is None or fingerprint(obj.spec) != self.fingerprint:
            return None
        self.source = obj
        return self

    def serve(self, fragment: Fragment, rate_limit: CompiledRateLimit | None = None) -> tuple[Any, bytes]:
        """The final compiled object (a route with its winning rate limit) and its canonical JSON."""
        served = self.served
        if served is not None and served[0] is fragment and served[1] is rate_limit:
            return served[2], served[3]
        compiled = fragment.compiled
        if rate_limit is not None:
            compiled = compiled.model_copy(update={"rate_limit": rate_limit})
        payload = item_json(compiled)
        self.served = (fragment, rate_limit, compiled, payload)
        return compiled, payload


@dataclass(slots=True, eq=False)
class Verdict:
    """Mutable while translating one object; frozen into an ObjectResult at the end."""

    obj: SourceObject
    ref: ObjectRef
    entry: Entry
    accepted: Condition = ACCEPTED_OK
    missing: tuple[tuple[str, str], ...] = ()  # (reason, message)
    key_id: str | None = None
    certificate: str | None = None
    programmable: bool = False

    def reject(self, reason: str, message: str) -> None:
        self.accepted = false(ACCEPTED, reason, message)

    def unresolved(self, reason: str, message: str) -> None:
        self.missing += ((reason, message),)

    def result(self) -> ObjectResult:
        facts = (self.obj.generation, self.accepted, self.missing, self.key_id, self.certificate, self.programmable)
        cached = self.entry.result
        if cached is not None and cached[0] == facts:
            return cached[1]
        if self.missing:
            reason = self.missing[0][0]
            resolved = false(RESOLVED_REFS, reason, "; ".join(m for _, m in self.missing))
        else:
            resolved = RESOLVED_OK
        result = ObjectResult(
            ref=self.ref,
            generation=self.obj.generation,
            accepted=self.accepted,
            resolved_refs=resolved,
            key_id=self.key_id,
            certificate=self.certificate,
            programmable=self.programmable,
        )
        self.entry.result = (facts, result)
        return result


Build = Callable[[Scope, Any], Any]  # a kind's compile step: (scope, validated spec) -> compiled or None


@contextmanager
def collector_paused() -> Iterator[None]:
    """Translation allocates many long-lived objects and no reference cycles; the cyclic
    collector's repeated full scans of them cost more than the translation itself."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
