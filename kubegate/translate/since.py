"""Translating again when only a few GatewayRoutes changed since the previous translation.

The operator translates its whole picture after every change; with 10,000
routes present, one ``kubectl apply`` changes one of them. :func:`again`
then re-decides only what that change can affect and takes everything else
from the :class:`Previous` translation: the changed routes and every route
that shares a path pattern with their old or new path (conflicts are decided
among routes of one pattern only), re-run through the same processors, with
every RateLimitPolicy (their precedence is cheap and routes read it). Any
other change (a Secret, a Service, an object added, removed or of another
kind, a creation time) returns None: the caller translates everything, as
before. The result is byte-identical to a full translation
(tests/translate/test_since.py compares them change by change).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kubegate.resources import ObjectRef, SourceObject, TranslationInput, TranslationResult

from . import ratelimits, routes
from .common import ACCEPTED_OK, INVALID_SPEC, age_key
from .memo import Entry, Verdict
from .run import Processor, Run

MAX_CHANGED = 64  # changed routes up to which a translation is redone only for them

Item = tuple[Any, Any, bytes]


@dataclass(slots=True)
class Previous:
    """What one translation decided, kept for the next one."""

    inp: TranslationInput
    verdicts: dict[ObjectRef, Verdict]  # final, oldest first
    by_kind: dict[str, list[Verdict]]  # the valid ones, oldest first
    memo: dict[ObjectRef, Entry]
    ids: dict[int, tuple[SourceObject, ObjectRef]]  # id(object) -> (the object, its ref): the input's instances
    route_names: set[tuple[str, str]]
    served: dict[str, dict[ObjectRef, Item]]  # config list -> ref -> (sort key, compiled, JSON)
    results: dict[ObjectRef, Any]  # in ref order
    generations: dict[str, int]
    certificates: tuple[Any, ...]
    patterns: dict[str, list[ObjectRef]]  # a valid route's path pattern key -> the routes with it

    @classmethod
    def of(cls, inp: TranslationInput, verdicts: dict[ObjectRef, Verdict], memo: dict[ObjectRef, Entry], run: Run,
           served: dict[str, dict[ObjectRef, Item]], results: dict[ObjectRef, Any], generations: dict[str, int],
           certificates: tuple[Any, ...]) -> Previous:
        patterns: dict[str, list[ObjectRef]] = {}
        for verdict in run.of(routes.KIND):
            patterns.setdefault(routes.claims_of(verdict.entry)[0], []).append(verdict.ref)
        return cls(inp, verdicts, run.by_kind, memo, {id(v.obj): (v.obj, ref) for ref, v in verdicts.items()},
                   run.route_names, served, results, generations, certificates, patterns)


def _changed_routes(previous: Previous, inp: TranslationInput) -> list[tuple[ObjectRef, SourceObject]] | None:
    """The objects of ``inp`` that are not the previous input's instances, when they are all GatewayRoutes
    the previous input had (same creation time: same place in the age order); None otherwise."""
    old = previous.inp
    if (inp.gateway_namespace, inp.cluster_domain) != (old.gateway_namespace, old.cluster_domain) \
            or len(inp.objects) != len(old.objects):
        return None
    if not (inp.secrets is old.secrets or inp.secrets == old.secrets) \
            or not (inp.services is old.services or inp.services == old.services):
        return None
    ids = previous.ids
    changed = [obj for obj in inp.objects if (known := ids.get(id(obj))) is None or known[0] is not obj]
    if len(changed) > MAX_CHANGED:
        return None
    present = {id(obj) for obj in inp.objects}
    if len(present) != len(inp.objects):
        return None  # an instance twice
    out, refs = [], set()
    for obj in changed:
        ref = obj.ref
        before = previous.verdicts.get(ref)
        if before is None or obj.kind != routes.KIND or id(before.obj) in present or ref in refs \
                or before.obj.creation_timestamp != obj.creation_timestamp:
            return None  # added, another kind, twice in the input, or moved in the age order
        refs.add(ref)
        out.append((ref, obj))
    return out


def _pattern(entry: Entry) -> str | None:
    return routes.claims_of(entry)[0] if entry.model is not None else None


def again(previous: Previous, inp: TranslationInput, processors: Sequence[Processor],
          assemble: Callable[..., TranslationResult]) -> tuple[Previous, dict[ObjectRef, Entry], TranslationResult] | None:
    """The translation of ``inp`` from ``previous`` (see the module docstring), or None."""
    changed = _changed_routes(previous, inp)
    if changed is None:
        return None
    memo = dict(previous.memo)
    objects = {ref: obj for ref, obj in changed}
    patterns: set[str] = set()
    for ref, obj in changed:
        old = memo[ref]
        if (key := _pattern(old)) is not None:
            patterns.add(key)
        entry = old.reuse_for(obj) or Entry.parse(obj)
        memo[ref] = entry
        if (key := _pattern(entry)) is not None:
            patterns.add(key)
    affected = set(objects)
    for key in patterns:
        affected.update(previous.patterns.get(key, ()))
    # Fresh verdicts for the affected routes (oldest first, as a full translation orders them) and the policies.
    fresh: dict[ObjectRef, Verdict] = {}
    for ref in sorted(affected, key=lambda r: (age_key(objects.get(r) or previous.verdicts[r].obj), r.kind)):
        obj = objects.get(ref) or previous.verdicts[ref].obj
        fresh[ref] = verdict = Verdict(obj, ref, memo[ref])
        if verdict.entry.model is None:
            verdict.reject(INVALID_SPEC, verdict.entry.invalid or "")
    policies = [Verdict(v.obj, v.ref, v.entry) for v in previous.verdicts.values()
                if v.obj.kind == ratelimits.KIND and v.entry.model is not None]
    run = Run(inp, {routes.KIND: [v for v in fresh.values() if v.entry.model is not None],
                    ratelimits.KIND: policies}, previous.route_names)
    for processor in processors:
        processor.prepare(run)
    route_processor = next(p for p in processors if p.kind == routes.KIND)
    served_routes = dict(previous.served[route_processor.output])  # type: ignore[index]
    for ref in affected:
        served_routes.pop(ref, None)
    for verdict in run.of(routes.KIND):
        if verdict.accepted is not ACCEPTED_OK:
            continue
        fragment = run.compiled(verdict, route_processor.build)  # type: ignore[arg-type]
        if fragment.compiled is not None:
            verdict.programmable = True
            served_routes[verdict.ref] = route_processor.serve(verdict, fragment, run)  # type: ignore[misc]
    fresh.update((v.ref, v) for v in policies)
    verdicts = {ref: fresh.get(ref, v) for ref, v in previous.verdicts.items()}
    by_kind = _by_kind(previous, verdicts, fresh)
    results = dict(previous.results)
    regenerate = False
    for ref, verdict in fresh.items():
        result = results[ref] = verdict.result()
        regenerate |= result.programmable != previous.results[ref].programmable
    if regenerate:
        generations = {str(ref): r.generation for ref, r in results.items() if r.programmable}
    else:
        generations = dict(previous.generations)
        for ref in fresh:
            if results[ref].programmable:
                generations[str(ref)] = results[ref].generation
    served = {**previous.served, route_processor.output: served_routes}  # type: ignore[dict-item]
    items = {name: sorted(kept.values(), key=_first) for name, kept in served.items()}
    bundle, warnings, backend_services, backend_urls = _contributions(by_kind, processors)
    result = assemble(inp, items, results, generations, bundle, warnings, previous.certificates,
                      backend_services, backend_urls)
    ids = dict(previous.ids)
    for ref, obj in changed:
        del ids[id(previous.verdicts[ref].obj)]
        ids[id(obj)] = (obj, ref)
    index = dict(previous.patterns)  # only the changed routes can have moved between patterns
    for key in patterns:
        members = [r for r in previous.patterns.get(key, ()) if r not in objects]
        members += [r for r in objects if _pattern(memo[r]) == key]
        if members:
            index[key] = members
        else:
            index.pop(key, None)
    now = Previous(inp, verdicts, by_kind, memo, ids, previous.route_names, served, results, generations,
                   previous.certificates, index)
    return now, memo, result


def _by_kind(previous: Previous, verdicts: dict[ObjectRef, Verdict], fresh: dict[ObjectRef, Verdict]
             ) -> dict[str, list[Verdict]]:
    """The valid verdicts by kind, oldest first: the previous lists with the fresh verdicts in place (rebuilt
    when a route became valid or invalid)."""
    flipped = any((previous.verdicts[ref].entry.model is None) != (v.entry.model is None) for ref, v in fresh.items())
    if flipped:
        out: dict[str, list[Verdict]] = {}
        for verdict in verdicts.values():
            if verdict.entry.model is not None:
                out.setdefault(verdict.obj.kind, []).append(verdict)
        return out
    return {kind: [fresh.get(v.ref, v) for v in kept] if kind in (routes.KIND, ratelimits.KIND) else kept
            for kind, kept in previous.by_kind.items()}


def _first(item: Item) -> Any:
    return item[0]


def _contributions(by_kind: dict[str, list[Verdict]], processors: Sequence[Processor]
                   ) -> tuple[dict[str, str], set[str], dict[tuple[str, str], tuple[Any, list[Any]]], set[str]]:
    """What the built objects add to the run, in the order a full translation adds it (processor, then
    age): Secret bundle entries and warnings of their fragments, and the backends of served routes."""
    bundle: dict[str, str] = {}
    warnings: set[str] = set()
    services: dict[tuple[str, str], tuple[Any, list[Any]]] = {}
    urls: set[str] = set()
    for processor in processors:
        if processor.output is None or processor.build is None:
            continue
        is_route = processor.kind == routes.KIND
        for verdict in by_kind.get(processor.kind, ()):
            if verdict.accepted is not ACCEPTED_OK:
                continue
            entry = verdict.entry
            fragment = entry.fragment
            if fragment is None:
                continue
            if fragment.warnings:
                warnings.update(fragment.warnings)
            if fragment.bundle:
                bundle.update(fragment.bundle)
            if is_route and fragment.compiled is not None and (reach := entry.reach) is not None:
                if reach[1]:
                    urls.update(reach[1])
                for key, service, declared in reach[2]:
                    ports = services.setdefault(key, (service, []))[1]
                    if declared not in ports:
                        ports.append(declared)
    return bundle, warnings, services, urls
