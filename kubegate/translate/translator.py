"""Orchestration: parse every object (memoised), run the per-kind processors, assemble the result.

Contour-style: the kinds are a list of :class:`~kubegate.translate.run.Processor`
values, and one loop runs them — every ``prepare`` first (decisions across
objects), then ``build`` + ``serve`` per accepted object of each kind that
fills a config list.
"""

from __future__ import annotations

from typing import Any

from kubegate.config import CompiledConfig, SecretBundle, canonical_json
from kubegate.resources import BackendService, ObjectRef, TranslationInput, TranslationResult

from . import apikeys, ratelimits, routes, tlspolicies
from .canonical import assemble_json, hash_of
from .common import ACCEPTED_OK, INVALID_SPEC, age_key
from .memo import Entry, Verdict, collector_paused
from .run import Processor, Run
from .since import Previous, again

# prepare() runs in this order: route conflicts, then rate-limit precedence (routes' serve uses it).
PROCESSORS: tuple[Processor, ...] = (routes.PROCESSOR, ratelimits.PROCESSOR, apikeys.PROCESSOR,
                                     tlspolicies.PROCESSOR)


class Translator:
    """:func:`translate` plus a memo of what each object compiled to in the previous call.

    Holds only the entries of the objects in the latest input (bounded by it).
    Thread-safe: each call builds a fresh memo from the previous one and
    publishes it when done; entries are only ever reused after checking them.
    Inputs are values (their models are frozen): an object passed again as the
    very same instance is trusted to carry the same spec; any other object is
    compared by the exact JSON of its spec.
    """

    def __init__(self) -> None:
        self._state: tuple[tuple[str, str], dict[ObjectRef, Entry]] = (("", ""), {})
        self._previous: Previous | None = None  # the last translation, for since.again

    def clear(self) -> None:
        self._state = (("", ""), {})
        self._previous = None

    def translate(self, inp: TranslationInput) -> TranslationResult:
        """Compile every valid, unconflicted, resolvable object; report on all of them."""
        with collector_paused():
            previous, self._previous = self._previous, None
            done = again(previous, inp, PROCESSORS, assemble) if previous is not None else None
            if done is not None:
                self._previous, memo, result = done
                self._state = ((inp.gateway_namespace, inp.cluster_domain), memo)
                return result
            return self._translate(inp)

    def _verdicts(self, inp: TranslationInput) -> tuple[dict[ObjectRef, Verdict], dict[ObjectRef, Entry], Run]:
        """One verdict per object (oldest first), its spec parsed or taken from the memo."""
        env = (inp.gateway_namespace, inp.cluster_domain)
        old_env, old = self._state
        if old_env != env:
            old = {}
        memo: dict[ObjectRef, Entry] = {}
        verdicts: dict[ObjectRef, Verdict] = {}
        by_kind: dict[str, list[Verdict]] = {}
        for obj in sorted(inp.objects, key=lambda o: (age_key(o), o.kind)):
            ref = obj.ref
            entry = old.get(ref)
            entry = entry.reuse_for(obj) if entry is not None else None
            if entry is None:
                entry = Entry.parse(obj)
            memo[ref] = entry
            verdicts[ref] = verdict = Verdict(obj, ref, entry)
            if entry.model is None:
                verdict.reject(INVALID_SPEC, entry.invalid or "")
            else:
                by_kind.setdefault(obj.kind, []).append(verdict)
        route_names = {(o.namespace, o.name) for o in inp.objects if o.kind == routes.KIND}
        return verdicts, memo, Run(inp, by_kind, route_names)

    def _translate(self, inp: TranslationInput) -> TranslationResult:
        verdicts, memo, run = self._verdicts(inp)
        for processor in PROCESSORS:
            processor.prepare(run)
        items: dict[str, list[tuple[Any, Any, bytes]]] = {}
        by_ref: dict[str, dict[ObjectRef, tuple[Any, Any, bytes]]] = {}
        for processor in PROCESSORS:
            if processor.output is None or processor.build is None or processor.serve is None:
                continue
            served = items[processor.output] = []
            kept = by_ref[processor.output] = {}
            for verdict in run.of(processor.kind):
                if verdict.accepted is not ACCEPTED_OK:
                    continue
                fragment = run.compiled(verdict, processor.build)
                if fragment.compiled is not None:
                    verdict.programmable = True
                    served.append(item := processor.serve(verdict, fragment, run))
                    kept[verdict.ref] = item
        for served in items.values():
            served.sort(key=lambda item: item[0])
        results = {ref: verdicts[ref].result() for ref in sorted(verdicts)}
        generations = {str(ref): r.generation for ref, r in results.items() if r.programmable}
        certificates = tuple(sorted(run.certificates, key=lambda c: c.name))
        result = assemble(inp, items, results, generations, run.bundle, run.warnings, certificates,
                          run.backend_services, run.backend_urls)
        self._state = ((inp.gateway_namespace, inp.cluster_domain), memo)
        self._previous = Previous.of(inp, verdicts, memo, run, by_ref, results, generations, certificates)
        return result


def assemble(inp: TranslationInput, items: dict[str, list[tuple[Any, Any, bytes]]], results: dict[ObjectRef, Any],
             generations: dict[str, int], bundle: dict[str, str], warnings: set[str], certificates: tuple[Any, ...],
             backend_services: dict[tuple[str, str], tuple[Any, list[Any]]], backend_urls: set[str]
             ) -> TranslationResult:
    """The result from what the processors decided: the config, its canonical JSON and its hash."""
    config = CompiledConfig(
        gateway_namespace=inp.gateway_namespace,
        **{name: tuple(item[1] for item in served) for name, served in items.items()},
        generations=generations,
    )
    secrets = SecretBundle(values=dict(sorted(bundle.items())))
    config_json = assemble_json(config, {name: [item[2] for item in served] for name, served in items.items()})
    secrets_json = canonical_json(secrets)
    return TranslationResult.model_construct(
        config=config,
        secrets=secrets,
        hash=hash_of(config_json, secrets_json),
        results=results,
        warnings=tuple(sorted(warnings)),
        certificates=certificates,
        backend_services=tuple(
            BackendService(namespace=ns, name=name, selector=service.selector, ports=tuple(ports))
            for (ns, name), (service, ports) in sorted(backend_services.items())
        ),
        backend_urls=tuple(sorted(backend_urls)),
        config_json=config_json,
        secrets_json=secrets_json,
    )


def translate(inp: TranslationInput) -> TranslationResult:
    """Compile every valid, unconflicted, resolvable object; report on all of them.

    A pure function of ``inp`` (a fresh :class:`Translator` each call). A caller that
    translates mostly unchanged inputs again and again (the operator) holds one
    :class:`Translator` instead, which makes the repeated calls incremental.
    """
    return Translator().translate(inp)
