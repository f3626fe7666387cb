"""One translation in progress, and the shape every per-kind processor has.

Each kind module (``routes``, ``ratelimits``, ``apikeys``, ``tlspolicies``)
exposes one :class:`Processor` with the same three steps; the orchestrator
(``translator.py``) runs every processor's ``prepare`` (decisions across
objects: conflicts, precedence), then for each processor that fills a config
list, ``build`` (one object, memoised) and ``serve`` (the final item) per
accepted object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubegate.resources import CertificateRequest, TranslationInput

from .memo import Build, Fragment, Scope, Verdict, still_valid


@dataclass(slots=True)
class Run:
    """The state of one translation: the input, the verdicts by kind, and what they add up to."""

    inp: TranslationInput
    by_kind: dict[str, list[Verdict]]  # valid objects, oldest first
    route_names: set[tuple[str, str]]
    warnings: set[str] = field(default_factory=set)
    bundle: dict[str, str] = field(default_factory=dict)
    precedence: Any = None  # ratelimits.PolicyIndex, set by the RateLimitPolicy processor's prepare
    certificates: list[CertificateRequest] = field(default_factory=list)
    backend_services: dict[tuple[str, str], tuple[Any, list[Any]]] = field(default_factory=dict)  # (Service, ports)
    backend_urls: set[str] = field(default_factory=set)

    def of(self, kind: str) -> list[Verdict]:
        return self.by_kind.get(kind, [])

    def compiled(self, verdict: Verdict, build: Build) -> Fragment:
        """The object's fragment: reused when everything it read is unchanged, else rebuilt."""
        entry = verdict.entry
        fragment = entry.fragment
        if fragment is None or not still_valid(fragment, self.inp, self.route_names):
            scope = Scope(self.inp, self.route_names, verdict.obj)
            fragment = entry.fragment = scope.fragment(build(scope, entry.model))
        verdict.missing += fragment.missing
        verdict.key_id, verdict.certificate = fragment.key_id, fragment.certificate
        if fragment.warnings:
            self.warnings.update(fragment.warnings)
        if fragment.bundle:
            self.bundle.update(fragment.bundle)
        return fragment


Serve = Callable[[Verdict, Fragment, Run], tuple[Any, Any, bytes]]  # -> (sort key, compiled item, its JSON)


def _nothing(run: Run) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Processor:
    """One kind's compilation, in the one signature every kind has."""

    kind: str
    output: str | None  # the CompiledConfig list it fills; None = compiled into another kind's items
    prepare: Callable[[Run], None] = _nothing  # decisions across objects, before any build
    build: Build | None = None  # one object -> compiled item (or None), memoised
    serve: Serve | None = None  # a built item -> its final form in the config
